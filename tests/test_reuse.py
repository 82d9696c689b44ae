"""Reuse of trials across sweeps (:mod:`jobs.reuse`), with real processes and a real sqlite store:
two tiny local sweeps share a trial; the second links it instead of training it, its report, status
and ``load_model`` take the link like any trial, a re-run links nothing more, and ``reuse=false``
trains it after all."""
from __future__ import annotations

import csv

import pytest
import torch

from jobs.sweep_spec import load_sweep
from jobs.tracking import tags as TG
from jobs.train import trial_run_names
from tests.fixtures.sweep import SMOKE

#: Local trials evaluated for test BPD only; batch 32 is the trial both sweeps have.
COMMON = ("backend=local", "local.parallel=1", "prior.kind=laplace", "evaluation.samples=false",
          "evaluation.receptive_fields=false")
A = ("name=reuse-a", "train.batch_size=[32]")
B = ("name=reuse-b", "train.batch_size=[32,64]")


def _trials(env, experiment: str) -> dict[str, object]:
    return {r.data.tags[TG.TRIAL_ID_TAG]: r for r in env.trial_runs(experiment)}


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_trial_finished_in_another_sweep_is_linked_not_trained(sweep_env, tmp_path):
    from jobs.model_io import load_model
    from jobs.report.build import build_report

    a_args, b_args = sweep_env.overrides(*COMMON, *A), sweep_env.overrides(*COMMON, *B)
    first = sweep_env.run(SMOKE, *a_args)
    assert first.returncode == 0, first.stderr
    sweep_b = load_sweep(SMOKE, b_args)
    shared, new = (t.trial_id for t in sweep_b.trials)
    [original] = sweep_env.trial_runs("reuse-a")
    assert original.data.tags[TG.TRIAL_ID_TAG] == shared and original.info.status == "FINISHED"
    trained_log = (sweep_env.runs_dir / "reuse-a" / shared / "train.log").read_text()

    dry = sweep_env.run(SMOKE, "--dry-run", *b_args)
    assert dry.returncode == 0, dry.stderr
    assert (f"reuse: 1 of 2 trials finished in other sweeps of {sweep_env.uri}: linked, not trained (reuse=false "
            "trains them)") in dry.stdout.splitlines()

    second = sweep_env.run(SMOKE, *b_args)
    assert second.returncode == 0, second.stderr
    assert "2 trials, 1 already finished (1 reused from other sweeps), 0 skipped, 1 to run on local" in second.stderr
    # the shared trial was not trained: no run folder, no attempt log in sweep B; sweep A's log untouched
    b_dir = sweep_env.runs_dir / "reuse-b"
    assert not (b_dir / shared).exists() and not (b_dir / "logs" / "trial-0000.log").exists()
    assert (b_dir / new / "train.log").is_file() and (b_dir / "logs" / "trial-0001.log").is_file()
    assert (sweep_env.runs_dir / "reuse-a" / shared / "train.log").read_text() == trained_log

    client = sweep_env.client()
    [parent] = sweep_env.parent_runs("reuse-b")
    runs = _trials(sweep_env, "reuse-b")
    link = runs[shared]
    assert f"skip {shared}: reused: finished run {original.info.run_id} of experiment reuse-a linked as run " \
           f"{link.info.run_id}" in second.stderr
    tags = link.data.tags
    assert link.info.status == "FINISHED" and link.info.experiment_id == parent.info.experiment_id
    assert tags[TG.REUSED_FROM_TAG] == original.info.run_id and tags[TG.REUSED_FROM_EXPERIMENT_TAG] == "reuse-a"
    assert tags[TG.PARENT_TAG] == parent.info.run_id and tags[TG.SWEEP_TAG] == "reuse-b"
    assert tags[TG.SWEEP_ID_TAG] == sweep_b.sweep_id and tags[TG.TRIAL_INDEX_TAG] == "0"
    assert link.info.run_name == tags[TG.RUN_NAME_TAG] == trial_run_names(sweep_b)[0]
    for key in (TG.STATE_TAG, TG.ATTEMPT_TAG, TG.EVAL_PROTOCOL_TAG, TG.SOURCE_GIT_COMMIT_TAG, TG.USER_TAG,
                TG.MODEL_ARTIFACT_TAG, TG.RUN_DIR_TAG):
        assert tags[key] == original.data.tags[key], key
    assert link.data.params == {**original.data.params, "tracking.experiment": "reuse-b"}
    kept = {k: v for k, v in original.data.metrics.items() if not k.startswith("system/")}
    assert link.data.metrics == kept and {"val_bpd", "test_bpd", "train_bpd"} <= set(kept)
    for key in ("val_bpd", "train_bpd", "samples_seen"):
        assert _history(client, link.info.run_id, key) == _history(client, original.info.run_id, key)
    # the model loads from the link's own artifacts, as trained
    linked_model, _ = load_model(link.info.run_id, sweep_env.uri)
    trained_model, _ = load_model(original.info.run_id, sweep_env.uri)
    for name, value in trained_model.state_dict().items():
        assert torch.equal(linked_model.state_dict()[name], value), name
    assert {"model", "eval", "train.log"} <= {a.path for a in client.list_artifacts(link.info.run_id)}
    # the parent closes FINISHED with both trials; the new one was trained here
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 2
    assert TG.REUSED_FROM_TAG not in runs[new].data.tags and runs[new].data.tags[TG.BACKEND_TAG] == "local"

    # the report of sweep B takes the linked trial like any other
    folder = build_report(SMOKE, out_dir=tmp_path / "report", tracking_uri=sweep_env.uri, overrides=b_args,
                          log_to_parent=False)
    rows = {row["run_id"]: row for row in csv.DictReader(open(folder / "trials.csv"))}
    assert set(rows) == {link.info.run_id, runs[new].info.run_id}
    assert float(rows[link.info.run_id]["test_bpd"]) == pytest.approx(original.data.metrics["test_bpd"], rel=1e-12)
    assert float(rows[link.info.run_id]["final_val_bpd"]) == pytest.approx(original.data.metrics["val_bpd"], rel=1e-12)
    assert (folder / "val_bpd_vs_epoch.png").is_file()

    status = sweep_env.run("status", SMOKE, *b_args)
    assert status.returncode == 0, status.stderr
    assert f"reuse-b: trial 0 reused: run {link.info.run_id} links run {original.info.run_id} of experiment reuse-a" \
           in status.stdout
    assert "reuse-b: 2 finished" in status.stdout

    again = sweep_env.run(SMOKE, *b_args)  # a re-run links nothing more
    assert again.returncode == 0, again.stderr
    assert "2 trials, 2 already finished, 0 skipped, 0 to run" in again.stderr
    assert len(sweep_env.all_runs("reuse-b")) == 3  # the parent, the link, the trained trial

    retrain = sweep_env.run(SMOKE, *b_args, "reuse=false")  # force the retrain
    assert retrain.returncode == 0, retrain.stderr
    assert f"run {shared}: reuse=false: training it here; its link run {link.info.run_id}" in retrain.stderr
    assert "2 trials, 1 already finished, 0 skipped, 1 to run on local" in retrain.stderr
    assert (b_dir / shared / "train.log").is_file() and (b_dir / "logs" / "trial-0000.log").is_file()
    runs = _trials(sweep_env, "reuse-b")
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert TG.REUSED_FROM_TAG not in runs[shared].data.tags and runs[shared].info.run_id != link.info.run_id
    assert client.get_run(link.info.run_id).info.lifecycle_stage == "deleted"


