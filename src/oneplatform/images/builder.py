"""Build a recipe into a root filesystem tarball with mmdebstrap, cached by content hash.

The cache is content-addressed: ``<cache_dir>/<name>-<hash[:16]>.tar`` exists only when a
build finished (it is written under a temporary name and renamed), so a crash never leaves
a half-written entry that a later call would trust.
"""

from __future__ import annotations

import collections
import fcntl
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from oneplatform.compute.drivers.base import ImageArtifact
from oneplatform.errors import ImageBuildError
from oneplatform.images.recipes import Recipe

Progress = Callable[[str], None]

MIN_FREE_BYTES = 2 * 1024**3  # a PostgreSQL rootfs is ~0.5 GB, plus mmdebstrap's chroot
OUTPUT_TAIL_LINES = 40
# Keep images small: no documentation, manual pages or translations.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)


def rootfs_path(recipe: Recipe, cache_dir: Path) -> Path:
    """Where the recipe's tarball is (or will be) cached; the hash is in the name."""
    return cache_dir / f"{recipe.name}-{recipe.content_hash()[:16]}.tar"


def image_ref(recipe: Recipe) -> str:
    """The local OCI reference the recipe's image is imported under."""
    return f"localhost/oneplatform/{recipe.name}:{recipe.content_hash()[:12]}"


def artifact_for(recipe: Recipe, cache_dir: Path) -> ImageArtifact:
    """The artifact a host needs; does no I/O beyond hashing the recipe's files."""
    return ImageArtifact(
        name=recipe.name,
        ref=image_ref(recipe),
        rootfs=rootfs_path(recipe, cache_dir),
        command=tuple(recipe.command),
        env=dict(recipe.env),
    )


def build_rootfs(recipe: Recipe, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Build the recipe's root filesystem tarball; returns at once if it is cached.

    Takes a per-recipe lock so concurrent callers build once. Raises
    :class:`ImageBuildError` when disk space is short or mmdebstrap fails.
    """
    target = rootfs_path(recipe, cache_dir)
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / f".{target.stem}.lock"):
        if target.exists():  # another process finished it while we waited
            return target
        _remove_stale_parts(target)
        _check_free_space(cache_dir)
        part = target.with_name(f".{target.stem}.{os.getpid()}.part.tar")
        try:
            _run_mmdebstrap(mmdebstrap_argv(recipe, part), progress)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return target


def mmdebstrap_argv(recipe: Recipe, output: Path) -> list[str]:
    """The full mmdebstrap command line that builds ``recipe`` into ``output`` (a tar)."""
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--format=tar",
        f"--include={','.join(recipe.packages)}",
    ]
    excludes = (*DPKG_EXCLUDES, *recipe.path_excludes)
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in excludes]
    argv += [f"--customize-hook={hook}" for hook in _customize_hooks(recipe)]
    argv += [recipe.suite, str(output), *recipe.apt_sources()]
    return argv


def _customize_hooks(recipe: Recipe) -> list[str]:
    """Shell snippets mmdebstrap runs with the root filesystem directory as ``$1``."""
    hooks = []
    for guest_path, source in sorted(recipe.files.items()):
        mode = "0755" if _is_script(source) else "0644"
        hooks.append(
            f'install -D -m {mode} {shlex.quote(str(source))} "$1"{shlex.quote(guest_path)}'
        )
    hooks += [f'chroot "$1" /bin/sh -c {shlex.quote(cmd)}' for cmd in recipe.customize]
    return hooks


def _is_script(source: Path) -> bool:
    with source.open("rb") as handle:
        return handle.read(2) == b"#!"


def _check_free_space(cache_dir: Path) -> None:
    """mmdebstrap fills a chroot under the temp dir, then writes the tar into the cache."""
    for directory in {cache_dir, Path(tempfile.gettempdir())}:
        free = shutil.disk_usage(directory).free
        if free < MIN_FREE_BYTES:
            raise ImageBuildError(
                f"not enough free disk space to build an image: {free / 1024**2:.0f} MB free "
                f"in {directory}, need {MIN_FREE_BYTES / 1024**3:.0f} GB",
                directory=str(directory),
                free_bytes=free,
            )


def _run_mmdebstrap(argv: list[str], progress: Progress | None) -> None:
    if shutil.which(argv[0]) is None:
        raise ImageBuildError("mmdebstrap is not installed (run scripts/setup.sh)")
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail.append(line)
            if progress is not None and line:
                progress(line)
        code = proc.wait()
    if code != 0:
        output = "\n".join(tail)
        raise ImageBuildError(
            f"mmdebstrap failed with exit code {code}:\n{output}", exit_code=code, output=output
        )


def _remove_stale_parts(target: Path) -> None:
    """Temporary outputs of an earlier, crashed build (we hold the lock, so none is live)."""
    for stale in target.parent.glob(f".{target.stem}.*.part.tar"):
        stale.unlink(missing_ok=True)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
