"""An upstream answer's ``usage``: the token counts a key's budget is charged with.

They come from the model server, so they are checked like any input: a count is a JSON
integer, not negative, not a bool, at most :data:`MAX_TOKENS`. Anything else is
:class:`BadUsage`. What a caller does with it: a non-streamed answer with a malformed
``usage`` is a 502 ``upstream_protocol`` (nothing of it went out yet; an answer that
lies about its cost is not passed on); a stream's usage comes after its tokens went out,
so its completion tokens are then the ones the proxy counted itself, its prompt tokens
0, and a warning is logged.
"""

from __future__ import annotations

from typing import Any

# More than any context window; an int64 counter (Redis INCRBY) holds billions of them.
MAX_TOKENS = 2**31 - 1


class BadUsage(ValueError):
    """An upstream ``usage`` that is not token counts."""


def usage_counts(usage: Any) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of an upstream ``usage`` object; None (or a
    member missing or null) counts 0. BadUsage for anything that is not such counts."""
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise BadUsage(f"usage is a {type(usage).__name__}, not an object")
    return _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if type(value) is not int:  # (bool is an int; a float is no count, finite or not)
        raise BadUsage(f"usage.{name} is a {type(value).__name__}, not an integer")
    if not 0 <= value <= MAX_TOKENS:
        raise BadUsage(f"usage.{name} is {value}, not in 0..{MAX_TOKENS}")
    return value


# An estimate's bound: the text looked at (a request body is bounded before this anyway).
ESTIMATE_MAX_CHARS = 4 * 1024 * 1024


def estimate_prompt_tokens(payload: Any) -> int:
    """The prompt's tokens as the proxy guesses them when the model server never said
    (about 4 characters a token, as OpenAI's rule of thumb; a few a message for its
    framing): the text of ``messages``, ``prompt`` or ``input``, whatever their shape."""
    if not isinstance(payload, dict):
        return 0
    chars = 0
    messages = 0
    stack = [payload.get(name) for name in ("messages", "prompt", "input", "instructions")]
    while stack and chars < ESTIMATE_MAX_CHARS:
        value = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            messages += 1
            stack.extend(value.get(k) for k in ("content", "text", "input", "output", "arguments"))
    return (chars + 3) // 4 + 3 * messages if chars or messages else 0
