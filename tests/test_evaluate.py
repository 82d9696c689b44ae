"""jobs.evaluate on a tiny trial trained by jobs.train, tracked in a real sqlite MLflow store."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from jobs import evaluate as E
from jobs import fid
from jobs.config import load_trial_config
from rgflow.checkpoint import checkpoint_sha256, load_checkpoint
from rgflow.model import RGFlowModel

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def overrides(tmp, data_root) -> list[str]:
    return [f"data.root={data_root}", "data.train_size=64", "data.valid_size=32", "data.test_size=32", "train.batch_size=16", "train.epochs=1",
            "train.log_every=2", "train.sample_every_epochs=1", "train.sample_count=4", f"run.out_dir={tmp}/runs",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=evaltest", "run.device=cpu",
            "eval.test_draws=2", "eval.fid_samples=16", "eval.fid_batch=8", "eval.receptive_field_samples=1",
            "eval.temperatures=[0.5,1.0]", "eval.noise_seed=3", "run.seed=1"]  # three distinct seeds: tests tell them apart


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trial_data_root):
    from jobs.train import run_trial

    tmp = tmp_path_factory.mktemp("evaluate")
    config = load_trial_config(TINY, overrides(tmp, trial_data_root))
    outcome = run_trial(config)
    assert outcome.state == "finished", outcome.reason
    uri = f"sqlite:///{tmp}/mlflow.db"
    return {"tmp": tmp, "config": config, "outcome": outcome, "uri": uri, "client": MlflowClient(uri)}


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))


def history(client, run_id, key):
    return client.get_metric_history(run_id, key)


def test_evaluate_writes_into_run_status_unchanged_fid_skipped(trained, no_weights, capsys):
    client, run_id = trained["client"], trained["outcome"].run_id
    before = client.get_run(run_id)
    assert before.info.status == "FINISHED"

    assert E.main([run_id, "--tracking-uri", trained["uri"]]) == 0
    err = capsys.readouterr().err
    assert "FID skipped" in err and fid.WEIGHTS_ENV in err and fid.WEIGHTS_FILE in err

    after = client.get_run(run_id)
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time
    assert after.data.tags["rgflow.state"] == before.data.tags["rgflow.state"]
    m, tags = after.data.metrics, after.data.tags
    # the model barely trained: test BPD is near its validation BPD (same data distribution)
    assert abs(m["test_bpd"] - trained["outcome"].val_bpd) < 0.5 and 0.005 < m["test_bpd_se"] < 0.1
    # the s.e. over the 32 images is the honest error bar; the dequantisation noise is far smaller
    assert 0 < 20 * m["test_bpd_se_draws"] < m["test_bpd_se"]
    per_image = np.load(trained["outcome"].run_dir / "eval" / E.PER_IMAGE_FILE)
    assert per_image.shape == (32,) and per_image.dtype == np.float64
    assert m["test_bpd"] == pytest.approx(per_image.mean(), rel=1e-12)
    assert m["test_bpd_se"] == pytest.approx(per_image.std(ddof=1) / math.sqrt(32), rel=1e-12)
    assert not any(k.startswith("fid_T") for k in m)
    step = int(tags["rgflow.eval.checkpoint_step"])
    assert step == trained["outcome"].step and history(client, run_id, "test_bpd")[0].step == step
    assert tags["rgflow.eval.checkpoint"] == "best" and tags["rgflow.eval.test_images"] == "32"
    assert tags["rgflow.eval.test_draws"] == "2" and tags["rgflow.eval.temperatures"] == "0.5,1"
    assert tags["rgflow.eval.fid_network"] == "none" and len(tags[E.PROTOCOL_TAG]) == 16
    assert tags["rgflow.eval.noise_seed"] == "3" and tags["rgflow.eval.dequantisation"] == "per-image"
    assert tags["rgflow.eval.seed"] == "1" and tags["rgflow.eval.fid_reference"] == "none"
    assert tags["rgflow.eval.receptive_field_space"] == "image"
    from jobs.tracking.tags import EVAL_PROTOCOL_KEYS, EVAL_PROTOCOL_TAG, EVAL_TAG_PREFIX  # the one list is complete
    assert {k for k in tags if k.startswith(EVAL_TAG_PREFIX)} == {EVAL_TAG_PREFIX + k for k in EVAL_PROTOCOL_KEYS} | {
        EVAL_PROTOCOL_TAG}
    names = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/samples_T0.5.png", "eval/samples_T1.png", "eval/receptive_fields.png",
            "eval/mixed_temperature.png", "eval/metrics.json", f"eval/{E.PER_IMAGE_FILE}"} <= names
    assert not list(trained["outcome"].run_dir.glob(".eval.tmp-*"))

    # idempotent: same protocol and checkpoint → nothing recomputed, nothing logged twice
    assert E.main([run_id, "--tracking-uri", trained["uri"]]) == 0
    assert "already evaluated" in capsys.readouterr().out
    assert len(history(client, run_id, "test_bpd")) == 1
    # --force recomputes; the deterministic result is not logged a second time at the same step
    assert E.main([run_id, "--tracking-uri", trained["uri"], "--force"]) == 0
    assert "evaluated run" in capsys.readouterr().out
    assert len(history(client, run_id, "test_bpd")) == 1
    assert client.get_run(run_id).info.status == "FINISHED"


def tiny_scorer() -> fid.FidScorer:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(), nn.Conv2d(8, 6, 3), nn.AdaptiveAvgPool2d(1))
    return fid.FidScorer(net, network="test-convnet")


def test_fid_with_fixed_seed_feature_net(trained, no_weights):
    client, run_id, config = trained["client"], trained["outcome"].run_id, trained["config"]
    result = E.evaluate_trial(config, trained["outcome"].run_dir, run_id, tracking_uri=trained["uri"],
                              fid_scorer=tiny_scorer(), selected=("test_bpd", "fid"))
    assert not result.skipped and set(result.metrics) >= {"fid_T0.5", "fid_T1"}
    run = client.get_run(run_id)
    assert run.data.tags["rgflow.eval.fid_network"] == "test-convnet" and run.data.tags["rgflow.eval.fid_images"] == "16"
    assert run.data.tags["rgflow.eval.fid_reference"] == "first 16 images of the msds1 test split"
    assert run.data.tags["rgflow.eval.fid_samples_quantisation"] == "8-bit"
    for t in ("0.5", "1"):
        assert math.isfinite(run.data.metrics[f"fid_T{t}"]) and run.data.metrics[f"fid_T{t}"] > 0
    # the logged number is the FID of the same samples and test images, recomputed here
    from rgflow.data import load_split

    model = RGFlowModel(config.model, config.prior)
    model.load_state_dict(load_checkpoint(trained["outcome"].run_dir / "checkpoints" / "best.ckpt")["model"])
    test = torch.as_tensor(load_split(config.data, "test").images)[:16]
    again = E.compute_fid(model.eval(), tiny_scorer(), test, config, torch.device("cpu"))
    assert again["fid_T0.5"] == pytest.approx(run.data.metrics["fid_T0.5"], rel=1e-6)
    assert len(history(client, run_id, "test_bpd")) == 1  # unchanged value at the same step: not re-logged
    assert run.info.status == "FINISHED"


class Recording(nn.Module):
    """A feature network that keeps every input batch it is given."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.net(x)


