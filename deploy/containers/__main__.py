"""`make compose-smoke`: build the image from the unchanged Dockerfile, bring the compose stack
up on free 127.0.0.1 ports, wait until every container is healthy, run deploy/smoke.sh, tear
everything down. A real Docker engine is used where one answers; otherwise podman (installed
when missing, as root), with stand-in images built locally and kept between runs.

    python -m deploy.containers smoke [--project-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .engine import EngineUnavailable, engine_for
from .stack import ROOT, new_stack
from .standins import build_sluice, ensure_base, ensure_standins


def smoke(project_dir: Path | None, log_dir: Path) -> None:
    started = time.monotonic()
    with engine_for(ensure_base) as engine:
        if engine.kind == "podman":
            ensure_standins(engine)
        prepared = time.monotonic() - started
        built = build_sluice(engine)
        stack = new_stack(engine, log_dir, project_dir)
        try:
            healthy = stack.up()
            print(stack.smoke(), end="", flush=True)
        finally:
            left = stack.down()
        print(
            f"compose-smoke ({engine.kind}): engine and stand-ins {prepared:.0f} s, "
            f"image build {built:.0f} s, up to healthy {healthy:.0f} s, "
            f"total {time.monotonic() - started:.0f} s; left after down: {left}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.containers")
    parser.add_argument("command", choices=["smoke"])
    parser.add_argument(
        "--project-dir", type=Path, default=None, help="a folder with a .env (default: staged)"
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / ".run" / "compose")
    args = parser.parse_args(argv)
    try:
        smoke(args.project_dir.resolve() if args.project_dir else None, args.log_dir)
    except EngineUnavailable as exc:
        print(f"compose-smoke: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
