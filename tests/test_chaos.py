"""A short chaos run (``bench/chaos.py --quick``): a real sweep on the local backend and on embedded
Ray, tracked in a real ``mlflow server``, under four seeded faults (three local, one Ray; outages
scaled down to 1–6 s), each followed by re-runs until the sweep completes. Nothing may be lost,
doubled or left RUNNING: one FINISHED run per trial, every metric step once and bitwise equal to
a fault-free run, evaluations present, the parent run FINISHED (the invariants of the script's
docstring). ≈ 3 min on a quiet 2-core machine, up to twice that on a loaded one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "chaos.py"


@pytest.mark.timeout(1800)
def test_short_chaos_run_violates_no_invariant(tmp_path):
    for module in ("mlflow.server", "ray"):
        try:
            __import__(module)
        except ImportError as exc:
            skip_or_fail(f"{module} is not installed ({exc})")
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--backends", "local:3,ray:1", "--seed", "0", "--max-reruns", "4",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert out.exists(), f"exit {proc.returncode}, no JSON written:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    scenarios = result["scenarios"]
    assert len(scenarios) == 4 and {s["backend"] for s in scenarios} == {"local", "ray"}
    assert len({s["kind"] for s in scenarios if s["backend"] == "local"}) == 3  # three distinct local fault kinds
    assert sum(s["injected"] for s in scenarios) >= 3, [(s["kind"], s["detail"]) for s in scenarios]
    assert result["violations"] == [], "\n".join(result["violations"][:40]) + "\n" + proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all(s["survived"] for s in scenarios)