def test_fid_scores_samples_and_test_images_as_8_bit_images(trained):
    config = trained["config"]
    model = RGFlowModel(config.model, config.prior)
    model.load_state_dict(load_checkpoint(trained["outcome"].run_dir / "checkpoints" / "best.ckpt")["model"])
    test = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    net = Recording(tiny_scorer().net)
    E.compute_fid(model.eval(), fid.FidScorer(net, network="recording"), test, config, torch.device("cpu"))
    assert torch.equal(net.inputs[0], test.float() / 255)  # the reference: the uint8 images / 255
    samples = torch.cat(net.inputs[1:])
    assert samples.shape == (2 * 16, 3, 32, 32)  # 16 samples at each of the two temperatures
    assert torch.equal(samples, (samples * 255).round() / 255)  # k / 255: as read back from a PNG
    assert len(torch.unique(samples)) > 50
    with pytest.raises(TypeError, match="uint8 test images"):
        E.compute_fid(model, fid.FidScorer(net, network="recording"), test.float() / 255, config, torch.device("cpu"))


def test_validation_and_test_noise_do_not_depend_on_the_run_seed(trained):
    """Trials with different run seeds are paired: validation noise comes from one fixed seed, test
    noise from eval.noise_seed."""
    from jobs.train import VALIDATION_NOISE_SEED
    from rgflow.data import EpochBatcher, load_split
    from rgflow.train import validation_bpd

    config, outcome = trained["config"], trained["outcome"]
    model = RGFlowModel(config.model, config.prior)
    model.load_state_dict(load_checkpoint(outcome.run_dir / "checkpoints" / "best.ckpt")["model"])
    valid = torch.as_tensor(load_split(config.data, "valid").images)
    again = {seed: validation_bpd(model, EpochBatcher(valid, 16, seed, drop_last=False), config.train.val_draws, 16)
             for seed in (VALIDATION_NOISE_SEED, config.run.seed, config.eval.noise_seed)}
    assert config.run.seed != VALIDATION_NOISE_SEED != config.eval.noise_seed
    assert again[VALIDATION_NOISE_SEED].mean == pytest.approx(outcome.val_bpd, rel=1e-9)
    assert again[config.run.seed].mean != pytest.approx(outcome.val_bpd, rel=1e-9)
    run_dir = outcome.run_dir
    E.evaluate_trial(config, run_dir, outcome.run_id, tracking_uri=trained["uri"], selected=("test_bpd",), force=True)
    first = np.load(run_dir / "eval" / E.PER_IMAGE_FILE)
    reseeded = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=7))
    result = E.evaluate_trial(reseeded, run_dir, outcome.run_id, tracking_uri=trained["uri"], selected=("test_bpd",))
    assert result.protocol["seed"] == 7 and not result.skipped
    assert np.array_equal(np.load(run_dir / "eval" / E.PER_IMAGE_FILE), first)
    assert result.metrics["test_bpd"] == pytest.approx(first.mean(), rel=1e-12)
    assert len(history(trained["client"], outcome.run_id, "test_bpd")) == 1  # the same value: not logged again
    # the saved values are measure_test_bpd's with eval.noise_seed; another noise seed moves them slightly
    test = torch.as_tensor(load_split(config.data, "test").images)
    ours, other = (E.measure_test_bpd(model, test, config.eval.test_draws, 16, seed, torch.device("cpu"))
                   for seed in (3, 4))
    np.testing.assert_allclose(ours.per_image, first, rtol=1e-9)
    assert not np.array_equal(other.per_image, ours.per_image)
    assert abs(other.mean - ours.mean) < 10 * result.metrics["test_bpd_se_draws"]


