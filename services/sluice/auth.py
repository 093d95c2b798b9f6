"""Who may connect: API keys for clients, short-lived stream tokens for browsers.

* Keys arrive as ``Authorization: Bearer <key>``. They are kept only as SHA-256 digests and
  compared in constant time; a key's id (the first 8 hex of its digest) is what logs,
  limits and metrics see. No key ever appears in a log line or a label.
* ``EventSource`` cannot send headers, so ``POST /auth/stream-token`` (Bearer) issues a
  signed token scoped to one path prefix, set as an HttpOnly, SameSite=Strict cookie with
  that ``Path`` (and returned in the body for other clients). It is valid for
  ``stream_token_ttl`` seconds to *start* a stream; a stream started with it renews the
  cookie, so the browser's automatic reconnect works while the key is still configured.
* Keys in a URL query are refused: URLs end up in access logs, proxies and history.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from sluice.body import JsonBodyRoute
from sluice.errors import ApiError
from sluice.metrics import AUTH_FAILURES
from sluice.request_context import request_info, route_template
from sluice.settings import CoreSettings
from sluice.streaming import StreamResponse

COOKIE_NAME = "sluice_stream_token"
TOKEN_PREFIX = "st1."  # noqa: S105 - a format marker, not a secret
# Query parameters that carry credentials in other APIs: refused here, never read.
CREDENTIAL_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization"}
)
ALWAYS_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    via: str  # "key" or "stream_token"
    token_path: str | None = None


def key_id_of(digest: bytes) -> str:
    return digest.hex()[:8]


PLACEHOLDER_KEY = "sk-change-me"
"""The examples' placeholder keys start so; such a key is refused at start, everywhere."""


class KeyStore:
    """The configured keys, as digests only."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests: dict[bytes, str] = {}
        for key in keys:
            key = key.strip()
            if key.lower().startswith(PLACEHOLDER_KEY):
                raise ValueError(
                    "an API key is the examples' placeholder (sk-change-me...), not a key: set"
                    ' your own in SLUICE_API_KEYS / SLUICE_API_KEYS_FILE (python3 -c "import'
                    " secrets; print('sk-' + secrets.token_urlsafe(32))\")"
                )
            if key:
                digest = hashlib.sha256(key.encode()).digest()
                self._digests[digest] = key_id_of(digest)

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> KeyStore:
        keys: list[str] = []
        if settings.api_keys is not None:
            keys += settings.api_keys.get_secret_value().split(",")
        if settings.api_keys_file is not None:
            keys += _read_keys_file(settings.api_keys_file)
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, presented: str) -> str | None:
        """The key id of ``presented``, or None. Constant-time over the stored digests."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, key_id in self._digests.items():
            if hmac.compare_digest(stored, digest):
                found = key_id
        return found

    def has_id(self, key_id: str) -> bool:
        return key_id in self._digests.values()

    def derived_secret(self) -> bytes:
        """A token secret every worker and replica with the same keys agrees on."""
        material = b"".join(sorted(self._digests))
        return hmac.new(b"sluice-stream-token-v1", material, hashlib.sha256).digest()


def _read_keys_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"SLUICE_API_KEYS_FILE {path} cannot be read: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, key_id: str, path: str, ttl: int, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + ttl)
        payload = _b64(json.dumps({"k": key_id, "p": path, "e": expires}).encode())
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float | None = None) -> tuple[str, str]:
        """``(key_id, path)`` of a valid token; ApiError 401 otherwise."""
        if not token.startswith(TOKEN_PREFIX) or token.count(".") != 2:
            raise _unauthorized("malformed", "the stream token is malformed")
        payload, _, signature = token[len(TOKEN_PREFIX) :].partition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise _unauthorized("invalid", "the stream token is not valid")
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key_id, path, expires = str(claims["k"]), str(claims["p"]), int(claims["e"])
        except (ValueError, KeyError, TypeError):
            raise _unauthorized("malformed", "the stream token is malformed") from None
        if expires < (now if now is not None else time.time()):
            raise _unauthorized("expired", "the stream token has expired; request a new one")
        return key_id, path

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return _b64(mac)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# The error body's ``code`` for each refusal (the metric's ``reason`` label is the key).
_CODES = {
    "missing": "missing_api_key",
    "invalid": "invalid_api_key",
    "malformed": "invalid_token",
    "expired": "token_expired",
    "missing_scheme": "invalid_authorization_header",
    "key_in_url": "key_in_url",
    "wrong_path": "token_out_of_scope",
    "wrong_route": "token_not_for_this_route",
}


