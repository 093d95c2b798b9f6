"""sluice.settings: a renamed setting keeps working under its old name for one release, with a
warning that names the new one; the new name wins; scoped names are renamed too."""

from __future__ import annotations

import warnings
from typing import ClassVar

import pytest
from pydantic import Field, ValidationError

from sluice.settings import CoreSettings, RenamedSetting


class Feed(CoreSettings):
    service_name: str = "price-feed"
    renamed: ClassVar[dict[str, str]] = {"feed_delay": "dev_feed_delay"}
    dev_feed_delay: float = Field(1.0, ge=0)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLUICE_SERVICE_NAME", "SLUICE_FEED_DELAY", "SLUICE_DEV_FEED_DELAY"):
        monkeypatch.delenv(name, raising=False)


def test_the_old_name_still_works_and_says_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_FEED_DELAY", "0.25")
    with pytest.warns(RenamedSetting, match="SLUICE_FEED_DELAY is now SLUICE_DEV_FEED_DELAY"):
        assert Feed().dev_feed_delay == 0.25


def test_the_new_name_wins_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_FEED_DELAY", "0.25")
    monkeypatch.setenv("SLUICE_DEV_FEED_DELAY", "0.5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Feed().dev_feed_delay == 0.5


def test_a_scoped_old_name_is_renamed_and_beats_the_plain_old_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_FEED_DELAY", "0.25")
    monkeypatch.setenv("SLUICE_PRICE_FEED__FEED_DELAY", "0.75")
    with pytest.warns(RenamedSetting, match="SLUICE_PRICE_FEED__FEED_DELAY is now SLUICE_PRICE_F"):
        assert Feed().dev_feed_delay == 0.75


def test_an_old_name_with_a_bad_value_is_refused_like_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_FEED_DELAY", "-1")
    with pytest.warns(RenamedSetting), pytest.raises(ValidationError, match="dev_feed_delay"):
        Feed()


def test_without_either_name_the_default_holds_and_nothing_is_said() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Feed().dev_feed_delay == 1.0
    assert Feed(dev_feed_delay=3).dev_feed_delay == 3  # keyword arguments as before


class Pooled(CoreSettings):
    retired: ClassVar[dict[str, str]] = {"pool_size": "it follows SLUICE_MAX_STREAMS_PER_WORKER"}


def test_a_retired_name_is_not_read_and_says_what_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_POOL_SIZE", "5")
    with pytest.warns(RenamedSetting, match="SLUICE_POOL_SIZE is no longer read: it follows SLU"):
        settings = Pooled()
    assert not hasattr(settings, "pool_size")


def test_a_scoped_old_name_still_beats_a_plain_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the rename: a setting given for this service only wins over everyone's."""
    monkeypatch.setenv("SLUICE_PRICE_FEED__FEED_DELAY", "5")
    monkeypatch.setenv("SLUICE_DEV_FEED_DELAY", "2")
    with pytest.warns(RenamedSetting, match="SLUICE_PRICE_FEED__FEED_DELAY is now"):
        assert Feed().dev_feed_delay == 5
    monkeypatch.setenv("SLUICE_PRICE_FEED__DEV_FEED_DELAY", "7")  # the scoped new one: wins
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Feed().dev_feed_delay == 7
