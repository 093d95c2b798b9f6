from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sluice.settings import CoreSettings


class DemoSettings(CoreSettings):
    service_name: str = "demo"
    # The demo's pacing is make run's (the dev group) since this release.
    renamed: ClassVar[dict[str, str]] = {
        "demo_toy_delay": "dev_demo_toy_delay",
        "demo_counter_delay": "dev_demo_counter_delay",
        "demo_events_interval": "dev_demo_events_interval",
    }
    dev_demo_toy_delay: float = Field(
        1.0, ge=0, description="Seconds between /toy-stream messages."
    )
    dev_demo_counter_delay: float = Field(
        0.5, ge=0, description="Seconds between /dummy-counter lines."
    )
    dev_demo_events_interval: float = Field(2.0, ge=0, description="Seconds between /dummy-events.")
