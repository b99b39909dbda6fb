"""The reference pages generated from the code are current (`make docs` rewrites them), and
the hand-written ones name what the code has."""

from __future__ import annotations

from pathlib import Path

from oneplatform.assembly import reference_docs
from oneplatform.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_states_page_matches_the_code() -> None:
    assert (DOCS / "states.md").read_text() == reference_docs(), "run `make docs`"


def test_every_setting_is_documented() -> None:
    page = (DOCS / "configuration.md").read_text()
    names = [f"ONEP_{name.upper()}" for name in Settings.model_fields]
    assert [env for env in names if f"`{env}`" not in page] == []
