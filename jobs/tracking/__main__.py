"""``python -m jobs.tracking replay RUN_DIR…``: deliver spooled metrics, tags, artifacts and end
states that trial run folders still hold (after the tracking server was unreachable)."""
from __future__ import annotations

import argparse
import logging
import sys

from .trial import replay_run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tracking", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser("replay", help="deliver what run folders still hold for their MLflow runs")
    replay.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    replay.add_argument("--timeout", type=float, default=60.0, help="seconds to keep retrying per folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    failed = 0
    for run_dir in args.run_dirs:
        try:
            ok = replay_run_dir(run_dir, timeout_s=args.timeout)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{run_dir}: {'delivered' if ok else 'NOT delivered (store unreachable or refused; kept)'}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
