"""Serialisation of machine state for the store (not signed data: plain CBOR maps)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import cbor2

S = TypeVar("S")


def dump_state(state: Any) -> bytes:
    return bytes(cbor2.dumps(dataclasses.asdict(state)))


def load_state(cls: type[S], data: bytes) -> S:
    raw = cbor2.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("stored state is not a map")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in names})
