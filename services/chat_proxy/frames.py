"""Incremental SSE framing of an upstream body: complete events out, the rest held."""

from __future__ import annotations

MAX_EVENT_BYTES = 1024 * 1024  # one event's bytes at most (SLUICE_UPSTREAM_MAX_EVENT_BYTES)


class FrameTooLarge(ValueError):
    """An event grew past its bound before its blank line came."""


class SseSplitter:
    """Feed raw body chunks; get back complete SSE events (each with its blank line).

    What is held between chunks is one event not yet ended: past ``max_bytes`` it is
    refused (FrameTooLarge), so an upstream that never sends a blank line, or one endless
    ``data:`` line, costs a bounded buffer, not the worker's memory.
    """

    __slots__ = ("_buffer", "max_bytes")

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._hold(data)
            return []
        if end == len(data) - 2 and end > 0 and data.find(b"\n\n") == end:
            if end > self.max_bytes:
                raise FrameTooLarge(f"an upstream event exceeds {self.max_bytes} bytes")
            self._buffer = b""
            return [data]  # one whole event, the usual chunk of a token stream: no copies
        self._hold(data[end + 2 :])
        frames = [frame + b"\n\n" for frame in data[:end].split(b"\n\n") if frame]
        if any(len(frame) > self.max_bytes for frame in frames):
            raise FrameTooLarge(f"an upstream event exceeds {self.max_bytes} bytes")
        return frames

    def _hold(self, rest: bytes) -> None:
        if len(rest) > self.max_bytes:
            self._buffer = b""
            raise FrameTooLarge(f"an upstream event exceeds {self.max_bytes} bytes")
        self._buffer = rest

    @property
    def pending(self) -> int:
        return len(self._buffer)


class CommentTracker:
    """Tells, chunk by chunk, whether an SSE body said anything but comments.

    A line that starts with ``:`` is a comment (a heartbeat, a keep-alive): an upstream
    whose model is stuck may go on sending them for ever, so they must not count as the
    upstream speaking. Chunks split lines anywhere: the kind of the line a chunk ends in
    is carried to the next one.
    """

    __slots__ = ("_line",)

    def __init__(self) -> None:
        self._line = b""  # the first byte of the unfinished line (b"" at a line's start)

    def says_something(self, chunk: bytes) -> bool:
        """True when ``chunk`` holds a byte of a line that is not a comment."""
        if not chunk:
            return False
        line = self._line
        last = chunk.rfind(b"\n")
        if last == len(chunk) - 1:
            self._line = b""
        elif last >= 0:
            self._line = chunk[last + 1 : last + 2]
        elif not line:
            self._line = chunk[:1]
        if (line or chunk[:1]) not in (b":", b"\n", b"\r"):
            return True  # the usual case: a chunk that starts with (or inside) an event line
        return any(text[:1] not in (b"", b":", b"\r") for text in chunk.split(b"\n")[1:])


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
