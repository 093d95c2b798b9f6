"""The fuzz harness: each service's own OpenAPI (plus what its routes read but do not declare),
a session that cuts endless streams, and the checks every answer must pass.

Bounds, so a run cannot hang or grow: ``max_examples`` per operation, ``REQUEST_TIMEOUT`` on
every connect and read, an SSE stream read for at most ``MAX_STREAM_EVENTS`` events or
``REQUEST_TIMEOUT`` seconds, any other body without a length for ``STREAM_SECONDS`` or
``STREAM_BYTES``, and ``CALL_DEADLINE`` for a whole call. A stream that started with 200 and
was cut by these bounds is a success; what arrived of it must still be well framed.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from pydantic import BaseModel
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.core.transport import STREAM_CUT_SHORT_ATTRIBUTE
from schemathesis.pytest.lazy import get_all_tests
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from sluice_services.chat_proxy.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
)

# chat-proxy's OpenAI routes read their bodies themselves: each one's validator schema.
_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
}

SEED = 13  # one fixed seed, derandomized generation and no example database: CI repeats a run
REQUEST_TIMEOUT = 2.0
MAX_STREAM_EVENTS = 5
STREAM_SECONDS = 1.0
STREAM_BYTES = 64 * 1024
CALL_DEADLINE = 8.0

STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "text/plain")
_SSE_LINE = re.compile(r"^(:.*|(event|data|id|retry)(:.*)?)$")


def config(max_examples: int, *, coverage: bool) -> schemathesis.Config:
    """Seeded, derandomized, bounded: valid and invalid inputs, no shrinking (bounded time)."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT,
            "max-stream-events": MAX_STREAM_EVENTS,
            "max-redirects": 0,  # a redirect is an answer to check, never followed
            # generating a case may be slow on a loaded 2-core machine; that is no finding
            "suppress-health-check": ["too_slow"],
            "generation": {
                "mode": "all",
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                "no-shrink": True,
            },
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
        }
    )


def load(
    service_url: str,
    base_url: str,
    cfg: schemathesis.Config,
    examples: Mapping[str, Any],
) -> OpenApiSchema:
    """The schema the service serves on its own port (nginx routes no ``/openapi.json``),
    aimed at ``base_url``: the service itself or the front door."""
    answer = httpx.get(f"{service_url}/openapi.json", timeout=5)
    answer.raise_for_status()
    schema = schemathesis.openapi.from_dict(augmented(answer.json(), examples), config=cfg)
    schema.config.update(base_url=base_url)
    return schema


def augmented(raw: dict[str, Any], examples: Mapping[str, Any]) -> dict[str, Any]:
    """Declare what the routes read without declaring it, so the fuzzer sends it too.

    - every stream (a GET whose 200 declares no content) reads ``?format=``, ``Accept``,
      ``?after=`` and ``Last-Event-ID`` (see sluice.formats and the resumable routes);
    - chat-proxy's OpenAI routes (``POST /v1/chat/completions``, ``/v1/completions``, ...)
      read their bodies themselves: each one's validator schema is declared for it (while
      the route declares none);
    - ``examples`` by parameter name (``name``, ``job_id``) or by path (a body) point some
      cases at things that exist (a configured file, a job of the key), so they go past 404.
    """
    spec = copy.deepcopy(raw)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = operation.setdefault("parameters", [])
            declared = {(p["in"], p["name"].lower()) for p in params}
            ok = operation.get("responses", {}).get("200", {})
            if method == "get" and not ok.get("content"):
                for extra in _STREAM_PARAMETERS:
                    if (extra["in"], extra["name"].lower()) not in declared:
                        params.append(copy.deepcopy(extra))
            for param in params:
                if param["in"] == "path" and param["name"] in examples:
                    param["example"] = examples[param["name"]]
            if method == "post" and path in _BODIES and "requestBody" not in operation:
                body = _BODIES[path].model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                }
            if method == "post" and path in examples and "requestBody" in operation:
                for media in operation["requestBody"]["content"].values():
                    media["example"] = examples[path]
    return spec


_STREAM_PARAMETERS: tuple[dict[str, Any], ...] = (
    {"in": "query", "name": "format", "schema": {"enum": ["text", "sse", "ndjson"]}},
    {"in": "query", "name": "after", "schema": {"type": "string", "maxLength": 64}},
    {"in": "header", "name": "Last-Event-ID", "schema": {"type": "string", "maxLength": 64}},
    {
        "in": "header",
        "name": "Accept",
        "schema": {"enum": [*STREAM_TYPES, "application/json", "*/*"]},
    },
)


def operation_tests(
    schema: OpenApiSchema, run: Callable[[schemathesis.Case[Any]], None]
) -> Iterator[tuple[str, Callable[[], None]]]:
    """(label, test) for each operation: ``run`` under Hypothesis for every phase the config
    enables, as schemathesis's pytest integration builds it. A schema error is raised."""
    for result in get_all_tests(schema=schema, test_func=run, settings=None, given_kwargs=None):
        if not isinstance(result, Ok):
            raise result.err()
        operation, test = result.ok()
        yield operation.label, test


