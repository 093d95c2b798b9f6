"""``python -m sluice_dev COMMAND``: see ``--help``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sluice.registry import registry
from sluice_dev import drift, scaffold, stack, sync
from sluice_dev.project import Project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice_dev", description=__doc__)
    parser.add_argument(
        "--project-dir", type=Path, default=Path.cwd(), help="the project (default: here)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "check settings, write .run/, start the stack (make run)"),
        ("prepare", "check settings and write .run/ only"),
        ("start", "start what prepare wrote; say when every service is ready"),
        ("honcho", "run .run/Procfile under honcho in this process (start runs it)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--run-dir", type=Path, default=None, help="default: PROJECT/.run")
    check = commands.add_parser("sync", help="write the files generated from declarations")
    check.add_argument(
        "--check", action="store_true", help="only say what differs (compose and k8s too)"
    )
    new = commands.add_parser("new-service", help="a new service: package, test, entries")
    new.add_argument("name", help="lower-case words joined by '-', e.g. price-feed")
    new.add_argument("--port", type=int, default=None, help="default: the next free one")
    args = parser.parse_args(argv)
    project = Project.at(args.project_dir)
    # The project's own services are found before any installed ones (a core installed as
    # a package, a project of one's own beside it).
    sys.path.insert(0, str(project.services_dir))

    if args.command == "sync":
        if args.check:
            differ = [
                f"{path.relative_to(project.root)} differs from the declarations (make sync)"
                for path in sync.stale(project, registry())
            ]
            differ += drift.check(project.root, registry())
            for line in differ:
                print(line)
            return 1 if differ else 0
        for path in sync.write(project, registry()):
            print(f"wrote {path.relative_to(project.root)}")
        return 0
    if args.command == "new-service":
        for line in scaffold.create(project, args.name, args.port):
            print(line)
        return 0

    run_dir: Path = args.run_dir or project.root / ".run"
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "honcho":
        return stack.honcho(run_dir, project.root)
    if args.command in ("prepare", "run"):
        print(stack.prepare(run_dir, os.environ, project), end="", flush=True)
    if args.command in ("start", "run"):
        return stack.start(run_dir, project.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
