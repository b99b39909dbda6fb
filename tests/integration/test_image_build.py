"""Build the real postgresql-15 image with mmdebstrap and run it under the real Podman.

The rootfs cache is shared (``ONEP_TEST_IMAGE_CACHE`` or the platform's own image cache),
so the ~35 s build happens once per machine. With ``CI=true`` a missing tool fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneplatform.config import Settings
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import artifact_for, build_rootfs
from oneplatform.images.recipes import Recipe, load_recipe
from tests.podman import force_remove

pytestmark = pytest.mark.integration

IN_CI = os.environ.get("CI", "").lower() == "true"
READY_TIMEOUT = 60.0


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (run scripts/setup.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=300)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return Path(os.environ.get("ONEP_TEST_IMAGE_CACHE") or Settings().images_dir)


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe("postgresql-15")


@pytest.fixture(scope="module")
def rootfs(recipe: Recipe, cache_dir: Path) -> Path:
    _require("mmdebstrap")
    started = time.monotonic()
    lines: list[str] = []
    path = build_rootfs(recipe, cache_dir, progress=lines.append)
    print(
        f"\nbuild_rootfs: {time.monotonic() - started:.1f} s, {len(lines)} progress lines, "
        f"{path.stat().st_size / 1e6:.0f} MB at {path}"
    )
    return path


@pytest.fixture(scope="module")
def imported(recipe: Recipe, cache_dir: Path, rootfs: Path) -> ImageArtifact:
    _require("podman")
    artifact = artifact_for(recipe, cache_dir)
    assert artifact.rootfs == rootfs
    if _run("podman", "image", "exists", artifact.ref, check=False).returncode != 0:
        # "CMD <json>": with "CMD=<json>" podman 4.3 reads up to the first space as the
        # instruction and fails ('invalid instruction') once the command has two words.
        changes = ["--change", f"CMD {json.dumps(list(artifact.command))}"]
        for key, value in artifact.env.items():
            changes += ["--change", f"ENV {key}={value}"]
        _run("podman", "import", *changes, str(rootfs), artifact.ref)
    return artifact


@pytest.fixture
def container(imported: ImageArtifact) -> Iterator[tuple[str, int]]:
    name = f"onep-test-image-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    try:
        _run(
            "podman",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "oneplatform.test=image-build",
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "-p",
            f"127.0.0.1:{port}:5432",
            imported.ref,
        )
        yield name, port
    finally:
        force_remove(name, check=False)


def _tar_names(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {name.removeprefix("./") for name in tar.getnames()}


def test_rootfs_contains_postgres_and_the_agent(rootfs: Path) -> None:
    names = _tar_names(rootfs)
    assert "usr/lib/postgresql/15/bin/postgres" in names
    assert "usr/local/lib/oneplatform/agent.pyz" in names
    assert not any(n.startswith("usr/share/doc/") and n.count("/") > 3 for n in names)
    with tarfile.open(rootfs) as tar:
        agent = tar.getmember("./usr/local/lib/oneplatform/agent.pyz")
        assert agent.mode & 0o777 == 0o644


def test_second_build_is_cached(recipe: Recipe, cache_dir: Path, rootfs: Path) -> None:
    before = rootfs.stat().st_mtime_ns
    started = time.monotonic()
    again = build_rootfs(recipe, cache_dir)
    assert again == rootfs
    assert rootfs.stat().st_mtime_ns == before
    assert time.monotonic() - started < 5
    assert not list(cache_dir.glob(f".{rootfs.stem}.*.part.tar"))


def test_image_serves_postgresql(container: tuple[str, int]) -> None:
    _require("pg_isready")
    name, port = container
    started = time.monotonic()
    deadline = started + READY_TIMEOUT
    tcp_ok = ready = False
    while time.monotonic() < deadline and not ready:
        if not tcp_ok:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                tcp_ok = True
            except OSError:
                pass
        if tcp_ok:
            probe = _run("pg_isready", "-h", "127.0.0.1", "-p", str(port), check=False)
            ready = probe.returncode == 0
        if not ready:
            time.sleep(0.25)
    logs = _run("podman", "logs", name, check=False)
    assert ready, f"PostgreSQL not ready in {READY_TIMEOUT:.0f} s:\n{logs.stdout}{logs.stderr}"
    print(f"\npg_isready succeeded {time.monotonic() - started:.2f} s after podman run returned")
