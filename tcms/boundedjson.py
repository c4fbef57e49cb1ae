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

# a JSON string, or one structural character; anything else is skipped
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


class JsonRefused(ValueError):
    """The text is not JSON, or not JSON of an accepted shape; ``check`` names which."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def check_shape(data: bytes, *, max_depth: int, max_items: int) -> None:
    """Raise JsonRefused if ``data`` nests deeper than ``max_depth`` or holds more than
    ``max_items`` items (brackets, strings and commas: about two per list or object
    member).  Linear in ``len(data)``; the Python loop runs at most about ``2 * max_items``
    times."""
    depth = 0
    for items, m in enumerate(_TOKENS.finditer(data), 1):
        c = data[m.start()]
        if c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > max_depth:
                raise JsonRefused("json.depth", f"nested deeper than {max_depth} levels")
        elif c == 0x5D or c == 0x7D:  # ] }
            depth -= 1
        if items > max_items:
            raise JsonRefused("json.size", f"more than {max_items} items")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise JsonRefused("json.duplicate", "an object has the same key twice")
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
        raise JsonRefused("json", "not valid JSON") from None
