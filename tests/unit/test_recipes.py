"""Recipes: loading, content hashing, and the build command they turn into."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from oneplatform.errors import ImageBuildError, NotFound
from oneplatform.images import builder, recipes
from oneplatform.images.builder import (
    artifact_for,
    build_rootfs,
    build_vm_image,
    mmdebstrap_argv,
    rootfs_path,
    vm_image_if_built,
    vm_image_path,
)
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
    assert recipe.command == ("/usr/bin/python3", "/usr/local/lib/oneplatform/agent.pyz")
    source = recipe.files["/usr/local/lib/oneplatform/agent.pyz"]
    assert isinstance(source, recipes.ZipappSource) and source.package == "oneplatform.guest"
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
    argv = mmdebstrap_argv(recipe, tmp_path / "out.tar", recipe.local_files(tmp_path))
    assert argv[:2] == ["mmdebstrap", "--variant=minbase"]
    assert "--include=postgresql-15,python3" in argv
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    assert hooks[0] == (
        f'--customize-hook=install -D -m 0755 {tmp_path / "start.sh"} "$1"/usr/local/bin/start'
    )
    assert len(hooks) == 2 and builder.ENTRYPOINT_PATH in hooks[1]  # for the VM init
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


def test_a_build_writes_zipapps_for_mmdebstrap_and_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Keeps a copy of each file an install hook names, and where it was; writes the target.
    (bin_dir / "mmdebstrap").write_text(
        "#!/bin/sh\n"
        'for a; do case "$a" in --customize-hook=install*)\n'
        '  src="$(echo "$a" | cut -d" " -f5)"; cp "$src" "$0.copy"; echo "$src" > "$0.src";;\n'
        'esac; prev="$last"; last="$a"; done\n'
        'echo tar > "$prev"\n'
    )
    (bin_dir / "mmdebstrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    agent = load_recipe("postgresql-15").files["/usr/local/lib/oneplatform/agent.pyz"]
    assert isinstance(agent, recipes.ZipappSource)
    recipe = dataclasses.replace(_recipe(tmp_path), extra_suites=(), files={"/opt/a.pyz": agent})
    assert build_rootfs(recipe, tmp_path / "cache").read_text() == "tar\n"
    assert (bin_dir / "mmdebstrap.copy").read_bytes() == agent.read_bytes()
    staged = Path((bin_dir / "mmdebstrap.src").read_text().strip())
    assert staged.name == "oneplatform.guest.pyz" and not staged.parent.exists()


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


# --- the VM format -----------------------------------------------------------------------


def test_vm_paths_sit_beside_the_rootfs(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    stem = rootfs_path(recipe, tmp_path).stem
    vm = vm_image_path(recipe, tmp_path)
    assert (vm.disk, vm.kernel, vm.initrd) == (
        tmp_path / f"{stem}.qcow2",
        tmp_path / f"{stem}.vmlinuz",
        tmp_path / f"{stem}.initrd",
    )
    assert vm.cmdline == builder.VM_CMDLINE
    for word in (
        "root=LABEL=onep-root",
        "rw",
        "console=ttyS0",
        "init=/usr/local/sbin/onep-vm-init",
    ):
        assert word in vm.cmdline.split()


def test_artifact_has_the_vm_format_only_when_all_of_it_is_built(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    vm = vm_image_path(recipe, tmp_path)
    assert artifact_for(recipe, tmp_path).vm is None
    vm.disk.write_bytes(b"qcow2")
    vm.kernel.write_bytes(b"kernel")
    assert artifact_for(recipe, tmp_path).vm is None
    vm.initrd.write_bytes(b"initrd")
    assert artifact_for(recipe, tmp_path).vm == vm
    assert vm_image_if_built(recipe, tmp_path) == vm


def test_the_postgresql_recipe_boots_as_a_vm() -> None:
    recipe = load_recipe("postgresql-15")
    for package in ("linux-image-cloud-amd64", "initramfs-tools", "kmod", "e2fsprogs"):
        assert package in recipe.packages
    init = recipe.files[builder.VM_INIT]
    assert isinstance(init, Path)
    assert init.name == "onep-vm-init" and init.read_bytes().startswith(b"#!/bin/sh\n")
    assert recipe.extra_suites == ("bookworm-updates", "bookworm-security")
    text = init.read_text()
    for name in ("onep-root", "onep-config", "onep-data", "bundle.json", "ONEP_POWEROFF_ON_EXIT"):
        assert name in text
    assert builder.ENTRYPOINT_PATH in text


def test_entrypoint_script_sets_the_environment_and_command(tmp_path: Path) -> None:
    recipe = dataclasses.replace(
        _recipe(tmp_path), env={"LANG": "C.UTF-8", "QUOTED": "it's a b"}, command=("/bin/x", "-y")
    )
    script = builder.entrypoint_script(recipe)
    proc = subprocess.run(
        ["sh", "-c", f'{script}\nfor a in "$@"; do printf "%s\\n" "$a"; done'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.splitlines() == ["LANG=C.UTF-8", "QUOTED=it's a b", "/bin/x", "-y"]


@pytest.mark.parametrize(
    "change", [{"env": {"BAD-NAME": "x"}}, {"command": ()}, {"command": ("A=b", "c")}]
)
def test_entrypoint_refuses_what_env_would_misread(tmp_path: Path, change: dict[str, Any]) -> None:
    recipe = dataclasses.replace(_recipe(tmp_path), **change)
    with pytest.raises(ImageBuildError):
        builder.entrypoint_script(recipe)


def _fake_vm_tools(bin_dir: Path, *, qemu_img_fails: bool = False) -> None:
    """mkfs.ext4 and qemu-img stand-ins that record their arguments and write outputs."""
    bin_dir.mkdir(exist_ok=True)
    mkfs = bin_dir / "mkfs.ext4"
    mkfs.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/mkfs.args"\n'
        'for a; do last="$a"; done\necho ext4 >> "$last"\n'
    )
    qemu_img = bin_dir / "qemu-img"
    qemu_img.write_text(
        "#!/bin/sh\necho 'qemu-img: Could not open: disk full' >&2\nexit 1\n"
        if qemu_img_fails
        else '#!/bin/sh\nfor a; do prev="$last"; last="$a"; done\ncp "$prev" "$last"\n'
    )
    for tool in (mkfs, qemu_img):
        tool.chmod(0o755)


def _rootfs_tar(recipe: Recipe, cache: Path, tmp_path: Path, *, kernel: bool = True) -> Path:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/postgres").write_bytes(b"\0" * 10000)
    if kernel:
        for version in ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"):
            (tree / f"boot/vmlinuz-{version}").write_bytes(f"kernel {version}".encode())
            (tree / f"boot/initrd.img-{version}").write_bytes(f"initrd {version}".encode())
        (tree / "boot/vmlinuz-6.1.0-11-cloud-amd64").write_bytes(b"no initrd for this one")
    cache.mkdir(parents=True, exist_ok=True)
    target = rootfs_path(recipe, cache)
    with tarfile.open(target, "w") as tar:
        tar.add(tree, arcname=".")
    return target


@pytest.fixture
def vm_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    _fake_vm_tools(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(builder, "_SBIN_PATH", str(bin_dir))
    monkeypatch.setattr(builder.os, "geteuid", lambda: 0)
    monkeypatch.setattr(builder, "_run_mmdebstrap", _no_mmdebstrap)
    return bin_dir


def _no_mmdebstrap(*args: object) -> None:
    raise AssertionError("the rootfs tarball is cached: mmdebstrap must not run")


def test_build_vm_image_exports_disk_kernel_and_initrd(tmp_path: Path, vm_tools: Path) -> None:
    recipe = _recipe(tmp_path)
    cache = tmp_path / "cache"
    _rootfs_tar(recipe, cache, tmp_path)
    lines: list[str] = []
    vm = build_vm_image(recipe, cache, progress=lines.append)
    assert vm == vm_image_path(recipe, cache)
    # The newest kernel that has an initrd.
    assert vm.kernel.read_bytes() == b"kernel 6.1.0-10-cloud-amd64"
    assert vm.initrd.read_bytes() == b"initrd 6.1.0-10-cloud-amd64"
    assert vm.kernel.stat().st_mode & 0o777 == 0o644
    assert vm.disk.read_bytes().endswith(b"ext4\n")
    args = (vm_tools / "mkfs.args").read_text().split()
    assert args[args.index("-L") + 1] == "onep-root"
    assert "-d" in args
    assert all(line.startswith("vm: ") for line in lines) and lines
    assert artifact_for(recipe, cache).vm == vm
    # Nothing but the artifacts (and the locks) is left in the cache.
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == sorted(
        p.name for p in (rootfs_path(recipe, cache), vm.disk, vm.kernel, vm.initrd)
    )
    # Cached: a second call does nothing.
    (vm_tools / "mkfs.args").unlink()
    assert build_vm_image(recipe, cache) == vm
    assert not (vm_tools / "mkfs.args").exists()


def test_failed_vm_export_leaves_no_artifact_and_no_work_dir(
    tmp_path: Path, vm_tools: Path
) -> None:
    _fake_vm_tools(vm_tools, qemu_img_fails=True)
    recipe = _recipe(tmp_path)
    cache = tmp_path / "cache"
    tarball = _rootfs_tar(recipe, cache, tmp_path)
    stale = cache / f".{tarball.stem}.crashed.vm-build"
    (stale / "root").mkdir(parents=True)
    with pytest.raises(ImageBuildError, match="qemu-img failed with exit code 1") as info:
        build_vm_image(recipe, cache)
    assert "disk full" in info.value.message
    assert vm_image_if_built(recipe, cache) is None
    names = {p.name for p in cache.iterdir() if not p.name.endswith(".lock")}
    assert names == {tarball.name}  # no half-made disk, no work directory (not even stale)


def test_vm_export_needs_a_kernel_in_the_image(tmp_path: Path, vm_tools: Path) -> None:
    recipe = _recipe(tmp_path)
    cache = tmp_path / "cache"
    _rootfs_tar(recipe, cache, tmp_path, kernel=False)
    with pytest.raises(ImageBuildError, match="linux-image-cloud-amd64"):
        build_vm_image(recipe, cache)
    assert vm_image_if_built(recipe, cache) is None


def test_vm_export_checks_free_space_first(
    tmp_path: Path, vm_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path)
    cache = tmp_path / "cache"
    _rootfs_tar(recipe, cache, tmp_path)
    monkeypatch.setattr(
        builder.shutil,
        "disk_usage",
        lambda _: SimpleNamespace(total=10**10, used=10**10, free=287 * 2**20),
    )
    with pytest.raises(ImageBuildError, match=r"not enough free disk space for a VM image"):
        build_vm_image(recipe, cache)
    assert not (vm_tools / "mkfs.args").exists()


def test_vm_export_needs_root(
    tmp_path: Path, vm_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)
    recipe = _recipe(tmp_path)
    cache = tmp_path / "cache"
    _rootfs_tar(recipe, cache, tmp_path)
    with pytest.raises(ImageBuildError, match="needs root"):
        build_vm_image(recipe, cache)


# -- preloaded images (a cluster node's VM form carries the PostgreSQL image) --------------
def _write_recipe(directory: Path, name: str, extra: str = "") -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(
        f'description = "{name}"\npackages = ["procps"]\ncommand = ["/bin/{name}"]\n{extra}'
    )


def test_preload_names_recipes_and_their_content_is_in_the_hash(tmp_path: Path) -> None:
    recipes_dir = tmp_path / "recipes"
    _write_recipe(recipes_dir, "db")
    _write_recipe(recipes_dir, "node", 'preload = ["db"]\n')
    node = load_recipe("node", recipes_dir)
    assert node.preload == ("db",)
    assert [r.name for r in node.preloaded()] == ["db"]
    before = node.content_hash()
    (recipes_dir / "db.toml").write_text(
        'description = "db"\npackages = ["procps", "less"]\ncommand = ["/bin/db"]\n'
    )
    assert load_recipe("node", recipes_dir).content_hash() != before  # a new db: a new node


def test_a_preload_must_be_a_recipe_that_preloads_nothing(tmp_path: Path) -> None:
    recipes_dir = tmp_path / "recipes"
    _write_recipe(recipes_dir, "node", 'preload = ["nope"]\n')
    with pytest.raises(ImageBuildError, match="preload 'nope'"):
        load_recipe("node", recipes_dir).content_hash()
    _write_recipe(recipes_dir, "inner", 'preload = ["node"]\n')
    _write_recipe(recipes_dir, "outer", 'preload = ["inner"]\n')
    with pytest.raises(ImageBuildError, match="preloads images itself"):
        load_recipe("outer", recipes_dir).preloaded()


def test_the_podman_host_recipe_preloads_postgresql() -> None:
    assert [r.name for r in load_recipe("podman-host").preloaded()] == ["postgresql-15"]


def _podman(store: Path, runroot: str, *args: str) -> subprocess.CompletedProcess[str]:
    podman = shutil.which("podman")
    if podman is None:
        pytest.fail("podman is not installed (scripts/setup.sh installs it)")
    base = [podman, "--root", str(store), "--runroot", runroot]
    base += ["--storage-driver", "overlay", "--events-backend", "none"]
    return subprocess.run([*base, *args], capture_output=True, text=True, check=False)


@pytest.fixture
def short_runroot() -> Iterator[str]:
    """A run root for Podman: it wants a short path (its sockets')."""
    path = tempfile.mkdtemp(prefix="onep-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_preloaded_images_are_an_image_store_the_guests_podman_reads(
    tmp_path: Path, short_runroot: str
) -> None:
    """Real Podman both ways: the builder imports the image into the tree; a Podman with
    an empty store of its own and that tree's store as an additional one sees the image
    with its command and environment."""
    if os.geteuid() != 0:
        pytest.fail("the image builder runs as root (it keeps the rootfs' owners)")
    recipe = _recipe(tmp_path)
    cache = tmp_path / "cache"
    _rootfs_tar(recipe, cache, tmp_path, kernel=False)
    image = artifact_for(recipe, cache)
    root = tmp_path / "root"
    lines: list[str] = []
    podman = shutil.which("podman") or "podman"
    store = builder.preload_images(root, [image], {"podman": podman}, lines.append)
    assert store == root / "usr/lib/oneplatform/images"
    assert f"preloading {image.ref}" in lines
    assert not (store / "libpod").exists()  # the build's own Podman state stays out
    conf = (root / "etc/containers/storage.conf").read_text()
    assert f'additionalimagestores = ["{builder.PRELOAD_STORE}"]' in conf
    guest = tmp_path / "guest"
    exists = _podman(guest, short_runroot, "image", "exists", image.ref)
    assert exists.returncode == 1  # not without the store
    extra = f"additionalimagestore={store}"
    found = _podman(guest, short_runroot, "--storage-opt", extra, "image", "inspect", image.ref)
    assert found.returncode == 0, found.stderr
    config = json.loads(found.stdout)[0]["Config"]
    assert config["Cmd"] == list(recipe.command)
    assert "LANG=C.UTF-8" in config["Env"]
    assert not list(guest.glob("overlay-layers/*.tar-split.gz"))  # nothing copied


def test_a_vm_image_with_a_preload_carries_the_store(
    tmp_path: Path, vm_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes_dir = tmp_path / "recipes"
    _write_recipe(recipes_dir, "db")
    _write_recipe(recipes_dir, "node", 'preload = ["db"]\n')
    node, db = load_recipe("node", recipes_dir), load_recipe("db", recipes_dir)
    cache = tmp_path / "cache"
    _rootfs_tar(node, cache, tmp_path)
    tree = tmp_path / "db-tree"
    tree.mkdir()
    (tree / "hello").write_text("hi")
    with tarfile.open(rootfs_path(db, cache), "w") as tar:
        tar.add(tree, arcname=".")
    seen: list[tuple[Path, list[str]]] = []

    def preload(root: Path, images: Any, tools: Any, say: Any) -> Path:
        seen.append((root, [image.ref for image in images]))
        assert tools["podman"].endswith("podman")
        return root

    monkeypatch.setattr(builder, "preload_images", preload)
    build_vm_image(node, cache)
    assert [refs for _, refs in seen] == [[artifact_for(db, cache).ref]]
    assert vm_image_if_built(node, cache) is not None
