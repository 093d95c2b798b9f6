from __future__ import annotations

from pydantic import Field

from sluice.settings import CoreSettings


class DemoSettings(CoreSettings):
    service_name: str = "demo"
    demo_toy_delay: float = Field(1.0, ge=0, description="Seconds between /toy-stream messages.")
    demo_counter_delay: float = Field(
        0.5, ge=0, description="Seconds between /dummy-counter lines."
    )
    demo_events_interval: float = Field(2.0, ge=0, description="Seconds between /dummy-events.")
