"""The OpenAI APIs chat-proxy relays, and what their streams look like to the relay.

Chat and legacy completions stream ``data:`` JSON chunks and end with ``data: [DONE]``;
the Responses API streams typed events (``event: response.output_text.delta`` ...) and
ends with ``response.completed`` (or ``.incomplete``, ``.failed``), with no ``[DONE]``.
A token is any delta that carries generated text: content, reasoning, a tool call's
arguments, a refusal; each one is counted (when no usage comes, the count is what the key
is charged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Api:
    name: str  # for logs and the mock's ledger
    path: str  # the upstream path, under the deployment's base URL
    token: re.Pattern[bytes]  # matches an event's payload that carries a token
    typed: bool = False  # Responses-style typed events, no [DONE]


CHAT = Api(
    "chat",
    "/chat/completions",
    re.compile(rb'"(?:content|reasoning_content|reasoning|arguments|refusal)":\s*"[^"]'),
)
COMPLETIONS = Api("completions", "/completions", re.compile(rb'"text":\s*"[^"]'))
EMBEDDINGS = Api("embeddings", "/embeddings", re.compile(rb"(?!)"))
RESPONSES = Api(
    "responses",
    "/responses",
    re.compile(
        rb'"type":\s*"response\.(?:output_text|reasoning_text|reasoning_summary_text'
        rb'|function_call_arguments|refusal)\.delta"'
    ),
    typed=True,
)

# The Responses API's last events: the answer's end, with its usage.
RESPONSE_ENDS = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
