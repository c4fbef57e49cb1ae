"""The operations sections of the configuration: ``[metrics]`` (the Prometheus endpoint)
and ``[retention]`` (how long the gateway keeps mail, ciphertext, evidence and audit
entries).  tcms/config.py puts them in ``Settings``; docs/operations.md explains them."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import BaseModel, field_validator, model_validator

_PERIOD = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo|y)?\s*$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
          "mo": 2_629_800, "y": 31_557_600}  # a month is 30.4375 days, a year 365.25
MONTH = _UNITS["mo"]


def parse_period(value: Any, *, allow_zero: bool = True) -> int:
    """Seconds from an int or a string like ``0``, ``12h``, ``30d``, ``6w``, ``30mo``,
    ``10y`` (``m`` is minutes, ``mo`` months)."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (m := _PERIOD.match(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("must be a period such as 0, 12h, 30d, 6w, 30mo or 10y" if allow_zero
                         else "must be a duration such as 90, 15m, 12h or 3d")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("must be positive" if not allow_zero else "must not be negative")
    return seconds


class MetricsConfig(BaseModel):
    """A Prometheus endpoint (``GET /metrics``) of its own, per process: off unless
    ``listen`` is set; on a loopback address unless ``public`` says otherwise."""

    listen: str = ""  # e.g. "127.0.0.1:9464"; empty: no endpoint
    public: bool = False  # allow a non-loopback listen address

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        v = v.strip()
        return check_host_port(v, " (or empty: no metrics endpoint)") if v else v

    @model_validator(mode="after")
    def _loopback(self) -> MetricsConfig:
        if self.listen and not self.public and not is_loopback(self.host):
            raise ValueError(f"metrics.listen {self.listen} is not a loopback address: "
                             "metrics are for the operator's monitoring; set "
                             "metrics.public = true to serve them there anyway")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def check_host_port(v: str, hint: str = "") -> str:
    """``v`` if it is HOST:PORT; ValueError otherwise."""
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"must be HOST:PORT{hint}")
    return v


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RetentionConfig(BaseModel):
    """How long the gateway keeps what it stores, counted from the moment an exchange is
    final (every run of it has ended) or, for the audit log, from the entry's time.
    ``0`` for ``cleartext``: not past that moment; for ``audit``: for ever."""

    # the mail as the user submitted it (submissions.raw), once its exchanges are final
    cleartext: int = 0
    # protocol messages as sent and received (m1-m6, TTP answers: the messages log, the
    # raw protocol mail the intake kept), once the exchange is final
    ciphertext: int = 30 * MONTH
    # the exchange itself: its runs (the state every evidence bundle is built from,
    # `tcms tx export`), stored bundles, outbox rows, the submission row
    evidence: int = 30 * MONTH
    # the hash-chained audit log (0: kept for ever); the chain stays verifiable
    audit: int = 0
    # how often a running gateway purges on its own (0: only `tcms tx purge`)
    interval: int = 3600

    @field_validator("cleartext", "ciphertext", "audit", "interval", mode="before")
    @classmethod
    def _period(cls, v: Any) -> int:
        return parse_period(v)

    @field_validator("evidence", mode="before")
    @classmethod
    def _evidence(cls, v: Any) -> int:
        return parse_period(v, allow_zero=False)

    @model_validator(mode="after")
    def _order(self) -> RetentionConfig:
        if not self.cleartext <= self.evidence or not self.ciphertext <= self.evidence:
            raise ValueError("retention.cleartext and retention.ciphertext must not be "
                             "longer than retention.evidence (the exchange goes with its "
                             "evidence)")
        return self
