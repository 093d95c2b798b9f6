"""What a chat completion request must look like; anything else is passed through."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.errors import ApiError


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    stream_options: StreamOptions | None = None


def validate(payload: Any) -> ChatCompletionRequest:
    """The parsed request, or a 400 naming the first bad parameter, as OpenAI answers."""
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
            fields={"param": None, "code": "invalid_body"},
        )
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise ApiError(
            400,
            "invalid_request_error",
            f"invalid '{param}': {first['msg']}",
            fields={"param": param, "code": "invalid_value"},
        ) from None
