"""Every shell example of the README's service guides, run as written against a stack.

    SLUICE_SMOKE_KEY=<api key> python3 deploy/readme_examples.py [http://localhost:8080]

An example is a ```sh block that talks to ``http://127.0.0.1:8080`` (the README's front
door), run whole by bash with that address replaced by the stack's, in a folder whose
``.run/dev-api-key`` holds the key (so ``KEY=$(cat .run/dev-api-key)`` works as written).
Each ``curl`` in it must answer 2xx with a body; an endless stream (``/dummy-events``, a
followed log) is read for a few seconds, any other must end by itself. The walkthrough of
"Add your own streaming service" is left out: its route exists only once the service is made
(``tests/e2e/test_new_service.py`` follows it). Standard library only: it runs wherever
deploy/smoke.sh does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
FRONT_DOOR = "http://127.0.0.1:8080"
NOT_SERVED = ("/price-feed/",)  # made by the README's own walkthrough, not in the stack

# A curl that must answer 2xx with a body; an endless stream may be stopped by --max-time.
_PRELUDE = r"""
set -u
endless() {
  case "$*" in
    *follow=false*) return 1 ;;
    */dummy-events*|*/logs/*) return 0 ;;
    *) return 1 ;;
  esac
}
curl() {
  local limit=45 out rc
  if endless "$*"; then limit=3; fi
  out=$(command curl -sS --fail-with-body --max-time "$limit" "$@"); rc=$?
  printf '%s\n' "$out"
  if [ "$rc" -eq 28 ] && [ -n "$out" ] && endless "$*"; then return 0; fi
  if [ "$rc" -ne 0 ]; then echo "README example failed (curl exit $rc): curl $*" >&2; exit 1; fi
  if [ -z "$out" ]; then echo "README example answered nothing: curl $*" >&2; exit 1; fi
}
"""


def examples(readme: str) -> list[str]:
    """The ```sh blocks of the README that talk to its front door."""
    blocks = re.findall(r"^```sh\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
    return [
        block
        for block in blocks
        if FRONT_DOOR in block and "curl" in block and not any(p in block for p in NOT_SERVED)
    ]


def run(block: str, base: str, key: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One example, as written but for the stack's address, in a folder with the key."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder, ".run")
        run_dir.mkdir()
        (run_dir / "dev-api-key").write_text(key + "\n")
        script = _PRELUDE + block.replace(FRONT_DOOR, base.rstrip("/"))
        return subprocess.run(
            ["bash", "-c", script],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def main(argv: list[str]) -> int:
    base = argv[1] if len(argv) > 1 else "http://localhost:8080"
    key = os.environ.get("SLUICE_SMOKE_KEY")
    if not key:
        print("set SLUICE_SMOKE_KEY to an API key of the stack", file=sys.stderr)
        return 2
    found = examples(README.read_text())
    for number, block in enumerate(found, 1):
        first = block.strip().splitlines()[0]
        done = run(block, base, key)
        if done.returncode != 0:
            print(f"FAIL: README example {number} ({first}):\n{done.stderr}", file=sys.stderr)
            return 1
        print(f"ok: README example {number} ({first})")
    print(f"all {len(found)} README examples ran as written against {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
