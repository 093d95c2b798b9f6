"""Settings shared by every service, read from the environment (prefix ``SLUICE_``).

Each service subclasses :class:`CoreSettings` with its own fields; all of them share one
prefix so a deployment configures every process from one environment. A setting meant for
one service only is given service-scoped: ``SLUICE_<SERVICE>__<NAME>`` (the service name in
capitals, ``-`` as ``_``, then two underscores), e.g. ``SLUICE_PRICE_FEED__PUBLIC_ROUTES=``,
which that service reads in place of ``SLUICE_PUBLIC_ROUTES`` and every other ignores.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from limits import parse as parse_limit
from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def scope_prefix(service: str) -> str:
    """The prefix of ``service``'s own settings: ``price-feed`` -> ``SLUICE_PRICE_FEED__``."""
    return f"SLUICE_{service.upper().replace('-', '_')}__"


def field_bounds(field: FieldInfo) -> str | None:
    """A field's numeric range as the README states it (``>= 1024``, ``> 0, <= 3600``)."""
    parts = []
    for constraint in field.metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(constraint, attr, None)
            if value is not None:
                parts.append(f"{op} {value}")
    return ", ".join(parts) or None


# What follows from the drain window: a worker's graceful timeout is the window plus this,
# and a rolling restart's hand-over waits this many windows for the replacement to boot.
GRACE_SECONDS = 5.0
HANDOFF_WINDOWS = 3


class RenamedSetting(FutureWarning):
    """A setting read under the name it had before this release (it works until the next)."""


def moved_names(cls: type[BaseSettings]) -> tuple[dict[str, str], dict[str, str]]:
    """``cls``'s renamed (old -> new field) and retired (old field -> what instead) settings,
    its bases' included."""
    renamed: dict[str, str] = {}
    retired: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass adds to its bases'
        renamed |= vars(klass).get("renamed", {})
        retired |= vars(klass).get("retired", {})
    return renamed, retired


class _RenamedSource(PydanticBaseSettingsSource):
    """The old names of renamed settings under one prefix (scoped or plain), read just below
    that prefix's new names: a scoped old name still beats a plain new one, as it did. An old
    name is used, with a warning naming the new one, where no new name above it is set.
    A retired name (one that now follows from others) is not read; a warning says what
    takes its place."""

    def __init__(
        self, settings_cls: type[BaseSettings], prefix: str, above: tuple[str, ...]
    ) -> None:
        super().__init__(settings_cls)
        self.prefix = prefix
        self.above = above  # prefixes whose new names win over this prefix's old ones

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads every old name at once

    def __call__(self) -> dict[str, Any]:
        renamed, retired = moved_names(self.settings_cls)
        for old, instead in retired.items():
            if f"{self.prefix}{old.upper()}" in os.environ:
                warnings.warn(
                    f"{self.prefix}{old.upper()} is no longer read: {instead}",
                    RenamedSetting,
                    stacklevel=2,
                )
        found: dict[str, Any] = {}
        for old, new in renamed.items():
            name = f"{self.prefix}{old.upper()}"
            if name not in os.environ:
                continue
            if any(f"{prefix}{new.upper()}" in os.environ for prefix in self.above):
                continue  # a new name that wins is set: the old one is not read
            warnings.warn(
                f"{name} is now {self.prefix}{new.upper()}"
                " (the old name works until the next release)",
                RenamedSetting,
                stacklevel=2,
            )
            found[new] = os.environ[name]
        return found


