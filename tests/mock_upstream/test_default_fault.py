"""``SLUICE_DEV_MOCK_FAULT``: one mock of a fleet made always slow or failing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.settings import MockSettings
from sluice_services.mock_upstream.text import mock_text
from tests.mock_upstream.helpers import PATHS, answer_text, body_for, error_of, post
from tests.support import asgi
from tests.support.procs import running, start_service

FAILING = MockSettings(dev_mock_token_delay=0, dev_mock_tokens=5, dev_mock_fault="status=503")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [*PATHS, "embeddings"])
async def test_the_default_applies_to_a_request_that_names_no_fault(kind: str) -> None:
    path = PATHS.get(kind, "/v1/embeddings")
    body = body_for(kind, False) if kind != "embeddings" else {"model": "m", "input": "hi"}
    async with asgi.lifespan(create_app(FAILING)) as app:
        failed = await post(app, path, body)
        opted_out = await post(app, path, body, fault="")
        own = await post(app, path, body, fault="tokens=2")
        by_model = await post(app, path, {**body, "model": "mock-fault:tokens=3"})
        models = await asgi.request(app, "/v1/models")
    assert failed.status == 503
    assert error_of(failed)["code"] == "mock_503"
    assert opted_out.status == own.status == by_model.status == 200
    assert models.status == 200
    if kind != "embeddings":
        assert answer_text(kind, json.loads(opted_out.body)) == mock_text(5)
        assert answer_text(kind, json.loads(own.body)) == mock_text(2)
        assert answer_text(kind, json.loads(by_model.body)) == mock_text(3)


@pytest.mark.anyio
async def test_a_default_pace_applies_to_streams() -> None:
    settings = MockSettings(dev_mock_token_delay=0, dev_mock_fault="tokens=2,error_after=1")
    async with asgi.lifespan(create_app(settings)) as app:
        result = await post(app, PATHS["chat"], body_for("chat", True))
    assert b'"code":"mock_mid_stream"' in result.body
    assert result.text.count('"content":"') == 2  # the role delta's "" and one token


def test_it_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_DEV_MOCK_FAULT", "delay=0.5,tokens=3")
    assert MockSettings().dev_mock_fault == "delay=0.5,tokens=3"
    monkeypatch.setenv("SLUICE_DEV_MOCK_FAULT", "")
    assert MockSettings().dev_mock_fault == ""


@pytest.mark.parametrize(
    "spec", ["explode=1", "status=200", "tokens=-1", "delay=soon", "stall", "no_usage=5"]
)
def test_a_bad_spec_fails_at_settings_time_naming_it(spec: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MockSettings(dev_mock_fault=spec)
    message = str(caught.value)
    assert "SLUICE_DEV_MOCK_FAULT" in message
    assert repr(spec) in message


def test_a_real_mock_with_a_default_fault_and_one_with_a_bad_one(log_dir: Path) -> None:
    proc = start_service(
        "mock-upstream", log_dir, {"SLUICE_DEV_MOCK_FAULT": "status=503"}, workers=1
    )
    with running(proc):
        body = body_for("chat", True)
        failed = httpx.post(f"{proc.url}/v1/chat/completions", json=body, timeout=10)
        fine = httpx.post(
            f"{proc.url}/v1/chat/completions",
            json=body,
            headers={"X-Mock-Fault": ""},
            timeout=10,
        )
        health = httpx.get(f"{proc.url}/healthz", timeout=10)
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "mock_503"
    assert fine.status_code == 200 and fine.text.endswith("data: [DONE]\n\n")
    assert health.status_code == 200
    # It exits at start (start_service raises on that), so there is nothing left to stop.
    with pytest.raises(RuntimeError) as caught:
        start_service("mock-upstream", log_dir, {"SLUICE_DEV_MOCK_FAULT": "explode=1"}, workers=1)
    assert "SLUICE_DEV_MOCK_FAULT='explode=1'" in str(caught.value)
