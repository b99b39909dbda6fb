"""Datastore image recipes: what goes into a root filesystem, declared as TOML.

A recipe lives in ``recipes/<name>.toml``; the files it installs into the image live in
``recipes/files/``, or in one of the platform's own packages, named
``package:oneplatform.some_package/path/to/file``, or are one of the platform's packages
made into a zipapp, named ``zipapp:oneplatform.guest`` (how the guest agent gets into every
image: see :class:`ZipappSource`). Nothing is read at import time: :func:`load_recipe`
reads on demand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from oneplatform.errors import ImageBuildError, NotFound

# Bump when the builder changes how a recipe turns into a root filesystem, so every cached
# build is made again.
BUILDER_VERSION = "2"

RECIPES_DIR = Path(__file__).with_name("recipes")
PACKAGE_SOURCE_PREFIX = "package:"
ZIPAPP_SOURCE_PREFIX = "zipapp:"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_PLATFORM_PACKAGE_RE = re.compile(r"^oneplatform(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TOML_KEYS = frozenset(
    {
        "description",
        "suite",
        "extra_suites",
        "mirror",
        "security_mirror",
        "components",
        "packages",
        "files",
        "command",
        "env",
        "ports",
        "customize",
        "path_excludes",
        "preload",
    }
)


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ZipappSource:
    """``zipapp:<package>``: one of the platform's packages as a runnable zip file.

    The archive holds every ``.py`` file of the package (its subpackages too) under its
    full module path, an ``__init__.py`` for each parent package with nothing in it, and a
    ``__main__.py`` that runs ``python3 -m <package>``; the package must have a
    ``__main__.py`` and import nothing outside itself and the standard library. The bytes
    are deterministic (sorted entries, fixed times and modes, stored uncompressed, so not
    even the zlib version matters): they, and the image's content hash, change exactly
    when a module does. Built in memory on demand; :meth:`write_to` puts it in a file.
    """

    package: str
    root: Path  # the package's directory

    @property
    def name(self) -> str:
        return f"{self.package}.pyz"

    def read_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for arcname, data in sorted(self.entries().items()):
                archive.writestr(_zip_entry(arcname), data)
        return buffer.getvalue()

    def entries(self) -> dict[str, bytes]:
        """Archive name -> contents."""
        parts = self.package.split(".")
        entries = {"__main__.py": _zipapp_main(self.package).encode()}
        for depth in range(1, len(parts)):
            entries["/".join(parts[:depth]) + "/__init__.py"] = b""
        for path in sorted(self.root.rglob("*.py")):
            relative = path.relative_to(self.root).as_posix()
            entries["/".join([*parts, relative])] = path.read_bytes()
        return entries

    def write_to(self, directory: Path) -> Path:
        """Write the archive into ``directory``; returns its path there."""
        path = directory / self.name
        path.write_bytes(self.read_bytes())
        return path


def _zip_entry(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
    info.create_system = 3  # Unix, wherever it is built
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    info.compress_type = zipfile.ZIP_STORED
    return info


def _zipapp_main(package: str) -> str:
    return (
        f'"""Made by the OnePlatform image builder: runs ``python3 -m {package}``."""\n\n'
        "import runpy\n\n"
        f'runpy.run_module("{package}", run_name="__main__", alter_sys=True)\n'
    )


# Where a recipe file comes from: a file on this machine, or made when needed.
FileSource = Path | ZipappSource


@dataclass(frozen=True)
class Recipe:
    """One datastore image. ``files`` maps a guest path to the source of the file there."""

    name: str
    description: str
    packages: tuple[str, ...]
    command: tuple[str, ...]
    suite: str = "bookworm"
    extra_suites: tuple[str, ...] = ("bookworm-updates", "bookworm-security")
    mirror: str = DEBIAN_MIRROR
    security_mirror: str = DEBIAN_SECURITY_MIRROR
    components: tuple[str, ...] = ("main",)
    files: Mapping[str, FileSource] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    # Shell commands run inside the finished root filesystem (chroot) at build time.
    customize: tuple[str, ...] = ()
    # Extra dpkg path-exclude globs: files of installed packages the image does not need.
    path_excludes: tuple[str, ...] = ()
    # Other recipes whose images the VM form carries, imported at build time into a
    # read-only Podman image store (a cluster node: no import over SSH into a TCG guest).
    preload: tuple[str, ...] = ()
    # Where the recipe was read (its ``preload`` names are looked up there); not hashed.
    directory: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for attr in ("files", "env", "ports"):
            object.__setattr__(self, attr, _frozen(getattr(self, attr)))
        for guest_path in self.files:
            if not guest_path.startswith("/") or ".." in guest_path.split("/"):
                raise ImageBuildError(
                    f"recipe {self.name}: guest path must be absolute: {guest_path!r}"
                )

    def apt_sources(self) -> tuple[str, ...]:
        """One-line apt sources, main suite first; ``*-security`` suites use that mirror."""
        components = " ".join(self.components)
        lines = [f"deb {self.mirror} {self.suite} {components}"]
        for suite in self.extra_suites:
            mirror = self.security_mirror if suite.endswith("-security") else self.mirror
            lines.append(f"deb {mirror} {suite} {components}")
        return tuple(lines)

    def canonical(self) -> dict[str, Any]:
        """Every field as plain JSON data (files by name; their bytes go into the hash)."""
        return {
            "name": self.name,
            "description": self.description,
            "suite": self.suite,
            "extra_suites": list(self.extra_suites),
            "mirror": self.mirror,
            "security_mirror": self.security_mirror,
            "components": list(self.components),
            "packages": list(self.packages),
            "files": {guest: src.name for guest, src in sorted(self.files.items())},
            "command": list(self.command),
            "env": dict(sorted(self.env.items())),
            "ports": dict(sorted(self.ports.items())),
            "customize": list(self.customize),
            "path_excludes": list(self.path_excludes),
            "preload": list(self.preload),
        }

    def local_files(self, directory: Path) -> dict[str, Path]:
        """Each file as a path on this machine: files where they are, the ones made when
        needed (zipapps) written into ``directory`` first."""
        return {
            guest: source if isinstance(source, Path) else source.write_to(directory)
            for guest, source in sorted(self.files.items())
        }

    def content_hash(self) -> str:
        """sha256 over the builder version, the canonical recipe and every file's bytes."""
        digest = hashlib.sha256()
        digest.update(f"oneplatform-image-builder/{BUILDER_VERSION}\n".encode())
        digest.update(json.dumps(self.canonical(), sort_keys=True).encode())
        for guest_path, source in sorted(self.files.items()):
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise ImageBuildError(
                    f"recipe {self.name}: cannot read {source} for {guest_path}: {exc}"
                ) from exc
            digest.update(f"\nfile {guest_path} {len(data)}\n".encode())
            digest.update(data)
        for recipe in self.preloaded():  # a new version of one is a new image here too
            digest.update(f"\npreload {recipe.name} {recipe.content_hash()}\n".encode())
        return digest.hexdigest()

    def preloaded(self) -> list[Recipe]:
        """The recipes named by ``preload``, from the same directory as this one's.

        Raises :class:`ImageBuildError` for an unknown name or one that preloads in turn.
        """
        out: list[Recipe] = []
        for name in self.preload:
            try:
                recipe = load_recipe(name, self.directory)
            except NotFound as exc:
                raise ImageBuildError(f"recipe {self.name}: preload {name!r}: {exc}") from exc
            if recipe.preload:
                raise ImageBuildError(
                    f"recipe {self.name}: preload {name!r} preloads images itself"
                )
            out.append(recipe)
        return out