def test_which_runs_are_reusable_and_a_failed_link_leaves_nothing(tmp_path):
    """:func:`jobs.tracking.store.find_reusable_runs` on a real sqlite store with runs made to order:
    only FINISHED, finished (not pruned), non-link trial runs of other experiments — evaluated when
    asked — and the newest of a trial; a link whose artifacts cannot be written is deleted."""
    from mlflow import MlflowClient

    from jobs.tracking import TrackingError
    from jobs.tracking.store import delete_link_run, find_reusable_runs, link_trial_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    a = client.create_experiment("a", artifact_location=str(tmp_path / "art-a"))
    b = client.create_experiment("b", artifact_location=str(tmp_path / "art-b"))
    (tmp_path / "not-a-folder").write_text("")
    broken = client.create_experiment("broken", artifact_location=str(tmp_path / "not-a-folder" / "art"))

    def run(trial: str, status: str = "FINISHED", state: str = "finished", evaluated: bool = True,
            start: int = 1000, **extra: str) -> str:
        tags = {TG.ROLE_TAG: "trial", TG.TRIAL_ID_TAG: trial, TG.STATE_TAG: state, **extra}
        if evaluated:
            tags[TG.EVAL_PROTOCOL_TAG] = "0" * 16
        run_id = client.create_run(a, start_time=start, tags=tags).info.run_id
        client.log_metric(run_id, "val_bpd", 3.0, step=1)
        client.set_terminated(run_id, status)
        return run_id

    run("t1", start=1000)
    newest = run("t1", start=2000)
    run("t2", state="pruned")
    run("t3", status="FAILED", state="failed")
    not_evaluated = run("t4", evaluated=False)
    run("t5", **{TG.REUSED_FROM_TAG: "f" * 32})
    trials = ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert {t: r.run_id for t, r in find_reusable_runs(uri, b, trials, evaluated=True).items()} == {"t1": newest}
    assert {t: r.run_id for t, r in find_reusable_runs(uri, b, trials, evaluated=False).items()} == {
        "t1": newest, "t4": not_evaluated}
    assert find_reusable_runs(uri, a, trials, evaluated=False) == {}  # its own experiment is not another sweep

    (tmp_path / "file.txt").write_text("x")
    client.log_artifact(newest, str(tmp_path / "file.txt"))
    with pytest.raises(OSError):  # the artifacts cannot be copied into "broken": the half-made link is deleted
        link_trial_run(uri, broken, newest, {TG.SWEEP_TAG: "broken"}, {})
    assert client.search_runs([broken]) == []
    link = link_trial_run(uri, b, newest, {TG.SWEEP_TAG: "b"}, {"tracking.experiment": "b"})
    assert link.trial_id == "t1" and link.status == "FINISHED" and link.tags[TG.REUSED_FROM_TAG] == newest
    assert link.metrics == {"val_bpd": 3.0} and link.params == {"tracking.experiment": "b"}
    assert [a.path for a in client.list_artifacts(link.run_id)] == ["file.txt"]
    with pytest.raises(TrackingError, match="not a link run"):
        delete_link_run(uri, newest)
    delete_link_run(uri, link.run_id)
    assert client.get_run(link.run_id).info.lifecycle_stage == "deleted"


def test_a_link_left_half_made_by_a_store_outage_is_deleted_by_the_next_launch(tmp_path):
    """A link whose creation and clean-up both failed (the store went down mid-way) stays RUNNING
    without ``rgflow.role``: :func:`jobs.tracking.store.delete_incomplete_links` (called by every
    launch) deletes it, and leaves trial runs and finished links alone."""
    from mlflow import MlflowClient

    from jobs.tracking.store import delete_incomplete_links

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("b", artifact_location=str(tmp_path / "art"))
    half = client.create_run(exp, tags={TG.REUSED_FROM_TAG: "f" * 32}).info.run_id
    live = client.create_run(exp, tags={TG.ROLE_TAG: "trial", TG.TRIAL_ID_TAG: "t1"}).info.run_id
    done = client.create_run(exp, tags={TG.ROLE_TAG: "trial", TG.REUSED_FROM_TAG: "e" * 32}).info.run_id
    client.set_terminated(done, "FINISHED")
    assert delete_incomplete_links(uri, exp) == [half]
    assert client.get_run(half).info.lifecycle_stage == "deleted"
    assert {client.get_run(r).info.lifecycle_stage for r in (live, done)} == {"active"}
    assert delete_incomplete_links(uri, exp) == []
