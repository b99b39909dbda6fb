"""Operation kinds, their steps, and statuses."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from oneplatform.errors import PlatformError
    from oneplatform.ops.engine import StepContext


class OperationStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED)


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
    steps: tuple[tuple[str, StepFn], ...]
    on_failure: FailureFn | None = None
    description: str = ""
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]


_REGISTRY: dict[str, OperationKind] = {}


def register(kind: OperationKind) -> OperationKind:
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str) -> OperationKind:
    return _REGISTRY[name]


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
