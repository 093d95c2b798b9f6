"""Multiprocess metrics: the cached pid still tells a forked worker's writes apart."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from sluice import metrics
    from prometheus_client import values

    assert values.ValueClass is not values.MultiProcessValue  # ours, with the cached pid
    started = metrics.STREAMS_STARTED.labels("svc", "/r")
    started.inc()
    child = os.fork()
    if child == 0:
        metrics.STREAMS_STARTED.labels("svc", "/r").inc(2)  # a worker forked from here
        os._exit(0)
    os.waitpid(child, 0)
    started.inc()
    body, _ = metrics.render()
    line = [l for l in body.decode().splitlines() if l.startswith("sluice_streams_started_total{")]
    print(line[0].rsplit(" ", 1)[1], sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
    print(os.getpid(), child)
    """
)


def test_forked_child_writes_its_own_file_and_the_sum_is_right(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**env, "PYTHONPATH": ":".join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    summary, pids = result.stdout.splitlines()
    parent, child = pids.split()
    assert summary.split()[0] == "4.0"  # 1 + 1 in the parent, 2 in the child
    assert f"counter_{parent}.db" in summary
    assert f"counter_{child}.db" in summary
