"""JSON from untrusted hands, with its shape bounded before it is parsed.

``json.loads`` recurses once per nesting level (``[`` x 100,000 is a RecursionError) and
builds one Python object per item (a 30 MB body of ``[{},{},…]`` grew a process by
880 MB).  ``loads`` first makes one linear pass over the text that counts nesting depth and
items (strings are skipped whole by one regular expression), refuses the text past either
bound, and only then parses it, refusing duplicate keys (a first-key-wins reader and a
last-key-wins reader would see different documents) and NaN/Infinity.
"""

from __future__ import annotations

import json
import re
from typing import Any

# One item after optional whitespace: a string, a bracket or a comma (what is counted),
# with the colon and the number or literal that may come before it in JSON.  The scan
# matches at the current position only, never searching forwards: where nothing matches
# (a character JSON cannot have there, or a string never closed) it stops, and the parser
# refuses the text at that point.  Searching forwards instead would start a new attempt at
# every quote of `"\"\"\"...`, each running to the end of the text: quadratic.
_WS = rb"[ \t\r\n]*"
_ITEM = re.compile(_WS + rb"(?::" + _WS + rb")?(?:[-+.0-9a-zA-Z]+" + _WS + rb")?"
                   rb'(?:"[^"\\]*(?:\\.[^"\\]*)*"|([\[{])|([\]}])|,)', re.DOTALL)


class JsonRefused(ValueError):
    """The text is not JSON, or not JSON of an accepted shape; ``check`` names which."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def check_shape(data: bytes, *, max_depth: int, max_items: int) -> None:
    """Raise JsonRefused if ``data`` nests deeper than ``max_depth`` or holds more than
    ``max_items`` items (brackets, strings and commas: about two per list or object
    member).  Linear in ``len(data)``; the Python loop runs at most ``max_items + 1``
    times."""
    depth = pos = items = 0
    while (m := _ITEM.match(data, pos)) is not None:
        items += 1
        if items > max_items:
            raise JsonRefused("json.size", f"more than {max_items} items")
        if m.group(1):
            depth += 1
            if depth > max_depth:
                raise JsonRefused("json.depth", f"nested deeper than {max_depth} levels")
        elif m.group(2):
            depth -= 1
        pos = m.end()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonRefused("json.duplicate", f"an object has the key {key[:40]!r} twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise JsonRefused("json", f"{name} is not a JSON number")


def loads(data: bytes, *, max_depth: int, max_items: int) -> Any:
    """Parse ``data`` (UTF-8 JSON) within the bounds; every refusal is a JsonRefused."""
    check_shape(data, max_depth=max_depth, max_items=max_items)
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except JsonRefused:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int digits
        raise JsonRefused("json", "not JSON (RFC 8259, UTF-8)") from None
