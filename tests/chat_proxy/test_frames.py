from __future__ import annotations

import random
import sys
from typing import Any

import pytest

from sluice_services.chat_proxy.frames import SseSplitter, data_of


def test_splitter_holds_partial_events_and_splits_many() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: {"a"') == []
    assert splitter.feed(b":1}\n\ndata: [DO") == [b'data: {"a":1}\n\n']
    assert splitter.pending == len(b"data: [DO")
    assert splitter.feed(b"NE]\n\n: ping\n\n") == [b"data: [DONE]\n\n", b": ping\n\n"]
    assert splitter.pending == 0


def test_splitter_normalises_crlf() -> None:
    assert SseSplitter().feed(b"data: x\r\n\r\ndata: y\r\n\r\n") == [b"data: x\n\n", b"data: y\n\n"]


def test_data_of_single_multi_and_none() -> None:
    assert data_of(b"data: [DONE]\n\n") == b"[DONE]"
    assert data_of(b"event: e\ndata: a\ndata:b\n\n") == b"a\nb"
    assert data_of(b": ping\n\n") is None


def test_splitter_passes_one_whole_event_through_as_is() -> None:
    splitter = SseSplitter()
    chunk = b'data: {"a":1}\n\n'
    assert splitter.feed(chunk)[0] is chunk
    assert splitter.pending == 0
    assert splitter.feed(b"\n\n") == []
    assert splitter.feed(b"data: x\n\n\n") == [b"data: x\n\n\n"]  # byte for byte
    assert splitter.feed(b"data: y\n\ndata: z\n\n") == [b"data: y\n\n", b"data: z\n\n"]
    assert splitter.pending == 0


def test_regression_bare_cr_line_ends_were_not_understood() -> None:
    # SSE lines end in CRLF, LF or a bare CR; only CRLF was made LF.
    assert SseSplitter().feed(b"data: x\r\rdata: y\r\r") == [b"data: x\n\n", b"data: y\n\n"]
    assert SseSplitter().feed(b"data: x\r\n\rdata: y\n\r\n") == [b"data: x\n\n", b"data: y\n\n"]
    # A CR at a chunk's end may be the first half of a CRLF: one line end, not two.
    splitter = SseSplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\ndata: b\r") == []  # CRLF: "data: a", then "data: b"
    assert splitter.feed(b"\r") == [b"data: a\ndata: b\n\n"]  # CR, CR: the event ends now
    assert splitter.pending == 0 and not splitter.idle  # an LF next is that CR's
    assert splitter.feed(b"\n") == [] and splitter.idle
    assert splitter.feed(b"data: c\r") == []
    assert splitter.feed(b"\n\r\n") == [b"data: c\n\n"]


def feeds(splitter: SseSplitter, pieces: list[bytes]) -> list[bytes]:
    return [frame for piece in pieces for frame in splitter.feed(piece)]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_any_cut_of_a_body_gives_the_events_of_the_whole(eol: bytes) -> None:
    events = [b'data: {"n":%d}\n\n' % n for n in range(20)] + [b": ping\n\n", b"data: [DONE]\n\n"]
    body = b"".join(events).replace(b"\n", eol)
    whole = feeds(SseSplitter(), [body])
    assert whole == events
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 40)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert b"".join(feeds(SseSplitter(), pieces)) == b"".join(events), cuts
    assert feeds(SseSplitter(), [bytes([b]) for b in body]) == events  # a byte at a time


def scanned_bytes(pieces: list[bytes], max_bytes: int) -> int:
    """The bytes that bytes methods (find, rfind, replace, split, ...) went over while
    the pieces were fed: each C call's receiver, by sys.setprofile (no timing)."""
    splitter = SseSplitter(max_bytes)
    total = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal total
        if event == "c_call" and isinstance(getattr(arg, "__self__", None), bytes):
            total += len(arg.__self__)

    sys.setprofile(profile)
    try:
        for piece in pieces:
            splitter.feed(piece)
    finally:
        sys.setprofile(None)
    return total


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_regression_an_event_fed_a_little_at_a_time_was_rescanned_at_each_piece(
    eol: bytes,
) -> None:
    # Each piece was joined to what was held and the whole rescanned: quadratic (a 1 MB
    # event in 1 KB pieces: 0.33 s of CPU with LF, 1.4 s with CRLF). Now each byte is
    # looked at a bounded number of times, whatever the size of the pieces.
    line = b"data: " + b"a" * (1024 * 1024 - 10) + eol
    event = line + eol
    for size in (1024, 4096):
        pieces = [event[i : i + size] for i in range(0, len(event), size)]
        scanned = scanned_bytes(pieces, 2 * 1024 * 1024)
        assert scanned < 6 * len(event), (size, scanned)  # quadratic: ~len(event)**2 / size
    # The hot path beside it: one whole event in one chunk is looked at once or twice.
    assert scanned_bytes([b'data: {"a":1}\n\n'], 1024) <= 2 * len(b'data: {"a":1}\n\n')
