"""Fault injection, chosen per request: the ``X-Mock-Fault`` header, else the model name,
else the service's ``SLUICE_DEV_MOCK_FAULT`` (one mock of a fleet always slow or failing).

A spec is ``name=value`` pairs joined by commas, e.g. ``status=503`` or
``stall=5,stall_after=3``; as a model name: ``mock-fault:error_after=2``. An empty
``X-Mock-Fault:`` header still takes the model name's but not the default: the way to
reach a mock whose default fails it. A bad spec is a 400 ``invalid_fault``.

A token is one delta of a stream (chat: reasoning and tool-call deltas count too). APIs:
chat = ``/v1/chat/completions``, cmpl = ``/v1/completions``, resp = ``/v1/responses``,
emb = ``/v1/embeddings`` (never streamed).

| fault | APIs | effect |
| --- | --- | --- |
| ``status=N`` | all | HTTP N with an OpenAI error body, before any byte of a stream |
| ``first_token_delay=S`` | all | headers at once, no body byte for S seconds (prefill) |
| ``stall=S[,stall_after=N]`` | chat, cmpl, resp | after N tokens (default 0), no bytes |
| | | for S seconds, then go on |
| ``error_after=N`` | chat, cmpl, resp | after N tokens, the API's error event and the end: |
| | | chat, cmpl ``data: {"error": ...}`` (no [DONE]); resp ``event: error`` |
| ``reset_after=N`` | chat, cmpl, resp | after N tokens, drop the connection mid-body |
| ``tokens=N``, ``delay=S`` | chat, cmpl, resp | this answer's token count, inter-token delay |
| ``reasoning=N`` | chat | N ``{"reasoning_content": ...}`` deltas before the answer, |
| | | counted in ``completion_tokens`` (``completion_tokens_details``) |
| ``tool_call=N`` | chat | the answer is one tool call, its arguments in N deltas |
| | | (not cut by ``max_tokens``), ``finish_reason: "tool_calls"`` |
| ``no_usage=1`` | all | no usage even when asked (no usage chunk, no ``usage``, resp |
| | | ``usage: null``): a model server that never sends it |

A non-streamed answer takes the time its stream would (``first_token_delay``, a ``stall``
within its tokens, ``delay`` each token) in one wait, then comes whole; ``error_after=N``
makes it an HTTP 500 (code ``mock_mid_answer``) after N tokens' time; ``reset_after`` does
not apply. Non-streamed ``reasoning`` is ``message.reasoning_content``, ``tool_call`` is
``message.tool_calls``. Embeddings take ``status``, ``first_token_delay`` and ``no_usage``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MODEL_PREFIX = "mock-fault:"


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Faults:
    status: int | None = None
    first_token_delay: float = 0.0
    stall: float = 0.0
    stall_after: int = 0
    error_after: int | None = None
    reset_after: int | None = None
    tokens: int | None = None
    delay: float | None = None
    reasoning: int = 0
    tool_call: int = 0
    no_usage: int = 0


NONE = Faults()
_INTS = {
    "status",
    "stall_after",
    "error_after",
    "reset_after",
    "tokens",
    "reasoning",
    "tool_call",
    "no_usage",
}
# A stream's tokens are counted in a Python loop: bound what one spec can ask for.
_MAX_TOKENS = 100_000


def parse_faults(header: str | None, model: str, default: Faults = NONE) -> Faults:
    """The faults of one request: its header's, else its model name's, else ``default``
    (an empty header: none, not even the default)."""
    if header is not None and header.strip():
        return parse_spec(header)
    if model.startswith(MODEL_PREFIX):
        return parse_spec(model[len(MODEL_PREFIX) :])
    return default if header is None else NONE


def parse_spec(spec: str) -> Faults:
    """One spec (``stall=5,stall_after=3``); a spec of only spaces is no fault."""
    if not spec.strip():
        return NONE
    known = {f.name for f in fields(Faults)}
    values: dict[str, int | float] = {}
    for part in spec.split(","):
        name, sep, raw = part.strip().partition("=")
        if not sep or name not in known:
            raise FaultSpecError(
                f"unknown fault {part.strip()!r}; known: {', '.join(sorted(known))}"
            )
        try:
            number: int | float = int(raw) if name in _INTS else float(raw)
        except ValueError:
            raise FaultSpecError(f"fault {name} needs a number, got {raw!r}") from None
        if not number >= 0:  # NaN too
            raise FaultSpecError(f"fault {name} must not be negative")
        if number == float("inf"):
            raise FaultSpecError(f"fault {name} must be finite")
        values[name] = number
    if "status" in values and not 400 <= int(values["status"]) <= 599:
        raise FaultSpecError("fault status must be an HTTP error status (400-599)")
    if values.get("no_usage", 0) not in (0, 1):
        raise FaultSpecError("fault no_usage is 0 or 1")
    for name in ("tokens", "reasoning", "tool_call"):
        if values.get(name, 0) > _MAX_TOKENS:
            raise FaultSpecError(f"fault {name} must be at most {_MAX_TOKENS}")
    return Faults(**values)  # type: ignore[arg-type]