class ScopedSettings(BaseSettings):
    """Settings read from ``SLUICE_*``, where ``SLUICE_<SERVICE>__*`` wins for that service.

    The service is ``SLUICE_SERVICE_NAME`` (set for every process by ``sluice.serve``, the
    image's entrypoint, and by ``make run``), else the class's default ``service_name``.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore", frozen=True)
    # Settings renamed in this release: old field name -> new one (read until the next).
    renamed: ClassVar[Mapping[str, str]] = {}
    # Settings that follow from others since this release: old field name -> what instead.
    retired: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def service_of(cls) -> str | None:
        named = os.environ.get("SLUICE_SERVICE_NAME")
        if named:
            return named
        field = cls.model_fields.get("service_name")
        return str(field.default) if field is not None and field.default else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        service = cls.service_of()
        if service is None:
            old = _RenamedSource(settings_cls, "SLUICE_", ("SLUICE_",))
            return init_settings, env_settings, old, dotenv_settings, file_secret_settings
        scoped = EnvSettingsSource(settings_cls, env_prefix=scope_prefix(service))
        own = scope_prefix(service)
        scoped_old = _RenamedSource(settings_cls, own, (own,))
        plain_old = _RenamedSource(settings_cls, "SLUICE_", (own, "SLUICE_"))
        return (
            init_settings,
            scoped,
            scoped_old,
            env_settings,
            plain_old,
            dotenv_settings,
            file_secret_settings,
        )


class CoreSettings(ScopedSettings):
    """What the core itself reads. Service settings extend this class."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore", frozen=True)
    retired: ClassVar[Mapping[str, str]] = {
        "gc_threshold": "the core tunes the collector itself",
        "rate_limit_timeout": "the rate-limit check waits at most 0.5 s for Redis",
    }

    service_name: str = Field("sluice", description="Service name in logs and metrics.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    log_file: Path | None = Field(
        None, description="Also write logs here (reopened when rotated: logrotate-friendly)."
    )

    heartbeat_interval: float = Field(
        15.0, ge=0, description="Seconds of silence before an SSE comment ping (0 disables)."
    )
    send_timeout: float = Field(
        30.0, gt=0, description="Seconds one write may block on a client that stopped reading."
    )
    drain_window: float = Field(
        10.0, ge=0, description="Seconds over which open streams are told to reconnect on SIGTERM."
    )
    worker_state_dir: Path | None = Field(
        None,
        description="Set by deploy/gunicorn.conf.py: where a master's workers say their state.",
    )
    handoff_timeout: float | None = Field(
        None,
        ge=0,
        description="Seconds a worker serves on while its replacement boots (rolling restart);"
        " unset: 3 x the drain window; 0: no hand-over.",
    )
    reconnect_retry_ms: int = Field(
        2000, ge=0, description="SSE `retry:` hint sent with the drain reconnect event."
    )

    # Auth
    api_keys: SecretStr | None = Field(None, description="Comma-separated API keys.")
    api_keys_file: Path | None = Field(None, description="File with one API key a line.")
    token_secret: SecretStr | None = Field(
        None, description="HMAC secret of stream tokens; default derived from the API keys."
    )
    stream_token_ttl: int = Field(60, gt=0, le=3600, description="Seconds to start a stream.")
    public_routes: str | None = Field(
        None, description="Comma-separated route paths open without a key; unset: service default."
    )
    cookie_secure: Literal["auto", "true", "false"] = "auto"

    # Limits
    redis_url: str | None = Field(None, description="redis:// URL; limits shared across workers.")
    redis_timeout: float = Field(
        2.0,
        ge=0.5,
        le=60,
        description="Seconds one Redis command may take (redis-py waits forever by default).",
    )
    rate_limit: str = Field("120/minute", description="Requests per key (or client) per route.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=1_073_741_824,
        description="Largest JSON request body (read before auth, so bounded); over it: 413.",
    )
    max_streams_per_key: int = Field(20, ge=1, description="Concurrent streams of one caller.")
    max_streams_per_worker: int = Field(1000, ge=1, description="Concurrent streams a worker.")
    max_streams_global: int = Field(
        0, ge=0, description="Concurrent streams of the whole service (needs Redis; 0: off)."
    )

    @field_validator("rate_limit")
    @classmethod
    def _a_limit(cls, value: str) -> str:
        return rate_limit_string(value)

    @property
    def handoff_wait(self) -> float:
        """In a rolling restart, how long a worker serves on while its replacement boots."""
        if self.handoff_timeout is not None:
            return self.handoff_timeout
        return HANDOFF_WINDOWS * self.drain_window


class ServerSettings(ScopedSettings):
    """What ``deploy/gunicorn.conf.py`` reads: the process model of one service."""

    retired: ClassVar[Mapping[str, str]] = {
        "graceful_timeout": "gunicorn's graceful timeout is SLUICE_DRAIN_WINDOW + 5 s",
    }

    bind: str = Field("127.0.0.1:8000", description="host:port the service listens on.")
    workers: int = Field(1, ge=1, description="gunicorn worker processes.")
    drain_window: float = Field(10.0, ge=0)
    keepalive: int = Field(75, ge=1, description="Keep-alive seconds (above nginx's 60 s).")
    trusted_proxies: str = Field(
        "127.0.0.1", description="Comma-separated proxy addresses whose X-Forwarded-For is used."
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a connection may take to send a request's headers (slowloris).",
    )
    max_header_bytes: int = Field(
        65_536,
        ge=4096,
        le=1_048_576,
        description="Largest request line + headers; over it: 431 and the connection closed.",
    )

    @property
    def effective_graceful_timeout(self) -> float:
        """gunicorn's graceful timeout: the drain window, and time to record the ends."""
        return self.drain_window + GRACE_SECONDS


def rate_limit_string(value: str) -> str:
    """``value`` if it is a limit as ``limits`` reads it (``120/minute``, ``10 per second``)."""
    try:
        parse_limit(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate limit: write <count>/<second|minute|hour|day> (120/minute)"
        ) from None
    return value
