"""What a sweep leaves in MLflow, read back from a real sqlite store (docs/ARCHITECTURE.md, "MLflow
layout"): MLflow's standard tags on every trial run, run names from the axis values, the sweep's
description as the parent run's note and the experiment's description, ``train.log`` as an artifact
of every attempt, params that say what really ran (effective learning rate, parameter count, the
experiment the run is in) and the sweep's aggregates on its parent run."""
from __future__ import annotations

import getpass
import math

import pytest

from jobs.attempt import StopRequest
from jobs.sweep_spec import load_sweep
from jobs.tracking import tags as TG
from jobs.train import run_trial, trial_run_names
from tests.fixtures.sweep import SMOKE
from tests.fixtures.trial import tiny_trial

#: Two trials (batch 32 and 128, Laplace, seed 0) with the square-root LR rule: their effective LRs differ.
AXES = ("backend=local", "local.parallel=2", "prior.kind=laplace", "train.lr_scaling=sqrt",
        "evaluation.samples=false", "evaluation.receptive_fields=false")


def _num_params(config) -> int:
    import torch

    from rgflow.model import RGFlowModel

    with torch.device("meta"):
        return sum(p.numel() for p in RGFlowModel(config.model, config.prior).parameters())


def _text_artifact(client, run_id: str, path: str, tmp_path) -> str:
    return open(client.download_artifacts(run_id, path, str(tmp_path))).read()


@pytest.mark.slow
def test_sweep_runs_say_what_ran(sweep_env, tmp_path):
    overrides = sweep_env.overrides(*AXES)
    proc = sweep_env.run(SMOKE, *overrides)
    assert proc.returncode == 0, proc.stderr
    sweep = load_sweep(SMOKE, overrides)
    names = trial_run_names(sweep)
    assert names == ["bs32-laplace-s0", "bs128-laplace-s0"]
    client = sweep_env.client()
    experiment = client.get_experiment_by_name("smoke")
    [parent] = sweep_env.parent_runs()
    trials = sorted(sweep_env.trial_runs(), key=lambda r: int(r.data.tags[TG.TRIAL_INDEX_TAG]))
    assert len(trials) == len(sweep.trials) == 2

    # the sweep's description: the parent run's note and the experiment's description
    assert sweep.description and parent.data.tags[TG.NOTE_TAG] == sweep.description
    assert experiment.tags[TG.NOTE_TAG] == sweep.description

    best_val, best_test = math.inf, math.inf
    for run, trial in zip(trials, sweep.trials):
        tags, params, run_id = run.data.tags, run.data.params, run.info.run_id
        assert tags[TG.TRIAL_ID_TAG] == trial.trial_id and run.info.status == "FINISHED"
        # MLflow's standard tags, set by the project
        assert tags[TG.SOURCE_GIT_COMMIT_TAG] == tags[TG.GIT_COMMIT_TAG] and len(tags[TG.GIT_COMMIT_TAG]) == 40
        assert tags[TG.SOURCE_NAME_TAG] == "jobs.train" and tags[TG.SOURCE_TYPE_TAG] == "JOB"
        assert tags[TG.USER_TAG] == run.info.user_id == getpass.getuser()
        # the run name from the axis values
        assert run.info.run_name == tags[TG.RUN_NAME_TAG] == names[trial.index]
        # params: the experiment the run is in, the effective LR and the parameter count
        cfg = trial.config.train
        assert params["tracking.experiment"] == experiment.name == "smoke"
        assert float(params["train.effective_lr"]) == pytest.approx(cfg.effective_lr, rel=1e-12)
        assert cfg.effective_lr == pytest.approx(cfg.lr * math.sqrt(cfg.batch_size / cfg.reference_batch))
        assert int(params["model.num_params"]) == _num_params(trial.config) > 0
        # train.log of the attempt, kept in the run folder too
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"train.log", "config.yaml"} <= artifacts
        log = _text_artifact(client, run_id, "train.log", tmp_path / run_id)
        assert "finished at step" in log
        assert (sweep_env.runs_dir / "smoke" / trial.trial_id / "train.log").read_text().startswith(log)
        best_val = min(best_val, min(m.value for m in client.get_metric_history(run_id, "val_bpd")))
        best_test = min(best_test, run.data.metrics["test_bpd"])
    assert len({r.info.run_name for r in trials}) == len(trials)
    assert float(trials[0].data.params["train.effective_lr"]) < float(trials[1].data.params["train.effective_lr"])

    # the sweep's aggregates on its parent run
    metrics = parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert metrics["trials_finished"] == len(sweep.trials) and metrics["trials_failed"] == 0
    assert metrics["trials"] == len(sweep.trials)
    assert metrics["best_val_bpd"] == pytest.approx(best_val, rel=1e-12)
    assert metrics["best_test_bpd"] == pytest.approx(best_test, rel=1e-12)


