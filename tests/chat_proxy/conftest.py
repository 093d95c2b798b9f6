from __future__ import annotations

from tests.support.upstream import CALLER_KEY, UPSTREAM_KEY, UPSTREAM_KEY_ID

__all__ = ["CALLER_KEY", "UPSTREAM_KEY", "UPSTREAM_KEY_ID"]
