"""Every service's OpenAPI, fuzzed on its own gunicorn port and through nginx, with the key,
without one and with wrong ones: no 5xx, errors in JSON, streams well framed and bounded.

One test per (service, route, credentials); each operation of the schema is a subtest
(schemathesis's lazy pytest loader does not run on pytest 9: it sets ``Function._nodeid``).
mock-upstream is fuzzed directly only: nginx does not route it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.fuzz import harness
from tests.fuzz.conftest import FUZZ_KEY, WRONG_KEY, FuzzStack

CREDENTIALS = {
    "key": {"Authorization": f"Bearer {FUZZ_KEY}"},
    "no-key": {},
    "wrong-key": {"Authorization": f"Bearer {WRONG_KEY}"},
    "forged-token": {"Authorization": "Bearer st1.eyJwIjoiLyJ9.Zm9yZ2Vk"},
}
# With the key the fuzzer reaches the routes; without one mostly the 401 (cheaper, fewer).
EXAMPLES = {"key": 25, "no-key": 8, "wrong-key": 5, "forged-token": 5}
SERVICES = ("demo", "chat-proxy", "progress", "log-tail", "mock-upstream")
TARGETS = [
    pytest.param((service, route, auth), id=f"{service}-{route}-{auth}")
    for service in SERVICES
    for route in ("direct", "nginx")
    for auth in CREDENTIALS
    if not (service == "mock-upstream" and route == "nginx")
]


@dataclass
class Target:
    schema: OpenApiSchema
    headers: dict[str, str]
    session: harness.BoundedSession
    tally: harness.Tally
    auth: str


@pytest.fixture(params=TARGETS)
def fuzz_target(request: pytest.FixtureRequest, fuzz_stack: FuzzStack) -> Iterator[Target]:
    service, route, auth = request.param
    proc = fuzz_stack.service(service)
    base = proc.url if route == "direct" else fuzz_stack.front(service).url
    cfg = harness.config(EXAMPLES[auth], coverage=auth == "key")
    schema = harness.load(proc.url, base, cfg, fuzz_stack.examples[service])
    with harness.BoundedSession() as session:
        target = Target(schema, CREDENTIALS[auth], session, harness.Tally(), auth)
        started = time.monotonic()
        yield target
        print(
            f"\n{request.node.callspec.id}: {target.tally.summary()}"
            f" in {time.monotonic() - started:.1f}s"
        )


@pytest.mark.timeout(90)
def test_no_server_error(fuzz_target: Target, subtests: pytest.Subtests) -> None:
    """Each operation of the schema, one subtest, through schemathesis's own test builder:
    the schema's examples, its coverage cases (with the key) and the seeded fuzzing."""

    def run(case: schemathesis.Case[Any]) -> None:
        harness.call(case, fuzz_target.session, fuzz_target.headers, fuzz_target.tally)

    operations = list(harness.operation_tests(fuzz_target.schema, run))
    assert operations, "the schema has no operations"
    for label, test in operations:
        with subtests.test(msg=label):
            test()
    # The run reached what it was meant to: routes with the key, the 401 without a good one.
    seen = fuzz_target.tally.statuses
    if fuzz_target.auth == "key":
        assert any(200 <= code < 300 for code in seen), fuzz_target.tally.summary()
    elif fuzz_target.auth != "no-key":
        assert seen[401], fuzz_target.tally.summary()


def test_fuzzing_left_no_stream_open(fuzz_stack: FuzzStack) -> None:
    """Every stream the fuzzer cut was let go: each worker's count of open streams is 0."""
    deadline = time.monotonic() + 15
    open_streams: dict[str, int] = {}
    while time.monotonic() < deadline:
        for name, proc in fuzz_stack.services.items():
            open_streams[name] = httpx.get(f"{proc.url}/readyz", timeout=5).json()["open_streams"]
        if not any(open_streams.values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"streams still open after the fuzzing: {open_streams}")
