"""What the mock says: the same words for every answer, so a test can predict each byte.

The JSON form of every word is computed once here, not per token: the streams splice
these into their precomputed frame heads.
"""

from __future__ import annotations

import json

WORDS = (
    "Sluice",
    " streams",
    " tokens",
    " from",
    " a",
    " mock",
    " upstream",
    " so",
    " every",
    " test",
    " sees",
    " the",
    " same",
    " answer",
    ".",
)
# What a reasoning model "thinks" before it answers (fault ``reasoning=N``): other words, so
# a test can tell a reasoning delta from a content delta.
REASONING_WORDS = ("Let", " me", " think", " it", " over", ".")


def dumps(value: object) -> str:
    """Compact JSON, as the frames are: no spaces, non-ASCII escaped (plain ASCII bytes)."""
    return json.dumps(value, separators=(",", ":"))


WORDS_JSON = tuple(dumps(word) for word in WORDS)
REASONING_JSON = tuple(dumps(word) for word in REASONING_WORDS)


def mock_text(count: int) -> str:
    """The completion the mock gives for ``count`` tokens: deterministic."""
    return "".join(WORDS[i % len(WORDS)] for i in range(count))


def mock_reasoning(count: int) -> str:
    """The reasoning a ``reasoning=count`` answer carries before its content."""
    return "".join(REASONING_WORDS[i % len(REASONING_WORDS)] for i in range(count))


def word_count(text: str) -> int:
    """The mock's token count of a prompt: its words (a tokenizer is not the point here)."""
    return len(text.split())
