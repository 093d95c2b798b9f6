"""What the mock saw of each request, so tests can prove what a proxy did upstream.

``counts`` (``/mock/stats``) has ``requests`` and ``streams``, a count per API (``chat``,
``completions``, ``embeddings``, ``responses``: the entries' ``kind``, always present) and
a count per way a request ended (``completed``, ``client_disconnect``, ``status_503``,
``reset``, ``error``: a non-streamed ``error_after``, ...). A streamed ``error_after`` ends
``completed``: the stream itself ended cleanly, after its error event.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MAX_ENTRIES = 10_000
Kind = Literal["chat", "completions", "embeddings", "responses"]
KINDS: tuple[Kind, ...] = ("chat", "completions", "embeddings", "responses")


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
    kind: Kind = "chat"  # which API it used


class Ledger:
    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.counts: dict[str, int] = {"requests": 0, "streams": 0, **dict.fromkeys(KINDS, 0)}

    def open(
        self,
        request_id: str,
        model: str,
        stream: bool,
        key_id: str | None,
        kind: Kind = "chat",
    ) -> Entry:
        entry = Entry(request_id, model, stream, key_id, time.time(), kind=kind)
        self.entries[request_id] = entry
        if len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)
        self.counts["requests"] += 1
        self.counts[kind] += 1
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
