"""A repository of backup folders in the object store, through rclone (Debian's): S3 over
TLS with the store's CA, and its ``crypt`` layer encrypting every file's content with the
repository's passphrase (NaCl secretbox: authenticated; file names stay readable — labels
are no secret — with a ``.bin`` suffix in the store). A backup is a folder named by its
label; its ``backup.json``, written last, makes it a backup. MariaDB's and Redis's backups
are kept so; the host reads the same folders (``hostsvc.objectstore.FileRepositoryTool``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundle import StoreSettings
from ..processes import EngineError
from .base import tail
from .pgbackrest import map_store_host

__all__ = ["CONF_DIR", "MANIFEST", "Repository", "map_store_host", "render_rclone", "tail"]

CONF_DIR = Path("/etc/oneplatform-backup")
MANIFEST = "backup.json"

Runner = Callable[..., subprocess.CompletedProcess[bytes]]


def render_rclone(store: StoreSettings, obscured_pass: str) -> str:
    """rclone's config: the store (``store``) and the encrypted repository on it (``repo``)."""
    return "\n".join(
        [
            "# Written by the OnePlatform guest agent at every start; edits are lost.",
            "[store]",
            "type = s3",
            "provider = Other",
            f"endpoint = https://{store.host}:{store.port}",
            f"region = {store.region}",
            f"access_key_id = {store.access_key}",
            f"secret_access_key = {store.secret_key}",
            "force_path_style = true",
            "no_check_bucket = true",  # the platform made it; the keys may not list buckets
            "",
            "[repo]",
            "type = crypt",
            f"remote = store:{store.bucket}{store.path}",
            f"password = {obscured_pass}",
            "filename_encryption = off",
            "directory_name_encryption = false",
            "",
        ]
    )


class Repository:
    """One repository through rclone (``name``: its config file's stem)."""

    def __init__(
        self,
        run: Runner,
        conf_dir: Path,
        name: str,
        map_host: Callable[[StoreSettings], None] = map_store_host,
    ) -> None:
        self._run = run
        self.conf = conf_dir / f"{name}.conf"
        self.ca = conf_dir / "store-ca.pem"
        self._map_host = map_host  # the store's name to the guest's path to it

    def configure(self, store: StoreSettings, write: Callable[[Path, str], None]) -> None:
        self.conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write(self.ca, store.ca_pem)
        self._map_host(store)
        obscured = self._run(
            ["rclone", "obscure", "-"], stdin=store.cipher_pass.encode(), timeout=30
        )
        if obscured.returncode != 0:
            raise EngineError(f"rclone obscure failed: {tail(obscured.stderr)}")
        write(self.conf, render_rclone(store, obscured.stdout.decode().strip()))

    def argv(self, *args: str) -> list[str]:
        """rclone on the repository: a store that stops answering fails in 15 s, not 5 min."""
        return [
            "rclone", f"--config={self.conf}", f"--ca-cert={self.ca}", "--contimeout=15s",
            "--timeout=30s", "--retries=3", "--low-level-retries=3", "-q", *args,
        ]  # fmt: skip

    def command(self, *args: str) -> str:
        """The rclone command line, for a shell pipeline."""
        return shlex.join(self.argv(*args))

    def call(self, *args: str, timeout: float = 120.0) -> bytes:
        proc = self._run(self.argv(*args), timeout=timeout)
        if proc.returncode != 0:
            raise EngineError(f"rclone {args[0]} failed: {tail(proc.stderr or proc.stdout)}")
        return proc.stdout or b""

    def put(self, path: str, data: bytes) -> None:
        proc = self._run(self.argv("rcat", f"repo:{path}"), stdin=data, timeout=120)
        if proc.returncode != 0:
            raise EngineError(f"rclone rcat failed: {tail(proc.stderr)}")

    def manifests(self) -> list[dict[str, Any]]:
        """Every backup's manifest, oldest first (a folder without one is no backup)."""
        listed = json.loads(self.call("lsjson", "--recursive", "--files-only", "repo:") or b"[]")
        labels = sorted(
            str(e["Path"]).split("/")[0] for e in listed if str(e["Path"]).endswith(MANIFEST)
        )
        return [json.loads(self.call("cat", f"repo:{label}/{MANIFEST}")) for label in labels]
