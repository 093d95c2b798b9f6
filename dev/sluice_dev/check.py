"""Every process's settings checked before ``make run`` starts anything.

One bad value used to take the whole stack down from inside one service, with a traceback
in the middle of everyone's output. Here each service's settings classes are built from
the environment that process will get, and each bad setting becomes one line naming the
variable, its value, what is wrong and the allowed range.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from sluice.auth import KeyStore
from sluice.settings import (
    CoreSettings,
    RenamedSetting,
    ScopedSettings,
    ServerSettings,
    field_bounds,
    moved_names,
    scope_prefix,
)

RENAMED: list[str] = []  # what this process has said about renamed settings, once each


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` inside (pydantic-settings reads only ``os.environ``)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_class(path: str) -> type[CoreSettings]:
    module, _, name = path.partition(":")
    found: type[CoreSettings] = getattr(importlib.import_module(module), name)
    return found


def _variable(cls: type[ScopedSettings], service: str, field: str, env: Mapping[str, str]) -> str:
    """The variable the user set for ``field``: scoped, plain, or an old name of it."""
    olds = [old for old, new in moved_names(cls)[0].items() if new == field]
    for name in (field, *olds):
        for prefix in (scope_prefix(service), "SLUICE_"):
            if f"{prefix}{name.upper()}" in env:
                return f"{prefix}{name.upper()}"
    return f"SLUICE_{field.upper()}"


def _describe(
    cls: type[ScopedSettings], service: str, error: Any, env: Mapping[str, str]
) -> tuple[str, str]:
    """(the variable, one line saying what is wrong with it)."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a rule across fields names its variables itself
        return message, message
    field = str(error["loc"][0])
    name = _variable(cls, service, field, env)
    info = cls.model_fields.get(field)
    secret = info is not None and "SecretStr" in str(info.annotation)
    value = "(hidden)" if secret else repr(env.get(name, ""))
    bounds = field_bounds(info) if info is not None else None
    allowed = f" (allowed: {bounds})" if bounds else ""
    return name, f"{name}={value}: {message}{allowed}"


def problems(
    service: str, settings_path: str, env: Mapping[str, str]
) -> tuple[list[tuple[str, str]], float]:
    """What is wrong with ``service``'s settings under ``env``, and its graceful timeout."""
    found: list[tuple[str, str]] = []
    graceful = 0.0
    with environment(env), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", RenamedSetting)
        for cls in (settings_class(settings_path), ServerSettings):
            try:
                settings = cls()
            except ValidationError as exc:
                found += [_describe(cls, service, e, env) for e in exc.errors()]
                continue
            if isinstance(settings, ServerSettings):
                graceful = settings.effective_graceful_timeout
            elif isinstance(settings, CoreSettings):
                try:
                    KeyStore.from_settings(settings)
                except ValueError as exc:
                    found.append(("SLUICE_API_KEYS", f"SLUICE_API_KEYS: {exc}"))
    for warning in said:
        if issubclass(warning.category, RenamedSetting) and str(warning.message) not in RENAMED:
            RENAMED.append(str(warning.message))
            print(f"make run: {warning.message}")
    return found, graceful


def check(
    services: Mapping[str, tuple[str, Mapping[str, str]]],
) -> tuple[list[str], float]:
    """``services``: name -> (settings class path, the environment it runs with).

    Returns one line per bad setting (with the services it breaks) and the longest graceful
    timeout, which is how long stopping the stack may take.
    """
    lines: dict[str, list[str]] = {}
    longest = 0.0
    for service, (path, env) in services.items():
        found, graceful = problems(service, path, env)
        longest = max(longest, graceful)
        for _, line in found:
            lines.setdefault(line, [])
            if service not in lines[line]:
                lines[line].append(service)
    return [f"{line} [{', '.join(names)}]" for line, names in lines.items()], longest
