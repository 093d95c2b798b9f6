"""A job, its events, and the states it moves through."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# The event type that ends a job's stream, by final state.
FINAL_EVENT = {"succeeded": "complete", "failed": "failed", "cancelled": "cancelled"}
FINAL_EVENTS = frozenset(FINAL_EVENT.values())


@dataclass(slots=True)
class Job:
    kind: str
    params: dict[str, Any]
    owner: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: State = "queued"
    percent: float = 0.0
    step: int | None = None
    message: str = ""
    result: Any = None
    error: str | None = None
    attempt: int = 1
    cancel_requested: bool = False
    # The fencing token of the runner holding the job's lease (None unless running), and the
    # number of its last event: every write names both, so a stale runner's is refused.
    lease: str | None = None
    seq: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    def public(self) -> dict[str, Any]:
        out = self.to_dict()
        out.pop("owner")
        out.pop("lease")
        out["last_event_id"] = str(out.pop("seq"))
        out["status_url"] = f"/jobs/{self.id}"
        out["events_url"] = f"/jobs/{self.id}/events"
        return out


_FIELDS = frozenset(f.name for f in fields(Job))


@dataclass(slots=True, frozen=True)
class JobEvent:
    id: str
    type: str  # progress | log | complete | failed | cancelled
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENTS
