"""make loadtest's locust run, bounded, against make run's stack, with a rolling restart."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.procs import start_local_stack

sys.path.insert(0, str(ROOT / "loadtests"))  # loadtests/ is not a package
from processes import is_gunicorn


def descendants(pid: int) -> dict[int, tuple[int, list[str]]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().decode().split("\0")
            except (OSError, ValueError):
                continue
            table[int(entry.name)] = (ppid, argv)
    found, frontier = {}, {pid}
    while frontier:
        children = {p: v for p, v in table.items() if v[0] in frontier and p not in found}
        found.update(children)
        frontier = set(children)
    return found


def test_locust_run_holds_its_thresholds_through_a_rolling_restart(
    tmp_path: Path, log_dir: Path
) -> None:
    stack = start_local_stack(
        tmp_path,
        log_dir,
        {
            "SLUICE_RATE_LIMIT": "100000/minute",
            "SLUICE_MAX_STREAMS_PER_KEY": "1000",
            "SLUICE_DRAIN_WINDOW": "2",
            "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.2",
        },
    )
    env, key, base = stack.env, stack.key, stack.base
    try:
        family = descendants(stack.proc.pid)
        gunicorns = {pid: ppid for pid, (ppid, argv) in family.items() if is_gunicorn(argv)}
        masters = [pid for pid, ppid in gunicorns.items() if ppid not in gunicorns]
        assert len(masters) == 5
        reports = tmp_path / "reports"
        reports.mkdir()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "locust"),
                "-f",
                str(ROOT / "loadtests" / "locustfile.py"),
                "--headless",
                "--host",
                base,
                "-u",
                "20",
                "-r",
                "10",
                "-t",
                "20s",
                "--stop-timeout",
                "15",
                "--csv",
                str(reports / "run"),
                "--html",
                str(reports / "run.html"),
            ],
            env={
                **env,
                "PATH": "/usr/bin:/bin",
                "SLUICE_LOADTEST_KEY": key,
                "LOADTEST_RESTARTS": "2",
                "LOADTEST_RESTART_EVERY": "6",
                "LOADTEST_MASTERS": ",".join(map(str, masters)),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        stack.stop()
    verdict = [
        line
        for line in run.stdout.splitlines() + run.stderr.splitlines()
        if "loadtest verdict" in line
    ]
    assert run.returncode == 0, "\n".join(verdict) or run.stderr[-3000:]
    assert verdict
    print(verdict[0])
    with (reports / "run_stats.csv").open() as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    assert int(rows[("STREAM", "chat ttft")]["Request Count"]) > 10
    assert int(rows[("STREAM", "chat inter-token")]["Request Count"]) > 100
    assert int(rows[("CHECK", "rolling restart")]["Request Count"]) == 2
    assert stack.proc.log().count("Handling signal: hup") == 10  # 5 masters, twice
    assert int(rows[("CHECK", "events reconnect hints")]["Request Count"]) >= 1
    assert rows[("CHECK", "progress lost events")]["Failure Count"] == "0"
    assert int(rows[("CHECK", "progress lost events")]["Request Count"]) > 0
    assert rows[("CHECK", "chat lost tokens")]["Failure Count"] == "0"  # resumable answers
    assert int(rows[("CHECK", "chat lost tokens")]["Request Count"]) > 0
    assert rows[("CHECK", "events lost streams")]["Failure Count"] == "0"
    assert (reports / "run.html").stat().st_size > 10_000
