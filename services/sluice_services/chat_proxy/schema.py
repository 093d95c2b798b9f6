"""What a request to each API must look like: the fields the proxy relies on, checked as
OpenAI checks them; anything else is passed through."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

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


# A prompt or an input: text, texts, token ids, or lists of token ids; not empty.
Tokens = (
    Annotated[StrictStr, Field(max_length=10_000_000)]
    | Annotated[list[StrictStr], Field(min_length=1)]
    | Annotated[list[StrictInt], Field(min_length=1)]
    | Annotated[list[Annotated[list[StrictInt], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(BaseModel):
    """The legacy ``/v1/completions``."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256, strict=True)
    prompt: Tokens
    stream: bool = Field(False, strict=True)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    n: int | None = Field(None, ge=1, le=1, strict=True)
    stream_options: StreamOptions | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256, strict=True)
    input: Tokens
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1, strict=True)


class ResponsesRequest(BaseModel):
    """``/v1/responses``: ``input`` is a string or a list of items (passed as they are)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256, strict=True)
    input: StrictStr | list[Any]
    stream: bool = Field(False, strict=True)
    max_output_tokens: int | None = Field(None, ge=1, strict=True)
    background: bool | None = Field(None, strict=True)


R = TypeVar("R", bound=BaseModel)


def validate(payload: Any, schema: type[R] = ChatCompletionRequest) -> R:  # type: ignore[assignment]
    """The parsed request, or a 400 naming the first bad parameter, as OpenAI answers."""
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
            fields={"param": None, "code": "invalid_body"},
        )
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise ApiError(
            400,
            "invalid_request_error",
            f"invalid '{param}': {first['msg']}",
            fields={"param": param, "code": "invalid_value"},
        ) from None
