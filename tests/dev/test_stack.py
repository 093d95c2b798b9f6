from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest

from sluice.auth import KeyStore
from sluice.registry import registry
from sluice.settings import ServerSettings, scope_prefix
from sluice_dev import check, nginx, stack
from sluice_dev.project import Project
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.mock_upstream.settings import MockSettings
from sluice_services.progress.settings import ProgressSettings
from tests.support.paths import ROOT

PROJECT = Project.at(ROOT)
SERVICES = registry().services


def prepare(run_dir: Path, env: dict[str, str], project: Project = PROJECT) -> str:
    """What make run prints: the first line, then (once ready) the banner and details."""
    first = stack.prepare(run_dir, env, project)
    plan: dict[str, str] = json.loads((run_dir / "ready.json").read_text())
    return first + plan["banner"] + plan["details"]


def test_render_substitutes_only_sluice_placeholders() -> None:
    out = nginx.render("listen ${SLUICE_X}; set $a $request_id; ${HOME}", {"SLUICE_X": "80"})
    assert out == "listen 80; set $a $request_id; ${HOME}"


def test_render_names_missing_values() -> None:
    with pytest.raises(nginx.TemplateError, match="SLUICE_A, SLUICE_B"):
        nginx.render("${SLUICE_B} ${SLUICE_A}", {})


def test_prepare_generates_one_private_dev_key_and_keeps_it(tmp_path: Path) -> None:
    first = prepare(tmp_path, {})
    key = (tmp_path / "dev-api-key").read_text().strip()
    assert key.startswith("sk-dev-")
    assert stat.S_IMODE((tmp_path / "dev-api-key").stat().st_mode) == 0o600
    assert f"Authorization: Bearer {key}" in first
    procfile = (tmp_path / "Procfile").read_text()
    assert f"SLUICE_API_KEYS_FILE={tmp_path / 'dev-api-key'}" in procfile
    assert key not in procfile  # the key lives in one private file only
    prepare(tmp_path, {})
    assert (tmp_path / "dev-api-key").read_text().strip() == key


def test_prepare_uses_configured_keys_instead(tmp_path: Path) -> None:
    out = prepare(tmp_path, {"SLUICE_API_KEYS": "k1"})
    assert not (tmp_path / "dev-api-key").exists()
    assert "SLUICE_API_KEYS_FILE" not in (tmp_path / "Procfile").read_text()
    assert "SLUICE_API_KEYS" in out


def test_prepare_ports_are_overridable_and_checked(tmp_path: Path) -> None:
    prepare(tmp_path, {"SLUICE_DEV_NGINX_PORT": "9090", "SLUICE_DEV_DEMO_PORT": "9001"})
    conf = (tmp_path / "nginx" / "conf.d" / "sluice.conf").read_text()
    assert "listen 127.0.0.1:9090;" in conf
    assert "server 127.0.0.1:9001;" in conf
    with pytest.raises(SystemExit, match="SLUICE_DEV_DEMO_PORT='http' is not a TCP port"):
        prepare(tmp_path, {"SLUICE_DEV_DEMO_PORT": "http"})


def test_the_old_port_names_still_work_for_one_release_and_say_the_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(tmp_path, {"SLUICE_NGINX_PORT": "9091", "SLUICE_DEMO_PORT": "9002"})
    conf = (tmp_path / "nginx" / "conf.d" / "sluice.conf").read_text()
    assert "listen 127.0.0.1:9091;" in conf and "server 127.0.0.1:9002;" in conf
    said = capsys.readouterr().out
    assert "SLUICE_NGINX_PORT is now SLUICE_DEV_NGINX_PORT" in said
    assert "SLUICE_DEMO_PORT is now SLUICE_DEV_DEMO_PORT" in said
    with pytest.raises(SystemExit, match="SLUICE_DEMO_PORT='http' is not a TCP port"):
        prepare(tmp_path, {"SLUICE_DEMO_PORT": "http"})
    capsys.readouterr()
    # the new name wins over the old one, silently
    prepare(tmp_path, {"SLUICE_DEMO_PORT": "9003", "SLUICE_DEV_DEMO_PORT": "9004"})
    assert "server 127.0.0.1:9004;" in (tmp_path / "nginx" / "conf.d" / "sluice.conf").read_text()
    assert "SLUICE_DEMO_PORT" not in capsys.readouterr().out


# -- settings checked before anything starts (issue 13, item 24) -------------------------
def test_a_bad_setting_stops_make_run_before_anything_with_one_line_each(tmp_path: Path) -> None:
    env = {"SLUICE_CHAT_MAX_BODY_BYTES": "1000", "SLUICE_DRAIN_WINDOW": "-1"}
    with pytest.raises(SystemExit) as refused:
        prepare(tmp_path, env)
    lines = str(refused.value).splitlines()[1:]
    assert lines == [
        "  SLUICE_DRAIN_WINDOW='-1': Input should be greater than or equal to 0 (allowed: >= 0)"
        " [chat-proxy, demo, log-tail, mock-upstream, progress]",
        "  SLUICE_CHAT_MAX_BODY_BYTES='1000': Input should be greater than or equal to 1024"
        " (allowed: >= 1024) [chat-proxy]",
    ]
    assert not (tmp_path / "Procfile").exists()
    assert not (tmp_path / "nginx").exists()


