"""The guest agent goes into the postgresql-15 image as a ``package:`` recipe file."""

from __future__ import annotations

from pathlib import Path

import pytest

from oneplatform.errors import ImageBuildError
from oneplatform.guest import agent
from oneplatform.images.builder import mmdebstrap_argv
from oneplatform.images.recipes import load_recipe

AGENT_GUEST_PATH = "/usr/local/lib/oneplatform/agent.py"


def test_postgresql_recipe_runs_the_agent(tmp_path: Path) -> None:
    recipe = load_recipe("postgresql-15")
    assert recipe.command == ("/usr/bin/python3", AGENT_GUEST_PATH)
    assert recipe.ports == {"postgresql": 5432, "agent": agent.DEFAULT_AGENT_PORT}
    assert recipe.files[AGENT_GUEST_PATH] == Path(agent.__file__).resolve()
    assert set(recipe.files) == {AGENT_GUEST_PATH, "/usr/local/sbin/onep-vm-init"}
    assert recipe.env["ONEP_DATASTORE"] == "postgresql"
    assert recipe.env["ONEP_DATASTORE_VERSION"] == "15"
    argv = mmdebstrap_argv(recipe, tmp_path / "out.tar")
    hooks = [a for a in argv if "agent.py" in a and "install -D" in a]
    source = Path(agent.__file__).resolve()
    assert hooks == [f'--customize-hook=install -D -m 0644 {source} "$1"{AGENT_GUEST_PATH}']


def test_the_agent_is_part_of_the_content_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe("postgresql-15")
    before = recipe.content_hash()
    original = Path.read_bytes

    def patched(self: Path) -> bytes:
        data = original(self)
        return data + b"\n# changed\n" if self.name == "agent.py" else data

    monkeypatch.setattr(Path, "read_bytes", patched)
    assert recipe.content_hash() != before


@pytest.mark.parametrize(
    "source",
    [
        "package:oneplatform.guest/../../../etc/passwd",
        "package:json/decoder.py",  # not one of the platform's packages
        "package:oneplatform.no_such_package/x.py",
        "package:oneplatform.guest",  # no file named
    ],
)
def test_bad_package_sources_are_refused(tmp_path: Path, source: str) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "bad.toml").write_text(f'packages = []\n[files]\n"/x" = "{source}"\n')
    with pytest.raises(ImageBuildError):
        load_recipe("bad", recipes_dir=tmp_path)
