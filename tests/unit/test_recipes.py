"""Recipes: loading, content hashing, and the build command they turn into."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from oneplatform.errors import ImageBuildError, NotFound
from oneplatform.images import builder, recipes
from oneplatform.images.builder import artifact_for, build_rootfs, mmdebstrap_argv, rootfs_path
from oneplatform.images.recipes import Recipe, list_recipes, load_recipe


def _recipe(tmp_path: Path, script: bytes = b"#!/bin/sh\necho hi\n") -> Recipe:
    source = tmp_path / "start.sh"
    source.write_bytes(script)
    return Recipe(
        name="demo",
        description="a demo",
        packages=("postgresql-15", "python3"),
        command=("/usr/local/bin/start",),
        files={"/usr/local/bin/start": source},
        env={"LANG": "C.UTF-8"},
        ports={"postgresql": 5432},
    )


def test_postgresql_recipe_loads() -> None:
    recipe = load_recipe("postgresql-15")
    assert "postgresql-15" in list_recipes()
    assert recipe.suite == "bookworm"
    assert "postgresql-15" in recipe.packages
    assert recipe.ports == {"postgresql": 5432, "agent": 8471}
    assert recipe.command == ("/usr/bin/python3", "/usr/local/lib/oneplatform/agent.py")
    source = recipe.files["/usr/local/lib/oneplatform/agent.py"]
    assert source.name == "agent.py" and source.parent.name == "guest"
    assert recipe.apt_sources() == (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    )


def test_hash_is_stable(tmp_path: Path) -> None:
    first = _recipe(tmp_path).content_hash()
    assert first == _recipe(tmp_path).content_hash()
    assert len(first) == 64
    assert (
        load_recipe("postgresql-15").content_hash() == load_recipe("postgresql-15").content_hash()
    )


def test_hash_changes_with_a_package(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    changed = dataclasses.replace(recipe, packages=(*recipe.packages, "procps"))
    assert changed.content_hash() != recipe.content_hash()


def test_hash_changes_with_a_file(tmp_path: Path) -> None:
    before = _recipe(tmp_path).content_hash()
    after = _recipe(tmp_path, script=b"#!/bin/sh\necho changed\n").content_hash()
    assert after != before


def test_hash_changes_with_the_builder_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _recipe(tmp_path).content_hash()
    monkeypatch.setattr(recipes, "BUILDER_VERSION", "test-next")
    assert _recipe(tmp_path).content_hash() != before


@pytest.mark.parametrize("name", ["no-such-recipe", "../postgresql-15", ""])
def test_unknown_recipe_is_not_found(name: str) -> None:
    with pytest.raises(NotFound) as info:
        load_recipe(name)
    assert info.value.code == "not_found"


def test_files_outside_the_files_dir_are_refused(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "bad.toml").write_text(
        'description = "x"\npackages = []\n[files]\n"/etc/passwd" = "../passwd"\n'
    )
    with pytest.raises(ImageBuildError):
        load_recipe("bad", recipes_dir=tmp_path)


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "typo.toml").write_text('description = "x"\npackage = ["a"]\n')
    with pytest.raises(ImageBuildError, match="unknown keys"):
        load_recipe("typo", recipes_dir=tmp_path)


def test_paths_and_artifact_carry_the_hash(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    digest = recipe.content_hash()
    assert rootfs_path(recipe, tmp_path) == tmp_path / f"demo-{digest[:16]}.tar"
    artifact = artifact_for(recipe, tmp_path)
    assert artifact.ref == f"localhost/oneplatform/demo:{digest[:12]}"
    assert artifact.rootfs == rootfs_path(recipe, tmp_path)
    assert tuple(artifact.command) == recipe.command
    assert dict(artifact.env) == {"LANG": "C.UTF-8"}


def test_mmdebstrap_command(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    argv = mmdebstrap_argv(recipe, tmp_path / "out.tar")
    assert argv[:2] == ["mmdebstrap", "--variant=minbase"]
    assert "--include=postgresql-15,python3" in argv
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    assert hooks == [
        f'--customize-hook=install -D -m 0755 {tmp_path / "start.sh"} "$1"/usr/local/bin/start'
    ]
    assert argv[-5:] == ["bookworm", str(tmp_path / "out.tar"), *recipe.apt_sources()]


def test_cached_rootfs_returns_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path)
    cached = rootfs_path(recipe, tmp_path)
    cached.write_bytes(b"tar")

    def no_build(*args: object) -> None:
        raise AssertionError("mmdebstrap must not run for a cached rootfs")

    monkeypatch.setattr(builder, "_run_mmdebstrap", no_build)
    assert build_rootfs(recipe, tmp_path) == cached


def test_low_disk_space_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path)
    monkeypatch.setattr(
        builder.shutil,
        "disk_usage",
        lambda _: SimpleNamespace(total=10**10, used=10**10, free=287 * 2**20),
    )
    with pytest.raises(ImageBuildError, match=r"not enough free disk space.*287 MB free"):
        build_rootfs(recipe, tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.tar")) == []


def test_failed_build_reports_the_output_tail_and_leaves_no_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mmdebstrap"
    # Writes a partial output file (second-to-last argument is the target), then fails.
    fake.write_text(
        "#!/bin/sh\necho 'I: downloading packages with apt...'\n"
        'for a; do prev="$last"; last="$a"; done\n'
        'echo partial > "$prev"\n'
        "echo 'E: apt-get failed: package zz not found' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    recipe = dataclasses.replace(_recipe(tmp_path), extra_suites=())
    lines: list[str] = []
    with pytest.raises(ImageBuildError, match="package zz not found") as info:
        build_rootfs(recipe, tmp_path / "cache", progress=lines.append)
    assert info.value.details["exit_code"] == 1
    assert lines[0] == "I: downloading packages with apt..."
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tar"] == []
