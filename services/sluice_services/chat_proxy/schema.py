"""What a chat completion request must look like; anything else is passed through."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.errors import ApiError


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None


# Where the OpenAI API says boolean or integer, only a JSON boolean or integer will do
# (lax parsing took "yes" and 1 for true and "5" for 5); numbers must be finite.
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = Field(False, strict=True)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256, strict=True)
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    stream: bool = Field(False, strict=True)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, strict=True, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=True, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=True, allow_inf_nan=False)
    n: int | None = Field(None, ge=1, le=1, strict=True)
    seed: int | None = Field(None, strict=True)
    logprobs: bool | None = Field(None, strict=True)
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True)
    parallel_tool_calls: bool | None = Field(None, strict=True)
    store: bool | None = Field(None, strict=True)
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
