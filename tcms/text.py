"""Text from other hands (a remote service's error, a TSA's status string), made fit to
show to a user and to log: printable ASCII, bounded."""

from __future__ import annotations


def printable(text: str, limit: int = 200) -> str:
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:limit + 1])
    return clean[:limit] + ("..." if len(clean) > limit else "")
