"""When the health checker reads a database's engine figures again."""

import datetime as dt

from oneplatform.dbaas.health import _stats_due


def test_engine_figures_are_read_again_only_once_they_are_old() -> None:
    now = dt.datetime.now(dt.UTC)
    assert _stats_due(None, 30)
    assert _stats_due({"connections": 1}, 30)  # never stamped
    assert _stats_due({"at": "garbage"}, 30)
    assert not _stats_due({"at": (now - dt.timedelta(seconds=5)).isoformat()}, 30)
    assert _stats_due({"at": (now - dt.timedelta(seconds=31)).isoformat()}, 30)
    naive = (now - dt.timedelta(seconds=5)).replace(tzinfo=None).isoformat()
    assert not _stats_due({"at": naive}, 30)  # SQLite hands back naive UTC
    assert _stats_due({"at": now.isoformat()}, 0)  # 0: every round
