"""Reading JSON from outside strictly and in bounded time and memory.

``loads`` checks the size, then walks the text once with a tokenizer (linear: each
token is one regular-expression match, strings are skipped in C) and stops at the first
token past ``max_tokens`` or the first bracket past ``max_depth``, *before* ``json``
builds anything; so the parser never recurses deeply and never builds more than
``max_tokens`` values.  Then it parses with a reader that refuses duplicate names in an
object (a document with two ``"core"`` fields has no single meaning: a first-name-wins
reader would see another one), ``NaN``/``Infinity``, numbers that do not fit a float and
invalid UTF-8.  Every refusal is a ``JsonInputError`` saying what is wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# one token after optional JSON whitespace: a string, an opening or closing bracket, or
# anything else a JSON text may hold between them (a separator, a number or a literal)
_TOKEN = re.compile(r'[ \t\r\n]*(?:"[^"\\]*(?:\\.[^"\\]*)*"|([\[{])|([\]}])|[,:]|[-+.0-9a-zA-Z]+)',
                    re.DOTALL)


class JsonInputError(ValueError):
    """The text is not JSON this reader accepts; the message says why."""


def check_shape(text: str, *, max_depth: int, max_tokens: int | None = None) -> None:
    """Raise JsonInputError if ``text`` nests deeper than ``max_depth`` or has more than
    ``max_tokens`` tokens.  Stops at the first excess or at the first character that
    cannot start a token (the parser reports that one)."""
    pos = depth = count = 0
    match = _TOKEN.match
    while (m := match(text, pos)) is not None:
        count += 1
        if max_tokens is not None and count > max_tokens:
            raise JsonInputError(f"more than {max_tokens} JSON tokens")
        if m.group(1):
            depth += 1
            if depth > max_depth:
                raise JsonInputError(f"nested deeper than {max_depth} levels")
        elif m.group(2):
            depth -= 1
        pos = m.end()


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonInputError(f"duplicate field {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"number out of range: {text[:20]}")
    return value


def loads(data: bytes | str, *, max_bytes: int, max_depth: int, max_tokens: int) -> Any:
    """The value of the JSON text ``data`` (UTF-8 if bytes), read strictly and within
    the given bounds; JsonInputError otherwise."""
    if len(data) > max_bytes:
        raise JsonInputError(f"larger than {max_bytes} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    check_shape(text, max_depth=max_depth, max_tokens=max_tokens)
    try:
        return json.loads(text, object_pairs_hook=_unique, parse_constant=_constant,
                          parse_float=_finite)
    except JsonInputError:
        raise
    except ValueError as exc:  # JSONDecodeError, and int() past its digit limit
        raise JsonInputError(f"not JSON: {exc}") from None
