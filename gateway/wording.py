"""The organisation's words: the notices, receipts and status mails as jinja2 templates.

Templates live in one directory per language (``en``, ``it`` shipped in
gateway/templates/); an organisation overrides any of them by putting a file of the same
name in its own directory (``mail.templates``), or adds a language there.  Per language:

- ``subject.txt``: the Subject of every kind of mail (``kind`` says which);
- ``notice.txt`` / ``notice.html``: the notice of a sealed certified mail;
- ``receipt.txt`` / ``receipt.html``: the sender's receipt;
- ``status.txt`` / ``status.html``: the status mails (``kind``: submitted, refused,
  aborted, failed, expired, withdrawn, uncertifiable).

HTML templates are autoescaped; every template runs in jinja2's sandbox and an undefined
name is an error.  ``check`` renders each template of each configured language once at
start, so a broken override stops the gateway before it writes a single mail.  The
original mail is never rendered through a template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

SHIPPED = Path(__file__).parent / "templates"
KINDS = ("notice", "receipt", "status")
STATUS_KINDS = ("submitted", "refused", "aborted", "failed", "expired", "withdrawn",
                "uncertifiable")
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")


class WordingError(Exception):
    """A template is missing, does not parse, or fails to render; says which."""


@dataclass(frozen=True)
class Words:
    subject: str
    text: str
    html: str


SAMPLES: dict[str, dict[str, Any]] = {
    "notice": {"sender": "alice@example.org", "owner": "bob@example.org", "subject": "S",
               "size": 1, "stamped": "2026-01-01 00:00:00 UTC",
               "accept_by": "2026-01-04 00:00:00 UTC", "tx": "0" * 32,
               "accept_folder": "Certified.Accept", "refuse_folder": "Certified.Refuse",
               "accept_address": "tcms+accept@example.org",
               "refuse_address": "tcms+refuse@example.org"},
    "receipt": {"owner": "alice@example.org", "peer": "bob@example.org", "subject": "S",
                "tx": "0" * 32, "verdict": "received", "statements": ["s"],
                "evidence_file": "evidence.json", "summary_file": "certdata.json"},
    "status": {"owner": "alice@example.org", "peer": "bob@example.org", "subject": "S",
               "tx": "0" * 32, "detail": "d", "evidence_file": None, "summary_file": None},
}


class Wording:
    """The templates of the shipped languages and of the organisation's directory."""

    def __init__(self, override: Path | None = None) -> None:
        paths = ([str(override)] if override is not None else []) + [str(SHIPPED)]
        if override is not None and not override.is_dir():
            raise WordingError(f"mail.templates: {override} is not a directory")
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(paths),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                                default_for_string=False, default=False),
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        self.languages = sorted({p.name for root in paths for p in Path(root).iterdir()
                                 if p.is_dir() and LANGUAGE.match(p.name)})

    def _render(self, name: str, values: dict[str, Any]) -> str:
        try:
            return self.env.get_template(name).render(values)
        except jinja2.TemplateNotFound:
            raise WordingError(f"no template {name} (shipped or in mail.templates)") from None
        except jinja2.TemplateSyntaxError as exc:
            raise WordingError(f"template {exc.filename or name}, line {exc.lineno}: "
                               f"{exc.message}") from None
        except jinja2.TemplateError as exc:
            raise WordingError(f"template {name}: {exc}") from None

    def render(self, lang: str, kind: str, values: dict[str, Any]) -> Words:
        """The subject, the text and the HTML of one mail; ``kind`` is notice, receipt or a
        status kind."""
        base = kind if kind in KINDS else "status"
        values = {**values, "kind": kind, "lang": lang}
        subject = self._render(f"{lang}/subject.txt", values)
        return Words(" ".join(subject.split()), self._render(f"{lang}/{base}.txt", values),
                     self._render(f"{lang}/{base}.html", values))

    def check(self, languages: list[str]) -> None:
        """Render every kind of mail in each of ``languages`` with sample values."""
        for lang in languages:
            if lang not in self.languages:
                raise WordingError(f"no templates for the language {lang!r} (there are: "
                                   f"{', '.join(self.languages)})")
            for kind in ("notice", "receipt", *STATUS_KINDS):
                sample = SAMPLES[kind if kind in KINDS else "status"]
                self.render(lang, kind, sample)


def language_of(address: str, default: str, languages: dict[str, str]) -> str:
    """The language of a user: theirs, else their domain's, else the default."""
    address = address.strip().lower()
    return languages.get(address) or languages.get(address.rsplit("@", 1)[-1]) or default
