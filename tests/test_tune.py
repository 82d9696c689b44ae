"""Ray Tune used as Ray Tune, on a real embedded Ray with sqlite MLflow: every validation is a Tune
result, ASHA prunes within ``group_by`` groups (pruned trials end FINISHED with
``rgflow.state=pruned`` and are never resumed), and ``jobs.sweep cancel`` stops running Ray trials
after a checkpoint within a step; the next launch resumes them bitwise-exactly."""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from rgflow.checkpoint import load_checkpoint
from tests.fixtures.sweep import REPO, SMOKE

pytestmark = pytest.mark.slow

#: 128 training images: 4 steps per epoch at batch 32, 1 at batch 128; validated every epoch.
ASHA = ("data.train_size=128", "train.steps=null", "train.epochs=3", "evaluation.enabled=false",
        "ray.max_concurrent_trials=1", "tune.scheduler.kind=asha", "tune.scheduler.grace_epochs=1",
        "tune.scheduler.reduction_factor=2", "tune.scheduler.group_by=[train.batch_size]")


def _progress_rows(sweep_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Tune's own per-trial results (``progress.csv``), by trial folder name (the trial id)."""
    (experiment,) = (sweep_dir / "tune").iterdir()  # one Tune experiment per sweep
    assert experiment.name == sweep_dir.name
    return {d.name: list(csv.DictReader((d / "progress.csv").open())) for d in experiment.iterdir() if d.is_dir()}


def test_asha_prunes_within_groups_and_tune_sees_every_validation(sweep_env):
    first = sweep_env.run(SMOKE, *sweep_env.overrides(*ASHA))
    assert first.returncode == 0, first.stderr
    runs = {r.info.run_name: r for r in sweep_env.trial_runs()}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs.values())
    state = {name: r.data.tags["rgflow.state"] for name, r in runs.items()}
    # One at a time, in trial order: within each batch size the Laplace trial reaches epoch 1 first
    # and the Gaussian one, worse there (it starts higher), is cut at the first rung.
    assert state == {"bs32-laplace-s0": "finished", "bs32-gaussian-s0": "pruned",
                     "bs128-laplace-s0": "finished", "bs128-gaussian-s0": "pruned"}, state
    client = sweep_env.client()
    for name, run in runs.items():
        vals = client.get_metric_history(run.info.run_id, "val_bpd")
        assert len(vals) == (1 if state[name] == "pruned" else 3), name
        if state[name] == "pruned":
            assert run.data.tags["rgflow.failure_reason"].startswith("pruned by asha at epoch 1 of 3")
            ckpt = json.loads((Path(run.data.tags["rgflow.run_dir"]) / "state.json").read_text())["checkpoint"]
            assert load_checkpoint(ckpt)["loop"]["step"] == len(vals) * (4 if "bs32" in name else 1)
        else:
            assert len(vals) == 3
    parent = sweep_env.parent_runs()[0]
    assert parent.info.status == "FINISHED"

    # Tune's results hold every validation, as MLflow does (the driver log no longer says it found none).
    rows = _progress_rows(sweep_env.runs_dir / "smoke")
    assert sorted(len(r) for r in rows.values()) == [1 + 1, 1 + 1, 3 + 1, 3 + 1]  # + the final outcome row
    by_bpd = {round(float(r["val_bpd"]), 10) for rs in rows.values() for r in rs if r["val_epoch"]}
    assert by_bpd == {round(m.value, 10) for r in runs.values()
                      for m in client.get_metric_history(r.info.run_id, "val_bpd")}
    assert "Failed to fetch metrics" not in (sweep_env.runs_dir / "smoke" / "logs" / "driver.log").read_text()

    status = sweep_env.run("status", SMOKE, *sweep_env.overrides(*ASHA))
    assert sorted(line.split()[2] for line in status.stdout.splitlines() if line[:1].isdigit()) == \
        ["finished", "finished", "pruned", "pruned"], status.stdout
    again = sweep_env.run(SMOKE, *sweep_env.overrides(*ASHA))
    assert again.returncode == 0 and "2 already finished, 2 skipped, 0 to run" in again.stderr, again.stderr
    assert again.stderr.count("pruned by the scheduler") == 2


#: One trial of 48 steps (256 images at batch 32, 6 epochs).
LONG = ("data.train_size=256", "train.steps=null", "train.epochs=6", "train.batch_size=32", "prior.kind=laplace",
        "evaluation.enabled=false")


def _final_checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(json.loads((run_dir / "state.json").read_text())["checkpoint"])


