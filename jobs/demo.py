"""``make demo``: the whole system end to end on this machine.

Runs ``sweeps/smoke.yaml`` on embedded Ray with the local sqlite MLflow store, evaluates every
trial (test BPD, samples, receptive fields; FID only when Inception weights are present), writes
the sweep report, and prints where the report is and the one command that opens the MLflow UI.
Each step is the same command a user would type, run as a subprocess with an argument list.
Re-running is cheap: finished trials are skipped and evaluation is idempotent.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(step: str, args: list[str], env: dict[str, str]) -> None:
    print(f"\n== {step}: {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env)
    if result.returncode != 0:
        sys.exit(f"demo: step '{step}' failed with exit code {result.returncode}")
    print(f"== {step}: done in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="sweeps/smoke.yaml", help="sweep file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides passed to every step")
    args = parser.parse_args(argv)

    db = REPO / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{db}")}
    env.pop("MLFLOW_RUN_ID", None)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("RAY_AUTH_MODE", "disabled")

    started = time.monotonic()
    _run("sweep", ["jobs.sweep", args.sweep, "backend=ray", *args.overrides], env)
    _run("evaluate", ["jobs.evaluate", args.sweep, "--all", *args.overrides], env)
    _run("report", ["jobs.report", args.sweep, *args.overrides], env)

    sweep_name = _sweep_name(args.sweep)
    report = REPO / "reports" / sweep_name / "report.html"
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s.")
    print(f"Report:    {report}  (Markdown beside it: {report.with_suffix('.md')})")
    print(f"MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']} --host 127.0.0.1 --port 5000")
    return 0


def _sweep_name(path: str) -> str:
    from jobs.sweep_spec import load_sweep

    return load_sweep(str(REPO / path) if not os.path.isabs(path) else path, []).name


if __name__ == "__main__":
    sys.exit(main())
