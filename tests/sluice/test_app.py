"""The core's app factory: what every service gets at startup."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sluice.app import create_app
from sluice.settings import CoreSettings
from tests.support import asgi

pytestmark = pytest.mark.anyio


@pytest.fixture
def gc_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("gc_state")
async def test_startup_freezes_what_it_built_and_raises_the_young_gc_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    app = create_app(CoreSettings(gc_threshold=12_345), title="gc")
    async with asgi.lifespan(app):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, 10, 10)


@pytest.mark.usefixtures("gc_state")
async def test_gc_threshold_zero_keeps_cpythons_default() -> None:
    gc.set_threshold(700, 10, 10)
    async with asgi.lifespan(create_app(CoreSettings(gc_threshold=0), title="gc")):
        assert gc.get_threshold() == (700, 10, 10)
