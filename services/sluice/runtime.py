"""What one worker of a service shares across its requests."""

from __future__ import annotations

from dataclasses import dataclass

from sluice.drain import Drain
from sluice.metrics import StreamMetrics
from sluice.settings import CoreSettings


@dataclass(slots=True)
class Runtime:
    settings: CoreSettings
    drain: Drain
    observer: StreamMetrics
