"""What the mock saw of each request, so tests can prove what a proxy did upstream."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_ENTRIES = 10_000


@dataclass(slots=True)
class Entry:
    request_id: str
    model: str
    stream: bool
    key_id: str | None
    started_at: float
    tokens_sent: int = 0
    ended_at: float | None = None
    end: str | None = None  # completed, client_disconnect, error, ...
    extra_fields: list[str] = field(default_factory=list)  # body fields beyond the known
    peer: str | None = None  # "host:port" of the connection that carried it


class Ledger:
    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.counts: dict[str, int] = {"requests": 0, "streams": 0}

    def open(self, request_id: str, model: str, stream: bool, key_id: str | None) -> Entry:
        entry = Entry(request_id, model, stream, key_id, time.time())
        self.entries[request_id] = entry
        if len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)
        self.counts["requests"] += 1
        if stream:
            self.counts["streams"] += 1
        return entry

    def close(self, entry: Entry, end: str) -> None:
        entry.ended_at = time.time()
        entry.end = end
        self.counts[end] = self.counts.get(end, 0) + 1

    def get(self, request_id: str) -> dict[str, Any] | None:
        entry = self.entries.get(request_id)
        return asdict(entry) if entry is not None else None
