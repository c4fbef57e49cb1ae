"""The token buckets that limit disputes per client address (tcms/ratelimit.py)."""

from __future__ import annotations

import pytest

from tcms.ratelimit import RateLimiter


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.1, burst=3, clock=clock)  # 6 per minute
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0  # another address has its own bucket
    clock.now += 5
    assert limiter.take("a") == pytest.approx(5.0)  # a refused request takes nothing
    clock.now += 5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(10.0)
    clock.now += 3600
    assert [limiter.take("a") for _ in range(4)][-2:] == [0.0, pytest.approx(10.0)]
    assert RateLimiter.retry_after(0.2) == "1" and RateLimiter.retry_after(10.0) == "10"


def test_the_table_of_clients_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.001, burst=1, max_clients=100, clock=clock)
    assert limiter.take("first") == 0.0
    for i in range(1000):
        limiter.take(f"client{i}")
    assert len(limiter._buckets) == 100
    assert limiter.take("client999") > 0  # the recent ones are remembered
    assert limiter.take("first") == 0.0  # the oldest was forgotten: a full bucket again
