"""The gateway's side of signed updates: fetch a module through TUF, then apply it.

``ModuleUpdater`` keeps TUF's trusted metadata in ``cache_dir/metadata`` between runs, so
a repository that later serves older metadata (rollback) or stops refreshing it (freeze,
expiry) is refused; the trusted root is pinned at first use.  Every refusal is an
``UpdateError`` naming TUF's reason; nothing is applied then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.ngclient import Updater

from dc.updates import UpdateError, validate_module


class ModuleUpdater:
    def __init__(self, base_url: str, trusted_root: bytes, cache_dir: Path) -> None:
        self.base_url = base_url.rstrip("/")
        self.trusted_root = trusted_root
        self.cache_dir = cache_dir
        (cache_dir / "metadata").mkdir(parents=True, exist_ok=True)
        (cache_dir / "targets").mkdir(parents=True, exist_ok=True)

    def _updater(self) -> Updater:
        metadata = self.cache_dir / "metadata"
        known = (metadata / "root.json").exists()
        return Updater(metadata_dir=str(metadata),
                       metadata_base_url=self.base_url + "/updates/metadata/",
                       target_dir=str(self.cache_dir / "targets"),
                       target_base_url=self.base_url + "/updates/targets/",
                       bootstrap=None if known else self.trusted_root)

    def fetch(self, name: str) -> bytes:
        """The verified bytes of module ``name`` (TUF: signatures, versions, expiry, hashes)."""
        try:
            updater = self._updater()
            updater.refresh()
            info = updater.get_targetinfo(name)
            if info is None:
                raise UpdateError(f"the repository has no module {name!r}")
            path = updater.find_cached_target(info) or updater.download_target(info)
        except (RepositoryError, DownloadError) as exc:
            raise UpdateError(f"update refused: {type(exc).__name__}: {exc}") from None
        return Path(path).read_bytes()

    def applied(self, name: str) -> dict[str, Any] | None:
        path = self.cache_dir / "applied" / f"{name}"
        return json.loads(path.read_text()) if path.exists() else None

    def apply(self, name: str) -> dict[str, Any]:
        """Fetch, check and record the module; a lower version than the applied one is
        refused (a module-level rollback)."""
        module = validate_module(self.fetch(name))
        current = self.applied(name)
        if current is not None and module["version"] < current["version"]:
            raise UpdateError(f"module {name} version {module['version']} is older than the "
                              f"applied version {current['version']}")
        path = self.cache_dir / "applied" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(module))
        return module
