"""The study report on a synthetic two-stage, two-data-set store (the shape of sweeps/batchsize.yaml):
batch sizes are compared within each data set, never split by the LR each one was tuned to, and
the LR search lists one chosen LR per (data set, batch size), as the study chose."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from jobs.config import flatten
from jobs.report.build import build_report
from jobs.study import load_study, stage_sweep

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 6400
EPOCHS = 10
LRS = [1e-3, 2e-3, 4e-3, 8e-3]
#: The truth: the best LR per (data set, batch size), inside the grid, different per data set.
BEST_LR = {("msds1", 32): 2e-3, ("msds1", 64): 4e-3, ("msds1", 128): 4e-3,
           ("msds2", 32): 2e-3, ("msds2", 64): 2e-3, ("msds2", 128): 4e-3}
B_CRIT = {"msds1": 64.0, "msds2": 16.0}  # images: S(B) = S_min·(1 + B_crit/B) in the confirm stage
FLOOR = {"msds1": 3.0, "msds2": 3.5}

STUDY = """
name: gpu-like
base_config: {config}
base:
  tracking: {{uri: "{uri}"}}
  data: {{train_size: 6400, valid_size: 200, test_size: 200}}
backend: local
stages:
  tune:
    axes:
      zip:
        - data.name: [msds1, msds2]
          model.preset: [tiny, msds]
      grid:
        train.batch_size: [32, 64, 128]
        train.lr: [1.0e-3, 2.0e-3, 4.0e-3, 8.0e-3]
      seeds: [0]
    evaluation: {{enabled: false}}
  confirm:
    best_of: {{stage: tune, by: [data.name, train.batch_size], take: [train.lr]}}
    axes:
      zip:
        - data.name: [msds1, msds2]
          model.preset: [tiny, msds]
      grid:
        train.batch_size: [32, 64, 128]
        prior.kind: [laplace, gaussian]
      seeds: [0, 1, 2]
"""


def log_run(client: MlflowClient, exp: str, parent: str, trial, sweep: str, points: list[tuple[int, float, float]]):
    """A finished trial run in the documented layout; ``points``: (step, epoch, val_bpd)."""
    tags = {"rgflow.role": "trial", "rgflow.trial_id": trial.trial_id, "rgflow.sweep": sweep,
            "rgflow.trial_index": str(trial.index), "rgflow.state": "finished", "mlflow.parentRunId": parent}
    run = client.create_run(exp, tags=tags).info.run_id
    params = [Param(k, v) for k, v in flatten(trial.config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run, params=params[i:i + 100])
    now = int(time.time() * 1000)
    metrics = [m for step, epoch, bpd in points
               for m in (Metric("val_bpd", bpd, now, step), Metric("val_epoch", epoch, now, step))]
    metrics.append(Metric("best_val_bpd", min(b for _, _, b in points), now, points[-1][0]))
    client.log_batch(run, metrics=metrics)
    client.set_terminated(run, "FINISHED")


def stage_runs(client: MlflowClient, sweep, make_points) -> None:
    exp = client.create_experiment(sweep.name)
    parent = client.create_run(exp, tags={"rgflow.role": "sweep", "rgflow.sweep": sweep.name,
                                          "rgflow.sweep_id": sweep.sweep_id}).info.run_id
    for trial in sweep.trials:
        log_run(client, exp, parent, trial, sweep.name, make_points(trial.config))
    client.set_terminated(parent, "FINISHED")


def tune_points(cfg) -> list[tuple[int, float, float]]:
    """Best val BPD rises quadratically in log2(lr / best LR) of its data set and batch size."""
    best = BEST_LR[(cfg.data.name, cfg.train.batch_size)]
    end = FLOOR[cfg.data.name] + 0.05 * math.log2(cfg.train.lr / best) ** 2
    per_epoch = N_TRAIN // cfg.train.batch_size
    return [(e * per_epoch, float(e), end + 1.0 / e) for e in (1, 2, 3)]


def confirm_points(cfg) -> list[tuple[int, float, float]]:
    """val BPD = floor + 2·exp(−τ/300), τ = step / (1 + B_crit/B): steps to any target follow
    S = S_min·(1 + B_crit/B) exactly; seeds shift the curve by ±0.002 bits/dim."""
    ds, batch = cfg.data.name, cfg.train.batch_size
    per_epoch = N_TRAIN // batch
    shift = (cfg.run.seed - 1) * 0.002 + (0.01 if cfg.prior.kind == "gaussian" else 0.0)
    return [(e * per_epoch, float(e),
             FLOOR[ds] + 2.0 * math.exp(-(e * per_epoch) / (1 + B_CRIT[ds] / batch) / 300.0) + shift)
            for e in range(1, EPOCHS + 1)]


@pytest.fixture(scope="module")
def study_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "gpu-like.yaml"
    path.write_text(STUDY.format(config=REPO / "configs" / "tiny.yaml", uri=uri))
    client = MlflowClient(uri)
    study = load_study(path)
    stage_runs(client, stage_sweep(study, "tune")[0], tune_points)
    confirm, waits = stage_sweep(study, "confirm")
    assert waits is None
    stage_runs(client, confirm, confirm_points)
    out = build_report(str(path), out_dir=tmp / "report", log_to_parent=False)
    return out, confirm


def test_lr_search_lists_one_chosen_lr_per_data_set_and_batch_size(study_report):
    out, confirm = study_report
    search = pd.read_csv(out / "lr_search.csv")
    winners = search[search["winner"]]
    chosen = {(g.split("=")[1], int(b)): lr for g, b, lr in zip(winners["group"], winners["batch_size"], winners["lr"])}
    assert chosen == pytest.approx(BEST_LR)
    assert not winners["at_edge"].any()
    taken = {(t.config.data.name, t.config.train.batch_size): t.config.train.lr for t in confirm.trials}
    assert taken == pytest.approx(BEST_LR)  # the study chose what the report shows
    fits = json.loads((out / "noise_scale_fit_tune.json").read_text())
    assert sorted(f["group"] for f in fits) == ["data.name=msds1", "data.name=msds2"]


def test_batch_sizes_are_compared_within_each_data_set(study_report):
    out, _ = study_report
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 * 3 * 2 * 3
    verdict = json.loads((out / "verdict.json").read_text())
    gaps = [f for f in verdict if f["topic"] == "batch gap" and f.get("estimate") is not None]
    contexts = {f["context"].split(", prior=")[0] for f in gaps}
    assert contexts == {"data.name=msds1", "data.name=msds2"}
    assert not any("train.lr" in f["context"] or "model.preset" in f["context"] for f in verdict)
    # every larger batch against the smallest, per data set, prior and axis: 2 × 2 × 2 × 2
    assert len(gaps) == 16
    fits = [f for f in verdict if f["topic"] == "critical batch"]
    assert {f["context"].split(", prior=")[0] for f in fits} == {"data.name=msds1", "data.name=msds2"}
