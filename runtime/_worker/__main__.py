"""`python -m runtime._worker serve CONFIG_JSON` (one fresh worker process) or
`python -m runtime._worker template PARENT_PID` (the fork server's template)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        from runtime._worker._serve import WorkerConfig, run_worker

        run_worker(WorkerConfig.from_json(argv[1]))
    if len(argv) == 2 and argv[0] == "template":
        from runtime._worker._template import run_template

        run_template(int(argv[1]))
    print("usage: python -m runtime._worker serve CONFIG_JSON | template PARENT_PID",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
