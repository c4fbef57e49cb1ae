"""Configuration loading and validation; identities, the keystore and `tcms keys`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from mailstack import PATIENCE

from tcms import config
from tcms.identity import Identity, Party, party_name_error
from tcms.keystore import Keystore, KeystoreError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tcms.toml"
    p.write_text(text)
    return p


def test_defaults_and_example_file_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TCMS_CONFIG", raising=False)
    s = config.load(ROOT / "config" / "tcms.example.toml")
    assert s.database.url == "sqlite:///var/tcms.db"
    assert s.protocol.accept_window == 3 * 86400 and s.protocol.m5_window == 3600


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path, '[database]\nurl = "sqlite:///a.db"\n[protocol]\naccept_window = "2h"\n')
    monkeypatch.setenv("TCMS_DATABASE__URL", "postgresql://u@h/db")
    monkeypatch.setenv("TCMS_PROTOCOL__M5_WINDOW", "15m")
    s = config.load(f)
    assert s.database.url == "postgresql://u@h/db"
    assert s.protocol.accept_window == 7200 and s.protocol.m5_window == 900


def test_every_wrong_value_is_reported(tmp_path: Path) -> None:
    f = write(tmp_path, '[database]\nurl = "mysql://x"\n[protocol]\naccept_window = "soon"\n'
                        'm6_window = -5\n[logging]\nlevel = "LOUD"\n')
    with pytest.raises(config.ConfigError) as e:
        config.load(f)
    msg = str(e.value)
    for where in ("database.url", "protocol.accept_window", "protocol.m6_window",
                  "logging.level"):
        assert where in msg
    assert "TCMS_PROTOCOL__ACCEPT_WINDOW" in msg  # says how to override it


def test_unknown_keys_and_bad_toml_are_errors(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="databse"):
        config.load(write(tmp_path, '[databse]\nurl = "sqlite:///x"\n'))
    with pytest.raises(config.ConfigError, match="invalid configuration"):
        config.load(write(tmp_path, "[database\nurl=\n"))
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")


def test_max_recipients_defaults_to_postfixs_limit_and_is_checked(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "")).gateway.max_recipients == 1000
    assert config.load(write(tmp_path, "[gateway]\nmax_recipients = 50\n")
                       ).gateway.max_recipients == 50
    for bad in ("0", "100001", '"many"'):
        with pytest.raises(config.ConfigError, match=r"gateway\.max_recipients"):
            config.load(write(tmp_path, f"[gateway]\nmax_recipients = {bad}\n"))


def test_inconsistent_windows(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="resolve_window"):
        config.load(write(tmp_path, '[protocol]\nm5_window = "2d"\nresolve_window = "1d"\n'))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("15m", 900), ("12h", 43200),
                                               ("3d", 259200), (42, 42)])
def test_durations(text: str | int, seconds: int) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", 0, "-5", "5x", "", True, 1.5, "m"])
def test_a_duration_is_positive_and_says_what_it_expects(text: object) -> None:
    with pytest.raises(ValueError, match=r"must be (positive|a duration such as 90)"):
        config.parse_duration(text)


# --- identities and keystore ---------------------------------------------------------------


def test_identity_names_and_fingerprints() -> None:
    a = Identity.from_seed("Alice@A.Test ", b"s" * 32)
    assert a.name == "alice@a.test"
    assert a.party.fingerprint == Identity.from_seed("alice@a.test", b"s" * 32).party.fingerprint
    assert a.party.fingerprint != Identity.from_seed("alice@a.test", b"t" * 32).party.fingerprint
    assert Party.from_json(a.party.to_json()) == a.party
    with pytest.raises(ValueError, match="fingerprint"):
        Party.from_json({**a.party.to_json(), "fingerprint": "00"})
    with pytest.raises(ValueError):
        Identity.generate("has space@a.test")


@pytest.mark.parametrize("name", [
    "alice@a.test", "Alice.Smith@A.Test", "bob+tag@b.test", "x@localhost", "o'brien@x.org",
    "a-b_c=d!$&*^`{|}~@sub-1.example.org", "a" * 64 + "@" + ("b" * 63 + ".") * 2 + "c" * 60,
])
def test_party_names_that_are_valid(name: str) -> None:
    assert party_name_error(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ('"x y"@b.test', "space (U+0020)"), ("a\tb@b.test", "control character (U+0009)"),
    ('"xy"@b.test', "quoted local part"),
    ("a\x00b@b.test", "control character (U+0000)"),
    ("a\rb@b.test", "control character (U+000D)"),
    ("a\x7fb@b.test", "control character (U+007F)"),
    ("a\u2028b@b.test", "control character (U+2028)"),
    ("grüße@b.test", "non-ASCII character (U+00FC)"),
    ("alice@a.test?format=json", "'?', which a domain name may not hold"),
    ("a?b@b.test", "'?', which a party name may not hold"),
    ("a/b@b.test", "'/'"), ("a%b@b.test", "'%'"), ("a#b@b.test", "'#'"),
    ("a(b)@b.test", "'('"), ("a\\b@b.test", "'\\'"),
    ("ab.test", "exactly one @"), ("a@b@b.test", "exactly one @"),
    ("@b.test", "local part (before the @) is empty"), ("a@", "domain (after the @) is empty"),
    (".a@b.test", "dot"), ("a.@b.test", "dot"), ("a..b@b.test", "dot"),
    ("a@[127.0.0.1]", "address literal"), ("a@b..test", "empty label"),
    ("a@b.test.", "empty label"), ("a@-b.test", "hyphen"), ("a@b_c.test", "'_'"),
    ("a" * 65 + "@b.test", "local part is longer than 64"),
    ("a@" + "b" * 64 + ".test", "longer than 63"),
    ("a@" + "b." * 126 + "test", "longer than 254"),
])
def test_party_names_that_are_refused_say_why(name: str, why: str) -> None:
    error = party_name_error(name)
    assert error is not None and why in error, error
    error.encode("ascii")  # fit for an SMTP reply and a log line as it is
    assert "\x00" not in error and "\r" not in error


def test_keystore_encrypts_private_keys_at_rest(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, b"correct horse battery")
    ident = ks.create("alice@a.test")
    path = tmp_path / "alice@a.test.json"
    data = json.loads(path.read_text())
    assert "ENCRYPTED PRIVATE KEY" in data["sig_key"] and "ENCRYPTED" in data["enc_key"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ks.load("ALICE@a.test").party == ident.party
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore(tmp_path, b"wrong passphrase!").load("alice@a.test")
    with pytest.raises(KeystoreError, match="already exists"):
        ks.create("alice@a.test")
    with pytest.raises(ValueError, match="at least 8"):
        Keystore(tmp_path, b"short").create("bob@b.test")
    # a file whose public part was swapped for another key is refused
    other = Identity.generate("alice@a.test").party.to_json()
    path.write_text(json.dumps({**data, "sig_pk": other["sig_pk"], "fingerprint": None}))
    with pytest.raises(KeystoreError, match=r"inconsistent|fingerprint"):
        ks.load("alice@a.test")


def tcms(tmp_path: Path, *args: str, passphrase: str | None = "test passphrase 1",
         **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
    env.update(extra)
    env["TCMS_KEYS__DIR"] = str(tmp_path / "keys")
    if passphrase:
        env["TCMS_KEYS__PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=PATIENCE)


def test_tcms_keys_cli(tmp_path: Path) -> None:
    res = tcms(tmp_path, "keys", "create", "alice@a.test")
    assert res.returncode == 0, res.stderr
    fp = res.stdout.split("fingerprint ")[1].strip()
    assert tcms(tmp_path, "keys", "create", "ttp@tcms.test", "--kind", "ttp").returncode == 0
    listing = tcms(tmp_path, "keys", "list", passphrase=None).stdout
    assert "alice@a.test" in listing and fp in listing and "ttp" in listing
    exported = json.loads(tcms(tmp_path, "keys", "export", "alice@a.test",
                               passphrase=None).stdout)
    assert exported["fingerprint"] == fp and "sig_key" not in exported
    res = tcms(tmp_path, "keys", "create", "alice@a.test")
    assert res.returncode == 1 and "already exists" in res.stderr
    res = tcms(tmp_path, "keys", "create", "bob@b.test", passphrase=None)
    assert res.returncode == 1 and "TCMS_KEYS__PASSPHRASE" in res.stderr
    # no secret ever appears in output: the key passphrase, the IMAP master password
    out = tcms(tmp_path, "config", "check", TCMS_GATEWAY__MASTER_PASSWORD="imap-master-secret")
    assert out.returncode == 0, out.stderr
    printed = out.stdout + out.stderr
    assert "test passphrase 1" not in printed and "imap-master-secret" not in printed
    assert json.loads(out.stdout)["gateway"]["master_password"] == "***"



@pytest.mark.parametrize(("t", "said"), [
    (None, "-"),
    (0, "1970-01-01 00:00:00 UTC"),
    (1_800_000_000, "2027-01-15 08:00:00 UTC"),
    (10**17, f"@{10**17} (not a representable date)"),  # past year 9999
    (-(10**17), f"@{-(10**17)} (not a representable date)"),
    (2**70, f"@{2**70} (not a representable date)"),  # past a C long
])
def test_every_command_says_a_time_one_way_and_never_raises(t: int | None, said: str) -> None:
    """`tcms tx`, `tcms queue`, `tcms tx purge` and `tcms keys data-key list` print times
    with tcms.cli.util.when: as the protocol's notices do (checks.utc), "-" for none, and
    a time no date can show (a corrupt row, a mistyped --now) said as such."""
    from tcms.cli.util import when
    from tcms.protocol.checks import utc

    assert when(t) == said
    if t is not None:
        assert when(t) == utc(t)


HELPED = [[], ["keys"], ["keys", "create"], ["keys", "list"], ["keys", "export"], ["verify"],
          ["demo"], ["db"], ["db", "upgrade"], ["config"], ["config", "check"], ["tsrg"],
          ["tsrg", "stream"], ["serve"], ["tss", "init"], ["ttp", "audit"], ["ttp", "dispute"],
          ["dc", "register"], ["dc", "publish"], ["dc", "revoke"], ["dc", "lookup"],
          ["dc", "updates", "init"], ["dc", "updates", "apply"], ["tx", "list"], ["tx", "show"],
          ["tx", "export"], ["keys", "data-key"], ["keys", "data-key", "rotate"],
          ["keys", "data-key", "retire"], ["db", "reencrypt"], ["db", "key-usage"]]


def test_help_everywhere(tmp_path: Path) -> None:
    """`--help` works on every command and group of the installed `tcms`: the real program
    lists the packages' commands; each one's help is then asked for in this process (one
    start of the program instead of one per command), walking the whole tree."""
    from click.testing import CliRunner

    from tcms.cli import main

    res = tcms(tmp_path, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout, res.stderr
    paths: list[list[str]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        paths.append(path)
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, [*path, name]
                walk(sub, [*path, name])

    walk(main, [])
    for path in paths:
        if len(path) == 1:  # what the installed program lists is what is walked here
            assert path[0] in res.stdout, f"`tcms --help` does not list {path[0]}"
    missing = [p for p in HELPED if p not in paths]
    assert not missing, f"commands gone from `tcms`: {missing}"
    runner = CliRunner()
    for path in paths:
        out = runner.invoke(main, [*path, "--help"], prog_name="tcms")
        assert out.exit_code == 0 and "Usage:" in out.output, (path, out.output)


def test_tcms_db_upgrade_on_sqlite(tmp_path: Path) -> None:
    env_db = f"sqlite:///{tmp_path / 'x.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
    env["TCMS_DATABASE__URL"] = env_db
    res = subprocess.run([sys.executable, "-m", "tcms.cli", "db", "upgrade"], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=PATIENCE)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "x.db").exists()


# --- nesting (issue 11, item 14: `[` x 1000 raised RecursionError) -------------------------

DEEP = "[" * 1000


@pytest.mark.parametrize("var", ["TCMS_GATEWAY__DOMAINS", "TCMS_GATEWAY"])
def test_deeply_nested_environment_value_is_a_named_error(
        var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TCMS_CONFIG", raising=False)
    monkeypatch.setenv(var, DEEP)
    with pytest.raises(config.ConfigError) as e:
        config.load()
    assert str(e.value) == (f"invalid configuration (environment): {var}: nested deeper "
                            f"than {config.MAX_NESTING} levels")
    # nested within the bound: decoded, then refused as the wrong type, as before
    monkeypatch.setenv(var, "[" * 30 + "]" * 30)
    with pytest.raises(config.ConfigError, match="invalid configuration"):
        config.load()
    monkeypatch.setenv("TCMS_GATEWAY__DOMAINS", '["a.test", "B.test"]')
    monkeypatch.delenv("TCMS_GATEWAY", raising=False)
    assert config.load().gateway.domains == ["a.test", "b.test"]


@pytest.mark.parametrize("value", [DEEP, "[" * 33 + "]" * 33, "[" * 200 + "]" * 200,
                                   "{a = " * 40 + "1" + "}" * 40])
def test_deeply_nested_toml_value_is_a_named_error(tmp_path: Path, value: str) -> None:
    f = write(tmp_path, f"[gateway]\ndomains = {value}\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(f)
    assert str(e.value) == (f"invalid configuration ({f}): a value is nested deeper than "
                            f"{config.MAX_NESTING} levels")


def test_deep_nesting_through_the_tcms_command(tmp_path: Path) -> None:
    res = tcms(tmp_path, "config", "check", TCMS_GATEWAY__DOMAINS=DEEP)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip() == ("Error: invalid configuration (environment): "
                                  "TCMS_GATEWAY__DOMAINS: nested deeper than 32 levels")
    f = write(tmp_path, f"[gateway]\ndomains = {DEEP}\n")
    res = tcms(tmp_path, "--config", str(f), "config", "check")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip() == (f"Error: invalid configuration ({f}): a value is nested "
                                  "deeper than 32 levels")


def test_gateway_reads_its_trust_file_strictly(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import TRUST

    from gateway.context import load_trust
    from tcms import evidence

    monkeypatch.delenv("TCMS_CONFIG", raising=False)
    trust_file, dc_file = tmp_path / "trust.json", tmp_path / "dc.json"
    dc_file.write_text(json.dumps(Identity.generate("dc@tcms.test").party.to_json()))
    monkeypatch.setenv("TCMS_GATEWAY__TRUST_FILE", str(trust_file))
    monkeypatch.setenv("TCMS_GATEWAY__DC_KEY_FILE", str(dc_file))
    keystore = Keystore(tmp_path / "keys", None)
    trust_file.write_text(json.dumps(evidence.trust_to_json(TRUST)))
    assert load_trust(config.load(), keystore)[0] == TRUST
    for text, reason in (("[" * 1000, "nested deeper than 8 levels"),
                         (json.dumps({**evidence.trust_to_json(TRUST), "ttp": {}}),
                          "ttp: field 'name' is missing")):
        trust_file.write_text(text)
        with pytest.raises(config.ConfigError) as e:
            load_trust(config.load(), keystore)
        assert str(e.value) == f"gateway: cannot load what it trusts: {reason}"
