from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sluice.settings import CoreSettings


class MockSettings(CoreSettings):
    service_name: str = "mock-upstream"
    renamed: ClassVar[dict[str, str]] = {
        "mock_tokens": "dev_mock_tokens",
        "mock_token_delay": "dev_mock_token_delay",
    }
    dev_mock_tokens: int = Field(20, ge=1, le=100_000, description="Tokens per completion.")
    dev_mock_token_delay: float = Field(0.02, ge=0, description="Seconds between tokens.")
    mock_models: str = Field("mock-gpt,mock-gpt-mini", description="Comma-separated model ids.")
