"""Auth: keys, stream tokens, refusals; every branch through the ASGI app."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from sluice.auth import COOKIE_NAME, KeyStore, TokenSigner
from sluice.metrics import AUTH_FAILURES
from sluice.settings import CoreSettings
from tests.sluice.test_streaming import Probe, make_app
from tests.support import asgi
from tests.support.metrics import counted

pytestmark = pytest.mark.anyio

KEY_A = "sk-test-aaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbbbbbbbbbb"
ID_A = hashlib.sha256(KEY_A.encode()).hexdigest()[:8]


def protected(**settings: object) -> FastAPI:
    return make_app(Probe(), public=False, api_keys=SecretStr(f"{KEY_A},{KEY_B}"), **settings)


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def failures(reason: str) -> float:
    return counted(AUTH_FAILURES.labels("test", reason))


def test_keystore_keeps_digests_and_ids_only(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\n{KEY_B}\n\n")
    store = KeyStore.from_settings(CoreSettings(api_keys=SecretStr(KEY_A), api_keys_file=keys_file))
    assert len(store) == 2
    assert store.lookup(KEY_A) == ID_A
    assert store.lookup(KEY_A + "x") is None
    assert KEY_A not in repr(vars(store))


def test_unreadable_keys_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        KeyStore.from_settings(CoreSettings(api_keys_file=tmp_path / "missing"))


async def test_missing_key_is_401_json_with_challenge() -> None:
    before = failures("missing")
    async with asgi.lifespan(protected()) as app:
        result = await asgi.request(app, "/ticks")
    assert result.status == 401
    assert result.headers["www-authenticate"] == 'Bearer realm="sluice"'
    body = json.loads(result.body)
    assert body["error"]["type"] == "unauthorized"
    assert "Authorization: Bearer" in body["error"]["message"]
    assert failures("missing") == before + 1


async def test_valid_key_streams_and_logs_its_id_only() -> None:
    async with asgi.lifespan(protected()) as app:
        result = await asgi.request(app, "/ticks", headers=bearer(KEY_A))
    assert result.status == 200
    assert result.text.count("event: tick") == 3


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"Bearer {KEY_A}x", "invalid"),
        (f"Basic {KEY_A}", "missing_scheme"),
        ("Bearer", "missing_scheme"),
        (f"Bearer {KEY_A}\r\nX-Injected: 1", "invalid"),
        ("Bearer " + "a" * 10000, "invalid"),
        ("Bearer st1.e30.AAAA", "invalid"),
        ("Bearer st1.garbage", "malformed"),
    ],
)
async def test_bad_credentials_are_401(header: str, reason: str) -> None:
    before = failures(reason)
    async with asgi.lifespan(protected()) as app:
        result = await asgi.request(app, "/ticks", headers=[("authorization", header)])
    assert result.status == 401
    assert json.loads(result.body)["error"]["type"] == "unauthorized"
    assert "error=" in result.headers["www-authenticate"]
    assert failures(reason) == before + 1


@pytest.mark.parametrize("param", ["api_key", "token", "access_token", "key", "apikey"])
async def test_credentials_in_the_url_are_refused_and_say_why(param: str) -> None:
    async with asgi.lifespan(protected()) as app:
        result = await asgi.request(app, f"/ticks?{param}={KEY_A}", headers=bearer(KEY_A))
    assert result.status == 401
    message = json.loads(result.body)["error"]["message"]
    assert "URL" in message
    assert "/auth/stream-token" in message


async def test_public_route_needs_no_key_but_refuses_a_bad_one() -> None:
    async with asgi.lifespan(make_app(Probe(), api_keys=SecretStr(KEY_A))) as app:
        anonymous = await asgi.request(app, "/ticks")
        bad = await asgi.request(app, "/ticks", headers=bearer("nope"))
    assert anonymous.status == 200
    assert bad.status == 401


async def test_no_keys_configured_says_so() -> None:
    async with asgi.lifespan(make_app(Probe(), public=False)) as app:
        result = await asgi.request(app, "/ticks")
    assert result.status == 401
    assert "none is configured" in json.loads(result.body)["error"]["message"]


async def test_stream_token_cookie_is_httponly_strict_and_path_scoped() -> None:
    async with asgi.lifespan(protected(stream_token_ttl=30)) as app:
        issued = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[*bearer(KEY_A), ("content-type", "application/json")],
            body=b'{"path": "/ticks"}',
        )
        body = json.loads(issued.body)
        cookie = issued.headers["set-cookie"]
        streamed = await asgi.request(
            app, "/ticks", headers=[("cookie", f"{COOKIE_NAME}={body['token']}")]
        )
        elsewhere = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[
                ("cookie", f"{COOKIE_NAME}={body['token']}"),
                ("content-type", "application/json"),
            ],
            body=b'{"path": "/"}',
        )
    assert issued.status == 200
    assert body["path"] == "/ticks"
    assert body["expires_in"] == 30
    assert body["token"].startswith("st1.")
    for part in ("HttpOnly", "SameSite=Strict", "Path=/ticks", "Max-Age=30"):
        assert part in cookie
    assert "Secure" not in cookie  # plain http here; https sets it
    assert issued.headers["cache-control"] == "no-store"
    assert streamed.status == 200
    # The stream renews the cookie, so EventSource's automatic reconnect is let in.
    assert f"{COOKIE_NAME}=st1." in streamed.headers["set-cookie"]
    assert elsewhere.status == 403  # a token for /ticks opens nothing else


async def test_signing_out_has_the_browser_drop_its_cookie_for_a_path() -> None:
    json_type = ("content-type", "application/json")
    async with asgi.lifespan(protected(cookie_secure="true")) as app:
        token = app.state.runtime.auth.signer.issue(ID_A, "/ticks", 60)

        async def forget(headers: list[tuple[str, str]], body: bytes) -> asgi.Result:
            return await asgi.request(
                app, "/auth/stream-token", method="DELETE", headers=headers, body=body
            )

        forgotten = await forget([*bearer(KEY_A), json_type], b'{"path": "/ticks"}')
        by_cookie = await forget(
            [("cookie", f"{COOKIE_NAME}={token}"), json_type], b'{"path": "/ticks"}'
        )
        anonymous = await forget([json_type], b'{"path": "/ticks"}')
        dotted = await forget([*bearer(KEY_A), json_type], b'{"path": "/a/../b"}')
        bad = await forget([*bearer(KEY_A), json_type], b'{"path": "no-slash"}')
        not_json = await forget([*bearer(KEY_A), json_type], b"{")
    assert forgotten.status == 204, forgotten.text
    cookie = forgotten.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=;")
    for part in ("Path=/ticks", "Max-Age=0", "HttpOnly", "SameSite=Strict", "Secure"):
        assert part in cookie
    assert forgotten.headers["cache-control"] == "no-store"
    assert by_cookie.status == 403  # the token itself is no key
    assert anonymous.status == 401
    assert "set-cookie" not in by_cookie.headers and "set-cookie" not in anonymous.headers
    for refused in (dotted, bad, not_json):
        assert refused.status in (400, 422), refused.text
        assert "set-cookie" not in refused.headers
        assert json.loads(refused.body)["error"]["message"]


async def test_a_draining_workers_reconnect_hint_renews_the_browsers_cookie() -> None:
    async with asgi.lifespan(protected(drain_window=0)) as app:
        token = app.state.runtime.auth.signer.issue(ID_A, "/ticks", 60)
        app.state.runtime.drain.begin()
        hinted = await asgi.request(
            app,
            "/ticks",
            headers=[("cookie", f"{COOKIE_NAME}={token}"), ("accept", "text/event-stream")],
        )
    assert hinted.status == 200
    assert "event: reconnect" in hinted.text
    assert f"{COOKIE_NAME}=st1." in hinted.headers["set-cookie"]  # let in where it goes next


async def test_stream_token_as_bearer_for_non_browser_clients() -> None:
    async with asgi.lifespan(protected()) as app:
        token = app.state.runtime.auth.signer.issue(ID_A, "/ticks", 60)
        ok = await asgi.request(app, "/ticks", headers=bearer(token))
        scoped = app.state.runtime.auth.signer.issue(ID_A, "/other", 60)
        wrong = await asgi.request(app, "/ticks", headers=bearer(scoped))
    assert ok.status == 200
    assert "set-cookie" not in ok.headers
    assert wrong.status == 403
    assert json.loads(wrong.body)["error"]["type"] == "forbidden"
    assert "insufficient_scope" in wrong.headers["www-authenticate"]


async def test_expired_tampered_and_revoked_tokens_are_401() -> None:
    async with asgi.lifespan(protected()) as app:
        signer = app.state.runtime.auth.signer
        expired = signer.issue(ID_A, "/ticks", 60, now=0)
        good = signer.issue(ID_A, "/ticks", 60)
        payload, signature = good[4:].split(".")
        tampered = "st1." + payload[:-2] + "AA." + signature
        foreign = TokenSigner(b"another secret").issue(ID_A, "/ticks", 60)
        revoked = signer.issue("deadbeef", "/ticks", 60)
        results = {
            name: await asgi.request(app, "/ticks", headers=[("cookie", f"{COOKIE_NAME}={t}")])
            for name, t in [
                ("expired", expired),
                ("tampered", tampered),
                ("foreign", foreign),
                ("revoked", revoked),
            ]
        }
    for name, result in results.items():
        assert result.status == 401, name
    assert "expired" in json.loads(results["expired"].body)["error"]["message"]


async def test_stream_token_needs_a_key_and_a_clean_path() -> None:
    async with asgi.lifespan(protected()) as app:
        anonymous = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[("content-type", "application/json")],
            body=b'{"path": "/ticks"}',
        )
        traversal = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[*bearer(KEY_A), ("content-type", "application/json")],
            body=b'{"path": "/ticks/../admin"}',
        )
        injected = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[*bearer(KEY_A), ("content-type", "application/json")],
            body=b'{"path": "/ticks; Domain=evil.example"}',
        )
    assert anonymous.status == 401
    assert traversal.status == 422
    assert injected.status == 422
    assert json.loads(injected.body)["error"]["type"] == "validation_error"


def test_token_secret_agrees_across_workers_with_the_same_keys() -> None:
    one = KeyStore([KEY_A, KEY_B]).derived_secret()
    two = KeyStore([KEY_B, KEY_A]).derived_secret()
    assert one == two
    assert one != KeyStore([KEY_A]).derived_secret()


async def issue_token(app: FastAPI, path: str) -> asgi.Result:
    return await asgi.request(
        app,
        "/auth/stream-token",
        method="POST",
        headers=[*bearer(KEY_A), ("content-type", "application/json")],
        body=json.dumps({"path": path}).encode(),
    )


@pytest.mark.parametrize("path", ["/", "//", "///", "/./", "/ticks/./x", "/ticks/.."])
async def test_regression_a_stream_token_for_the_root_path_opened_every_route(path: str) -> None:
    # A token scoped to / (or //) opened every route and method, POSTs included.
    async with asgi.lifespan(protected()) as app:
        issued = await issue_token(app, path)
    assert issued.status == 422
    error = json.loads(issued.body)["error"]
    assert error["param"] == "path" and error["code"] == "invalid_path"


async def test_stream_token_paths_are_normalised_when_issued() -> None:
    async with asgi.lifespan(protected()) as app:
        issued = await issue_token(app, "//ticks//")
        token = json.loads(issued.body)["token"]
        streamed = await asgi.request(app, "/ticks", headers=[("cookie", f"{COOKIE_NAME}={token}")])
    assert issued.status == 200
    assert json.loads(issued.body)["path"] == "/ticks"
    assert "Path=/ticks;" in issued.headers["set-cookie"]
    assert streamed.status == 200


@pytest.mark.parametrize("scope", ["/", "//", "/ti"])
async def test_a_token_scoped_to_the_root_or_a_partial_segment_opens_nothing(scope: str) -> None:
    # Tokens signed before the fix (or by any other means) with a root scope are refused.
    before = failures("wrong_path")
    async with asgi.lifespan(protected()) as app:
        token = app.state.runtime.auth.signer.issue(ID_A, scope, 60)
        result = await asgi.request(app, "/ticks", headers=[("cookie", f"{COOKIE_NAME}={token}")])
    assert result.status == 403
    assert json.loads(result.body)["error"]["code"] == "token_out_of_scope"
    assert failures("wrong_path") == before + 1


async def test_a_stream_token_only_starts_streams_never_a_post_or_a_json_route() -> None:
    before = failures("wrong_route")
    async with asgi.lifespan(protected()) as app:
        token = app.state.runtime.auth.signer.issue(ID_A, "/auth", 60)
        cookie = [("cookie", f"{COOKIE_NAME}={token}"), ("content-type", "application/json")]
        post = await asgi.request(
            app, "/auth/stream-token", method="POST", headers=cookie, body=b'{"path": "/ticks"}'
        )
        ticks = app.state.runtime.auth.signer.issue(ID_A, "/ticks", 60)
        as_post = await asgi.request(app, "/ticks", method="POST", headers=bearer(ticks))
    assert post.status == 403
    body = json.loads(post.body)["error"]
    assert body["code"] == "token_not_for_this_route" and body["param"] is None
    assert as_post.status in (403, 405)  # no POST /ticks: the method is refused either way
    assert failures("wrong_route") >= before + 1


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([], 401, "missing_api_key"),
        (bearer("sk-wrong"), 401, "invalid_api_key"),
        ([("authorization", "Basic x")], 401, "invalid_authorization_header"),
        (bearer("st1.garbage"), 401, "invalid_token"),
    ],
)
async def test_auth_errors_have_the_one_error_shape_with_param_and_code(
    headers: list[tuple[str, str]], status: int, code: str
) -> None:
    # OpenAI's SDKs read error.code: 401/403 lacked param and code, so they reported None.
    async with asgi.lifespan(protected()) as app:
        result = await asgi.request(app, "/ticks", headers=headers)
    assert result.status == status
    error = json.loads(result.body)["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["code"] == code and error["param"] is None


async def test_regression_a_stream_token_opened_a_json_get_route_in_its_scope() -> None:
    # GET /metrics-like JSON routes are not streams: a token scoped over them opens nothing.
    async with asgi.lifespan(protected()) as app:
        token = app.state.runtime.auth.signer.issue(ID_A, "/things", 60)
        json_get = await asgi.request(
            app, "/things", headers=[("cookie", f"{COOKIE_NAME}={token}")]
        )
    assert json_get.status == 403
    assert json.loads(json_get.body)["error"]["code"] == "token_not_for_this_route"