def _unauthorized(reason: str, message: str) -> ApiError:
    error = "invalid_request" if reason in ("missing_scheme", "key_in_url") else "invalid_token"
    challenge = 'Bearer realm="sluice"'
    if reason != "missing":
        challenge += f', error="{error}"'
    return _refusal(401, "unauthorized", reason, message, challenge)


def _forbidden(reason: str, message: str) -> ApiError:
    challenge = 'Bearer realm="sluice", error="insufficient_scope"'
    return _refusal(403, "forbidden", reason, message, challenge)


def _refusal(status: int, type: str, reason: str, message: str, challenge: str) -> ApiError:
    fields = {"param": None, "code": _CODES[reason]}
    exc = ApiError(status, type, message, {"WWW-Authenticate": challenge}, fields=fields)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def normal_path(path: str) -> str:
    """``path`` with repeated slashes folded and no trailing slash (``//a//b/`` -> ``/a/b``)."""
    return "/" + "/".join(part for part in path.split("/") if part)


def path_in_scope(path: str, scope: str) -> bool:
    """Whether a token scoped to ``scope`` opens ``path``: the same path, or one below it.
    A scope of ``/`` (or one that folds to it) opens nothing: it would open every route."""
    scope = normal_path(scope)
    if scope == "/":
        return False
    path = normal_path(path)
    return path == scope or path.startswith(scope + "/")


def is_stream_route(route: object) -> bool:
    """A route declared to answer with a stream (``response_class=StreamResponse``)."""
    response_class = getattr(route, "response_class", None)
    return isinstance(response_class, type) and issubclass(response_class, StreamResponse)


class Authenticator:
    """Resolves the caller of a request; installed as a global dependency by ``create_app``."""

    def __init__(self, settings: CoreSettings, default_public: Iterable[str]) -> None:
        self.settings = settings
        self.keys = KeyStore.from_settings(settings)
        secret = (
            settings.token_secret.get_secret_value().encode()
            if settings.token_secret is not None
            else self.keys.derived_secret()
        )
        self.signer = TokenSigner(secret)
        if settings.public_routes is not None:
            public = {p.strip() for p in settings.public_routes.split(",") if p.strip()}
        else:
            public = set(default_public)
        self.public = frozenset(public) | ALWAYS_PUBLIC

    async def __call__(self, request: Request) -> None:
        """FastAPI dependency: sets ``request.state.principal`` or raises 401/403."""
        route = route_template(request.scope)
        try:
            principal = self.authenticate(request)
        except ApiError as exc:
            # Bad credentials are refused even on a public route: never silently ignored.
            AUTH_FAILURES.labels(self.settings.service_name, getattr(exc, "reason", "")).inc()
            raise
        if principal is None and route not in self.public:
            AUTH_FAILURES.labels(self.settings.service_name, "missing").inc()
            raise _unauthorized("missing", self._missing_message())
        if principal is not None and principal.via == "stream_token":
            self._check_token_use(request, principal)
        request.state.principal = principal
        info = request_info(request.scope)
        if info is not None and principal is not None:
            info.key_id = principal.key_id

    def _check_token_use(self, request: Request, principal: Principal) -> None:
        """A stream token starts streams, nothing else: GET on a stream route inside its
        path. It never opens a POST (a chat completion, a job) or a JSON route."""
        scope = principal.token_path or "/"
        if request.method not in ("GET", "HEAD") or not is_stream_route(request.scope.get("route")):
            AUTH_FAILURES.labels(self.settings.service_name, "wrong_route").inc()
            raise _forbidden(
                "wrong_route",
                "a stream token only starts streams (GET on a streaming route); "
                "send Authorization: Bearer <key> for this route",
            )
        if not path_in_scope(request.url.path, scope):
            AUTH_FAILURES.labels(self.settings.service_name, "wrong_path").inc()
            raise _forbidden("wrong_path", f"this stream token is scoped to {scope}")

    def _missing_message(self) -> str:
        if not len(self.keys):
            return "this route needs an API key and none is configured (SLUICE_API_KEYS)"
        return "this route needs an API key: send Authorization: Bearer <key>"

    def authenticate(self, request: Request) -> Principal | None:
        for name in request.query_params if request.scope["query_string"] else ():
            if name.lower() in CREDENTIAL_PARAMS:
                raise _unauthorized(
                    "key_in_url",
                    f"credentials in the URL (?{name}=) are refused: URLs end up in logs. "
                    "Send Authorization: Bearer <key>, or for a browser POST "
                    "/auth/stream-token and let the cookie carry it",
                )
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise _unauthorized(
                    "missing_scheme", "the Authorization header must be: Bearer <key>"
                )
            if credential.startswith(TOKEN_PREFIX):
                return self._from_token(credential)
            key_id = self.keys.lookup(credential)
            if key_id is None:
                raise _unauthorized("invalid", "the API key is not valid")
            return Principal(key_id=key_id, via="key")
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            return self._from_token(cookie)
        return None

    def _from_token(self, token: str) -> Principal:
        key_id, path = self.signer.verify(token)
        if not self.keys.has_id(key_id):
            raise _unauthorized("invalid", "the key behind this stream token is no longer valid")
        return Principal(key_id=key_id, via="stream_token", token_path=path)

    def cookie_header(self, request: Request, key_id: str, path: str) -> tuple[str, str]:
        """The token and a ``Set-Cookie`` value scoping it to ``path``."""
        ttl = self.settings.stream_token_ttl
        token = self.signer.issue(key_id, path, ttl)
        return token, self._cookie(request, token, path, ttl)

    def forgotten(self, request: Request, path: str) -> str:
        """A ``Set-Cookie`` value that has the browser drop its cookie for ``path``."""
        return self._cookie(request, "", path, 0)

    def _cookie(self, request: Request, token: str, path: str, ttl: int) -> str:
        cookie = f"{COOKIE_NAME}={token}; Path={path}; Max-Age={ttl}; HttpOnly; SameSite=Strict"
        secure = self.settings.cookie_secure == "true" or (
            self.settings.cookie_secure == "auto" and request.url.scheme == "https"
        )
        return cookie + "; Secure" if secure else cookie

    def renewal(self, request: Request) -> dict[str, str]:
        """Headers that renew a stream-token cookie for the reconnect of this stream."""
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None or principal.via != "stream_token" or principal.token_path is None:
            return {}
        if request.headers.get("authorization"):
            return {}
        _, cookie = self.cookie_header(request, principal.key_id, principal.token_path)
        return {"set-cookie": cookie}


