"""Fault injection, chosen per request by the ``X-Mock-Fault`` header or the model name.

A spec is ``name=value`` pairs joined by commas, e.g. ``status=503`` or
``stall=5,stall_after=3``; as a model name: ``mock-fault:error_after=2``.

| fault | effect |
| --- | --- |
| ``status=N`` | answer HTTP N with an OpenAI error body, before any byte of a stream |
| ``first_token_delay=S`` | headers at once, not a body byte until S seconds later (prefill) |
| ``stall=S[,stall_after=N]`` | after N tokens (default 0), no bytes for S seconds, then go on |
| ``error_after=N`` | after N tokens, a ``data: {"error": ...}`` event and the end (no [DONE]) |
| ``reset_after=N`` | after N tokens, drop the connection mid-body |
| ``tokens=N``, ``delay=S`` | this request's token count and inter-token delay |
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


_INTS = {"status", "stall_after", "error_after", "reset_after", "tokens"}


def parse_faults(header: str | None, model: str) -> Faults:
    spec = header if header is not None else ""
    if not spec and model.startswith(MODEL_PREFIX):
        spec = model[len(MODEL_PREFIX) :]
    if not spec.strip():
        return Faults()
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
        if number < 0:
            raise FaultSpecError(f"fault {name} must not be negative")
        values[name] = number
    if "status" in values and not 400 <= int(values["status"]) <= 599:
        raise FaultSpecError("fault status must be an HTTP error status (400-599)")
    return Faults(**values)  # type: ignore[arg-type]