class BoundedSession(requests.Session):
    """requests, with any body that has no length (a stream other than SSE, which
    schemathesis bounds itself) read for at most ``STREAM_SECONDS`` / ``STREAM_BYTES`` and then
    closed. Cookies never carry over from one generated call to the next."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs["stream"] = True
        verb = method.decode() if isinstance(method, bytes) else method
        response = super().request(verb, url, *args, **kwargs)
        self.cookies.clear()
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if "content-length" in response.headers or media == "text/event-stream":
            return response
        try:
            response._content, cut = read_bounded(response)
            response._content_consumed = True
        finally:
            response.close()
        if cut:
            setattr(response, STREAM_CUT_SHORT_ATTRIBUTE, True)
        return response


def read_bounded(response: requests.Response) -> tuple[bytes, bool]:
    """The body up to the bounds, and whether it was cut (``False``: it ended by itself)."""
    deadline = time.monotonic() + STREAM_SECONDS
    body = bytearray()
    try:
        while len(body) < STREAM_BYTES and time.monotonic() < deadline:
            chunk = response.raw.read1(STREAM_BYTES - len(body), decode_content=True)
            if not chunk:
                return bytes(body), False
            body += chunk
    except ReadTimeoutError:
        return bytes(body), True  # silent for longer than the read timeout: cut
    except ProtocolError as exc:  # dropped mid-body: a failure, reported as a network error
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    return bytes(body), True


def _header(response: schemathesis.Response, name: str) -> str:
    values = response.headers.get(name.lower()) or []
    return values[0] if values else ""


def _media_type(response: schemathesis.Response) -> str:
    return _header(response, "content-type").split(";")[0].strip().lower()


@schemathesis.check
def json_error_body(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every error, the services' and nginx's, is ``{"error": {"type", "message"}}`` JSON."""
    if response.status_code < 400:
        return None
    media = _media_type(response)
    body = response.content[:300]
    assert media == "application/json", (
        f"{response.status_code} answered {media or 'no Content-Type'}, not JSON: {body!r}"
    )
    try:
        payload = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not valid JSON: {body!r}") from None
    error = payload.get("error") if isinstance(payload, dict) else None
    assert isinstance(error, dict), f"no error object in the {response.status_code}: {body!r}"
    assert isinstance(error.get("type"), str), f"error.type is not a string: {body!r}"
    assert isinstance(error.get("message"), str), f"error.message is not a string: {body!r}"
    return None


@schemathesis.check
def stream_framing(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """A 200 stream carries the stream headers, and what arrived of it (cut or not) is well
    framed: complete SSE blocks of SSE fields, NDJSON lines of JSON objects, UTF-8 text."""
    media = _media_type(response)
    if response.status_code != 200 or media not in STREAM_TYPES:
        return None
    assert "no-cache" in _header(response, "cache-control"), "a stream without no-cache"
    assert not _header(response, "content-length"), "a stream with a Content-Length"
    raw = response.content
    if media == "text/event-stream":
        complete = raw[: raw.rfind(b"\n\n") + 2] if b"\n\n" in raw else b""
    else:
        complete = raw[: raw.rfind(b"\n") + 1]
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AssertionError(f"a {media} stream that is not UTF-8: {exc}") from None
    if media == "text/event-stream":
        for line in text.replace("\r\n", "\n").split("\n"):
            assert not line or _SSE_LINE.match(line), f"not an SSE line: {line[:200]!r}"
    elif media == "application/x-ndjson":
        for line in filter(None, text.split("\n")):
            try:
                item = json.loads(line)
            except ValueError:
                raise AssertionError(f"not an NDJSON line: {line[:200]!r}") from None
            assert isinstance(item, dict), f"an NDJSON line that is not an object: {line[:200]!r}"
    return None


@schemathesis.check
def declared_content_type(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """The declared media type (schemathesis's check), except that a 200 may be a stream:
    routes declared as JSON also stream (a chat completion with ``stream: true``, the seed's
    ``/logs``) and their schemas say only JSON; ``stream_framing`` holds such a 200 to the
    stream contract instead."""
    streamed = _media_type(response) in STREAM_TYPES and not _header(response, "content-length")
    if response.status_code == 200 and streamed:
        return None
    return content_type_conformance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    declared_content_type,
    response_schema_conformance,
    json_error_body,
    stream_framing,
]


@dataclass
class Tally:
    """What one run saw: statuses, streams cut, slowest call (for the report)."""

    statuses: Counter[int] = field(default_factory=Counter)
    cut: int = 0
    calls: int = 0
    slowest: float = 0.0

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return f"{self.calls} calls ({codes}); {self.cut} streams cut; slowest {self.slowest:.2f}s"


def call(
    case: schemathesis.Case[Any],
    session: requests.Session,
    headers: Mapping[str, str],
    tally: Tally,
) -> None:
    """One generated request, bounded, through every check."""
    started = time.monotonic()
    response = case.call_and_validate(session=session, headers=dict(headers), checks=CHECKS)
    elapsed = time.monotonic() - started
    tally.calls += 1
    tally.statuses[response.status_code] += 1
    tally.cut += int(response.stream_cut_short)
    tally.slowest = max(tally.slowest, elapsed)
    assert elapsed < CALL_DEADLINE, (
        f"{case.method} {case.formatted_path} took {elapsed:.1f}s (deadline {CALL_DEADLINE}s)"
    )
