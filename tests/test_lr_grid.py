"""axes.lr_grid (jobs.sweep_spec): log-spaced LRs per setting, centred on the √ rule or between
bounds, with stable trial ids; and a study's widening of the grid at an edge (jobs.study.widen)."""
from __future__ import annotations

import json

import pytest

from jobs.config import ConfigError
from jobs.dryrun import format_trials_table
from jobs.study import choose, load_study, widen
from jobs.sweep_spec import WIDEN_RECORD, load_sweep
from jobs.tracking.layout import RunSummary
from tests.fixtures.sweep import REPO

SWEEP = """name: g
base_config: {repo}/configs/tiny.yaml
base:
  train: {{lr: 1.0e-3, reference_batch: 64}}
  run: {{out_dir: {out}}}
axes:
  grid: {{train.batch_size: [64, 256]}}
  lr_grid: {grid}
  seeds: [0, 1]
backend: local
"""

STUDY = """name: st
base_config: {repo}/configs/tiny.yaml
base:
  train: {{lr: 1.0e-3, reference_batch: 64, epochs: 1}}
  run: {{device: cpu, out_dir: {out}}}
backend: local
stages:
  tune:
    axes:
      grid: {{train.batch_size: [64, 256]}}
      lr_grid: {{center: sqrt, decades: 1.0, per_decade: 2, widen: 1}}
  confirm:
    best_of: {{stage: tune, by: [train.batch_size], take: [train.lr]}}
    axes: {{grid: {{train.batch_size: [64, 256]}}, seeds: [0]}}
"""


def sweep_of(tmp_path, grid, overrides=()):
    path = tmp_path / "g.yaml"
    path.write_text(SWEEP.format(repo=REPO, out=tmp_path / "runs", grid=grid))
    return load_sweep(path, list(overrides))


def test_sqrt_centred_grid_per_batch_size_in_trial_order(tmp_path):
    sweep = sweep_of(tmp_path, "{center: sqrt, decades: 1.0, per_decade: 4}")
    assert sweep.axes.keys == ["train.batch_size", "train.lr", "run.seed"]
    lrs = {b: sorted({t.config.train.lr for t in sweep.trials if t.config.train.batch_size == b}) for b in (64, 256)}
    assert lrs[64] == [0.0003162, 0.0005623, 0.001, 0.001778, 0.003162]
    assert lrs[256] == [0.0006325, 0.001125, 0.002, 0.003557, 0.006325]  # centre 1e-3 × √4
    assert [t.grid_step for t in sweep.trials[:4]] == [0, 0, 1, 1] and len(sweep.trials) == 2 * 5 * 2
    again = sweep_of(tmp_path, "{center: sqrt, decades: 1.0, per_decade: 4}")
    assert [t.trial_id for t in again.trials] == [t.trial_id for t in sweep.trials]
    moved = sweep_of(tmp_path, "{center: sqrt, decades: 1.0, per_decade: 4}", ["train.lr=2.0e-3"])
    assert sorted({t.config.train.lr for t in moved.trials if t.config.train.batch_size == 64})[2] == 0.002


def test_bounded_grid_is_the_same_for_every_setting(tmp_path):
    sweep = sweep_of(tmp_path, "{low: 1.0e-4, high: 1.0e-2, per_decade: 2}")
    assert sorted({t.config.train.lr for t in sweep.trials}) == [0.0001, 0.0003162, 0.001, 0.003162, 0.01]
    assert len(sweep.trials) == 2 * 5 * 2


@pytest.mark.parametrize("grid, message", [
    ("{center: sqrt, decades: 1.0}", "axes.lr_grid.per_decade=null: required"),
    ("{low: 1.0e-4, high: 1.0e-2, decades: 1.0, per_decade: 2}", "axes.lr_grid: give low and high, or center and decades"),
    ("{low: 1.0e-4, per_decade: 2}", "axes.lr_grid: low and high are both required"),
    ("{low: 1.0e-4, high: 5.0e-4, per_decade: 2}", "axes.lr_grid.high: the grid must span a positive whole number"),
    ("{center: cube, decades: 1.0, per_decade: 2}", "axes.lr_grid.center='cube': must be sqrt, linear or a positive LR"),
    ("{decades: 1.0, per_decade: 2, widen: -1}", "axes.lr_grid.widen=-1: must be an integer ≥ 0"),
    ("{decades: 1.0, per_decade: 2, step: 1}", "axes.lr_grid.step: unknown key"),
])
def test_bad_grids_are_one_line_errors_naming_the_key(tmp_path, grid, message):
    with pytest.raises(ConfigError) as err:
        sweep_of(tmp_path, grid)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_grid_conflicts_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.lr: an axis of its own and axes.lr_grid"):
        sweep_of(tmp_path, "{decades: 1.0, per_decade: 2}", ["train.lr=[1.0e-3,2.0e-3]"])
    with pytest.raises(ConfigError, match="train.lr_scaling=sqrt: axes.lr_grid centred on the sqrt rule"):
        sweep_of(tmp_path, "{decades: 1.0, per_decade: 2}", ["train.lr_scaling=sqrt"])


def _run(trial, best):
    return RunSummary(run_id=f"r-{trial.trial_id}", trial_id=trial.trial_id, status="FINISHED", state="finished",
                      attempt=1, start_time=0, end_time=None, params={}, metrics={"best_val_bpd": best}, tags={})


def test_an_edge_winner_widens_its_group_once_and_the_record_says_so(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(repo=REPO, out=tmp_path / "runs"))
    study = load_study(path)
    tune, dep = study.sweep("tune"), study.best_of["confirm"]
    assert len(tune.trials) == 2 * 3
    assert "a study adds up to 1 more points per group if an edge wins" in format_trials_table(tune)
    # batch 64: the highest LR wins (edge); batch 256: the middle one wins (inside)
    runs = {t.trial_id: _run(t, 3.0 - t.grid_step * 0.1 if t.config.train.batch_size == 64 else 3.0 + abs(t.grid_step - 1))
            for t in tune.trials}
    added = widen(tune, dep, choose(tune, runs, dep))
    assert [(e["group"], e["step"], e["edge"]) for e in added] == [({"train.batch_size": 64}, 3, "high")]
    record = tmp_path / "runs" / "st-tune" / WIDEN_RECORD
    assert json.loads(record.read_text())[0]["why"].startswith("train.batch_size=64: best LR 0.003162 (trial ")
    widened = study.sweep("tune")
    assert [t.trial_id for t in widened.trials[:6]] == [t.trial_id for t in tune.trials]  # appended, no index moves
    assert [(t.config.train.batch_size, t.config.train.lr, t.grid_step) for t in widened.trials[6:]] == [(64, 0.01, 3)]
    # the new point wins again, but widen: 1 is spent
    runs[widened.trials[6].trial_id] = _run(widened.trials[6], 2.0)
    assert widen(widened, dep, choose(widened, runs, dep)) == []
