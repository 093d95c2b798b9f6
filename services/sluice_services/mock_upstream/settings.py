from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from sluice.settings import CoreSettings
from sluice_services.mock_upstream.faults import FaultSpecError, parse_spec


class MockSettings(CoreSettings):
    service_name: str = "mock-upstream"
    renamed: ClassVar[dict[str, str]] = {
        "mock_tokens": "dev_mock_tokens",
        "mock_token_delay": "dev_mock_token_delay",
    }
    dev_mock_tokens: int = Field(20, ge=1, le=100_000, description="Tokens per completion.")
    dev_mock_token_delay: float = Field(0.02, ge=0, description="Seconds between tokens.")
    dev_mock_fault: str = Field(
        "",
        description="A fault spec (as X-Mock-Fault) for every request that names none.",
    )
    mock_models: str = Field("mock-gpt,mock-gpt-mini", description="Comma-separated model ids.")

    @field_validator("dev_mock_fault")
    @classmethod
    def _a_fault_spec(cls, value: str) -> str:
        # At start, not at the first request: a fleet's one bad spec stops that mock at once.
        try:
            parse_spec(value)
        except FaultSpecError as exc:
            message = f"SLUICE_DEV_MOCK_FAULT={value!r} is not a fault spec: {exc}"
            raise ValueError(message) from None
        return value
