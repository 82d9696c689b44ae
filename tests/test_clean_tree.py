"""Runs in a sqlite store keep their artifacts beside the database, never under the current
directory: MLflow's default artifact root for a sqlite store is ``./mlruns`` of the process that
creates the experiment, which put test runs (stores in temp folders) into the repository root."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-uri", "relative-uri"])
def test_sqlite_experiment_artifacts_live_beside_the_database(tmp_path, monkeypatch, relative):
    from jobs.tracking import ensure_experiment, get_client

    store, cwd = tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    cwd.mkdir()
    if relative:  # sqlite:///store/mlflow.db, relative to the working directory tmp_path
        monkeypatch.chdir(tmp_path)
        uri = "sqlite:///store/mlflow.db"
    else:
        monkeypatch.chdir(cwd)
        uri = f"sqlite:///{store / 'mlflow.db'}"
    name = "odd name/with [brackets]"
    experiment = ensure_experiment(uri, name)
    assert ensure_experiment(uri, name) == experiment  # found again, not created twice

    client = get_client(uri)
    run = client.create_run(experiment).info.run_id
    artifact = tmp_path / "upload" / "note.txt"
    artifact.parent.mkdir()
    artifact.write_text("hello")
    client.log_artifact(run, str(artifact), "sub")

    written = [p for p in tmp_path.rglob("note.txt") if p != artifact]
    assert len(written) == 1 and written[0].is_relative_to(store / "mlartifacts"), written
    for folder in (cwd, tmp_path):
        assert not (folder / "mlruns").exists(), f"artifacts written under the working directory {folder}"
    assert Path(client.get_run(run).info.artifact_uri.removeprefix("file://")).is_relative_to(store / "mlartifacts")
