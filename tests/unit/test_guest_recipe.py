"""The guest agent goes into the postgresql-15 image as a ``zipapp:`` recipe file."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from oneplatform import guest
from oneplatform.errors import ImageBuildError
from oneplatform.guest.contract import AGENT_GUEST_PATH, DEFAULT_AGENT_PORT
from oneplatform.images.builder import mmdebstrap_argv
from oneplatform.images.recipes import ZipappSource, load_recipe

GUEST_DIR = Path(guest.__file__).resolve().parent


def test_postgresql_recipe_runs_the_agent_zipapp(tmp_path: Path) -> None:
    recipe = load_recipe("postgresql-15")
    assert AGENT_GUEST_PATH == "/usr/local/lib/oneplatform/agent.pyz"
    assert recipe.command == ("/usr/bin/python3", AGENT_GUEST_PATH)
    assert recipe.ports == {"postgresql": 5432, "agent": DEFAULT_AGENT_PORT}
    assert recipe.files[AGENT_GUEST_PATH] == ZipappSource("oneplatform.guest", GUEST_DIR)
    assert set(recipe.files) == {AGENT_GUEST_PATH, "/usr/local/sbin/onep-vm-init"}
    assert recipe.env["ONEP_DATASTORE"] == "postgresql"
    assert recipe.env["ONEP_DATASTORE_VERSION"] == "15"
    staging = tmp_path / "files"
    staging.mkdir()
    argv = mmdebstrap_argv(recipe, tmp_path / "out.tar", recipe.local_files(staging))
    hooks = [a for a in argv if "agent.pyz" in a and "install -D" in a]
    staged = staging / "oneplatform.guest.pyz"
    assert hooks == [f'--customize-hook=install -D -m 0644 {staged} "$1"{AGENT_GUEST_PATH}']
    assert staged.read_bytes() == recipe.files[AGENT_GUEST_PATH].read_bytes()
    with zipfile.ZipFile(BytesIO(staged.read_bytes())) as archive:
        assert "oneplatform/guest/main.py" in archive.namelist()


def test_the_canonical_recipe_names_the_agent() -> None:
    recipe = load_recipe("postgresql-15")
    agent = recipe.files[AGENT_GUEST_PATH]
    assert isinstance(agent, ZipappSource)
    assert recipe.canonical()["files"][AGENT_GUEST_PATH] == "oneplatform.guest.pyz"
    assert recipe.content_hash() == load_recipe("postgresql-15").content_hash()


@pytest.mark.parametrize(
    "source",
    [
        "package:oneplatform.guest/../../../etc/passwd",
        "package:json/decoder.py",  # not one of the platform's packages
        "package:oneplatform.no_such_package/x.py",
        "package:oneplatform.guest",  # no file named
        "zipapp:json",  # not one of the platform's packages
        "zipapp:oneplatform.no_such_package",
        "zipapp:oneplatform.guest/../x",
        "zipapp:oneplatform.images",  # no __main__.py
        "zipapp:",
    ],
)
def test_bad_package_sources_are_refused(tmp_path: Path, source: str) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "bad.toml").write_text(f'packages = []\n[files]\n"/x" = "{source}"\n')
    with pytest.raises(ImageBuildError):
        load_recipe("bad", recipes_dir=tmp_path)
