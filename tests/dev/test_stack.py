from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chat_proxy.settings import ChatSettings
from mock_upstream.settings import MockSettings
from progress.settings import ProgressSettings
from sluice import devcheck, devstack
from sluice.auth import KeyStore
from sluice.settings import ServerSettings, scope_prefix


def test_render_substitutes_only_sluice_placeholders() -> None:
    out = devstack.render("listen ${SLUICE_X}; set $a $request_id; ${HOME}", {"SLUICE_X": "80"})
    assert out == "listen 80; set $a $request_id; ${HOME}"


def test_render_names_missing_values() -> None:
    with pytest.raises(devstack.TemplateError, match="SLUICE_A, SLUICE_B"):
        devstack.render("${SLUICE_B} ${SLUICE_A}", {})


def test_prepare_generates_one_private_dev_key_and_keeps_it(tmp_path: Path) -> None:
    first = devstack.prepare(tmp_path, {})
    key = (tmp_path / "dev-api-key").read_text().strip()
    assert key.startswith("sk-dev-")
    assert stat.S_IMODE((tmp_path / "dev-api-key").stat().st_mode) == 0o600
    assert f"Authorization: Bearer {key}" in first
    procfile = (tmp_path / "Procfile").read_text()
    assert f"SLUICE_API_KEYS_FILE={tmp_path / 'dev-api-key'}" in procfile
    assert key not in procfile  # the key lives in one private file only
    devstack.prepare(tmp_path, {})
    assert (tmp_path / "dev-api-key").read_text().strip() == key


def test_prepare_uses_configured_keys_instead(tmp_path: Path) -> None:
    out = devstack.prepare(tmp_path, {"SLUICE_API_KEYS": "k1"})
    assert not (tmp_path / "dev-api-key").exists()
    assert "SLUICE_API_KEYS_FILE" not in (tmp_path / "Procfile").read_text()
    assert "SLUICE_API_KEYS" in out


def test_prepare_ports_are_overridable_and_checked(tmp_path: Path) -> None:
    devstack.prepare(tmp_path, {"SLUICE_NGINX_PORT": "9090", "SLUICE_DEMO_PORT": "9001"})
    conf = (tmp_path / "nginx" / "conf.d" / "sluice.conf").read_text()
    assert "listen 127.0.0.1:9090;" in conf
    assert "server 127.0.0.1:9001;" in conf
    with pytest.raises(SystemExit, match="not a TCP port"):
        devstack.prepare(tmp_path, {"SLUICE_DEMO_PORT": "http"})


# -- settings checked before anything starts (issue 13, item 24) -------------------------
def test_a_bad_setting_stops_make_run_before_anything_with_one_line_each(tmp_path: Path) -> None:
    env = {"SLUICE_CHAT_MAX_BODY_BYTES": "1000", "SLUICE_DRAIN_WINDOW": "-1"}
    with pytest.raises(SystemExit) as refused:
        devstack.prepare(tmp_path, env)
    lines = str(refused.value).splitlines()[1:]
    assert lines == [
        "  SLUICE_DRAIN_WINDOW='-1': Input should be greater than or equal to 0 (allowed: >= 0)"
        " [demo, chat-proxy, progress, log-tail, mock-upstream]",
        "  SLUICE_CHAT_MAX_BODY_BYTES='1000': Input should be greater than or equal to 1024"
        " (allowed: >= 1024) [chat-proxy]",
    ]
    assert not (tmp_path / "Procfile").exists()
    assert not (tmp_path / "nginx").exists()


def test_the_boundary_value_itself_is_accepted(tmp_path: Path) -> None:
    devstack.prepare(tmp_path, {"SLUICE_CHAT_MAX_BODY_BYTES": "1024", "SLUICE_DRAIN_WINDOW": "0"})
    assert (tmp_path / "Procfile").exists()


def test_a_bad_scoped_setting_is_named_as_given(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"SLUICE_MOCK_UPSTREAM__WORKERS='0': .*>= 1.*\[mock-"):
        devstack.prepare(tmp_path, {"SLUICE_MOCK_UPSTREAM__WORKERS": "0"})


