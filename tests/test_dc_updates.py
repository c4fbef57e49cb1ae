"""Signed security-module updates (TUF) from a real DC to a gateway's updater: what is
accepted, and every way an update is refused."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mailstack import PATIENCE
from securesystemslib.signer import CryptoSigner, SSlibKey
from services import PASSPHRASE, Services, prepare_keys
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from dc.updater import ModuleUpdater
from dc.updates import UpdateError, UpdateRepository

NOW = dt.datetime.now(dt.UTC)


def module(version: int, cipher: str = "tsrg-modern") -> bytes:
    return json.dumps({"module": "algorithm-suite", "version": version,
                       "message_cipher": cipher}).encode()


@pytest.fixture
def dc(tmp_path: Path) -> Iterator[tuple[Services, UpdateRepository]]:
    prepare_keys(tmp_path / "keys")
    repo = UpdateRepository.init(tmp_path / "updates", PASSPHRASE.encode(), now=NOW)
    svc = Services(tmp_path, f"sqlite:///{tmp_path / 'dc.db'}", which="dc").start()
    yield svc, repo
    svc.stop()


def updater(svc: Services, repo: UpdateRepository, name: str = "cache") -> ModuleUpdater:
    return ModuleUpdater(svc.dc, repo.trusted_root(), svc.workdir / name)


def test_publish_fetch_apply_and_upgrade(dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    repo.publish("algorithm-suite", module(1), now=NOW)
    up = updater(svc, repo)
    assert up.apply("algorithm-suite")["version"] == 1
    repo.publish("algorithm-suite", module(2, "aes256gcm"), now=NOW)
    applied = up.apply("algorithm-suite")
    assert applied == {"module": "algorithm-suite", "version": 2,
                       "message_cipher": "aes256gcm"}
    with pytest.raises(UpdateError, match="no module"):
        up.fetch("missing")


def test_a_forged_module_file_is_refused(dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    repo.publish("algorithm-suite", module(1), now=NOW)
    (repo.targets_dir / "algorithm-suite").write_bytes(module(9, "aes256gcm"))
    with pytest.raises(UpdateError, match="LengthOrHashMismatch"):
        updater(svc, repo).apply("algorithm-suite")


def test_forged_or_wrongly_signed_metadata_is_refused(
        dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    repo.publish("algorithm-suite", module(1), now=NOW)
    path = repo.metadata_dir / "targets.json"
    signed = path.read_bytes()
    # the attacker points the metadata at its own file, without the targets key
    evil = module(9, "aes256gcm")
    (repo.targets_dir / "algorithm-suite").write_bytes(evil)
    md = Metadata[Targets].from_bytes(signed)
    md.signed.targets["algorithm-suite"] = TargetFile.from_data("algorithm-suite", evil)
    path.write_bytes(md.to_bytes(JSONSerializer()))  # old signature kept: does not verify
    with pytest.raises(UpdateError, match="UnsignedMetadata"):
        updater(svc, repo, "c1").apply("algorithm-suite")
    key = Ed25519PrivateKey.generate()  # now signed, but by a key the root never named
    md.signatures.clear()
    md.sign(CryptoSigner(key, SSlibKey.from_crypto(key.public_key())))
    path.write_bytes(md.to_bytes(JSONSerializer()))
    with pytest.raises(UpdateError, match="UnsignedMetadata"):
        updater(svc, repo, "c2").apply("algorithm-suite")


def test_expired_metadata_is_refused(dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    repo.publish("algorithm-suite", module(1), now=NOW - dt.timedelta(days=30))
    with pytest.raises(UpdateError, match="Expired"):
        updater(svc, repo).apply("algorithm-suite")


def test_a_rolled_back_repository_is_refused(dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    repo.publish("algorithm-suite", module(1), now=NOW)
    old = svc.workdir / "old-metadata"
    shutil.copytree(repo.metadata_dir, old)
    old_target = (repo.targets_dir / "algorithm-suite").read_bytes()
    repo.publish("algorithm-suite", module(2), now=NOW)
    up = updater(svc, repo)
    assert up.apply("algorithm-suite")["version"] == 2
    shutil.rmtree(repo.metadata_dir)  # the server goes back to its older, validly signed state
    shutil.copytree(old, repo.metadata_dir)
    (repo.targets_dir / "algorithm-suite").write_bytes(old_target)
    with pytest.raises(UpdateError, match="BadVersionNumber"):
        up.apply("algorithm-suite")
    assert up.applied("algorithm-suite")["version"] == 2  # type: ignore[index]


def test_an_older_module_in_a_new_release_is_refused(
        dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    repo.publish("algorithm-suite", module(5), now=NOW)
    up = updater(svc, repo)
    up.apply("algorithm-suite")
    repo.publish("algorithm-suite", module(4), now=NOW)  # validly signed, but older
    with pytest.raises(UpdateError, match="older than the applied version 5"):
        up.apply("algorithm-suite")


def test_repository_checks_and_file_route(dc: tuple[Services, UpdateRepository]) -> None:
    svc, repo = dc
    for bad in (b"not json", b"[1]", json.dumps({"module": "x", "version": 1}).encode(),
                json.dumps({"module": "algorithm-suite", "version": 0,
                            "message_cipher": "tsrg-modern"}).encode(),
                module(1, "rot13")):
        with pytest.raises(UpdateError):
            repo.publish("algorithm-suite", bad, now=NOW)
    for path in ("/updates/keys/root.pem", "/updates/metadata/..%2Fkeys%2Froot.pem",
                 "/updates/metadata/.hidden", "/updates/targets/nothing"):
        r = httpx.get(svc.dc + path)
        assert r.status_code in (400, 404) and "PRIVATE KEY" not in r.text


def test_update_cli_end_to_end(dc: tuple[Services, UpdateRepository]) -> None:
    svc, _ = dc
    env = svc.env()

    def tcms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tcms.cli", *args], env=env,
                              capture_output=True, text=True, cwd=svc.workdir, timeout=PATIENCE)

    (svc.workdir / "suite.json").write_bytes(module(3))
    res = tcms("dc", "updates", "publish", "algorithm-suite", "suite.json")
    assert res.returncode == 0, res.stderr
    root = tcms("dc", "updates", "root").stdout
    (svc.workdir / "root.json").write_text(root)
    res = tcms("dc", "updates", "apply", "algorithm-suite", "--root", "root.json",
               "--cache", "gw-cache")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"] == 3
    (svc.workdir / "bad.json").write_text('{"module": "algorithm-suite"}')
    res = tcms("dc", "updates", "publish", "algorithm-suite", "bad.json")
    assert res.returncode != 0 and "version" in res.stderr
