"""Configuration: one TOML file, every value overridable by an environment variable.

Lookup order (first wins): environment (``TCMS_<SECTION>__<KEY>``, e.g.
``TCMS_DATABASE__URL``), the TOML file (``--config`` or ``TCMS_CONFIG``, default
``config/tcms.toml`` when it exists), built-in defaults.  Everything is validated at start;
each wrong value gets its own line in the error.  No value may nest deeper than
MAX_NESTING levels (checked before an environment value is decoded, and on the TOML file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tcms import boundedjson
from tcms.config_ops import MetricsConfig, RetentionConfig, check_host_port, parse_period
from tcms.identity import party_name_error
from tcms.mailconfig import MailConfig

DEFAULT_FILE = Path("config/tcms.toml")
# No value of the configuration nests more than a level or two; a deeper one is refused
# before it is decoded (a JSON or TOML reader recursing on it would run out of stack).
MAX_NESTING = 32


class ConfigError(Exception):
    """The configuration is invalid; the message lists every problem, one per line."""


def parse_duration(value: Any) -> int:
    """Seconds, more than none, from an int or a string like ``90``, ``15m``, ``12h``,
    ``3d`` (the units of ``parse_period``)."""
    return parse_period(value, allow_zero=False)


class DatabaseConfig(BaseModel):
    url: str = "sqlite:///var/tcms.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


class KeysConfig(BaseModel):
    dir: Path = Path("var/keys")
    passphrase: str | None = Field(default=None, repr=False)
    passphrase_file: Path | None = None

    def get_passphrase(self) -> bytes:
        if self.passphrase:
            return self.passphrase.encode()
        if self.passphrase_file:
            return self.passphrase_file.read_bytes().strip()
        raise ConfigError("keys: no passphrase: set TCMS_KEYS__PASSPHRASE or "
                          "keys.passphrase_file (private keys are encrypted at rest)")


class ProtocolConfig(BaseModel):
    """Windows from the time of submission: how long R has to accept, and the later
    deadlines of the exchange (each counted from the previous one)."""

    accept_window: int = 3 * 86400
    m5_window: int = 3600
    m6_window: int = 3600
    resolve_window: int = 7 * 86400
    cipher: str = "tsrg-modern"

    @field_validator("cipher")
    @classmethod
    def _known_cipher(cls, v: str) -> str:
        if v not in ("tsrg-modern", "aes256gcm"):
            raise ValueError("must be tsrg-modern or aes256gcm")
        return v

    @field_validator("accept_window", "m5_window", "m6_window", "resolve_window",
                     mode="before")
    @classmethod
    def _duration(cls, v: Any) -> int:
        return parse_duration(v)


class ServiceConfig(BaseModel):
    """Where a service listens; TLS when both a certificate and a key are given."""

    listen: str = "127.0.0.1:0"
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        return check_host_port(v)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for p in (self.tls_cert, self.tls_key):
            if p is not None and not p.exists():
                raise ValueError(f"{p} does not exist")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class TssConfig(ServiceConfig):
    listen: str = "127.0.0.1:8301"
    name: str = "TCMS Time Stamping Server"
    url: str = "http://127.0.0.1:8301"


class TtpConfig(ServiceConfig):
    listen: str = "127.0.0.1:8302"
    identity: str = "ttp@tcms.local"
    url: str = "http://127.0.0.1:8302"
    # POST /dispute (docs/disputes.md): the largest bundle, and per client address a token
    # bucket of dispute_burst filings refilled at dispute_per_minute; at most
    # dispute_concurrency bundles are read and verified at once
    dispute_max_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    dispute_per_minute: float = Field(default=6.0, gt=0)
    dispute_burst: int = Field(default=3, ge=1)
    dispute_concurrency: int = Field(default=2, ge=1)


class DcConfig(ServiceConfig):
    listen: str = "127.0.0.1:8303"
    identity: str = "dc@tcms.local"
    url: str = "http://127.0.0.1:8303"
    updates_dir: Path = Path("var/updates")


class GatewayConfig(BaseModel):
    """The gateway's listeners (TLS on every one) and the real mail servers behind it."""

    submission: str = "127.0.0.1:8587"  # STARTTLS required
    smtps: str = "127.0.0.1:8465"  # implicit TLS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstream_smtp: str = "127.0.0.1:25"
    upstream_imap: str = "127.0.0.1:143"
    upstream_imap_tls: Literal["none", "tls"] = "none"  # tls: implicit TLS (port 993)
    upstream_smtp_tls: Literal["none", "starttls"] = "none"  # starttls: required
    upstream_ca_file: Path | None = None  # CA to verify them (default: the system's)
    # processes serving the submission and smtps ports (SO_REUSEPORT): the first runs
    # everything else too; the others only take mail (tcms/cli.py serve gateway)
    workers: int = Field(default=1, ge=1, le=64)
    max_message_size: int = 50 * 1024 * 1024
    # recipients per mail, as Postfix's smtpd_recipient_limit; more get 452
    max_recipients: int = Field(default=1000, ge=1, le=100_000)
    tag: str = "[certified]"
    # who the gateway is and whom it serves
    identity: str = "gateway@tcms.local"  # its own key: signs DC requests and notices
    domains: list[str] = Field(default_factory=list)  # the mail domains it certifies for
    # the upstream IMAP server's master user (Dovecot: user*master), to open users' mailboxes
    master_user: str = "tcms"
    master_password: str | None = Field(default=None, repr=False)
    master_password_file: Path | None = None
    master_separator: str = "*"
    # what it trusts: a tcms-trust/1 file (the TTP's /identity) and the DC's public keys
    # (`tcms keys export`); unset: the public files of [ttp]/[dc] identity in [keys] dir
    trust_file: Path | None = None
    dc_key_file: Path | None = None
    # seconds between looks for work (kicked sooner locally)
    poll_interval: float = Field(default=5.0, ge=0.05, le=3600)
    # the intake: the MTA hands protocol mail for <protocol_address>@<domain> to this LMTP
    # listener (Postfix: one transport_maps line); only these MTA hosts may connect
    intake: str = "127.0.0.1:8024"
    intake_clients: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    protocol_address: str = "tcms-gateway"  # local part; registered at the DC per domain
    # units of work: tries before an item is quarantined (`tcms queue`)
    max_attempts: int = Field(default=10, ge=1, le=100)
    # this gateway instance's name among replicas (default: host name and submission
    # address); a restarted instance takes back the work it held when it stopped
    instance: str = ""
    # how often the accept/refuse folders of a user with a pending notice are looked at
    # when their client files it without the IMAP proxy (the proxy triggers a look at once)
    answer_poll_interval: float = Field(default=60.0, ge=0.05, le=3600)
    # where the organisation's delivery (e.g. a Sieve rule on the TCMS-Message header) files
    # protocol mail; the IMAP proxy hides it.  INBOX is read too, for mail filed nowhere.
    protocol_folder: str = "TCMS"
    imap_proxy: str = "127.0.0.1:8143"  # STARTTLS
    imaps_proxy: str = "127.0.0.1:8993"  # implicit TLS

    @field_validator("submission", "smtps", "upstream_smtp", "upstream_imap", "imap_proxy",
                     "imaps_proxy", "intake")
    @classmethod
    def _host_port(cls, v: str) -> str:
        return ServiceConfig._host_port(v)

    @field_validator("protocol_folder")
    @classmethod
    def _folder(cls, v: str) -> str:
        if not v or v.upper() == "INBOX" or any(c in v for c in "\"*%\r\n"):
            raise ValueError("must be a plain folder name other than INBOX")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = [d.strip().lower() for d in v]
        if any(not d or "@" in d or " " in d for d in out):
            raise ValueError("must be mail domains such as example.org")
        return out

    @field_validator("protocol_address")
    @classmethod
    def _protocol_local(cls, v: str) -> str:
        v = v.strip().lower()
        if "@" in v or party_name_error(f"{v}@example.org") is not None:
            raise ValueError("must be the local part of an address, e.g. tcms-gateway")
        return v

    def protocol_addresses(self) -> dict[str, str]:
        """The gateway's protocol address in each of its domains."""
        return {d: f"{self.protocol_address}@{d}" for d in self.domains}

    def get_master_password(self) -> str:
        if self.master_password:
            return self.master_password
        if self.master_password_file:
            return self.master_password_file.read_text().strip()
        raise ConfigError("gateway: no master password for the upstream IMAP server: set "
                          "TCMS_GATEWAY__MASTER_PASSWORD or gateway.master_password_file")

    @staticmethod
    def split(v: str) -> tuple[str, int]:
        host, _, port = v.rpartition(":")
        return host, int(port)


