"""Studies in stages (jobs.study): the file's shape and errors, the winners a ``best_of`` stage takes,
and one real two-stage study on embedded Ray run by one command, resumed idempotently and reported."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs.config import ConfigError
from jobs.study import BestOf, choose, load_study
from jobs.tracking.layout import RunSummary
from tests.fixtures.sweep import REPO

STUDY = """name: st
base_config: {repo}/configs/tiny.yaml
base:
  data: {{train_size: 128, valid_size: 32, test_size: 32}}
  train: {{log_every: 2, val_draws: 1, sample_count: 4, sample_every_epochs: 100}}
  run: {{device: cpu, threads: 1, out_dir: {out}}}
backend: ray
ray: {{max_concurrent_trials: 2}}
stages:
  tune:
    base: {{train: {{epochs: 2}}}}
    axes:
      grid: {{train.batch_size: [32, 64]}}
      random: {{samples: 2, seed: 0, params: {{train.lr: {{loguniform: [1.0e-4, 1.0e-2]}}}}}}
    tune: {{scheduler: {{grace_epochs: 1, reduction_factor: 2, group_by: [train.batch_size]}}}}
    evaluation: {{enabled: false}}
  confirm:
    best_of: {{stage: tune, by: [train.batch_size], take: [train.lr]}}
    base: {{train: {{epochs: 2}}}}
    axes:
      grid: {{train.batch_size: [32, 64]}}
      seeds: [0]
    evaluation: {{enabled: true, samples: false, fid: false, receptive_fields: false}}
