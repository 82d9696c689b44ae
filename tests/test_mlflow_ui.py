"""The MLflow UI shows a sweep's runs: a real server, a real tiny sweep, a real headless Chromium.

The rendered page's DOM must contain every trial run's name; the screenshot is written to the
folder named by ``$RGFLOW_TEST_ARTIFACTS`` for a person to look at (default: the test's own
temporary folder, so that the suite leaves the working tree as it found it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900", "--virtual-time-budget=25000",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("headless Chromium is not installed (apt-get install chromium)")


def _headless(chromium: str, action: str, url: str) -> str:
    """Run one headless Chromium action (``--dump-dom`` or ``--screenshot=FILE``) on ``url``."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", action, url],
                              check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def _dump_dom(chromium: str, url: str) -> str:
    """The page's DOM after its scripts ran."""
    return _headless(chromium, "--dump-dom", url)


def _visible_text(dom: str) -> str:
    """The DOM's text with the tags removed and white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def _render(chromium: str, url: str, screenshot: Path) -> str:
    """A screenshot of the page, and its DOM after its scripts ran."""
    _headless(chromium, f"--screenshot={screenshot}", url)
    return _dump_dom(chromium, url)


@pytest.mark.browser
@pytest.mark.slow
def test_mlflow_ui_lists_the_sweep_runs(mlflow_server, tmp_path):
    chromium = _chromium()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = mlflow_server.uri
    sweep = [
        sys.executable, "-m", "jobs.sweep", "sweeps/smoke.yaml", "backend=local", "name=ui-smoke",
        "train.batch_size=[32,64]", "prior.kind=laplace", "train.steps=3", "train.epochs=1",
        "data.train_size=256", "data.valid_size=64", "data.test_size=64", f"run.out_dir={tmp_path / 'runs'}",
        "evaluation.enabled=false",
    ]
    done = subprocess.run(sweep, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("ui-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`rgflow.role` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)

    artifacts = Path(os.environ.get("RGFLOW_TEST_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    runs_page = f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}/runs"
    dom = _render(chromium, runs_page, artifacts / "mlflow-ui-runs.png")
    assert (artifacts / "mlflow-ui-runs.png").stat().st_size > 10_000, "the screenshot is (nearly) empty"
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.run_name in dom, "the sweep's parent run is not on the runs page"
    assert f"{len(runs) + 1} matching runs" in _visible_text(dom), "the runs page does not count the sweep's parent and trial runs"
    # The runs table nests the trials under the collapsed parent row: each trial's own page shows its name.
    for run in runs:
        page = f"{runs_page}/{run.info.run_id}"
        dom = _dump_dom(chromium, page)
        assert run.info.run_name in dom, f"run {run.info.run_name!r} is not on its rendered page {page}"
