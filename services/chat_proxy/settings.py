from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from sluice.settings import CoreSettings


class ChatSettings(CoreSettings):
    service_name: str = "chat-proxy"
    upstream_base_url: str = Field(
        "http://127.0.0.1:8009/v1", description="OpenAI-compatible base URL (…/v1)."
    )
    upstream_api_key: SecretStr | None = Field(None, description="Key sent to the upstream.")
    upstream_client: Literal["native", "aiohttp", "httpx"] = Field(
        "native", description="HTTP client for the upstream (chosen by benchmarks/chat_proxy.py)."
    )
    upstream_connect_timeout: float = Field(5.0, gt=0)
    upstream_read_timeout: float = Field(
        60.0, gt=0, description="Longest upstream silence (first token included) before failing."
    )
    upstream_max_connections: int = Field(1000, ge=1, description="Pool size per worker.")
    chat_max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body.")
    chat_token_limit: str = Field(
        "1000000/hour", description="Tokens (prompt + completion) per key per window."
    )
    chat_default_model: str = Field("mock-gpt", description="Model of GET /chat-stream.")
    chat_models: str = Field(
        "", description="Comma-separated model names for metric labels (others: 'other')."
    )
