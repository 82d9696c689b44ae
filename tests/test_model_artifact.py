"""The trained model as an MLflow artifact (``tracking.log_model``, :mod:`jobs.model_io`).

A real tiny trial (``python -m jobs.train`` as a subprocess) into a real sqlite store logs its best
checkpoint's weights under ``model/``; with the run folder deleted (no access to the training
node), :func:`jobs.model_io.load_model` builds the model back bitwise from a run id, a ``runs:/``
URI and, once registered, a ``models:/`` URI. ``tracking.log_model=none`` logs no model, and a bad
value is bad input (exit 2, one line).
"""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from jobs.config import load_trial_config, trial_id
from jobs.model_io import MODEL_FILES, ModelLoadError, best_per_setting, load_model, load_model_with_info, model_name
from jobs.tracking import find_run, list_artifacts, register_model
from jobs.tracking.tags import MODEL_ARTIFACT_TAG
from rgflow.checkpoint import load_checkpoint
from tests.fixtures.trial import run_train, tiny_trial


def _batch(config) -> torch.Tensor:
    m = config.model
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, m.channels, m.size, m.size, generator=generator) * 0.999


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trial_data_root, trial_sqlite_uri):
    """One finished tiny trial: its run id, the best checkpoint's weights and log-likelihood of a
    batch (read before its run folder is deleted), and its config."""
    from rgflow.model import RGFlowModel

    tmp = tmp_path_factory.mktemp("model-artifact")
    cfg_path = tiny_trial(tmp / "trial.yaml", trial_data_root, tmp / "runs", trial_sqlite_uri,
                          tracking={"experiment": "model-artifact"})
    done = run_train(cfg_path)
    assert done.returncode == 0, done.stderr
    config = load_trial_config(cfg_path)
    run_dir = tmp / "runs" / "single" / trial_id(config)
    state = json.loads((run_dir / "state.json").read_text())
    best = load_checkpoint(state["best_checkpoint"])
    model = RGFlowModel(config.model, config.prior)
    model.load_state_dict(best["model"])
    with torch.no_grad():
        log_prob = model.eval().log_prob(_batch(config))
    local_info = json.loads((run_dir / "model" / "model.json").read_text())
    shutil.rmtree(tmp / "runs")  # no access to the training node from here on
    return SimpleNamespace(uri=trial_sqlite_uri, run_id=state["run_id"], weights=best["model"], step=best["loop"]["step"],
                           log_prob=log_prob, config=config, info=local_info, data_root=trial_data_root, tmp=tmp)


def _assert_same(model, trained) -> None:
    got = model.state_dict()
    assert set(got) == set(trained.weights)
    for key, value in trained.weights.items():
        assert torch.equal(got[key], value), key
    with torch.no_grad():
        assert torch.equal(model.log_prob(_batch(trained.config)), trained.log_prob)


def test_finished_trial_logs_its_best_weights(trained):
    assert {f"model/{name}" for name in MODEL_FILES} <= set(list_artifacts(trained.uri, trained.run_id, "model"))
    run = find_run(trained.uri, trained.run_id)
    assert run.tags[MODEL_ARTIFACT_TAG] == "best"
    info = trained.info
    assert info["which"] == "best" and info["checkpoint"] == "best.ckpt" and info["step"] == trained.step
    assert info["run_id"] == trained.run_id and info["trial_id"] == trial_id(trained.config)
    assert info["num_params"] == int(run.params["model.num_params"]) > 0
    assert info["val_bpd"] <= run.metrics["val_bpd"] + 1e-12  # the best, not later than the last


def test_load_by_run_id_and_runs_uri_without_the_run_folder(trained):
    for ref in (trained.run_id, f"runs:/{trained.run_id}/model"):
        model, config = load_model(ref, trained.uri)
        assert trial_id(config) == trial_id(trained.config) and not model.training
        _assert_same(model, trained)


