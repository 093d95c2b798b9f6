"""Incremental SSE framing of an upstream body: complete events out, the rest held."""

from __future__ import annotations

MAX_EVENT_BYTES = 1024 * 1024  # one event's bytes at most (SLUICE_UPSTREAM_MAX_EVENT_BYTES)


class FrameTooLarge(ValueError):
    """An event grew past its bound before its blank line came."""


def _normalise(chunk: bytes, after_cr: bool) -> tuple[bytes, bool]:
    """``chunk`` with its line ends (CRLF, CR, LF: SSE allows all three) made LF, and
    whether it ended in CR. ``after_cr``: the chunk before ended in CR, so an LF first here
    is the second half of its CRLF (already a line end), not another line end."""
    if after_cr and chunk[:1] == b"\n":
        chunk = chunk[1:]
    if b"\r" not in chunk:
        return chunk, False
    return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), chunk.endswith(b"\r")


class SseSplitter:
    """Feed raw body chunks; get back complete SSE events (each with its blank line).

    What is held between chunks is one event not yet ended: past ``max_bytes`` it is
    refused (FrameTooLarge), so an upstream that never sends a blank line, or one endless
    ``data:`` line, costs a bounded buffer, not the worker's memory. Held pieces are kept
    as they came and joined once, when their event ends: a peer that sends an event a few
    bytes at a time costs each byte one look and one copy, not one per later piece. Line
    ends come out as LF, whatever the upstream used.
    """

    __slots__ = ("_cr", "_last", "_parts", "_size", "max_bytes")

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []  # the held event's pieces (line ends made LF)
        self._size = 0  # their bytes
        self._last = b""  # the held bytes' last byte
        self._cr = False  # the last chunk ended in CR
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr or b"\r" in chunk:
            chunk, self._cr = _normalise(chunk, self._cr)
        if not self._size:
            data = chunk
            end = data.rfind(b"\n\n")
            if end < 0:
                self._append(chunk)
                return []
            if end == len(data) - 2 and end > 0 and data.find(b"\n\n") == end:
                if end > self.max_bytes:
                    raise FrameTooLarge(f"an upstream event exceeds {self.max_bytes} bytes")
                return [data]  # one whole event, the usual chunk of a token stream: no copies
        else:
            # Only the new bytes are looked at, and the one before them (an LF held, an LF
            # first here: the blank line that ends the held event).
            end = chunk.rfind(b"\n\n")
            if end < 0 and not (self._last == b"\n" and chunk[:1] == b"\n"):
                self._append(chunk)
                return []
            end += self._size
            self._parts.append(chunk)
            data = b"".join(self._parts)
        self._hold(data[end + 2 :])
        frames = [frame + b"\n\n" for frame in data[:end].split(b"\n\n") if frame]
        if any(len(frame) > self.max_bytes for frame in frames):
            raise FrameTooLarge(f"an upstream event exceeds {self.max_bytes} bytes")
        return frames

    def _append(self, piece: bytes) -> None:
        if not piece:
            return
        size = self._size + len(piece)
        if size > self.max_bytes:
            self._hold(b"")
            raise FrameTooLarge(f"an upstream event exceeds {self.max_bytes} bytes")
        self._parts.append(piece)
        self._size = size
        self._last = piece[-1:]

    def _hold(self, rest: bytes) -> None:
        self._parts = []
        self._size = 0
        self._last = b""
        self._append(rest)

    @property
    def pending(self) -> int:
        """Bytes held: the start of an event not yet ended."""
        return self._size

    @property
    def idle(self) -> bool:
        """Nothing held, not even the CR of a CRLF that may be split across chunks."""
        return not self._size and not self._cr


class CommentTracker:
    """Tells, chunk by chunk, whether an SSE body said anything but comments.

    A line that starts with ``:`` is a comment (a heartbeat, a keep-alive): an upstream
    whose model is stuck may go on sending them for ever, so they must not count as the
    upstream speaking. Chunks split lines anywhere: the kind of the line a chunk ends in
    is carried to the next one. Lines may end in CRLF, CR or LF.
    """

    __slots__ = ("_cr", "_line")

    def __init__(self) -> None:
        self._line = b""  # the first byte of the unfinished line (b"" at a line's start)
        self._cr = False  # the last chunk ended in CR

    def says_something(self, chunk: bytes) -> bool:
        """True when ``chunk`` holds a byte of a line that is not a comment."""
        if self._cr or b"\r" in chunk:
            chunk, self._cr = _normalise(chunk, self._cr)
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
        if (line or chunk[:1]) not in (b":", b"\n"):
            return True  # the usual case: a chunk that starts with (or inside) an event line
        return any(text[:1] not in (b"", b":") for text in chunk.split(b"\n")[1:])


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
