"""Incremental SSE framing of an upstream body: complete events out, the rest held."""

from __future__ import annotations


class SseSplitter:
    """Feed raw body chunks; get back complete SSE events (each with its blank line)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return []
        if end == len(data) - 2 and end > 0 and data.find(b"\n\n") == end:
            self._buffer = b""
            return [data]  # one whole event, the usual chunk of a token stream: no copies
        self._buffer = data[end + 2 :]
        return [frame + b"\n\n" for frame in data[:end].split(b"\n\n") if frame]

    @property
    def pending(self) -> int:
        return len(self._buffer)


def data_of(frame: bytes) -> bytes | None:
    """The ``data`` payload of one SSE event (lines joined by newlines), or None."""
    if frame.startswith(b"data: ") and frame.count(b"\n") == 2:
        return frame[6:-2]
    parts = []
    for line in frame.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None