class LoggingConfig(BaseModel):
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TCMS_", env_nested_delimiter="__",
                                      extra="forbid")

    database: DatabaseConfig = DatabaseConfig()
    keys: KeysConfig = KeysConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    tss: TssConfig = TssConfig()
    ttp: TtpConfig = TtpConfig()
    dc: DcConfig = DcConfig()
    gateway: GatewayConfig = GatewayConfig()
    mail: MailConfig = MailConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    retention: RetentionConfig = RetentionConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        p = self.protocol
        if p.resolve_window < p.m5_window:
            raise ValueError("protocol.resolve_window must be at least protocol.m5_window")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("_TCMS_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, _BoundedEnv(settings_cls)]
        if toml_file:
            sources.append(_BoundedToml(settings_cls, toml_file=toml_file))
        return tuple(sources)


class _BoundedEnv(EnvSettingsSource):
    """The environment, each value that is decoded as JSON (a list, or a whole section)
    checked for nesting first: a ConfigError naming the variable instead of recursion."""

    def decode_complex_value(self, field_name: str, field: FieldInfo,
                             value: Any) -> Any:
        if isinstance(value, str):
            raw = value.encode(errors="replace")
            try:  # every item takes a byte at least: only the depth is bounded here
                boundedjson.check_shape(raw, max_depth=MAX_NESTING, max_items=len(raw))
            except boundedjson.JsonRefused as exc:
                names = [k for k, v in os.environ.items()
                         if v == value and k.upper().startswith("TCMS_")]
                where = names[0] if names else f"the value for {field_name}"
                raise ConfigError(f"invalid configuration (environment): {where}: "
                                  f"{exc.reason}") from None
        return super().decode_complex_value(field_name, field, value)


def _nesting(value: Any) -> int:
    """How deeply tables and arrays nest in ``value`` (counted without recursion, and only
    up to one level past MAX_NESTING)."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= MAX_NESTING:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in children)
    return deepest


class _BoundedToml(TomlConfigSettingsSource):
    """The TOML file, refused with a ConfigError if it nests deeper than MAX_NESTING (the
    reader recurses once per level, so a deep enough value would exhaust the stack)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except RecursionError:
            data = None
        if data is None or _nesting(data) > MAX_NESTING:
            raise ConfigError(f"invalid configuration ({file_path}): a value is nested deeper "
                              f"than {MAX_NESTING} levels")
        return data


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        env = "TCMS_" + "__".join(str(p).upper() for p in err["loc"])
        lines.append(f"  {where}: {msg} (got {err.get('input')!r:.60}; env {env})")
    return "\n".join(lines)


def load(path: str | Path | None = None) -> Settings:
    """Load and validate the configuration; raise ConfigError with every problem listed."""
    file = Path(path) if path else (
        Path(os.environ["TCMS_CONFIG"]) if os.environ.get("TCMS_CONFIG") else None)
    if file is None and DEFAULT_FILE.exists():
        file = DEFAULT_FILE
    if file is not None and not file.exists():
        raise ConfigError(f"configuration file {file} does not exist")
    source = str(file) if file else "defaults and environment"
    for name in os.environ:  # pydantic-settings nests a value once per "__" in its name
        if name.upper().startswith("TCMS_") and name.count("__") > MAX_NESTING:
            raise ConfigError(f"invalid configuration (environment): {name[:60]}...: "
                              f"the name nests deeper than {MAX_NESTING} levels")
    old = os.environ.get("_TCMS_CONFIG_FILE")
    try:
        if file:
            os.environ["_TCMS_CONFIG_FILE"] = str(file)
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"invalid configuration ({source}): {exc}") from None
    finally:
        if old is None:
            os.environ.pop("_TCMS_CONFIG_FILE", None)
        else:
            os.environ["_TCMS_CONFIG_FILE"] = old