@pytest.mark.slow
def test_every_attempt_uploads_its_log(tmp_path, trial_data_root, trial_sqlite_uri):
    """A preempted attempt and the attempt that finishes the trial both upload ``train.log``; an
    in-process attempt takes the run name it is given; a single trial's ``tracking.experiment``."""
    from jobs.config import load_trial_config
    from jobs.tracking import find_run

    cfg = load_trial_config(tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri,
                                       train={"epochs": 1}))
    first = run_trial(cfg, run_name="bs16-s0", stop_flag=lambda: StopRequest("preempted", "preempted by the test"))
    assert first.state == "preempted"
    run = find_run(trial_sqlite_uri, first.run_id)
    assert run.status == "KILLED" and run.tags[TG.STATE_TAG] == "preempted"
    assert run.tags[TG.REASON_TAG] == "preempted by the test"  # the reason stays a tag
    assert run.tags[TG.RUN_NAME_TAG] == "bs16-s0"
    assert run.params["tracking.experiment"] == "trial-tests"
    assert int(run.params["model.num_params"]) == _num_params(cfg)
    from jobs.tracking import download_artifact, list_artifacts

    assert "train.log" in list_artifacts(trial_sqlite_uri, first.run_id)
    log = download_artifact(trial_sqlite_uri, first.run_id, "train.log", tmp_path).read_text()
    assert "preempted by the test" in log and "finished at step" not in log

    second = run_trial(cfg, run_name="bs16-s0")
    assert (second.state, second.run_id, second.attempt) == ("finished", first.run_id, 2)
    (tmp_path / "again").mkdir()
    log = download_artifact(trial_sqlite_uri, second.run_id, "train.log", tmp_path / "again").read_text()
    assert "preempted by the test" in log and "finished at step 8" in log  # the whole log, both attempts
    assert find_run(trial_sqlite_uri, second.run_id).params["model.num_params"] == str(_num_params(cfg))


def test_in_process_attempts_get_the_sweep_run_names(monkeypatch):
    """``jobs.sweep`` hands each backend task its run name; ``jobs.attempt.execute`` passes it on."""
    import jobs.train
    from jobs.attempt import ExitCode, TrialOutcome, execute
    from jobs.sweep import make_context, tasks_of

    sweep = load_sweep(SMOKE, ["train.batch_size=[32,128]", "prior.kind=[laplace,gaussian]", "evaluation.enabled=false"])
    tasks = tasks_of(sweep)
    assert [t.run_name for t in tasks] == trial_run_names(sweep) == [
        "bs32-laplace-s0", "bs32-gaussian-s0", "bs128-laplace-s0", "bs128-gaussian-s0"]
    seen = {}

    def fake_run_trial(config, **kw):
        seen.update(kw)
        return TrialOutcome("finished", ExitCode.FINISHED, "x")

    monkeypatch.setattr(jobs.train, "run_trial", fake_run_trial)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(var, "unused")  # execute clears them; monkeypatch restores them afterwards
    execute(make_context(sweep, "sqlite:///unused.db", None, None), tasks[2], evaluate=False)
    assert seen["run_name"] == "bs128-laplace-s0" and seen["trial_index"] == 2
