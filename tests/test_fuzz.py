"""The fuzz suite, bounded (issue 11): a few hundred mutated inputs for every entry point
that takes untrusted bytes (tests/fuzzing/targets.py); none may raise anything but the
entry point's named errors.  bench/fuzz.py runs the whole campaign (10^6 inputs).

TCMS_FUZZ_INPUTS sets the inputs per entry point, TCMS_FUZZ_SEED the seed; a failure shows
each distinct finding with its reproducer (the input's hex, for bench/fuzz.py --replay)."""

from __future__ import annotations

import logging
import os

import pytest
from fuzzing import campaign
from fuzzing.targets import ENTRY_POINTS, EntryPoint

INPUTS = int(os.environ.get("TCMS_FUZZ_INPUTS", "300"))
SEED = int(os.environ.get("TCMS_FUZZ_SEED", "11"))


@pytest.fixture(autouse=True)
def quiet() -> object:
    """The gateway logs every rejected message; hundreds of them are noise here."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.name)
def test_mutated_inputs_raise_only_named_errors(entry: EntryPoint) -> None:
    report = campaign.run(entry, INPUTS, SEED)
    assert report.inputs == INPUTS
    assert report.unexpected == 0, report.describe()


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.name)
def test_the_seeds_are_valid_inputs(entry: EntryPoint) -> None:
    """Mutation starts from inputs the target accepts: most seeds go through without any
    error (so mutated ones reach the checks behind the parser), and mutation refuses some
    (so the named errors are really reached)."""
    seeds = entry.seeds()
    harness = entry.open()
    try:
        refused = []
        for data in seeds:
            try:
                harness(data)
            except entry.expected as exc:
                refused.append(f"{type(exc).__name__}: {exc}")
    finally:
        harness.close()
    assert len(refused) <= len(seeds) // 2, refused
    if entry.expected:
        report = campaign.run(entry, 100, SEED, start=len(seeds))
        assert report.expected > 0 and report.unexpected == 0, report.describe()


def test_the_same_seed_makes_the_same_inputs() -> None:
    entry = ENTRY_POINTS[1]
    seeds = entry.seeds()
    ctx = entry.context(seeds)
    first = [campaign.input_at(entry, seeds, ctx, 5, i) for i in range(50)]
    again = [campaign.input_at(entry, seeds, entry.context(seeds), 5, i) for i in range(50)]
    other = [campaign.input_at(entry, seeds, ctx, 6, i) for i in range(50)]
    assert first == again and first != other
    assert first[:len(seeds)] == seeds and len(set(first)) > 40


def test_an_unexpected_exception_is_reported_with_its_reproducer() -> None:
    """The suite can fail: a target that crashes on some inputs is caught with the input."""
    base = ENTRY_POINTS[1]

    def crashing(data: bytes) -> None:
        if len(data) % 3 == 0:
            raise IndexError("boom")
        base.open()(data)

    from dataclasses import replace

    from fuzzing.targets import simple

    entry = replace(base, name="crashing", open=simple(crashing))
    report = campaign.run(entry, 60, SEED)
    assert report.unexpected > 0
    text = report.describe()
    (found,) = report.findings.values()
    assert "IndexError: boom" in text and found[0].data.hex()[:64] in text
    assert "test_fuzz.py" in found[0].where