class StreamTokenRequest(BaseModel):
    path: str = Field(
        ...,
        min_length=1,
        max_length=256,
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        description="The path prefix the token opens, e.g. /dummy-events or /jobs/123/events.",
    )


class StreamTokenResponse(BaseModel):
    token: str
    path: str
    expires_in: int


def _bad_token_path(problem: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"path {problem}", fields={"param": "path", "code": "invalid_path"}
    )


def stream_token_router(auth: Authenticator) -> APIRouter:
    router = APIRouter(route_class=JsonBodyRoute)

    def keyed(request: Request, body: StreamTokenRequest, what: str) -> tuple[Principal, str]:
        """The key asking, and the normalised path it asks about."""
        principal: Principal | None = request.state.principal
        if principal is None or principal.via != "key":
            raise _unauthorized("missing", f"a stream token is {what} an API key (Bearer)")
        if {".", ".."} & set(body.path.split("/")):
            raise _bad_token_path("must not contain '.' or '..' segments")
        return principal, normal_path(body.path)

    @router.post("/auth/stream-token", response_model=StreamTokenResponse, tags=["auth"])
    async def stream_token(
        request: Request, body: StreamTokenRequest, response: Response
    ) -> StreamTokenResponse:
        principal, path = keyed(request, body, "issued for")
        if path == "/":
            raise _bad_token_path("must name a streaming route's prefix, not / (every route)")
        token, cookie = auth.cookie_header(request, principal.key_id, path)
        response.headers["set-cookie"] = cookie
        response.headers["cache-control"] = "no-store"
        return StreamTokenResponse(
            token=token, path=path, expires_in=auth.settings.stream_token_ttl
        )

    @router.delete("/auth/stream-token", status_code=204, tags=["auth"])
    async def forget_stream_token(request: Request, body: StreamTokenRequest) -> Response:
        """Signing out: the browser drops its cookie for ``path`` (a token copied elsewhere
        stays valid until it expires: keep the TTL short)."""
        _, path = keyed(request, body, "forgotten with")
        headers = {"set-cookie": auth.forgotten(request, path), "cache-control": "no-store"}
        return Response(status_code=204, headers=headers)

    return router
