"""The datastore engines the agent can run, by datastore name.

Adding one: write ``engines/<datastore>.py`` with an :class:`~.base.Engine` subclass whose
``datastore`` is the name the recipe's ``ONEP_DATASTORE`` and the bundle use, and add the
class to :data:`ENGINES` below.
"""

from __future__ import annotations

from .base import Engine
from .mariadb import MariaDbEngine
from .postgresql import PostgresEngine
from .redis import RedisEngine

ENGINES: dict[str, type[Engine]] = {
    engine.datastore: engine for engine in (PostgresEngine, MariaDbEngine, RedisEngine)
}
