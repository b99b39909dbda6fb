"""The guest package as it ships: standard library only, and one deterministic zipapp."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from oneplatform import guest
from oneplatform.guest.contract import AGENT_GUEST_PATH
from oneplatform.images.recipes import ZIP_EPOCH, ZipappSource, load_recipe

GUEST_DIR = Path(guest.__file__).resolve().parent
PACKAGE = "oneplatform.guest"


def module_name(path: Path, root: Path = GUEST_DIR) -> str:
    parts = [*PACKAGE.split("."), *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def guest_modules() -> list[str]:
    return sorted(module_name(path) for path in GUEST_DIR.rglob("*.py"))


def copy_of_the_package(tmp_path: Path) -> Path:
    copy = tmp_path / "guest"
    shutil.copytree(GUEST_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_package_has_one_module_per_concern() -> None:
    assert set(guest_modules()) >= {
        f"{PACKAGE}.{name}"
        for name in (
            "__main__",
            "contract",
            "bundle",
            "signing",
            "processes",
            "supervisor",
            "http",
            "machine",
            "main",
            "engines",
            "engines.base",
            "engines.postgresql",
        )
    }


@pytest.mark.parametrize("path", sorted(GUEST_DIR.rglob("*.py")), ids=module_name)
def test_modules_import_the_standard_library_and_their_own_package_only(path: Path) -> None:
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in sys.stdlib_module_names, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top = (node.module or "").split(".")[0]
            assert top == "__future__" or top in sys.stdlib_module_names, node.module
        elif isinstance(node, ast.ImportFrom):
            # A relative import may climb to oneplatform.guest, never above it.
            assert len(package) - (node.level - 1) >= 2, f"from {'.' * node.level}{node.module}"


def test_the_zipapp_is_the_same_for_the_same_code() -> None:
    first = ZipappSource(PACKAGE, GUEST_DIR).read_bytes()
    assert ZipappSource(PACKAGE, GUEST_DIR).read_bytes() == first
    assert (
        load_recipe("postgresql-15").content_hash() == load_recipe("postgresql-15").content_hash()
    )
    with zipfile.ZipFile(BytesIO(first)) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert names[0] == "__main__.py"
    assert "oneplatform/__init__.py" in names
    modules = {module_name(Path(n), Path("oneplatform/guest")) for n in names if "guest/" in n}
    assert modules == set(guest_modules())
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")]
    for info in infos:
        assert info.date_time == ZIP_EPOCH
        assert info.external_attr >> 16 == 0o100644
        assert info.compress_type == zipfile.ZIP_STORED


def test_the_zipapp_does_not_depend_on_file_times(tmp_path: Path) -> None:
    copy = copy_of_the_package(tmp_path)
    before = ZipappSource(PACKAGE, copy).read_bytes()
    for path in copy.rglob("*.py"):
        path.touch()
    assert ZipappSource(PACKAGE, copy).read_bytes() == before


def test_the_image_hash_changes_with_every_guest_module(tmp_path: Path) -> None:
    copy = copy_of_the_package(tmp_path)
    recipe = load_recipe("postgresql-15")
    files = dict(recipe.files)
    files[AGENT_GUEST_PATH] = ZipappSource(PACKAGE, copy)
    recipe = dataclasses.replace(recipe, files=files)
    original = recipe.content_hash()
    assert original == load_recipe("postgresql-15").content_hash()  # same code, same hash
    seen = {original}
    for path in sorted(copy.rglob("*.py")):
        text = path.read_bytes()
        path.write_bytes(text + b"\n# changed\n")
        seen.add(recipe.content_hash())
        path.write_bytes(text)
    (copy / "engines" / "another.py").write_text('"""A new engine."""\n')
    seen.add(recipe.content_hash())
    assert len(seen) == len(guest_modules()) + 2  # each change made a hash of its own
    (copy / "engines" / "another.py").unlink()
    assert recipe.content_hash() == original


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("zipapp")
    return ZipappSource(PACKAGE, GUEST_DIR).write_to(directory).rename(directory / "agent.pyz")


def isolated_python(*argv: str) -> subprocess.CompletedProcess[str]:
    """This Python with no site-packages (-S), no environment and no current directory on
    sys.path (-I): the standard library and what argv brings, nothing of the platform."""
    return subprocess.run(
        [sys.executable, "-I", "-S", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )


def test_the_zipapp_runs_with_the_standard_library_only(zipapp: Path) -> None:
    proc = isolated_python(str(zipapp), "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python3 agent.pyz")
    assert "ONEP_POWEROFF_ON_EXIT=1" in proc.stdout
    assert proc.stderr == ""


def test_every_module_imports_from_the_zipapp_alone(zipapp: Path) -> None:
    script = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(zipapp)!r})\n"
        f"for name in {guest_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "ours = sorted(n for n in sys.modules if n.split('.')[0] == 'oneplatform')\n"
        "files = {n: getattr(sys.modules[n], '__file__', '') for n in ours}\n"
        "known = {*sys.stdlib_module_names, 'oneplatform', '__main__'}\n"
        "other = sorted(n for n in sys.modules if n.split('.')[0] not in known)\n"
        "print(json.dumps({'files': files, 'other': other, 'path': sys.path}))\n"
    )
    proc = isolated_python("-c", script)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert not any("site-packages" in entry for entry in found["path"])
    assert found["other"] == []
    assert set(found["files"]) == {"oneplatform", *guest_modules()}
    for name, file in found["files"].items():
        assert file.startswith(f"{zipapp}/"), (name, file)
