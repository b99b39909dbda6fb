"""One state-machine type for every resource: its table, its resting states, where a failure
leads, and the one choke point that changes a row's state and records the event.

Each resource declares one :class:`StateMachine` next to its status enum (instances,
database instances, nodes, images). Services and operation steps never assign a status
field themselves: they call :meth:`StateMachine.created` once and :meth:`StateMachine.move`
after, which checks the table and writes an :class:`~oneplatform.store.models.Event`.
``docs/states.md`` is generated from these objects (``make docs``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from oneplatform.errors import Conflict
from oneplatform.store.models import Event, utcnow

S = TypeVar("S", bound=enum.StrEnum)
MESSAGE_LIMIT = 2000


@dataclass(frozen=True)
class StateMachine(Generic[S]):
    """The allowed moves of one resource type.

    ``stable`` are the states a resource rests in (no operation drives it); every other state
    is one an operation is working through. ``failure`` says where a failure leads from each
    busy state (states it does not name fail to ``failed``). Reaching ``deleted`` stamps the
    row's ``deleted_at``; ``deleting`` is the state a delete request moves the row to.
    """

    resource_type: str
    states: type[S]
    initial: S
    transitions: Mapping[S, frozenset[S]]
    stable: frozenset[S]
    failed: S
    failure: Mapping[S, S] = field(default_factory=dict)
    deleting: S | None = None
    deleted: S | None = None
    field: str = "status"
    message_field: str | None = "status_message"
    description: str = ""

    def __post_init__(self) -> None:
        missing = set(self.states) - set(self.transitions)
        if missing:
            raise ValueError(f"{self.resource_type}: no transitions for {sorted(missing)}")

    # -- reading ---------------------------------------------------------------------------
    def state_of(self, row: Any) -> S:
        return self.states(getattr(row, self.field))

    def allows(self, src: S, dst: S) -> bool:
        return dst in self.transitions[src]

    def is_stable(self, state: S) -> bool:
        return state in self.stable

    def failure_of(self, state: S) -> S:
        """Where a failure while in ``state`` leads."""
        return self.failure.get(state, self.failed)

    # -- writing ---------------------------------------------------------------------------
    def created(self, session: Session, row: Any, message: str = "") -> None:
        """Put a new row in the initial state and record its first event."""
        setattr(row, self.field, self.initial.value)
        self._set_message(row, message)
        self._record(session, row, None, self.initial, message)

    def move(self, session: Session, row: Any, new: S, message: str = "") -> bool:
        """Move ``row`` to ``new`` if the table allows it, and record an event.

        Moving to the state the row is in only updates its message and records nothing.
        Returns whether the state changed.
        """
        old = self.state_of(row)
        if old is new:
            self._set_message(row, message)
            return False
        if not self.allows(old, new):
            raise Conflict(
                f"{self.resource_type} {getattr(row, 'name', row.id)!r} cannot go from "
                f"{old.value} to {new.value}",
                code="invalid_state_transition",
            )
        setattr(row, self.field, new.value)
        self._set_message(row, message)
        if new is self.deleted:
            row.deleted_at = utcnow()
        self._record(session, row, old, new, message)
        return True

    def fail(self, session: Session, row: Any, message: str) -> None:
        """Move ``row`` to where a failure in its current state leads."""
        self.move(session, row, self.failure_of(self.state_of(row)), message)

    def _set_message(self, row: Any, message: str) -> None:
        if self.message_field is not None:
            setattr(row, self.message_field, message[:MESSAGE_LIMIT])

    def _record(self, session: Session, row: Any, old: S | None, new: S, message: str) -> None:
        session.add(
            Event(
                resource_type=self.resource_type,
                resource_id=row.id,
                from_status=old.value if old is not None else None,
                to_status=new.value,
                message=message[:MESSAGE_LIMIT],
            )
        )

    # -- documentation -----------------------------------------------------------------------
    def to_markdown(self) -> str:
        """The table as Markdown, for ``docs/states.md``."""
        lines = [f"## {self.resource_type}", ""]
        if self.description:
            lines += [self.description, ""]
        lines += [
            f"Initial state: `{self.initial.value}`. Resting states: "
            + ", ".join(f"`{s.value}`" for s in self.states if s in self.stable)
            + ".",
            "",
            "| state | may move to | a failure leads to |",
            "|---|---|---|",
        ]
        for state in self.states:
            targets = ", ".join(f"`{t.value}`" for t in self.states if t in self.transitions[state])
            fails = "" if self.is_stable(state) else f"`{self.failure_of(state).value}`"
            lines.append(f"| `{state.value}` | {targets or '(final)'} | {fails} |")
        return "\n".join(lines) + "\n"


def render_docs(machines: Iterable[StateMachine[Any]]) -> str:
    header = (
        "# State machines\n\n"
        "Generated from the code by `make docs`; do not edit by hand (a test compares).\n"
        "Every change of state goes through one function that checks it against these tables\n"
        "and records an event.\n\n"
    )
    return header + "\n".join(m.to_markdown() for m in machines)
