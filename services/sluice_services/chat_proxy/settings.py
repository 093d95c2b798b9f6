from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, FilePath, PrivateAttr, SecretStr, field_validator, model_validator

from sluice.settings import CoreSettings, rate_limit_string
from sluice_services.chat_proxy.fleet import Fleet, load_fleet, single_fleet


class ChatSettings(CoreSettings):
    service_name: str = "chat-proxy"
    retired: ClassVar[dict[str, str]] = {
        "upstream_max_connections": "the pool follows SLUICE_MAX_STREAMS_PER_WORKER (+10%)",
    }
    upstream_base_url: str = Field(
        "http://127.0.0.1:8009/v1", description="OpenAI-compatible base URL (…/v1)."
    )
    upstream_api_key: SecretStr | None = Field(None, description="Key sent to the upstream.")
    upstream_ca_bundle: FilePath | None = Field(
        None, description="PEM file of CAs to trust for an https upstream (default: the system's)."
    )
    upstream_connect_timeout: float = Field(5.0, gt=0)
    upstream_read_timeout: float = Field(
        60.0, gt=0, description="Longest upstream silence (first token included) before failing."
    )
    upstream_max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest non-streamed upstream answer."
    )
    upstream_max_event_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest upstream SSE event of a stream."
    )
    upstreams_file: FilePath | None = Field(
        None,
        description="A fleet file (YAML): several deployments, balanced and failed over "
        "(README: 'A model fleet'). Set, it replaces SLUICE_UPSTREAM_BASE_URL/_API_KEY.",
    )
    chat_first_token_timeout: float | None = Field(
        None,
        gt=0,
        description="No first token this soon: the attempt fails over (default: the read timeout).",
    )
    chat_early_headers: bool = Field(
        False,
        description="Send the 200 and ': ping' comments while the model is still silent "
        "(for idle timeouts in front); a failure before the first token is then an SSE error.",
    )
    chat_resumable: bool = Field(
        False,
        description="Streamed chat completions are resumable unless a request says otherwise "
        "(X-Sluice-Resumable: 0); per request: X-Sluice-Resumable: 1 or stream_options.resumable.",
    )
    chat_resume_idle: float = Field(
        60.0, gt=0, le=86400, description="A resumable answer nobody reads this long is stopped."
    )
    chat_resume_retention: int = Field(
        300, ge=1, le=604800, description="Seconds a resumable answer is kept after its end."
    )
    chat_resume_max_age: float = Field(
        900.0, gt=0, le=86400, description="A resumable answer still running this long is stopped."
    )
    chat_resume_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="A resumable answer past this many bytes is stopped."
    )
    chat_max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body.")
    chat_token_limit: str = Field(
        "1000000/hour", description="Tokens (prompt + completion) per key per window."
    )
    chat_default_model: str = Field("mock-gpt", description="Model of GET /chat-stream.")
    chat_models: str = Field(
        "", description="Comma-separated model names for metric labels (others: 'other')."
    )

    _fleet: Fleet = PrivateAttr()

    @property
    def fleet(self) -> Fleet:
        """The deployments chat-proxy routes to: the fleet file's, or the one of
        SLUICE_UPSTREAM_BASE_URL (read and checked with the settings, so a bad file fails
        at start naming its line and field)."""
        return self._fleet

    @model_validator(mode="after")
    def _load_fleet(self) -> ChatSettings:
        if self.upstreams_file is not None:
            if self.chat_early_headers or self.chat_first_token_timeout is not None:
                raise ValueError(
                    "with SLUICE_UPSTREAMS_FILE, set early_headers and first_token_timeout in "
                    "the file (routing: or models:), not as SLUICE_CHAT_* settings"
                )
            self._fleet = load_fleet(self.upstreams_file)
        else:
            self._fleet = single_fleet(
                self.upstream_base_url,
                self.upstream_api_key,
                str(self.upstream_ca_bundle) if self.upstream_ca_bundle else None,
                first_token_timeout=self.chat_first_token_timeout,
                early_headers=self.chat_early_headers,
            )
        return self

    @field_validator("upstream_ca_bundle", "upstreams_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value  # SLUICE_UPSTREAM_CA_BUNDLE= (compose's default)

    # Checked as settings, not only when the app is built, so make run names a bad value
    # before anything starts.
    @field_validator("upstream_base_url")
    @classmethod
    def _an_http_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL (http://host:port/v1)")
        try:
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(f"{value!r} has no valid port") from None
        return value

    @field_validator("chat_token_limit")
    @classmethod
    def _a_limit(cls, value: str) -> str:
        return rate_limit_string(value)
