"""[mail]: the mails the gateway writes to its users (notices, receipts, status mails).

- ``signing_cert`` / ``signing_key``: the gateway's S/MIME certificate, issued by the
  organisation's CA for ``postmaster@<domain>`` of each of its domains (PEM; the file may go
  on with intermediate CA certificates), and its private key, PKCS#8 PEM encrypted with
  the keys passphrase.  Unset: ``<keys.dir>/mail-signing-cert.pem`` and
  ``<keys.dir>/mail-signing-key.pem`` (`tcms mail csr`, or `tcms mail issue` with a
  demo CA).  Every such mail is signed: the gateway does not start without them.
- ``templates``: a directory of the organisation's templates, ``<language>/<name>``,
  each overriding the shipped one of the same name (docs/mail.md).
- ``language``: the language of users named nowhere else (``en``, ``it`` shipped);
  ``languages``: per user address or per domain, e.g. ``{"example.it" = "it",
  "mario@example.org" = "it"}`` (an address wins over its domain).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")


def _language(v: str) -> str:
    v = v.strip().lower()
    if not LANGUAGE.match(v):
        raise ValueError(f"{v!r} is not a language tag such as en or it")
    return v


class MailConfig(BaseModel):
    signing_cert: Path | None = None
    signing_key: Path | None = None
    templates: Path | None = None
    language: str = "en"
    languages: dict[str, str] = Field(default_factory=dict)

    @field_validator("language")
    @classmethod
    def _default_language(cls, v: str) -> str:
        return _language(v)

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for who, lang in v.items():
            who = who.strip().lower()
            if not who or " " in who or who.startswith("@") or who.endswith("@"):
                raise ValueError(f"{who!r}: keys are user addresses or mail domains")
            out[who] = _language(lang)
        return out

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{v} is not a directory")
        return v

    def signing_files(self, keys_dir: Path) -> tuple[Path, Path]:
        return (self.signing_cert or keys_dir / "mail-signing-cert.pem",
                self.signing_key or keys_dir / "mail-signing-key.pem")