def test_rules_across_settings_and_unparsable_values_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        devstack.prepare(tmp_path, {"SLUICE_GRACEFUL_TIMEOUT": "5"})
    assert "SLUICE_GRACEFUL_TIMEOUT (5.0) must exceed SLUICE_DRAIN_WINDOW (10.0)" in str(
        refused.value
    )
    with pytest.raises(SystemExit) as refused:
        devstack.prepare(tmp_path, {"SLUICE_MAX_HEADER_BYTES": "lots"})
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
        devstack.prepare(tmp_path, {name: value})
    assert f"{name}={value!r}" in str(refused.value) and says in str(refused.value)
    assert not (tmp_path / "Procfile").exists()


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        devstack.prepare(tmp_path, {"SLUICE_API_KEYS": "sk-real-secret,sk-change-me-before-use"})
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
        devstack.prepare(tmp_path, {"SLUICE_API_KEYS_FILE": str(keys)})


# -- make run reads no env file (item 20) -------------------------------------------------
def test_honcho_reads_no_env_file() -> None:
    args = devstack.honcho_args(Path("/run"), Path("/app"))
    assert args[args.index("-e") + 1] == os.devnull
    assert ".env" not in " ".join(args)


def test_make_run_says_whose_environment_and_that_env_is_not_read(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    quiet = devstack.prepare(tmp_path, {"SLUICE_API_KEYS": "sk-mine"}, app)
    assert "API keys: from SLUICE_API_KEYS in your environment" in quiet
    assert "Environment: your shell's (make run reads no env file)\n" in quiet
    (app / ".env").write_text("SLUICE_API_KEYS=sk-change-me-before-use\n")
    noted = devstack.prepare(tmp_path, {"SLUICE_API_KEYS": "sk-mine"}, app)
    assert f"{app / '.env'} is compose's and is not read" in noted


def test_make_run_runs_prepare_then_honcho_without_an_env_file() -> None:
    makefile = (devstack.ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nrun:") :].split("\n\n")[0]
    assert "$(BIN)/python -m sluice.devstack run" in recipe
    assert "honcho" not in recipe  # only through devstack.start: no env file, drain-long wait


# -- service-scoped settings (item 23) -----------------------------------------------------
def procfile_settings(run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Each service's settings as its Procfile line starts it, under ``env`` (the shell)."""
    found: dict[str, Any] = {}
    for line in (run_dir / "Procfile").read_text().splitlines():
        name, _, command = line.partition(": ")
        if name not in devstack.SERVICES:
            continue
        words = shlex.split(command)
        assert words[0] == "env"
        assignments = dict(w.split("=", 1) for w in words[1 : words.index(words[-4])])
        with devcheck.environment({**env, **assignments}):
            found[name] = devcheck.settings_class(devstack.SERVICES[name].settings)()
    return found


def test_a_scoped_setting_reaches_only_its_service_under_make_run(tmp_path: Path) -> None:
    env = {"SLUICE_CHAT_PROXY__PUBLIC_ROUTES": "", "SLUICE_DEMO_TOY_DELAY": "0.25"}
    devstack.prepare(tmp_path, env)
    settings = procfile_settings(tmp_path, env)
    assert set(settings) == set(devstack.SERVICES)
    assert settings["chat-proxy"].public_routes == ""
    for name in ("demo", "progress", "log-tail", "mock-upstream"):
        assert settings[name].public_routes is None, name  # their defaults
    assert settings["demo"].demo_toy_delay == 0.25  # plain settings still reach everyone


def test_the_plain_setting_reaches_every_service_and_the_scoped_one_wins() -> None:
    env = {"SLUICE_PUBLIC_ROUTES": "/a", "SLUICE_CHAT_PROXY__PUBLIC_ROUTES": "/b"}
    with devcheck.environment({**env, "SLUICE_SERVICE_NAME": "chat-proxy"}):
        assert ChatSettings().public_routes == "/b"
    with devcheck.environment({**env, "SLUICE_SERVICE_NAME": "mock-upstream"}):
        assert MockSettings().public_routes == "/a"
    with devcheck.environment(env):  # no SLUICE_SERVICE_NAME: the class's own service name
        assert ChatSettings().public_routes == "/b"
        assert MockSettings().public_routes == "/a"
    # one underscore is another setting's name, not a scope (SLUICE_PROGRESS_MAX_EVENTS)
    both = {"SLUICE_PROGRESS_MAX_EVENTS": "700", "SLUICE_PROGRESS__PROGRESS_LEASE": "3"}
    with devcheck.environment(both):
        progress = ProgressSettings()
        assert (progress.progress_max_events, progress.progress_lease) == (700, 3)
    assert scope_prefix("chat-proxy") == "SLUICE_CHAT_PROXY__"


def test_scoped_server_settings_reach_gunicorn_for_that_service_only() -> None:
    env = {"SLUICE_WORKERS": "2", "SLUICE_DEMO__WORKERS": "3"}
    with devcheck.environment({**env, "SLUICE_SERVICE_NAME": "demo"}):
        assert ServerSettings().workers == 3
    with devcheck.environment({**env, "SLUICE_SERVICE_NAME": "log-tail"}):
        assert ServerSettings().workers == 2


# -- dependencies under make run (item 12) -------------------------------------------------
def test_dependencies_are_supervised_and_honcho_waits_for_the_longest_drain(
    tmp_path: Path,
) -> None:
    out = devstack.prepare(tmp_path, {"SLUICE_DEMO__DRAIN_WINDOW": "20"})
    procfile = dict(
        line.split(": ", 1) for line in (tmp_path / "Procfile").read_text().splitlines()
    )
    for name in ("nginx", "redis", "progress-worker", "prometheus"):
        if name in procfile:  # redis and prometheus only when installed
            assert " -m sluice.supervise --name " + name in procfile[name], name
    assert "--stop-signal QUIT" in procfile["nginx"]  # graceful: streams end as drained
    for name in devstack.SERVICES:
        assert "sluice.supervise" not in procfile[name]
    # demo's graceful timeout: its 20 s window + 5; honcho waits 5 s more before SIGKILL
    assert (tmp_path / "stop-timeout").read_text() == "30\n"
    assert "drained first (up to 30 s)" in out
    devstack.prepare(tmp_path, {})
    assert (tmp_path / "stop-timeout").read_text() == "20\n"  # the default 10 s window


# -- sluice.supervise: a dependency's death does not end make run ------------------------
def supervise(tmp_path: Path, script: str, *options: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "sluice.supervise", "--name", "dep", *options, "--"]
    return subprocess.Popen(
        [*argv, "sh", "-c", script], cwd=devstack.ROOT, stderr=(tmp_path / "err").open("wb")
    )


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_dependency_that_dies_is_restarted_and_the_supervisor_stays(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = supervise(tmp_path, f"echo run >> {runs}; exit 3")
    try:
        assert wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 2, 5)
        assert proc.poll() is None  # honcho sees nothing exit
        assert "exited with 3; the rest of the stack stays up" in (tmp_path / "err").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) is not None


def test_stop_sends_the_stop_signal_and_returns_the_child_code(tmp_path: Path) -> None:
    got = tmp_path / "got"
    script = f"trap 'echo quit > {got}; exit 0' QUIT; echo up > {got}; while :; do sleep 0.1; done"
    proc = supervise(tmp_path, script, "--stop-signal", "QUIT")
    assert wait_for(lambda: got.exists() and got.read_text() == "up\n", 5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches honcho, which sends TERM: either works
    assert proc.wait(5) == 0
    assert got.read_text() == "quit\n"


def test_a_child_that_ignores_the_stop_is_killed_after_kill_after(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = supervise(tmp_path, f"trap '' TERM; echo $$ > {pid_file}; sleep 60", "--kill-after", "1")
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 5)
    child = int(pid_file.read_text())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 128 + signal.SIGKILL  # its child's death, as a shell reports it
    assert time.monotonic() - started < 3
    assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 2)


def test_the_child_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = supervise(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 5)
    child = int(pid_file.read_text())
    proc.kill()  # as honcho's SIGKILL would
    proc.wait(5)
    assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 2), "child outlived it"
