"""Every endpoint of the TSS, TTP and DC, fuzzed from its own OpenAPI spec by schemathesis
against a real `tcms serve all` process: no input may cause a 5xx, and every 4xx is a JSON
error that names what was wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import DEADLINES, one, start_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from services import Services, prepare_keys

from tcms import codec
from tcms.protocol.events import Tick
from tcms.timestamp import make_request


def _flipped(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    """A valid message with one byte changed."""
    return st.tuples(st.sampled_from(valid), st.integers(0, 10_000), st.integers(1, 255)).map(
        lambda t: t[0][:t[1] % len(t[0])] + bytes([t[0][t[1] % len(t[0])] ^ t[2]])
        + t[0][t[1] % len(t[0]) + 1:])


def _seed_messages() -> list[bytes]:
    run = start_run()
    abort = one(run.sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    return [run.m3, abort, codec.encode(["TCMS1/DC-PUBLISH", "a.test", 1, 2, 3, 4, b"x"])]


SEEDS = _seed_messages()
TAGS = st.sampled_from(["TCMS1/ABORT-REQ", "TCMS1/RESOLVE-REQ", "TCMS1/DC-PUBLISH",
                        "TCMS1/DC-REVOKE", "TCMS1/M1", "TCMS1/M3"])
LEAVES = st.none() | st.booleans() | st.integers(-5, 2**40) | st.binary(max_size=40) \
    | st.text(max_size=20)
CBOR_BODIES = (st.binary(max_size=300)
               | st.tuples(TAGS, st.lists(st.recursive(LEAVES, lambda c: st.lists(c, max_size=4),
                                                      max_leaves=12), max_size=10))
               .map(lambda t: codec.encode([t[0], *t[1]]))
               | _flipped(SEEDS))
QUERIES = st.binary(max_size=200) | _flipped([make_request(b"\x01" * 32)[0]])
schemathesis.openapi.media_type("application/cbor", CBOR_BODIES)
schemathesis.openapi.media_type("application/timestamp-query", QUERIES)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    prepare_keys(workdir / "keys")
    svc = Services(workdir, f"sqlite:///{workdir / 'fuzz.db'}").start()
    yield svc
    svc.stop()


def check(case: object, seen: list[int]) -> None:
    response = case.call()  # type: ignore[attr-defined]
    seen.append(response.status_code)
    assert response.status_code < 500, (case, response.status_code, response.text[:300])
    if 400 <= response.status_code < 500:
        body = response.json()
        assert body.get("error") and body.get("reason"), body


@pytest.mark.parametrize("service", ["tss", "ttp", "dc"])
def test_every_operation_survives_generated_input(running: Services, service: str) -> None:
    schema = schemathesis.openapi.from_url(getattr(running, service) + "/openapi.json")
    operations = [result.ok() if isinstance(result, Ok) else pytest.fail(str(result.err()))
                  for result in schema.get_all_operations()]
    assert len(operations) >= 3
    seen: list[int] = []
    for operation in operations:
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(case=operation.as_strategy())
        def fuzz(case: object) -> None:
            check(case, seen)

        fuzz()
    # the generated requests really reached the handlers: both answers and refusals
    assert len(seen) >= 10 * len(operations)
    assert any(200 <= c < 300 for c in seen) and any(400 <= c < 500 for c in seen)
