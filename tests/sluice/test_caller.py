"""Who a request comes from, as the rate limits and the stream caps count callers."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

from sluice.caller import caller_key


def request(principal: Any = None, client: Any = None) -> Any:
    return SimpleNamespace(state=SimpleNamespace(principal=principal), client=client)


def test_a_key_holder_is_its_key_id_wherever_it_calls_from() -> None:
    key = SimpleNamespace(key_id="k1")
    assert caller_key(request(key, SimpleNamespace(host="10.0.0.1"))) == "key:k1"
    assert caller_key(request(key, SimpleNamespace(host="10.0.0.2"))) == "key:k1"


def test_an_anonymous_caller_is_its_address() -> None:
    assert caller_key(request(client=SimpleNamespace(host="10.0.0.1"))) == "ip:10.0.0.1"
    assert caller_key(request()) == "ip:unknown"  # no client address (a unix socket)
    no_state = SimpleNamespace(state=SimpleNamespace(), client=SimpleNamespace(host="::1"))
    assert caller_key(no_state) == "ip:::1"  # type: ignore[arg-type]


def test_its_signature_is_computed_once() -> None:
    # slowapi asks for it on every request: a walk through inspect each time was ~1% of CPU.
    assert inspect.signature(caller_key) is inspect.signature(caller_key)
    assert list(inspect.signature(caller_key).parameters) == ["request"]
