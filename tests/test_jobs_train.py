"""``python -m jobs.train`` and ``run_trial`` end to end on CPU: MLflow content (sqlite and a real
``mlflow server``), re-running a finished trial, failures (NaN, exceptions) and bad input."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml
from mlflow import MlflowClient

from jobs.config import load_trial_config, resolved_dict, to_yaml, trial_id
from jobs.sweep_spec import load_sweep
from jobs.train import main, run_trial
from rgflow.checkpoint import load_latest
from rgflow.model import RGFlowModel
from tests.fixtures.trial import REPO, run_train, tiny_trial, train_command

CONTRACT_TRAIN = {"train_bpd", "grad_norm", "lr", "images_per_s", "samples_seen", "wall_s", "epoch",
                  "noise_grad_sq", "noise_trace", "noise_scale_raw", "noise_scale",
                  "noise_grad_sq_adam", "noise_trace_adam", "noise_scale_adam_raw", "noise_scale_adam"}
CONTRACT_VAL = {"val_bpd", "val_bpd_se", "val_bpd_se_draws", "val_epoch"}


def _run_of(uri: str, experiment: str, tid: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`rgflow.trial_id` = '{tid}'") if exp else []
    return client, runs


@pytest.mark.slow
def test_cli_tiny_trial_trains_and_fills_mlflow(tmp_path, trial_data_root, trial_sqlite_uri, capsys):
    cfg = tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri)
    done = run_train(cfg)
    assert done.returncode == 0, done.stderr
    tid = trial_id(load_trial_config(cfg))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(f"[{tid}] step ")]
    assert len(lines) == 6 and "train" in lines[0] and "img/s" in lines[0]  # 4 train lines, 2 val lines

    client, runs = _run_of(trial_sqlite_uri, "trial-tests", tid)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["rgflow.state"] == "finished" and tags["rgflow.attempt"] == "1" and tags["rgflow.role"] == "trial"
    assert tags["rgflow.backend"] == "single" and tags["rgflow.sweep"] == "single"
    for key in ("rgflow.git_commit", "rgflow.git_dirty", "rgflow.host", "rgflow.device", "rgflow.version.torch",
                "rgflow.version.mlflow", "rgflow.run_dir", "rgflow.checkpoint", "rgflow.best_checkpoint"):
        assert tags.get(key), key
    assert "rgflow.failure_reason" not in tags
    params = run.data.params
    assert params["train.batch_size"] == "16" and params["model.preset"] == "tiny" and params["data.test_size"] == "null"
    assert params["train.betas"] == "[0.9, 0.999]" and params["run.deterministic"] == "true"

    assert set(run.data.metrics) == CONTRACT_TRAIN | CONTRACT_VAL
    history = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    for key in CONTRACT_TRAIN:
        assert sorted(m.step for m in history[key]) == [4, 8, 12, 16], key
    assert sorted(m.step for m in history["val_bpd"]) == [8, 16]
    val = {m.step: m.value for m in history["val_bpd"]}
    assert val[16] < val[8] < 9.6  # bits/dim fall
    train_bpd = {m.step: m.value for m in history["train_bpd"]}
    assert train_bpd[16] < train_bpd[4]
    assert {m.step: m.value for m in history["samples_seen"]} == {4: 64, 8: 128, 12: 192, 16: 256}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "samples")) == 2

    run_dir = tmp_path / "runs" / "single" / tid
    state = json.loads((run_dir / "state.json").read_text())
    assert state["state"] == "finished" and state["run_id"] == run.info.run_id and state["attempt"] == 1
    assert state["val_bpd"] == pytest.approx(val[16])
    assert (run_dir / "config.yaml").read_text().startswith("model:")
    assert run_train(cfg, "--cfg").stdout == (run_dir / "config.yaml").read_text()  # --cfg shows what a run writes
    assert "step 16" in (run_dir / "train.log").read_text()

    assert main([str(cfg)]) == 0  # finished: nothing to do, same run untouched
    assert "already finished" in capsys.readouterr().out
    client, runs = _run_of(trial_sqlite_uri, "trial-tests", tid)
    assert len(runs) == 1 and runs[0].data.tags["rgflow.attempt"] == "1"


def test_run_trial_into_a_real_mlflow_server_as_a_sweep_child(tmp_path, trial_data_root, mlflow_server):
    from jobs.tracking import ensure_experiment, ensure_sweep_run

    cfg = load_trial_config(tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", None,
                                       train={"epochs": 1}, tracking={"enabled": True}))
    uri = mlflow_server.uri
    experiment = ensure_experiment(uri, "trial-tests-server")
    parent = ensure_sweep_run(uri, experiment, "mini", "0123456789ab", {})
    outcome = run_trial(cfg, sweep="mini", sweep_id="0123456789ab", trial_index=3, parent_run_id=parent,
                        tracking_uri=uri, experiment_id=experiment, backend="ray")
    assert (outcome.state, outcome.exit_code, outcome.attempt) == ("finished", 0, 1)
    assert outcome.run_dir == (tmp_path / "runs" / "mini" / trial_id(cfg)).resolve()
    assert outcome.best_val_bpd is not None and outcome.step == 8
    run = MlflowClient(uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == experiment
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["rgflow.sweep"] == "mini"
    assert tags["rgflow.trial_index"] == "3" and tags["rgflow.backend"] == "ray" and tags["rgflow.sweep_id"] == "0123456789ab"
    assert run.data.metrics["val_bpd"] == pytest.approx(outcome.val_bpd)
    assert sorted(m.step for m in MlflowClient(uri).get_metric_history(outcome.run_id, "train_bpd")) == [4, 8]


def test_nan_fails_the_run_with_the_step_and_keeps_the_last_checkpoint(tmp_path, trial_data_root, trial_sqlite_uri,
                                                                        monkeypatch):
    original = RGFlowModel.nll_per_dim
    calls = {"n": 0}

    def poisoned(self, x):  # 1 call per step, 2 on log steps (4, 8): call 11 is step 9
        calls["n"] += 1
        loss = original(self, x)
        return loss * float("nan") if calls["n"] == 11 else loss

    monkeypatch.setattr(RGFlowModel, "nll_per_dim", poisoned)
    cfg = load_trial_config(tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri))
    outcome = run_trial(cfg)
    assert (outcome.state, outcome.exit_code) == ("failed", 1)
    assert outcome.reason == "non-finite values at step 9: training loss is nan (nats/dim)" and outcome.step == 8
    run = MlflowClient(trial_sqlite_uri).get_run(outcome.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["rgflow.state"] == "failed" and run.data.tags["rgflow.failure_reason"] == outcome.reason
    path, state = load_latest(outcome.run_dir / "checkpoints")
    assert state["loop"]["step"] == 8 and all(torch.isfinite(t).all() for t in state["model"].values()
                                              if t.is_floating_point())
    assert json.loads((outcome.run_dir / "state.json").read_text())["state"] == "failed"

    monkeypatch.setattr(RGFlowModel, "nll_per_dim", original)  # the cause is gone: a re-run resumes at step 8
    resumed = run_trial(cfg)
    assert (resumed.state, resumed.attempt, resumed.run_id) == ("finished", 2, outcome.run_id)
    run = MlflowClient(trial_sqlite_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and "rgflow.failure_reason" not in run.data.tags


def test_an_exception_fails_the_run_with_a_one_line_reason_and_the_traceback_in_train_log(
        tmp_path, trial_data_root, trial_sqlite_uri, monkeypatch):
    def broken(self, n, temperature=None, generator=None):
        raise RuntimeError("sampler exploded\nsecond line")

    monkeypatch.setattr(RGFlowModel, "sample", broken)
    cfg = load_trial_config(tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri,
                                       train={"epochs": 1, "sample_every_epochs": 1}))
    outcome = run_trial(cfg)
    assert (outcome.state, outcome.exit_code) == ("failed", 1)
    assert outcome.reason == "RuntimeError: sampler exploded second line"
    run = MlflowClient(trial_sqlite_uri).get_run(outcome.run_id)
    assert run.info.status == "FAILED" and run.data.tags["rgflow.failure_reason"] == outcome.reason
    log = (outcome.run_dir / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "sampler exploded" in log


@pytest.mark.parametrize("args, message", [
    (["train.batchsize=8"], "train.batchsize: unknown key (did you mean 'train.batch_size'?)"),
    (["train.epochs=two"], "train.epochs='two': expected an integer, got a string"),
    (["model.nhidden=true"], "model.nhidden=true: expected an integer, got a boolean"),
    (["prior.kind=lapalce"], "did you mean 'laplace'?"),
    (["--trial", "0"], "is a trial config, not a sweep"),
    (["--device", "cuda:7"], "run.device='cuda:7': CUDA is not available here"),
    (["train.lr=1e-3,2e-3"], "error: 'train.lr=1e-3,2e-3' is a multirun list: jobs.train runs one trial — use jobs.sweep "
                             "with a sweep file, or pick one value"),
    (["--cfg", "train.epochs=x"], "train.epochs='x': expected an integer"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, trial_data_root, capsys, args, message):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    cfg = tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", uri)
    assert main([str(cfg), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never.db").exists()


def test_bad_input_through_the_real_command_line(tmp_path, trial_data_root):
    cfg = tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", f"sqlite:///{tmp_path / 'never.db'}",
                     extra={"x": 1})
    done = run_train(cfg)
    assert done.returncode == 2 and done.stdout == ""
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: extra.x: unknown key") and str(cfg) in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never.db").exists()


def _train_in(cwd, *args: str) -> subprocess.CompletedProcess:
    """``python -m jobs.train ARGS`` run from the folder ``cwd`` (relative defaults land there)."""
    return subprocess.run(train_command(*args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cfg_prints_the_resolved_config_and_creates_nothing(tmp_path):
    config, sweep = REPO / "configs/tiny.yaml", REPO / "sweeps/smoke.yaml"
    done = _train_in(tmp_path, config, "--cfg", "train.epochs=3", "--device", "cpu")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = load_trial_config(config, ["train.epochs=3", "run.device=cpu"])
    assert done.stdout == to_yaml(expected) and yaml.safe_load(done.stdout) == resolved_dict(expected)

    done = _train_in(tmp_path, sweep, "--trial", "3", "--cfg", "train.lr=1e-3,2e-3")  # a sweep override: an axis
    assert done.returncode == 0, done.stderr
    assert done.stdout == to_yaml(load_sweep(sweep, ["train.lr=1e-3,2e-3"]).trial(3).config)
    assert yaml.safe_load(done.stdout)["train"]["lr"] == 2e-3
    assert list(tmp_path.iterdir()) == []  # no run folder, no mlflow.db, no data cache


def test_a_sweep_without_trial_says_which_command_to_use(tmp_path):
    done = _train_in(tmp_path, REPO / "sweeps/smoke.yaml", "--cfg")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {REPO / 'sweeps/smoke.yaml'} is a sweep with 4 trials: run them all with python -m jobs.sweep "
        f"{REPO / 'sweeps/smoke.yaml'}, or one with --trial N (0-3)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_tracking_outage_mid_trial_loses_and_doubles_nothing(tmp_path, trial_data_root, mlflow_server, monkeypatch):
    """The server dies after step 2 and comes back after step 10: training never waits for it,
    and the run ends FINISHED with every metric point exactly once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of urllib3 backoff
    from jobs.tracking import ensure_experiment

    cfg = load_trial_config(tiny_trial(tmp_path / "t.yaml", trial_data_root, tmp_path / "runs", None,
                                       tracking={"enabled": True}))
    uri = mlflow_server.uri
    polls = {"n": 0}

    def outage() -> None:  # polled before every step and validation batch
        polls["n"] += 1
        if polls["n"] == 3:
            mlflow_server.stop(crash=True)
        elif polls["n"] == 11:
            mlflow_server.start()

    try:
        outcome = run_trial(cfg, tracking_uri=uri, experiment_id=ensure_experiment(uri, "trial-outage"),
                            stop_flag=lambda: outage())
    finally:
        mlflow_server.start()
    assert (outcome.state, outcome.exit_code) == ("finished", 0)
    client = MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    for key in CONTRACT_TRAIN:
        assert [m.step for m in sorted(client.get_metric_history(outcome.run_id, key), key=lambda m: m.step)] == \
            [4, 8, 12, 16], key
    assert sorted(m.step for m in client.get_metric_history(outcome.run_id, "val_bpd")) == [8, 16]
    assert "unreachable" in (outcome.run_dir / "train.log").read_text()  # the outage was seen, and spooled
