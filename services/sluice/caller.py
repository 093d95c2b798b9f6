"""Who a request comes from, as the rate limits and the stream caps count callers."""

from __future__ import annotations

import inspect

from starlette.requests import Request


def caller_key(request: Request) -> str:
    """The caller's key: the API key id when authenticated, else the client address.

    The client address is uvicorn's, which honours ``X-Forwarded-For`` only from
    ``SLUICE_TRUSTED_PROXIES`` (gunicorn's ``forwarded_allow_ips``).
    """
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return f"key:{principal.key_id}"
    client = request.client
    return f"ip:{client.host if client else 'unknown'}"


# slowapi asks for the key function's signature on every request; computed once, it is a
# lookup instead of a walk through ``inspect`` (about 1% of a streaming worker's CPU).
caller_key.__signature__ = inspect.signature(caller_key)  # type: ignore[attr-defined]
