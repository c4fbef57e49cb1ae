"""Deterministic mutation of valid inputs: the same (corpus, seed) gives the same inputs.

Byte-level havoc (bit flips, interesting bytes, arithmetic, inserts, deletes, duplicated and
repeated chunks, splices with another corpus item, truncation, CBOR and DER length tweaks),
and structure-aware mutators that keep an input well-formed one level down so that it
reaches the checks behind the parser: CBOR trees (the protocol's messages, re-encoded
canonically), DER trees (RFC 3161 requests, replies and tokens, lengths re-computed), JSON
trees (evidence bundles and trust files, with the base64 items mutated as what they hold),
and lines (mail, TOML, IMAP commands, environment files).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

INTERESTING = bytes([
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0A, 0x0C, 0x0D, 0x13, 0x16, 0x17, 0x18,
    0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x22, 0x30, 0x31, 0x3F, 0x40, 0x5B, 0x5C, 0x5D, 0x5F,
    0x60, 0x7B, 0x7D, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x9F, 0xA0, 0xA1, 0xA3, 0xBF,
    0xC0, 0xDF, 0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFA, 0xFB, 0xFF])
MAX_SIZE = 4 * 1024 * 1024  # a mutated input never grows past this


@dataclass
class Context:
    """What mutators may draw on: the entry point's corpus and dictionary of tokens."""

    corpus: Sequence[bytes]
    dictionary: Sequence[bytes] = ()
    donors: Sequence[bytes] | None = None  # CBOR items to take subtrees from (else corpus)
    _cbor_nodes: list[Any] | None = field(default=None, repr=False)

    def cbor_nodes(self) -> list[Any]:
        """Every node of every corpus item that decodes as CBOR (to splice subtrees)."""
        if self._cbor_nodes is None:
            nodes: list[Any] = []
            for item in (self.corpus if self.donors is None else self.donors)[:64]:
                try:
                    _walk(cbor2.loads(item), nodes)
                except Exception:  # not CBOR: nothing to take from it
                    continue
            self._cbor_nodes = nodes[:5000]
        return self._cbor_nodes


def _walk(value: Any, out: list[Any]) -> None:
    out.append(value)
    if isinstance(value, list):
        for v in value:
            _walk(v, out)
    elif isinstance(value, bytes) and len(value) > 2 and value[0] >> 5 == 4:
        # bytes holding a protocol message (m4 in RESOLVED, m5 in RESOLVE-REQ)
        with contextlib.suppress(Exception):  # or plain bytes
            _walk(cbor2.loads(value), out)


# --- byte-level havoc -----------------------------------------------------------------------


def _size(r: random.Random, n: int) -> int:
    return max(1, min(n, r.choice((1, 1, 2, 3, 4, 8, 16, 32, 128, n))))


def _flip(r: random.Random, b: bytearray, ctx: Context) -> None:
    if b:
        b[r.randrange(len(b))] ^= 1 << r.randrange(8)


def _interesting(r: random.Random, b: bytearray, ctx: Context) -> None:
    if b:
        b[r.randrange(len(b))] = r.choice(INTERESTING)


def _arith(r: random.Random, b: bytearray, ctx: Context) -> None:
    if b:
        i = r.randrange(len(b))
        b[i] = (b[i] + r.choice((-1, 1)) * r.randint(1, 35)) & 0xFF


def _insert_random(r: random.Random, b: bytearray, ctx: Context) -> None:
    i = r.randint(0, len(b))
    b[i:i] = r.randbytes(r.randint(1, 16))


def _insert_token(r: random.Random, b: bytearray, ctx: Context) -> None:
    if ctx.dictionary:
        i = r.randint(0, len(b))
        b[i:i] = r.choice(ctx.dictionary)


def _delete(r: random.Random, b: bytearray, ctx: Context) -> None:
    if len(b) > 1:
        i = r.randrange(len(b))
        del b[i:i + _size(r, len(b) - i)]


