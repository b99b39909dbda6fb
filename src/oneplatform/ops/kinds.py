"""Operation kinds: named recipes of idempotent steps, each saying what it does to which
resource type (its intent), registered by name so any worker can run any kind."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oneplatform.schemas.operations import Intent

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from oneplatform.errors import PlatformError
    from oneplatform.ops.engine import StepContext

__all__ = ["FailureFn", "Intent", "OperationKind", "OperationStatus", "StepFn", "StepStatus"]


class OperationStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED)


OPEN = (OperationStatus.PENDING.value, OperationStatus.RUNNING.value)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


StepFn = Callable[["StepContext"], None]
FailureFn = Callable[["Session", "StepContext", "PlatformError"], None]


@dataclass(frozen=True)
class OperationKind:
    """A named recipe of steps. Each step must be idempotent: it may run again after a crash
    that happened before its completion was recorded, never after."""

    name: str
    resource_type: str
    intent: Intent
    steps: tuple[tuple[str, StepFn], ...]
    on_failure: FailureFn | None = None
    description: str = ""

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]


_REGISTRY: dict[str, OperationKind] = {}


def register(kind: OperationKind) -> OperationKind:
    """Make ``kind`` runnable by workers; a second kind of the same name is a bug."""
    existing = _REGISTRY.get(kind.name)
    if existing is not None and existing is not kind:
        raise ValueError(f"operation kind {kind.name!r} is registered twice")
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str) -> OperationKind:
    return _REGISTRY[name]


def all_kinds() -> list[OperationKind]:
    return sorted(_REGISTRY.values(), key=lambda k: k.name)


def initial_steps(kind: OperationKind) -> list[dict[str, Any]]:
    return [
        {
            "name": n,
            "status": StepStatus.PENDING.value,
            "message": "",
            "started_at": None,
            "finished_at": None,
        }
        for n in kind.step_names
    ]
