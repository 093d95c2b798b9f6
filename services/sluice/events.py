"""The unit a stream producer yields, independent of the wire format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class Event:
    """One message of a stream.

    ``data`` is any JSON-serialisable value; a ``str`` is sent as-is (never JSON-quoted).
    ``event``, ``id`` and ``retry`` map to the SSE fields and to the NDJSON envelope.
    ``text`` overrides how the event is written to a ``text/plain`` stream (default: a
    ``str`` ``data`` verbatim, anything else as one JSON line).
    A producer may also yield ``bytes``: a chunk already framed in the stream's own
    format, written byte for byte (what a pass-through proxy forwards).
    """

    data: Any = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        for name in ("event", "id"):
            value = getattr(self, name)
            if value is not None and ("\n" in value or "\r" in value or "\0" in value):
                raise ValueError(f"SSE {name!r} must be a single line without NUL: {value!r}")