"""


def study_file(tmp_path, text=STUDY):
    path = tmp_path / "study.yaml"
    path.write_text(text.format(repo=REPO, out=tmp_path / "runs"))
    return path


def test_stages_are_sweeps_named_after_the_study_with_stage_overrides(tmp_path):
    study = load_study(study_file(tmp_path), ["train.log_every=4", "stages.tune.random.samples=3"])
    tune, confirm = study.sweep("tune"), study.sweep("confirm")
    assert (tune.name, confirm.name) == ("st-tune", "st-confirm")
    assert len(tune.trials) == 2 * 3 and all(t.config.train.log_every == 4 for t in tune.trials)
    assert tune.tune.scheduler is not None and confirm.tune.scheduler is None
    assert study.best_of == {"confirm": BestOf("tune", ("train.batch_size",), ("train.lr",))}
    assert [t.config.train.lr for t in confirm.trials] == [1e-3, 1e-3]  # its shape: the shared LR until chosen


@pytest.mark.parametrize("change, message", [
    (("best_of: {stage: tune,", "best_of: {stage: later,"), "best_of.stage='later': must name an earlier stage"),
    (("take: [train.lr]", "take: [train.nope]"), "best_of: 'train.nope' is not a trial config key"),
    (("grid: {train.batch_size: [32, 64]}\n      seeds", "seeds"), "train.batch_size must be a grid or zip axis of stage confirm"),
    (("    base: {train: {epochs: 2}}\n    axes:\n      grid: {train.batch_size: [32, 64]}\n      random",
      "    bse: {}\n    axes:\n      grid: {train.batch_size: [32, 64]}\n      random"), "stages.tune.bse: unknown key"),
])
def test_study_errors_are_one_line(tmp_path, change, message):
    text = STUDY.replace(change[0].replace("{", "{{").replace("}", "}}"), change[1].replace("{", "{{").replace("}", "}}"))
    assert text != STUDY
    with pytest.raises(ConfigError) as err:
        load_study(study_file(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_stage_override_must_name_a_stage(tmp_path):
    with pytest.raises(ConfigError, match="stages.<stage>.KEY=VALUE with a stage of tune, confirm"):
        load_study(study_file(tmp_path), ["stages.tuning.train.epochs=1"])


def test_renaming_a_study_keeps_its_stages_apart(tmp_path):
    study = load_study(study_file(tmp_path), ["name=mine"])
    tune, confirm = study.sweep("tune"), study.sweep("confirm")
    assert study.name == "mine" and (tune.name, confirm.name) == ("mine-tune", "mine-confirm")
    assert tune.sweep_id != confirm.sweep_id
    with pytest.raises(ConfigError, match="a stage's name is <study>-<stage> .st-tune.; rename the whole study"):
        load_study(study_file(tmp_path), ["stages.tune.name=x"])


def _run(trial, status="FINISHED", state="finished", best=None):
    return RunSummary(run_id=f"r-{trial.trial_id}", trial_id=trial.trial_id, status=status, state=state, attempt=1,
                      start_time=0, end_time=None, params={}, metrics={} if best is None else {"best_val_bpd": best},
                      tags={})


def test_choose_takes_the_best_trial_that_ran_to_the_end_per_setting(tmp_path):
    study = load_study(study_file(tmp_path, STUDY.replace("samples: 2", "samples: 3")))
    tune = study.sweep("tune")
    by_bs = {32: [t for t in tune.trials if t.config.train.batch_size == 32],
             64: [t for t in tune.trials if t.config.train.batch_size == 64]}
    runs = {by_bs[32][0].trial_id: _run(by_bs[32][0], best=3.0),
            by_bs[32][1].trial_id: _run(by_bs[32][1], best=2.9),
            by_bs[32][2].trial_id: _run(by_bs[32][2], state="pruned", best=2.5),  # lower, but pruned
            by_bs[64][0].trial_id: _run(by_bs[64][0], status="FAILED", state="failed", best=2.0)}
    choice = choose(tune, runs, study.best_of["confirm"])
    assert choice.values[(32,)]["trial_id"] == by_bs[32][1].trial_id
    assert choice.values[(32,)]["train.lr"] == by_bs[32][1].config.train.lr
    assert choice.missing == [(64,)]
    confirm = study.sweep("confirm", choice)  # batch 64 has no winner: left out
    assert [(t.config.train.batch_size, t.config.train.lr) for t in confirm.trials] == \
        [(32, by_bs[32][1].config.train.lr)]


@pytest.mark.slow
def test_one_command_runs_both_stages_then_reports_the_lr_search(sweep_env, tmp_path):
    path = study_file(tmp_path)
    dry = sweep_env.run(str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "== stage tune (st-tune)" in dry.stdout and "== stage confirm (st-confirm)" in dry.stdout
    assert "up to 2 trials: train.lr from stage tune, not known yet" in dry.stdout

    first = sweep_env.run(str(path))
    assert first.returncode == 0, first.stdout + first.stderr
    tune_runs = sweep_env.trial_runs("st-tune")
    confirm_runs = sweep_env.trial_runs("st-confirm")
    assert len(tune_runs) == 4 and len(confirm_runs) == 2
    winners = {}
    client = sweep_env.client()
    for run in tune_runs:  # the lowest validation BPD of its history, among the trials that ran to the end
        if run.data.tags["rgflow.state"] == "finished":
            bs = run.data.params["train.batch_size"]
            best = min(m.value for m in client.get_metric_history(run.info.run_id, "val_bpd"))
            if bs not in winners or best < winners[bs][0]:
                winners[bs] = (best, run.data.params["train.lr"])
    for run in confirm_runs:  # each batch size at its stage-tune winner's LR, evaluated
        assert run.info.status == "FINISHED" and "test_bpd" in run.data.metrics
        assert run.data.params["train.lr"] == winners[run.data.params["train.batch_size"]][1]
    assert "train.batch_size=32: train.lr=" in first.stdout

    again = sweep_env.run(str(path))
    assert again.returncode == 0 and again.stderr.count("0 to run") == 2, again.stderr
    assert len(sweep_env.trial_runs("st-tune")) == 4 and len(sweep_env.trial_runs("st-confirm")) == 2

    report = subprocess.run([sys.executable, "-m", "jobs.report", str(path), "--out", str(tmp_path / "report")],
                            cwd=REPO, env=sweep_env.env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.startswith("# Study report: st (comparisons: stage st-confirm)")
    assert "## Stage tune: the learning rate chosen per train.batch_size" in md
    assert (tmp_path / "report" / "lr_search.png").stat().st_size > 0
    [fit] = json.loads((tmp_path / "report" / "noise_scale_fit_tune.json").read_text())  # one group: no other by-key
    assert fit["group"] == "" and fit["state"] == "not_tested" and fit["n"] == 2  # two batch sizes: said, not fitted
