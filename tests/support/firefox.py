"""Headless Firefox (Debian's firefox-esr) driven over WebDriver BiDi, its own remote protocol.

Playwright drives only its own patched Firefox build, which these machines cannot download;
the stock browser speaks BiDi on ``--remote-debugging-port``. This is the little of it the
console's test needs: open a page, run a script in it, wait for a condition. The profile
sends every request but 127.0.0.1's to a dead proxy, so the browser's own background traffic
(updates, telemetry, remote settings) goes nowhere.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.procs import Proc, free_port

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/bin/firefox-esr"

PREFS = {
    # Nowhere but here: a proxy that refuses, for everything but the loopback address.
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.no_proxies_on": "127.0.0.1",
    "network.proxy.allow_hijacking_localhost": False,
    "app.update.disabledForTesting": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False,
    "remote.prefs.recommended": True,
}


class BidiError(RuntimeError):
    pass


class Firefox:
    """One browsing context of a BiDi session."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self.send("session.new", {"capabilities": {}})
        tree = self.send("browsingContext.getTree", {})
        self.context: str = tree["contexts"][0]["context"]

    def send(self, method: str, params: dict[str, Any], timeout: float = 30) -> Any:
        sent = next(self._ids)
        self._socket.send(json.dumps({"id": sent, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer in {timeout} s")
            message = json.loads(self._socket.recv(timeout=left))
            if message.get("id") != sent:
                continue  # an event, or another answer
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    def goto(self, url: str) -> None:
        self.send(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    def evaluate(self, expression: str) -> Any:
        """``expression``'s value in the page (a promise awaited), as JSON."""
        result = self.send(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.context},
                "awaitPromise": True,
            },
        )
        if result["type"] != "success":
            raise BidiError(f"{expression}: {result.get('exceptionDetails')}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    def wait(self, expression: str, timeout: float = 20) -> Any:
        """``expression``'s value once it is truthy."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{expression} stayed {value!r} for {timeout} s")


@contextmanager
def firefox(profile: Path, log_dir: Path) -> Iterator[Firefox]:
    """A headless Firefox of its own profile, stopped (by its pid) at the end."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    port = free_port()
    argv = [FIREFOX, "--headless", "--no-remote", "--profile", str(profile)]
    log_path = log_dir / f"firefox-{port}.log"
    with log_path.open("ab") as log:
        # Its own process group (whose id is its pid): its content processes end with it.
        popen = subprocess.Popen(
            [*argv, "--remote-debugging-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(f"firefox-{port}", popen, log_path)
    try:
        deadline = time.monotonic() + 60  # a fresh profile's first start, on a loaded machine
        while "WebDriver BiDi listening" not in proc.log():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"firefox did not start:\n{proc.log()[-2000:]}")
            time.sleep(0.1)
        with connect(f"ws://127.0.0.1:{port}/session", max_size=None) as socket:
            yield Firefox(socket)
    finally:
        proc.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)  # whatever of the group outlived it
