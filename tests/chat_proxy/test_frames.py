from __future__ import annotations

from chat_proxy.frames import SseSplitter, data_of


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
