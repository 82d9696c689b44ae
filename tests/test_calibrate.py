"""``python -m jobs.sweep calibrate``: it measures the training step a trial runs, stores the rates
where the dry-run finds them, and the dry-run's estimate for a real trial then agrees with the
trial's measured time within the factor 2 that issue 25 asks for."""
from __future__ import annotations

import json
import time

import pytest

from jobs.calibrate import DEFAULT_BATCHES, plan
from jobs.dryrun import estimates
from jobs.study import load_study
from jobs.sweep import main
from jobs.sweep_spec import load_sweep
from rgflow.checkpoint import load_latest
from tests.fixtures.sweep import REPO

ONE_TRIAL = """
name: calibrated
base_config: {repo}/configs/tiny.yaml
base:
  data: {{train_size: 1024, valid_size: 64, test_size: 64, root: {data}}}
  train: {{batch_size: 32, epochs: 3, log_every: 10, sample_every_epochs: 3, sample_count: 4, val_draws: 1}}
  run: {{device: cpu, threads: 1, out_dir: {out}}}
  tracking: {{enabled: false}}
resources: {{cpus: 1, gpus: 0}}
evaluation: {{enabled: false}}
"""


def test_plan_measures_what_the_trials_use_cheapest_first():
    default, notes = plan([], cuda=False)
    assert [(s.preset, s.batch, s.device, s.threads) for s in default] == [("tiny", b, "cpu", 1) for b in DEFAULT_BATCHES]
    assert notes == []
    smoke = load_sweep(REPO / "sweeps" / "smoke.yaml")   # 4 trials, 2 batch sizes × 2 priors: 2 configurations
    specs, notes = plan([smoke], cuda=False)
    assert [(s.preset, s.batch, s.threads, s.log_every) for s in specs] == [("tiny", 32, 1, 10), ("tiny", 128, 1, 10)]
    study = load_study(REPO / "sweeps" / "batchsize.yaml")
    specs, notes = plan([study.sweep(stage) for stage in study.stages], cuda=False)
    assert specs == [] and notes == [
        f"batchsize-{stage}: trials on a GPU, but torch sees no CUDA here: measure them on a GPU machine (python -m "
        "jobs.sweep calibrate there, or bench/gpu_check.py)" for stage in ("tune", "confirm")]
    specs, _ = plan([study.sweep("tune")], cuda=True)   # by FLOPs per step: msds 6.8, celeba32 12.6 GFLOP per image
    assert [(s.preset, s.batch, s.device) for s in specs] == [(p, b, "cuda") for b in (64, 128, 256, 512)
                                                              for p in ("msds", "celeba32")]


def test_bad_calibrate_input_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresources: {gpus: -1}\n")
    assert main(["calibrate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: resources.gpus")


def test_a_calibration_keeps_the_earlier_rows_it_did_not_measure_again(tmp_path, capsys):
    out = tmp_path / "results" / "model-calibrate.json"
    out.parent.mkdir()
    earlier = {"kind": "train", "preset": "tiny", "batch": 32, "device": "cpu", "img_per_s": 1.0}
    out.write_text(json.dumps({"calibrate": True, "rows": [earlier]}))
    path = tmp_path / "small.yaml"
    path.write_text(f"name: small\nbase_config: {REPO}/configs/tiny.yaml\nbase: {{run: {{device: cpu, threads: 1}}}}\n"
                    "axes: {grid: {train.batch_size: [4]}}\nresources: {gpus: 0}\n")
    for _ in range(2):   # the second run replaces the batch-4 row of the first
        assert main(["calibrate", str(path), "--out", str(out), "--seconds", "0"]) == 0
        rows = json.loads(out.read_text())["rows"]
        assert [r["batch"] for r in rows] == [32, 4] and rows[0] == earlier
        assert rows[1]["img_per_s"] > 0 and rows[1]["device_name"] and len(rows[1]["step_s"]) == 3
    assert "(keeping 1 earlier measurement(s) of other configurations)" in capsys.readouterr().out


@pytest.mark.slow
def test_estimate_of_a_real_trial_is_within_2x_of_its_measured_time(tmp_path, trial_data_root, capsys):
    """Calibrate, then run the trial in this process right after: the dry-run's estimate against the
    ``wall_s`` the trial logs (what ``jobs.report`` counts as its CPU-hours). Both are measured in
    wall time and in this process's CPU time. The wall times stretch with whatever else runs on
    the shared cores at each moment (seen here: 0.36 to 1.0 CPU-seconds per second a minute
    apart), so the factor-2 check compares the CPU times — the estimate's wall time times the CPU
    share of its calibration, the loop's wall time times the trial's CPU share —, which measures
    the cost model and not the neighbours' load; the wall times are printed beside them."""
    from jobs.train import run_trial

    path = tmp_path / "one.yaml"
    path.write_text(ONE_TRIAL.format(repo=REPO, data=trial_data_root, out=tmp_path / "runs"))
    results = tmp_path / "results"
    assert main(["calibrate", str(path), "--out", str(results / "model-calibrate.json"), "--seconds", "3"]) == 0
    assert "calibrate: 1 of 1 configurations measured" in capsys.readouterr().out
    row = json.loads((results / "model-calibrate.json").read_text())["rows"][0]
    assert (row["preset"], row["batch"], row["threads"], row["log_every"]) == ("tiny", 32, 1, 10)

    sweep = load_sweep(path)
    estimate = estimates(sweep, results)[0]
    assert estimate.throughput.basis.startswith(f"measured on {row['device_name']}, 1 thread, batch 32 (")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    outcome = run_trial(sweep.trials[0].config, sweep=sweep.name)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert outcome.state == "finished", outcome.reason
    wall_s = load_latest(outcome.run_dir / "checkpoints")[1]["loop"]["wall_s"]   # the training loop's wall time

    estimated_s = estimate.hours * 3600                       # at the calibrated wall-clock rate
    estimated_cpu_s = estimated_s * row["img_per_s"] / row["img_per_cpu_s"]   # the same work in CPU seconds
    loop_cpu_s = cpu * wall_s / wall                          # the loop's share of the trial's CPU time
    numbers = (f"estimate {estimated_s:.1f} s wall ({estimated_cpu_s:.1f} s CPU, {row['img_per_s']:.0f} img/s at "
               f"{row['cpu_per_wall']:.2f} CPU-s per s); trial loop wall_s {wall_s:.1f} s ({loop_cpu_s:.1f} s CPU, "
               f"{cpu / wall:.2f} CPU-s per s)")
    print(numbers)
    assert 0.5 <= loop_cpu_s / estimated_cpu_s <= 2.0, numbers