def test_trial_id_and_config_targets_resolve_to_the_run(trained, tmp_path):
    tid, run_id = trained["outcome"].trial_id, trained["outcome"].run_id
    by_tid = E.resolve_targets(tid, tracking_uri=trained["uri"])
    assert [r.run_id for r in by_tid] == [run_id] and by_tid[0].run_dir == trained["outcome"].run_dir
    cfg_file = trained["outcome"].run_dir / "config.yaml"
    by_file = E.resolve_targets(str(cfg_file))
    assert by_file[0].run_id == run_id


def test_bad_input_is_one_line_exit_2(trained, tmp_path, capsys):
    assert E.main(["0" * 32, "--tracking-uri", trained["uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no MLflow run 00000000") and "\n" not in err
    assert E.main(["not-a-run", "--tracking-uri", trained["uri"]]) == 2  # not the default ./mlflow.db
    assert "neither a file, an MLflow run id" in capsys.readouterr().err
    with pytest.raises(E.EvalInputError, match="no valid checkpoint in .*train the trial first"):
        E.choose_checkpoint(tmp_path, "best")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nbase_config: %s\naxes: {grid: {prior.kind: [laplace, gaussian]}}\n"
                     % (trained["outcome"].run_dir / "config.yaml"))
    assert E.main([str(sweep)]) == 2
    assert "pass --trial N or --all" in capsys.readouterr().err
    assert E.main([str(sweep), "--trial", "0", f"run.out_dir={tmp_path}/none"]) == 2
    assert "train it first" in capsys.readouterr().err
    # --all reports every untrained trial on its own line and goes on
    assert E.main([str(sweep), "--all", f"run.out_dir={tmp_path}/none"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: [0:") and lines[1].startswith("error: [1:")


def test_evaluate_from_the_model_artifact_alone(trained, no_weights, capsys):
    """With the run folder gone (evaluated on another machine), ``jobs.evaluate RUN_ID`` takes the
    weights and config from the run's ``model/`` artifacts and rebuilds the test data from that
    config: the same protocol and test BPD as an evaluation from the run folder."""
    import shutil

    from jobs.train import run_trial

    tmp, client = trained["tmp"], trained["client"]
    config = load_trial_config(TINY, [*overrides(tmp, trained["config"].data.root), "run.seed=2",
                                      "tracking.experiment=evalartifact"])
    outcome = run_trial(config)
    assert outcome.state == "finished", outcome.reason
    kept = tmp / "kept-run-folder"
    shutil.copytree(outcome.run_dir, kept)
    shutil.rmtree(outcome.run_dir)  # no access to the training node from here on

    assert E.main([outcome.run_id, "--tracking-uri", trained["uri"]]) == 0
    assert f"evaluated run {outcome.run_id}: test_bpd=" in capsys.readouterr().out
    assert not outcome.run_dir.exists()  # nothing written where the run folder was
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and len(history(client, outcome.run_id, "test_bpd")) == 1
    assert history(client, outcome.run_id, "test_bpd")[0].step == outcome.step
    tags = run.data.tags
    assert tags["rgflow.eval.checkpoint"] == "best" and int(tags["rgflow.eval.checkpoint_step"]) == outcome.step
    assert tags["rgflow.eval.checkpoint_sha256"] == checkpoint_sha256(kept / "checkpoints" / "best.ckpt")
    eval_files = {a.path for a in client.list_artifacts(outcome.run_id, "eval")}
    assert {f"eval/{E.PER_IMAGE_FILE}", "eval/metrics.json", "eval/samples_T1.png"} <= eval_files

    with_folder = E.evaluate_trial(config, kept, outcome.run_id, tracking_uri=trained["uri"], force=True)
    assert E.protocol_hash(with_folder.protocol) == tags[E.PROTOCOL_TAG]  # one protocol, with or without the folder
    for key in ("test_bpd", "test_bpd_se", "test_bpd_se_draws"):
        assert with_folder.metrics[key] == pytest.approx(run.data.metrics[key], rel=1e-9, abs=0), key
    assert len(history(client, outcome.run_id, "test_bpd")) == 1  # the same value: not logged twice


def test_report_reads_what_train_and_evaluate_wrote(trained, tmp_path, no_weights):
    """The metric names written by jobs.train and jobs.evaluate are the ones jobs.report reads."""
    import csv

    from jobs.report.build import build_report

    E.evaluate_trial(trained["config"], trained["outcome"].run_dir, tracking_uri=trained["uri"], selected=("test_bpd",))
    folder = build_report(experiment="evaltest", tracking_uri=trained["uri"], out_dir=tmp_path / "r")
    (row,) = list(csv.DictReader(open(folder / "trials.csv")))
    run = trained["client"].get_run(trained["outcome"].run_id)
    assert row["run_id"] == run.info.run_id and row["state"] == "finished"
    assert float(row["final_val_bpd"]) == pytest.approx(trained["outcome"].val_bpd)
    assert float(row["test_bpd"]) == pytest.approx(run.data.metrics["test_bpd"])
    assert int(row["steps"]) == trained["outcome"].step and float(row["epochs"]) == pytest.approx(1.0)
    # run.device=cpu: 0 GPUs; no sweep resources and no run.threads: CPU count unknown, not invented
    assert float(row["gpus"]) == 0 and float(row["gpu_hours"]) == 0 and row["cpus"] == row["cpu_hours"] == ""
    assert float(row["wall_s"]) > 0
    assert (folder / "val_bpd_vs_epoch.png").is_file() and (folder / "samples.png").is_file()
    md = (folder / "report.md").read_text()
    assert "Only one batch size (16): no batch-size gap can be measured" in md


def test_bad_target_from_an_empty_folder_is_answered_without_mlflow_and_creates_nothing(tmp_path):
    """Without a store here (no --tracking-uri, no MLFLOW_TRACKING_URI) a run id, trial id or model
    URI is answered at once with the fix — not after mlflow created an empty ./mlflow.db."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(repo)}
    code = ("import sys; from jobs.evaluate import main; code = main(sys.argv[1:]); "
            "print(code, 'mlflow' in sys.modules, file=sys.stderr)")
    for target in ("0" * 32, "0" * 12, "models:/nope/1"):
        proc = subprocess.run([sys.executable, "-c", code, target], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        error, last = proc.stderr.splitlines()
        assert last == "2 False", proc.stderr
        assert error.startswith(f"error: no MLflow store at {tmp_path / 'mlflow.db'}: "), error
        assert list(tmp_path.iterdir()) == []