def list_recipes(recipes_dir: Path | None = None) -> list[str]:
    """The names of every recipe, sorted."""
    directory = recipes_dir or RECIPES_DIR
    return sorted(p.stem for p in directory.glob("*.toml") if _NAME_RE.match(p.stem))


def load_recipe(name: str, recipes_dir: Path | None = None) -> Recipe:
    """Read ``<name>.toml``; raises :class:`NotFound` for an unknown name."""
    directory = recipes_dir or RECIPES_DIR
    path = directory / f"{name}.toml"
    if not _NAME_RE.match(name) or not path.is_file():
        raise NotFound(f"no image recipe named {name!r}", recipe=name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ImageBuildError(f"recipe {name}: invalid TOML: {exc}") from exc
    return _recipe_from_toml(name, data, directory)


def _recipe_from_toml(name: str, data: dict[str, Any], directory: Path) -> Recipe:
    unknown = set(data) - _TOML_KEYS
    if unknown:
        raise ImageBuildError(f"recipe {name}: unknown keys {sorted(unknown)}")
    files_dir = (directory / "files").resolve()
    files: dict[str, FileSource] = {}
    for guest_path, source in data.get("files", {}).items():
        if str(source).startswith(PACKAGE_SOURCE_PREFIX):
            files[guest_path] = _package_source(name, str(source))
            continue
        if str(source).startswith(ZIPAPP_SOURCE_PREFIX):
            files[guest_path] = _zipapp_source(name, str(source))
            continue
        resolved = (directory / source).resolve()
        if not resolved.is_relative_to(files_dir):
            raise ImageBuildError(f"recipe {name}: {source!r} is outside {files_dir}")
        files[guest_path] = resolved
    optional: dict[str, Any] = {}
    for key in ("suite", "mirror", "security_mirror"):
        if key in data:
            optional[key] = str(data[key])
    for key in ("extra_suites", "components", "customize", "path_excludes", "preload"):
        if key in data:
            optional[key] = tuple(str(v) for v in data[key])
    return Recipe(
        name=name,
        description=str(data.get("description", "")),
        packages=tuple(str(p) for p in data.get("packages", ())),
        command=tuple(str(c) for c in data.get("command", ())),
        files=files,
        env={str(k): str(v) for k, v in data.get("env", {}).items()},
        ports={str(k): int(v) for k, v in data.get("ports", {}).items()},
        directory=directory,
        **optional,
    )


def _package_source(name: str, source: str) -> Path:
    """``package:oneplatform.sub/path/to/file``: a file inside one of the platform's
    packages."""
    package, _, relative = source.removeprefix(PACKAGE_SOURCE_PREFIX).partition("/")
    if not relative or not _is_platform_package(package):
        raise ImageBuildError(
            f"recipe {name}: {source!r} must be package:oneplatform[.sub]/path/to/file"
        )
    root = _package_dir(name, source, package)
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise ImageBuildError(f"recipe {name}: {source!r} is outside the package {package}")
    return resolved


def _zipapp_source(name: str, source: str) -> ZipappSource:
    """``zipapp:oneplatform.guest``: that package as a zipapp (see :class:`ZipappSource`)."""
    package = source.removeprefix(ZIPAPP_SOURCE_PREFIX)
    if not _is_platform_package(package):
        raise ImageBuildError(f"recipe {name}: {source!r} must be zipapp:oneplatform[.sub]")
    root = _package_dir(name, source, package)
    if not (root / "__main__.py").is_file():
        raise ImageBuildError(f"recipe {name}: {source!r}: {package} has no __main__.py")
    return ZipappSource(package, root)


def _is_platform_package(package: str) -> bool:
    return _PLATFORM_PACKAGE_RE.match(package) is not None


def _package_dir(name: str, source: str, package: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImageBuildError(f"recipe {name}: {source!r}: no package {package}")
    return Path(next(iter(spec.submodule_search_locations))).resolve()