def test_cancel_stops_ray_trials_after_a_checkpoint_and_rerun_resumes_bitwise(sweep_env, tmp_path):
    overrides = sweep_env.overrides(*LONG)
    driver = sweep_env.popen(SMOKE, *overrides, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    logs = []
    while time.monotonic() < deadline and driver.poll() is None:
        logs = list((sweep_env.runs_dir / "smoke").glob("*/train.log"))
        if logs and "· val " in logs[0].read_text():  # past the first validation (step 8)
            break
        time.sleep(0.2)
    assert driver.poll() is None and logs, "the trial ended before it could be cancelled"
    cancel = sweep_env.run("cancel", SMOKE, *overrides, timeout=120)
    assert cancel.returncode == 0, cancel.stderr
    assert "1 of 1 running trial(s) stopped" in cancel.stdout, cancel.stdout
    assert driver.wait(timeout=60) == 130
    (run,) = sweep_env.trial_runs()
    assert (run.info.status, run.data.tags["rgflow.state"]) == ("KILLED", "killed")
    assert run.data.tags["rgflow.failure_reason"] == "sweep driver received SIGINT"
    assert run.data.tags["rgflow.ray_node_id"]
    run_dir = Path(run.data.tags["rgflow.run_dir"])
    stopped = _final_checkpoint(run_dir)["loop"]["step"]
    assert 8 < stopped < 48  # a checkpoint at the step it was stopped, not the epoch's
    assert f"killed: sweep driver received SIGINT; checkpoint step-{stopped:08d}.ckpt" in logs[0].read_text()

    rerun = sweep_env.run(SMOKE, *overrides)
    assert rerun.returncode == 0, rerun.stderr
    (run,) = sweep_env.trial_runs()
    assert run.info.status == "FINISHED" and run.data.tags["rgflow.attempt"] == "2"
    assert f"resuming from step-{stopped:08d}.ckpt" in logs[0].read_text()
    steps = [m.step for m in sweep_env.client().get_metric_history(run.info.run_id, "val_bpd")]
    assert steps == sorted(set(steps)) and len(steps) == 6  # every validation once

    reference = subprocess.run(
        [*sweep_env.command()[:2], "jobs.train", SMOKE, "--trial", "0", *sweep_env.overrides(*LONG)[1:],
         f"run.out_dir={tmp_path / 'reference'}", "tracking.enabled=false"],
        cwd=REPO, env=sweep_env.env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    ref = _final_checkpoint(tmp_path / "reference" / "smoke" / run_dir.name)
    resumed = _final_checkpoint(run_dir)
    assert resumed["loop"]["step"] == ref["loop"]["step"] == 48
    for key, value in ref["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, slots in ref["optimizer"]["state"].items():
        for name, value in slots.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], value), (index, name)


SEARCH = """name: search
base_config: {repo}/configs/tiny.yaml
base:
  data: {{train_size: 64, valid_size: 32, test_size: 32}}
  train: {{epochs: 2, log_every: 2, val_draws: 1, sample_count: 4, sample_every_epochs: 2}}
  run: {{device: cpu, threads: 1, out_dir: {out}}}
axes:
  grid:
    train.batch_size: [32, 64]
  random:
    params:
      train.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
  seeds: [0]
backend: ray
ray: {{max_concurrent_trials: 2}}
evaluation: {{enabled: false}}
tune:
  searcher: {{kind: optuna, num_samples: 2, seed: 0}}
  scheduler: {{kind: asha, grace_epochs: 1, reduction_factor: 2, group_by: [train.batch_size]}}
"""


def test_optuna_searches_each_setting_records_its_trials_and_never_resamples(sweep_env, tmp_path):
    from jobs.sweep_spec import load_sweep

    path = tmp_path / "search.yaml"
    path.write_text(SEARCH.format(repo=REPO, out=sweep_env.runs_dir))
    first = sweep_env.run(str(path))
    assert first.returncode == 0, first.stderr
    assert "optuna samples up to 4 more trials (2 per setting × 2 settings in all)" in first.stderr
    record = json.loads((sweep_env.runs_dir / "search" / "search.json").read_text())
    assert [e["frame"] for e in record] == [0, 1, 0, 1]  # the settings take turns
    lrs = [e["params"]["train.lr"] for e in record]
    assert len(set(lrs)) == 4 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    sweep = load_sweep(path)  # the sweep's trials are the recorded ones, ids from their resolved configs
    assert [t.varying["train.lr"] for t in sweep.trials] == lrs
    runs = {r.data.tags["rgflow.trial_id"]: r for r in sweep_env.trial_runs("search")}
    assert set(runs) == {t.trial_id for t in sweep.trials}
    for trial in sweep.trials:
        run = runs[trial.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["rgflow.state"] in ("finished", "pruned")
        assert float(run.data.params["train.lr"]) == trial.varying["train.lr"]
        assert run.data.params["train.batch_size"] == str(trial.varying["train.batch_size"])
    assert [p.info.status for p in sweep_env.parent_runs("search")] == ["FINISHED"]

    again = sweep_env.run(str(path))
    assert again.returncode == 0, again.stderr
    assert "0 to run" in again.stderr and "samples up to" not in again.stderr
    assert json.loads((sweep_env.runs_dir / "search" / "search.json").read_text()) == record
    assert len(sweep_env.trial_runs("search")) == 4

    more = sweep_env.run(str(path), "tune.searcher.num_samples=3")
    assert more.returncode == 0, more.stderr
    grown = json.loads((sweep_env.runs_dir / "search" / "search.json").read_text())
    assert grown[:4] == record and len(grown) == 6 and sorted(e["frame"] for e in grown[4:]) == [0, 1]
    assert not {e["params"]["train.lr"] for e in grown[4:]} & set(lrs)  # new points, none resampled
    assert len(sweep_env.trial_runs("search")) == 6
