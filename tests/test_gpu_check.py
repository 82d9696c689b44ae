"""``bench/gpu_check.py``: its ``--smoke`` run, for real on the CPU, exercises every code path of the
GPU check (ours and the authors' training and sampling, BPD after equal steps, Ray packing)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
REFERENCE = REPO.parent / "shared" / "reference" / "RG-Flow"  # the script's default --reference-repo
TARGETS = {"train_speedup_bf16_b4_tiny", "val_bpd_delta_bf16_vs_fp32", "packing_aggregate_over_single"}


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_smoke_measures_every_section(tmp_path):
    out = tmp_path / "x.json"
    have_ref = (REFERENCE / "code" / "main.py").is_file()
    # --budget-s 300 instead of the smoke default of 60 s: a busy test machine must not skip anything
    proc = _run("--smoke", "--budget-s", "300", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("reference: /" if have_ref else "reference: not found") in proc.stdout
    assert "targets (smoke" in proc.stdout
    result = json.loads(out.read_text())
    assert result["smoke"] and result["skipped"] == []
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"] == torch.__version__
    assert result["reference"]["found"] is have_ref

    trains = {(r["impl"], r["precision"]): r for r in result["train"]}
    assert set(trains) == {("ours", "fp32"), ("ours", "bf16")} | ({("ref", "fp32")} if have_ref else set())
    for r in trains.values():
        assert "error" not in r, r
        assert _positive(r["img_per_s"]) and all(map(_positive, r["step_s"])) and _positive(r["warmup_s"])
        assert r["preset"] == "tiny" and r["batch"] == 4
        assert r["impl"] == "ref" or r["model_overrides"] == {"compile": False}
    samples = {(r["impl"], r["precision"]) for r in result["sample"] if _positive(r.get("sample_s"))}
    assert samples == {("ours", "fp32")} | ({("ref", "fp32")} if have_ref else set())
    bpd = {r["precision"]: r for r in result["bpd"]}
    assert set(bpd) == {"fp32", "bf16"}
    for r in bpd.values():
        assert all(_positive(r[k]) for k in ("val_bpd", "val_bpd_fp32_eval", "first_loss", "last_loss", "img_per_s")), r
    (pack,) = result["packing"]
    assert pack["trials"] == 2 and _positive(pack["single_img_per_s"]) and _positive(pack["packed"]["img_per_s"])
    assert len(pack["packed"]["per_trial_img_per_s"]) == 2 and all(map(_positive, pack["packed"]["per_trial_img_per_s"]))

    goals = {t["name"]: t for t in result["targets"]}
    assert set(goals) == TARGETS
    for name, t in goals.items():
        measured = have_ref or not name.startswith("train_speedup")
        assert t["status"] in (("pass", "fail") if measured else ("not-measured",)), t
        if measured:  # the BPD difference may be exactly 0 after 2 tiny steps
            assert math.isfinite(t["value"]) and t["value"] >= 0 and (t["value"] > 0 or name.startswith("val_bpd")), t
        else:
            assert t["value"] is None and t["detail"] == "reference: not found"


def test_a_spent_budget_skips_and_says_so(tmp_path):
    """Past the deadline nothing runs: every measurement is listed as skipped, every target
    not-measured; a reference checkout that is not there is reported, not an error."""
    out = tmp_path / "x.json"
    proc = _run("--smoke", "--budget-s", "0.01", "--reference-repo", str(tmp_path / "no-such-checkout"),
                "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reference: not found" in proc.stdout
    result = json.loads(out.read_text())
    assert not result["reference"]["found"] and str(tmp_path / "no-such-checkout") in result["reference"]["why"]
    assert result["train"] == result["sample"] == result["bpd"] == result["packing"] == []
    assert len(result["skipped"]) == 6 and all("left of the 0.01 s budget" in s["why"] for s in result["skipped"])
    assert [t["status"] for t in result["targets"]] == ["not-measured"] * 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_a_full_run_exits_2_with_one_line(tmp_path):
    proc = _run("--out", str(tmp_path / "x.json"), timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "needs a CUDA device" in proc.stderr
    assert not (tmp_path / "x.json").exists()