def _duplicate(r: random.Random, b: bytearray, ctx: Context) -> None:
    if b:
        i = r.randrange(len(b))
        chunk = b[i:i + _size(r, len(b) - i)]
        j = r.randint(0, len(b))
        b[j:j] = chunk


def _repeat(r: random.Random, b: bytearray, ctx: Context) -> None:
    """A short chunk (or a token) many times over: deep nesting, long runs, many items."""
    if ctx.dictionary and r.random() < 0.5:
        chunk = bytes(r.choice(ctx.dictionary))
    elif b:
        i = r.randrange(len(b))
        chunk = bytes(b[i:i + r.randint(1, 8)])
    else:
        return
    times = r.choice((2, 3, 8, 64, 300, 1100, 5000))
    j = r.randint(0, len(b))
    b[j:j] = chunk * min(times, max(1, 65536 // max(1, len(chunk))))


def _overwrite(r: random.Random, b: bytearray, ctx: Context) -> None:
    if len(b) > 1:
        n = _size(r, len(b) // 2 or 1)
        src, dst = r.randrange(len(b) - n + 1), r.randrange(len(b) - n + 1)
        b[dst:dst + n] = b[src:src + n]


def _splice(r: random.Random, b: bytearray, ctx: Context) -> None:
    if ctx.corpus:
        other = r.choice(ctx.corpus)
        a, c = r.randint(0, len(b)), r.randint(0, len(other))
        b[a:] = other[c:] if r.random() < 0.7 else other[c:c + _size(r, len(other) or 1)]


def _truncate(r: random.Random, b: bytearray, ctx: Context) -> None:
    if b:
        del b[r.randrange(len(b)):]


def _length(r: random.Random, b: bytearray, ctx: Context) -> None:
    """Change a length: a CBOR head of a byte or text string, array or map, or a DER
    length octet (what a header-counting reader trusts)."""
    for _ in range(8):
        if not b:
            return
        i = r.randrange(len(b))
        major = b[i] >> 5
        if major in (2, 3, 4, 5):  # CBOR: another additional-information value
            b[i] = (major << 5) | r.choice((0, 1, 2, r.randrange(24), 24, 25, 26, 27, 31))
            return
        if b[i] in (0x30, 0x31, 0x02, 0x04, 0x03, 0x06, 0xA0, 0xA3) and i + 1 < len(b):
            b[i + 1] = r.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x89, 0xFF,
                                 (b[i + 1] + r.choice((-1, 1))) & 0xFF))
            return


HAVOC: tuple[Callable[[random.Random, bytearray, Context], None], ...] = (
    _flip, _flip, _interesting, _arith, _insert_random, _insert_token, _insert_token,
    _delete, _delete, _duplicate, _repeat, _overwrite, _splice, _truncate, _length, _length)


def havoc(r: random.Random, data: bytes, ctx: Context) -> bytes:
    b = bytearray(data)
    for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        r.choice(HAVOC)(r, b, ctx)
        if len(b) > MAX_SIZE:
            del b[MAX_SIZE:]
    return bytes(b)


# --- CBOR trees -----------------------------------------------------------------------------

MAX_TIME = 253_402_300_799


def _deep(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


PALETTE: tuple[Any, ...] = (
    0, 1, -1, 23, 24, 255, 256, 2**32, 2**63, 2**64 - 1, -(2**64), MAX_TIME, MAX_TIME + 1,
    1_800_000_000, True, False, None, "", "x", "TCMS1/M4", "TCMS1/RESOLVED", "delivered",
    "made-available", "R", "S", "a" * 999, "é\u2028\x00\r\n", "bob@b.test", "BOB@B.TEST",
    "a b@a.test", "tsrg-modern", "aes256gcm", "rot13", b"", bytes(16), bytes(31), bytes(32),
    bytes(33), bytes(64), bytes(65), b"\xff" * 32, [], [None], _deep(20)
)


def _nodes(value: Any, path: tuple[int, ...], out: list[tuple[int, ...]]) -> None:
    out.append(path)
    if isinstance(value, list):
        for i, v in enumerate(value):
            _nodes(v, (*path, i), out)


def _get(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        value = value[i]
    return value


def _set(value: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


def _mutate_leaf(r: random.Random, leaf: Any, ctx: Context) -> Any:
    if isinstance(leaf, bytes) and leaf:
        roll = r.random()
        if roll < 0.35 and leaf[0] >> 5 == 4:  # a message inside (m4, m5): its tree
            inner = cbor_tree(r, leaf, ctx)
            if inner is not None:
                return inner
        if roll < 0.55 and leaf[0] == 0x30:  # a DER structure (the time-stamp token)
            inner = der_tree(r, leaf, ctx)
            if inner is not None:
                return inner
        if roll < 0.7:  # the same length: a signature, hash or key that still fits
            b = bytearray(leaf)
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            return bytes(b)
        if roll < 0.85:
            return havoc(r, leaf, Context((), ()))
    if isinstance(leaf, str) and leaf and r.random() < 0.5:
        i = r.randint(0, len(leaf))
        return leaf[:i] + r.choice(("\x00", "\r\n", "\u2028", "é", "@", " ", "A" * 300,
                                    leaf.upper(), "")) + leaf[i + r.randint(0, 3):]
    if isinstance(leaf, int) and not isinstance(leaf, bool) and r.random() < 0.5:
        return leaf + r.choice((-1, 1, -1000, 1000, 86400 * 400, -(2**40)))
    nodes = ctx.cbor_nodes()
    if nodes and r.random() < 0.3:
        return _copy(r.choice(nodes))
    return _copy(r.choice(PALETTE))


def _copy(value: Any) -> Any:
    return [_copy(v) for v in value] if isinstance(value, list) else value


def _mutate_tree(r: random.Random, value: Any, ctx: Context) -> Any:
    paths: list[tuple[int, ...]] = []
    _nodes(value, (), paths)
    path = r.choice(paths)
    node = _get(value, path)
    if isinstance(node, list) and r.random() < 0.6:
        op = r.randrange(6)
        if op == 0 and node:
            del node[r.randrange(len(node))]
        elif op == 1 and node:
            i = r.randrange(len(node))
            node.insert(i, _copy(node[i]))
        elif op == 2 and len(node) > 1:
            i, j = r.randrange(len(node)), r.randrange(len(node))
            node[i], node[j] = node[j], node[i]
        elif op == 3:
            node.insert(r.randint(0, len(node)), _mutate_leaf(r, None, ctx))
        elif op == 4:
            return _set(value, path, [node])
        else:
            return _set(value, path, node[:r.randint(0, len(node))])
        return value
    return _set(value, path, _mutate_leaf(r, node, ctx))


def cbor_tree(r: random.Random, data: bytes, ctx: Context) -> bytes | None:
    """``data`` decoded as CBOR, one node changed (an item dropped, doubled, swapped or
    replaced; a leaf of another type, an edge value, a subtree of another corpus item; bytes
    mutated as the message or token they hold), encoded canonically again."""
    try:
        value = cbor2.loads(data)
    except Exception:
        return None
    for _ in range(r.choice((1, 1, 1, 2, 3))):
        value = _mutate_tree(r, value, ctx)
    try:
        return bytes(cbor2.dumps(value, canonical=True))
    except Exception:
        return None


# --- DER trees ------------------------------------------------------------------------------


@dataclass
class _Tlv:
    tag: int
    content: bytes = b""
    children: list[_Tlv] | None = None  # constructed, or an OCTET STRING holding DER
    length_form: str = "der"  # der | long | indefinite | short-by-one | long-by-one


def _parse_der(data: bytes, depth: int = 0) -> list[_Tlv] | None:
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 2 or data[pos] & 0x1F == 0x1F:
            return None
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                return None
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
        if pos + length > len(data):
            return None
        content = data[pos:pos + length]
        pos += length
        node = _Tlv(tag, content)
        if depth < 24 and (tag & 0x20 or (tag == 0x04 and content[:1] == b"\x30")):
            node.children = _parse_der(content, depth + 1)
            if node.children is None and tag & 0x20:
                return None
        out.append(node)
    return out


def _length_octets(n: int, form: str) -> bytes:
    if form == "short-by-one":
        n = max(0, n - 1)
    elif form == "long-by-one":
        n += 1
    if form == "long":
        return b"\x84" + n.to_bytes(4, "big")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _encode_der(nodes: list[_Tlv]) -> bytes:
    out = bytearray()
    for node in nodes:
        content = _encode_der(node.children) if node.children is not None else node.content
        if node.length_form == "indefinite":
            out += bytes([node.tag | 0x20, 0x80]) + content + b"\x00\x00"
            continue
        out += bytes([node.tag]) + _length_octets(len(content), node.length_form) + content
    return bytes(out)


def _der_nodes(nodes: list[_Tlv], out: list[tuple[list[_Tlv], int]]) -> None:
    for i, node in enumerate(nodes):
        out.append((nodes, i))
        if node.children is not None:
            _der_nodes(node.children, out)


DER_TAGS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x1E, 0x30,
            0x31, 0x80, 0xA0, 0xA1, 0xA3)


def der_tree(r: random.Random, data: bytes, ctx: Context) -> bytes | None:
    """``data`` read as DER, one element changed (its tag, its content, its children or
    the way its length is written), and written again with every other length right."""
    tree = _parse_der(data)
    if not tree:
        return None
    places: list[tuple[list[_Tlv], int]] = []
    _der_nodes(tree, places)
    for _ in range(r.choice((1, 1, 2))):
        siblings, i = r.choice(places)
        node = siblings[i]
        op = r.randrange(8)
        if op == 0:
            node.tag = r.choice(DER_TAGS)
        elif op == 1:
            node.length_form = r.choice(("long", "indefinite", "short-by-one", "long-by-one"))
        elif op == 2:
            del siblings[i]
            break  # the places list is stale now
        elif op == 3:
            siblings.insert(i, _Tlv(node.tag, node.content, node.children))
            break
        elif op == 4 and len(siblings) > 1:
            j = r.randrange(len(siblings))
            siblings[i], siblings[j] = siblings[j], siblings[i]
        elif op == 5:
            other = r.choice(places)
            siblings[i] = copy.deepcopy(other[0][other[1]])  # an ancestor too: no cycle
            break
        elif node.children is None:
            node.content = (havoc(r, node.content, ctx) if r.random() < 0.7 else
                            r.choice((b"", b"\x00", b"\x80", b"\xff" * 9, b"\x00\x01",
                                      bytes(300))))
        elif r.random() < 0.5:
            node.children = None
            node.content = havoc(r, _encode_der([node]), ctx)[2:]
        else:
            node.children = node.children[:r.randint(0, len(node.children))]
    return _encode_der(tree)


# --- JSON trees (evidence bundles, trust files) ---------------------------------------------

JSON_PALETTE: tuple[Any, ...] = (None, 0, 1, -1, 1.5, 10**30, True, "", "x", "====", "@@",
                                 "AAAA", [], {}, [None], {"a": 1}, "tcms-evidence/1",
                                 "tcms-trust/1", "sender", "receiver", "a" * 5000)


def _inner(r: random.Random, raw: bytes, ctx: Context) -> bytes:
    if raw[:1] == b"\x30" and r.random() < 0.5:
        out = der_tree(r, raw, ctx)
    elif raw and raw[0] >> 5 == 4 and r.random() < 0.7:
        out = cbor_tree(r, raw, ctx)
    else:
        out = None
    return out if out is not None else havoc(r, raw, ctx)


def _mutate_json(r: random.Random, value: Any, ctx: Context, others: list[Any]) -> Any:
    if not isinstance(value, dict) or not value:
        return r.choice(JSON_PALETTE) if r.random() < 0.3 else value
    keys = list(value)
    key = r.choice(keys)
    item = value[key]
    op = r.randrange(10)
    if op < 4 and isinstance(item, str):
        try:
            raw = base64.b64decode(item, validate=True)
        except (ValueError, binascii.Error):
            raw = None
        if raw is not None:  # the item as what it holds: CBOR, DER or bytes
            value[key] = base64.b64encode(_inner(r, raw, ctx)).decode()
            return value
    if op < 5 and isinstance(item, dict):
        value[key] = _mutate_json(r, item, ctx, others)
    elif op == 5:
        del value[key]
    elif op == 6:
        value[r.choice((key + "_", key.upper(), "extra", ""))] = item
    elif op == 7 and len(keys) > 1:
        other = r.choice(keys)
        value[key], value[other] = value[other], item
    elif op == 8 and others:
        donor = r.choice(others)
        if isinstance(donor, dict) and donor:
            k = r.choice(list(donor))
            value[k] = donor[k]
    else:
        value[key] = _copy(r.choice(JSON_PALETTE))
    return value


def json_tree(r: random.Random, data: bytes, ctx: Context) -> bytes | None:
    """``data`` read as JSON, one field changed: a base64 item mutated as the CBOR or DER
    it holds, a field dropped, renamed, swapped, taken from another corpus item, or given
    another type; sometimes a field written twice (the text a duplicate-key reader sees)."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    others = []
    for item in ctx.corpus[:8]:
        try:
            others.append(json.loads(item))
        except ValueError:
            continue
    for _ in range(r.choice((1, 1, 2, 3))):
        value = _mutate_json(r, value, ctx, others)
    text = json.dumps(value, indent=r.choice((None, 1)))
    if isinstance(value, dict) and value and r.random() < 0.1:  # a name twice
        key = r.choice(list(value))
        text = "{" + json.dumps(key) + ": " + json.dumps(r.choice(JSON_PALETTE)) + ", " \
            + text.lstrip()[1:]
    return text.encode()


# --- lines ----------------------------------------------------------------------------------


def lines(r: random.Random, data: bytes, ctx: Context) -> bytes | None:
    """Whole lines dropped, doubled, swapped, moved, taken from another corpus item or from
    the dictionary (mail headers, TOML keys, IMAP commands)."""
    ls = data.splitlines(keepends=True)
    if not ls:
        return None
    for _ in range(r.choice((1, 1, 2, 3))):
        i = r.randrange(len(ls))
        op = r.randrange(6)
        if op == 0 and len(ls) > 1:
            del ls[i]
        elif op == 1:
            ls.insert(i, ls[i] * r.choice((1, 1, 2, 50)))
        elif op == 2:
            j = r.randrange(len(ls))
            ls[i], ls[j] = ls[j], ls[i]
        elif op == 3 and ctx.corpus:
            donor = r.choice(ctx.corpus).splitlines(keepends=True)
            if donor:
                ls[i] = r.choice(donor)
        elif op == 4 and ctx.dictionary:
            ls.insert(i, bytes(r.choice(ctx.dictionary)) + b"\r\n")
        else:
            ls[i] = havoc(r, ls[i], ctx)
        if not ls:
            return b""
    return b"".join(ls)


Structure = Callable[[random.Random, bytes, Context], "bytes | None"]


def mutate(r: random.Random, data: bytes, ctx: Context, structure: Sequence[Structure],
           prefix: int = 0) -> bytes:
    """One input from ``data``: a structure-aware step (when the entry point has one),
    byte-level havoc, or both.  The first ``prefix`` bytes (a selector) are mostly kept
    and the rest mutated as what it is."""
    if prefix and r.random() < 0.9:
        return data[:prefix] + mutate(r, data[prefix:], ctx, structure)
    roll = r.random()
    if structure and roll < 0.6:
        out = r.choice(structure)(r, data, ctx)
        if out is not None:
            return havoc(r, out, ctx) if roll < 0.1 else out
    return havoc(r, data, ctx)