def test_weights_are_plain_tensors(trained, tmp_path):
    from jobs.tracking import download_model

    folder = download_model(trained.uri, trained.run_id, tmp_path)
    weights = torch.load(folder / "weights.pt", weights_only=True)
    assert set(weights) == set(trained.weights)  # the model only: no optimizer, RNG or loop state
    (folder / "weights.pt").write_bytes((folder / "weights.pt").read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_model(str(folder))


def test_registry_round_trip(trained):
    version = register_model(trained.uri, "tiny-model-test", trained.run_id)
    assert version == "1"
    assert register_model(trained.uri, "tiny-model-test", trained.run_id) == "1"  # no duplicate version
    for ref in ("models:/tiny-model-test/1", "models:/tiny-model-test/latest"):
        model, _ = load_model(ref, trained.uri)
        _assert_same(model, trained)
    with pytest.raises(ModelLoadError):
        load_model("models:/no-such-model/1", trained.uri)


def test_register_sweep_models(trained, capsys):
    """``jobs.report --register``'s registration on the trial's experiment: one setting, named after it."""
    from jobs.model_io import register_sweep_models

    from mlflow import MlflowClient

    registered = register_sweep_models(trained.uri, "model-artifact")
    # chosen by test BPD once the shared trial was evaluated (tests of this module may run in any order)
    metric = "test_bpd" if "test_bpd" in MlflowClient(trained.uri).get_run(trained.run_id).data.metrics else "best_val_bpd"
    assert [(r.name, r.run_id, r.metric) for r in registered] == [("model-artifact", trained.run_id, metric)]
    model, _, info = load_model_with_info(f"models:/{registered[0].name}/{registered[0].version}", trained.uri)
    assert info["run_id"] == trained.run_id
    _assert_same(model, trained)


def test_best_per_setting_groups_seeds():
    def run(rid, seed, bs, status="FINISHED", **metrics):
        return SimpleNamespace(run_id=rid, status=status, metrics=metrics,
                               params={"run.seed": str(seed), "train.batch_size": str(bs), "model.num_params": rid})
    runs = [run("a", 0, 64, best_val_bpd=3.0), run("b", 1, 64, best_val_bpd=2.0),
            run("c", 0, 512, best_val_bpd=1.0, test_bpd=4.0), run("d", 1, 512, best_val_bpd=0.5),
            run("e", 2, 512, status="FAILED", test_bpd=0.1)]
    best = best_per_setting(runs)
    assert [(label, r.run_id, metric) for label, r, metric, _ in best] == [
        ("bs512", "c", "test_bpd"), ("bs64", "b", "best_val_bpd")]
    assert model_name("my sweep", "bs512-lr0.001") == "my_sweep-bs512-lr0.001"


def test_log_model_none_logs_no_model(trial_data_root, trial_sqlite_uri, tmp_path):
    cfg = tiny_trial(tmp_path / "none.yaml", trial_data_root, tmp_path / "runs", trial_sqlite_uri,
                     tracking={"experiment": "model-none", "log_model": "none"}, train={"epochs": 1})
    done = run_train(cfg)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "single" / trial_id(load_trial_config(cfg))
    run_id = json.loads((run_dir / "state.json").read_text())["run_id"]
    assert "model" not in list_artifacts(trial_sqlite_uri, run_id)
    assert MODEL_ARTIFACT_TAG not in find_run(trial_sqlite_uri, run_id).tags
    assert not (run_dir / "model").exists()
    with pytest.raises(ModelLoadError, match="no artifact model"):
        load_model(run_id, trial_sqlite_uri)
    from jobs.evaluate import EvalInputError, resolve_targets

    shutil.rmtree(run_dir)  # neither a run folder nor a model artifact: nothing to evaluate, one line
    with pytest.raises(EvalInputError, match=f"run {run_id}: its run folder .* is not on this machine and it has no "
                                             "model/config.yaml artifact"):
        resolve_targets(run_id, tracking_uri=trial_sqlite_uri)


def test_bad_log_model_is_bad_input(trial_data_root, tmp_path):
    cfg = tiny_trial(tmp_path / "bad.yaml", trial_data_root, tmp_path / "runs", None)
    done = run_train(cfg, "tracking.log_model=all", timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "tracking.log_model" in lines[0], done.stderr


def test_report_register_cli(trained, tmp_path, capsys):
    """``python -m jobs.report --experiment NAME --register``: the report, then one line per model."""
    from jobs.report.__main__ import main

    code = main(["--experiment", "model-artifact", "--tracking-uri", trained.uri, "--out", str(tmp_path / "report"),
                 "--no-log", "--register"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("registered: ")]
    assert len(lines) == 1 and lines[0].startswith("registered: models:/model-artifact/")
    model, _ = load_model(lines[0].split()[1], trained.uri)
    _assert_same(model, trained)


def test_evaluate_accepts_model_uris(trained):
    """``jobs.evaluate runs:/…`` / ``models:/…`` resolve to the run the model came from; its run
    folder is gone here, so the config is its ``model/`` artifact's (with the overrides) and there
    is no run folder to use."""
    from jobs.evaluate import EvalInputError, resolve_targets

    register_model(trained.uri, "tiny-model-test", trained.run_id)
    for ref in (f"runs:/{trained.run_id}/model", "models:/tiny-model-test/1", trained.run_id):
        [target] = resolve_targets(ref, tracking_uri=trained.uri, overrides=["eval.test_draws=3"])
        assert target.run_id == trained.run_id and target.run_dir is None
        assert trial_id(target.config) == trial_id(trained.config) and target.config.eval.test_draws == 3
    with pytest.raises(EvalInputError, match="no-such-model"):
        resolve_targets("models:/no-such-model/1", tracking_uri=trained.uri)


# ----------------------------------------------------------------------------------------------
# The model as a real MLflow model: pyfunc, LoggedModel, Model Registry, a scoring server
# ----------------------------------------------------------------------------------------------

_FRESH = """
import json, sys
import numpy as np
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
images = np.load(sys.argv[2])
bpd = model.predict(images, params={"draws": int(sys.argv[3])})
samples = model.unwrap_python_model().sample(3, temperature=0.5, seed=1)
json.dump({"bpd": bpd.tolist(), "dtype": str(bpd.dtype), "samples": [list(samples.shape), str(samples.dtype)],
           "rgflow": __import__("rgflow").__file__}, open(sys.argv[4], "w"))
"""


@pytest.fixture(scope="module")
def evaluated(trained):
    """``jobs.evaluate``'s test BPD of the trained model on the first 48 test images (2 draws), and those images."""
    import dataclasses

    import numpy as np

    from jobs.evaluate import evaluate_trial
    from rgflow.data import load_split

    config = dataclasses.replace(trained.config, eval=dataclasses.replace(trained.config.eval, test_size=48, test_draws=2))
    result = evaluate_trial(config, None, trained.run_id, tracking_uri=trained.uri, selected=("test_bpd",))
    images = np.asarray(load_split(dataclasses.replace(config.data, test_size=48), "test").images)
    path = trained.tmp / "test-images.npy"
    np.save(path, images)
    return SimpleNamespace(test_bpd=result.metrics["test_bpd"], images=images, path=path, draws=2)


def test_logged_model_is_an_mlflow_model(trained):
    """MLmodel with a signature and requirements; the run's LoggedModel ``model``, READY, found by
    ``search_logged_models`` and linked to the run as its output."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    from jobs.tracking import download_model

    client = MlflowClient(trained.uri)
    run = client.get_run(trained.run_id)
    [logged] = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{trained.run_id}'")
    assert logged.name == f"rgflow-{run.info.run_name}" and logged.status == LoggedModelStatus.READY
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    assert logged.params["model.preset"] == "tiny" and logged.tags["rgflow.trial_id"] == trial_id(trained.config)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        folder = download_model(trained.uri, trained.run_id, tmp)
        mlmodel = Model.load(str(folder / "MLmodel"))
        assert (mlmodel.model_id, mlmodel.run_id) == (logged.model_id, trained.run_id)
        inputs = mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]
        assert inputs == {"dtype": "uint8", "shape": (-1, 3, 32, 32)}
        assert {p.name for p in mlmodel.signature.params} == {"draws", "noise_seed", "batch_size"}
        requirements = (folder / "requirements.txt").read_text().split()
        assert {r.split("==")[0] for r in requirements} >= {"rgflow-sweeps", "torch", "mlflow"}
    logged_files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    assert {"MLmodel", "weights.pt", "rgflow_pyfunc.py"} <= logged_files


def test_pyfunc_in_a_fresh_process_gives_the_evaluated_test_bpd(trained, evaluated, tmp_path):
    """``mlflow.pyfunc.load_model`` of the registered version, the run's ``runs:/…/model`` and the
    LoggedModel's ``models:/<id>``, each in a fresh Python (cwd elsewhere, only the installed
    package): per-image bits/dim whose mean is ``jobs.evaluate``'s test BPD to 1e-6; samples."""
    import os
    import subprocess
    import sys

    from jobs.tracking import logged_model_id

    version = register_model(trained.uri, "tiny-pyfunc-test", trained.run_id)
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env |= {"MLFLOW_TRACKING_URI": trained.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    refs = [f"models:/tiny-pyfunc-test/{version}", f"runs:/{trained.run_id}/model",
            f"models:/{logged_model_id(trained.uri, trained.run_id)}"]
    for i, ref in enumerate(refs):
        out = tmp_path / f"out{i}.json"
        done = subprocess.run([sys.executable, str(script), ref, str(evaluated.path), str(evaluated.draws), str(out)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(out.read_text())
        assert got["dtype"] == "float64" and len(got["bpd"]) == len(evaluated.images)
        assert abs(sum(got["bpd"]) / len(got["bpd"]) - evaluated.test_bpd) < 1e-6, (ref, got["bpd"][:3])
        assert got["samples"] == [[3, 3, 32, 32], "uint8"]


def _stop_process_group(proc, marker: str, grace_s: float = 20.0) -> list[str]:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``grace_s``; returns what is left of it
    (processes of the group or carrying ``marker`` in their environment): ``[]`` when all are gone."""
    import os
    import signal
    import time
    from pathlib import Path

    from tests.test_ray_security import _marked_pids

    def left() -> list[str]:
        found = set(_marked_pids(marker))
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getpgid(int(entry.name)) == proc.pid:
                    found.add(int(entry.name))
            except OSError:
                continue
        out = []
        for pid in sorted(found):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    out.append(f"{pid}: {cmdline[:200]}")
            except OSError:
                continue
        return out

    def gone_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None and not left():  # the leader reaped, its workers gone
                return True
            time.sleep(0.2)
        return False

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        sent = time.monotonic()
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if gone_within(wait_s):
            print(f"process group {proc.pid} gone {time.monotonic() - sent:.1f} s after {sig.name}")
            return []
    return left()


@pytest.mark.slow
def test_scoring_server_gives_the_evaluated_per_image_bpd(trained, evaluated, tmp_path):
    """``mlflow models serve -m models:/<name>/<version> --env-manager local -h 127.0.0.1`` as a
    real subprocess (its own session) on the registered model: ``POST /invocations`` with the test
    images (uint8 N×3×32×32, the signature's layout) returns each image's bits/dim equal to
    ``jobs.evaluate``'s ``eval/test_bpd_per_image.npy`` and to a direct ``predict``, to 1e-6; an
    image of the wrong size is refused by the signature (400). The server listens on 127.0.0.1
    only and, stopped by its process group, leaves nothing behind."""
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    import uuid
    from pathlib import Path

    import mlflow.pyfunc
    import numpy as np
    from mlflow import MlflowClient

    from jobs.tracking import download_model
    from tests.fixtures.mlflow_server import free_port
    from tests.test_ray_security import listeners

    version = register_model(trained.uri, "tiny-serve-test", trained.run_id)
    ref = f"models:/tiny-serve-test/{version}"
    params = {"draws": evaluated.draws}
    per_image = np.load(MlflowClient(trained.uri).download_artifacts(trained.run_id, "eval/test_bpd_per_image.npy",
                                                                     str(tmp_path)))
    assert per_image.shape == (len(evaluated.images),) and abs(per_image.mean() - evaluated.test_bpd) < 1e-9
    # In this process through the model's folder (a models:/ URI would use the global tracking URI, not the test's store).
    direct = mlflow.pyfunc.load_model(str(download_model(trained.uri, trained.run_id, tmp_path / "local"))).predict(
        evaluated.images, params=params)
    np.testing.assert_allclose(direct, per_image, rtol=0, atol=1e-6)

    port, marker = free_port(), f"serve-{uuid.uuid4().hex[:12]}"
    bin_dir = Path(sys.executable).parent  # the venv's: `mlflow` and the `uvicorn` it starts
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env |= {"MLFLOW_TRACKING_URI": trained.uri, "MLFLOW_DISABLE_TELEMETRY": "true", "RGFLOW_TEST_MARKER": marker,
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", ref, "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    def post(inputs) -> tuple[int, dict]:
        body = json.dumps({"inputs": inputs, "params": params}).encode()
        request = urllib.request.Request(f"{base}/invocations", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    try:
        started, deadline = time.monotonic(), time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow models serve exited ({proc.returncode}):\n{log_tail()}"
            assert time.monotonic() < deadline, f"no answer to GET /ping after 120 s:\n{log_tail()}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        print(f"GET /ping answered after {time.monotonic() - started:.1f} s")

        found = listeners(marker)
        assert ("127.0.0.1", port) in found, (found, log_tail())
        assert {host for host, _ in found} == {"127.0.0.1"}, f"listening beyond loopback: {found}"

        status, reply = post(evaluated.images.tolist())
        assert status == 200, (status, reply, log_tail())
        served = np.asarray(reply["predictions"], dtype=np.float64)
        assert served.shape == per_image.shape
        np.testing.assert_allclose(served, per_image, rtol=0, atol=1e-6)
        np.testing.assert_allclose(served, direct, rtol=0, atol=1e-6)
        assert abs(served.mean() - evaluated.test_bpd) < 1e-6

        status, reply = post(evaluated.images[:2, :, :16, :16].tolist())  # not the signature's shape
        assert status == 400, (status, reply)
    finally:
        left = _stop_process_group(proc, marker)
    assert not left, f"left of the scoring server after SIGTERM/SIGKILL to its group: {left}"
    assert not listeners(marker)
