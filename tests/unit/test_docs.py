"""The reference pages generated from the code are current (`make docs` rewrites them)."""

from __future__ import annotations

from pathlib import Path

from oneplatform.assembly import reference_docs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_states_page_matches_the_code() -> None:
    assert (DOCS / "states.md").read_text() == reference_docs(), "run `make docs`"