def test_the_boundary_value_itself_is_accepted(tmp_path: Path) -> None:
    prepare(tmp_path, {"SLUICE_CHAT_MAX_BODY_BYTES": "1024", "SLUICE_DRAIN_WINDOW": "0"})
    assert (tmp_path / "Procfile").exists()


def test_a_bad_scoped_setting_is_named_as_given(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"SLUICE_MOCK_UPSTREAM__WORKERS='0': .*>= 1.*\[mock-"):
        prepare(tmp_path, {"SLUICE_MOCK_UPSTREAM__WORKERS": "0"})


def test_rules_across_settings_and_unparsable_values_are_reported(tmp_path: Path) -> None:
    own = tmp_path / "own.log"
    env = {"SLUICE_LOG_TAIL__LOG_FILE": str(own), "SLUICE_LOG_TAIL_FILES": f"self={own}"}
    with pytest.raises(SystemExit) as refused:
        prepare(tmp_path, env)
    assert "is log-tail's own SLUICE_LOG_FILE; following it would feed itself [log-tail]" in str(
        refused.value
    )
    with pytest.raises(SystemExit) as refused:
        prepare(tmp_path, {"SLUICE_MAX_HEADER_BYTES": "lots"})
    text = str(refused.value)
    assert "SLUICE_MAX_HEADER_BYTES='lots': Input should be a valid integer" in text
    assert "(allowed: >= 4096, <= 1048576)" in text


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("SLUICE_RATE_LIMIT", "lots", "is not a rate limit"),
        ("SLUICE_LOG_TAIL_FILES", "oops", "is not name=path"),
        ("SLUICE_CHAT_TOKEN_LIMIT", "many", "is not a rate limit"),
        ("SLUICE_UPSTREAM_BASE_URL", "ftp://x", "is not an http(s) URL"),
    ],
)
def test_regression_settings_parsed_only_at_app_start_passed_the_preflight(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    # These were parsed when an app was built, after make run's check had passed them:
    # the service died at start and honcho took the whole stack down with it.
    with pytest.raises(SystemExit) as refused:
        prepare(tmp_path, {name: value})
    assert f"{name}={value!r}" in str(refused.value) and says in str(refused.value)
    assert not (tmp_path / "Procfile").exists()


def test_renamed_and_retired_settings_are_said_once_and_stop_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check.RENAMED.clear()
    env = {"SLUICE_DEMO_TOY_DELAY": "0.5", "SLUICE_GRACEFUL_TIMEOUT": "60"}
    prepare(tmp_path, env)
    said = capsys.readouterr().out.splitlines()
    assert (
        said.count(
            "make run: SLUICE_DEMO_TOY_DELAY is now SLUICE_DEV_DEMO_TOY_DELAY"
            " (the old name works until the next release)"
        )
        == 1
    )
    assert (
        said.count(
            "make run: SLUICE_GRACEFUL_TIMEOUT is no longer read:"
            " gunicorn's graceful timeout is SLUICE_DRAIN_WINDOW + 5 s"
        )
        == 1
    )
    assert (tmp_path / "stop-timeout").read_text() == "20\n"  # the default window's, not 60
    demo = procfile_settings(tmp_path, env)["demo"]
    assert demo.dev_demo_toy_delay == 0.5  # the old name still reached the service


def test_a_bad_value_under_an_old_name_is_named_as_given(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        prepare(tmp_path, {"SLUICE_DEMO_TOY_DELAY": "-1"})
    assert "SLUICE_DEMO_TOY_DELAY='-1': Input should be greater than or equal to 0" in str(
        refused.value
    )


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        prepare(tmp_path, {"SLUICE_API_KEYS": "sk-real-secret,sk-change-me-before-use"})
    assert "placeholder" in str(refused.value)
    assert "sk-real-secret" not in str(refused.value)


# -- the examples' placeholder key is refused everywhere (item 20) ------------------------
@pytest.mark.parametrize("key", ["sk-change-me-before-use", "SK-CHANGE-ME", " sk-change-me-x"])
def test_the_placeholder_key_is_refused_by_the_core(key: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        KeyStore(["sk-good", key])


def test_a_real_key_that_merely_mentions_change_is_kept() -> None:
    assert len(KeyStore(["sk-changes-123", "sk-dev-change-me"])) == 2


def test_a_placeholder_in_the_keys_file_stops_make_run(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ours\nsk-change-me-before-use\n")
    with pytest.raises(SystemExit, match="SLUICE_API_KEYS: an API key is the examples' placeh"):
        prepare(tmp_path, {"SLUICE_API_KEYS_FILE": str(keys)})


# -- make run reads no env file (item 20) -------------------------------------------------
def test_honcho_reads_no_env_file() -> None:
    args = stack.honcho_args(Path("/run"), Path("/app"))
    assert args[args.index("-e") + 1] == os.devnull
    assert ".env" not in " ".join(args)


def test_make_run_says_whose_environment_and_that_env_is_not_read(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    quiet = prepare(tmp_path, {"SLUICE_API_KEYS": "sk-mine"})
    assert "API keys: from SLUICE_API_KEYS in your environment" in quiet
    assert "Environment: your shell's (make run reads no env file)\n" in quiet
    assert stack.env_note(app) == "Environment: your shell's (make run reads no env file)\n"
    (app / ".env").write_text("SLUICE_API_KEYS=sk-change-me-before-use\n")
    noted = stack.env_note(app)
    assert f"{app / '.env'} is compose's and is not read" in noted


def test_make_run_runs_prepare_then_honcho_without_an_env_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nrun:") :].split("\n\n")[0]
    assert "$(BIN)/python -m sluice_dev run" in recipe
    assert "honcho" not in recipe  # only through sluice_dev start: no env file, drain-long wait


# -- service-scoped settings (item 23) -----------------------------------------------------
def procfile_settings(run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Each service's settings as its Procfile line starts it, under ``env`` (the shell)."""
    found: dict[str, Any] = {}
    for line in (run_dir / "Procfile").read_text().splitlines():
        name, _, command = line.partition(": ")
        if name not in SERVICES:
            continue
        words = shlex.split(command)
        assert words[0] == "env"
        assignments = dict(w.split("=", 1) for w in words[1 : words.index(words[-4])])
        with check.environment({**env, **assignments}):
            found[name] = check.settings_class(SERVICES[name].settings)()
    return found


def test_a_scoped_setting_reaches_only_its_service_under_make_run(tmp_path: Path) -> None:
    env = {"SLUICE_CHAT_PROXY__PUBLIC_ROUTES": "", "SLUICE_DEV_DEMO_TOY_DELAY": "0.25"}
    prepare(tmp_path, env)
    settings = procfile_settings(tmp_path, env)
    assert set(settings) == set(SERVICES)
    assert settings["chat-proxy"].public_routes == ""
    for name in ("demo", "progress", "log-tail", "mock-upstream"):
        assert settings[name].public_routes is None, name  # their defaults
    assert settings["demo"].dev_demo_toy_delay == 0.25  # plain settings still reach everyone


def test_the_plain_setting_reaches_every_service_and_the_scoped_one_wins() -> None:
    env = {"SLUICE_PUBLIC_ROUTES": "/a", "SLUICE_CHAT_PROXY__PUBLIC_ROUTES": "/b"}
    with check.environment({**env, "SLUICE_SERVICE_NAME": "chat-proxy"}):
        assert ChatSettings().public_routes == "/b"
    with check.environment({**env, "SLUICE_SERVICE_NAME": "mock-upstream"}):
        assert MockSettings().public_routes == "/a"
    with check.environment(env):  # no SLUICE_SERVICE_NAME: the class's own service name
        assert ChatSettings().public_routes == "/b"
        assert MockSettings().public_routes == "/a"
    # one underscore is another setting's name, not a scope (SLUICE_PROGRESS_MAX_EVENTS)
    both = {"SLUICE_PROGRESS_MAX_EVENTS": "700", "SLUICE_PROGRESS__PROGRESS_LEASE": "3"}
    with check.environment(both):
        progress = ProgressSettings()
        assert (progress.progress_max_events, progress.progress_lease) == (700, 3)
    assert scope_prefix("chat-proxy") == "SLUICE_CHAT_PROXY__"


def test_scoped_server_settings_reach_gunicorn_for_that_service_only() -> None:
    env = {"SLUICE_WORKERS": "2", "SLUICE_DEMO__WORKERS": "3"}
    with check.environment({**env, "SLUICE_SERVICE_NAME": "demo"}):
        assert ServerSettings().workers == 3
    with check.environment({**env, "SLUICE_SERVICE_NAME": "log-tail"}):
        assert ServerSettings().workers == 2


# -- dependencies under make run (item 12) -------------------------------------------------
def test_dependencies_are_supervised_and_honcho_waits_for_the_longest_drain(
    tmp_path: Path,
) -> None:
    out = prepare(tmp_path, {"SLUICE_DEMO__DRAIN_WINDOW": "20"})
    procfile = dict(
        line.split(": ", 1) for line in (tmp_path / "Procfile").read_text().splitlines()
    )
    for name in ("nginx", "redis", "progress-worker", "prometheus"):
        if name in procfile:  # redis and prometheus only when installed
            assert " -m sluice_dev.supervise --name " + name in procfile[name], name
    assert "--stop-signal QUIT" in procfile["nginx"]  # graceful: streams end as drained
    for name in SERVICES:
        assert "sluice_dev.supervise" not in procfile[name]
    # demo's graceful timeout: its 20 s window + 5; honcho waits 5 s more before SIGKILL
    assert (tmp_path / "stop-timeout").read_text() == "30\n"
    assert "drained first (up to 30 s)" in out
    prepare(tmp_path, {})
    assert (tmp_path / "stop-timeout").read_text() == "20\n"  # the default 10 s window
