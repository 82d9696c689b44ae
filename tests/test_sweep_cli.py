"""``python -m jobs.sweep``: dry-run, overrides that change an axis, ``--show``, status (a fresh
sweep, a real trial, a 1,000-trial store, JSON/CSV, closing a dead sweep, no heavy imports), CLI
errors (one line, exit 2, nothing created), and the pure pieces (state file, progress line, plan,
Slurm job tables, progress and ETA)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobs.progress import Counts, Progress, count_states, format_line
from jobs.attempt import sweep_end_state
from jobs.backends.slurm_backend import sbatch_options
from jobs.sweep import main, plan
from jobs.sweep_state import StateError, SweepState, TrialJob, load_state, save_state
from jobs.sweep_spec import load_sweep
from jobs.sweep_status import TrialProgress, format_table, progress_of
from jobs.backends.slurm_backend import parse_job_table
from tests.fixtures.sweep import REPO, SMOKE
from tests.fixtures.sweep_store import REASON, STEPS_PER_EPOCH, log_sweep_runs, outcome


def _rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line[:1].isdigit()]


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """``jobs.sweep.main(args)`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_prints_the_trials_and_creates_nothing(sweep_env):
    proc = sweep_env.run(SMOKE, "--dry-run", *sweep_env.overrides())
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    sweep = load_sweep(REPO / SMOKE, sweep_env.overrides())
    assert [r[:2] for r in rows] == [[str(t.index), t.trial_id] for t in sweep.trials]
    assert len(rows) == 4 and {r[2] for r in rows} == {"32", "128"} and {r[3] for r in rows} == {"laplace", "gaussian"}
    assert "CPU-h" in proc.stdout  # smoke trials ask for no GPU: the estimate is in CPU-hours
    assert not (sweep_env.root / "mlflow.db").exists()
    assert not sweep_env.runs_dir.exists()


def test_overrides_change_an_axis(sweep_env, capsys):
    code, out, err = _main(capsys, str(REPO / SMOKE), "--dry-run", "train.batch_size=[16,32,64]", "seeds=[0,1]",
                           "prior.kind=laplace", *sweep_env.overrides())
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 6
    assert [r[2] for r in rows] == ["16", "16", "32", "32", "64", "64"]
    assert {r[3] for r in rows} == {"laplace"}
    # The batch-32 trial keeps its id when the axis around it changes: re-runs skip it.
    base = {t.varying["train.batch_size"]: t.trial_id
            for t in load_sweep(REPO / SMOKE, [*sweep_env.overrides(), "prior.kind=laplace"]).trials}
    assert rows[2][1] == base[32]


def test_status_of_a_sweep_never_run(sweep_env):
    proc = sweep_env.run("status", SMOKE, *sweep_env.overrides())
    assert proc.returncode == 0, proc.stderr
    assert [r[2] for r in _rows(proc.stdout)] == ["pending"] * 4
    assert "smoke: 4 pending" in proc.stdout
    assert not (sweep_env.root / "mlflow.db").exists()


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: sweep"),
    (("sweeps/nope.yaml",), "sweeps/nope.yaml: no such file"),
    ((SMOKE, "train.batchsize=64"), "train.batchsize: unknown key (did you mean 'train.batch_size'?)"),
    ((SMOKE, "backend=slurn"), "backend='slurn': must be one of 'ray', 'slurm', 'local' (did you mean 'slurm'?)"),
    ((SMOKE, "prior.kind=[laplace,cauchy]"), "prior.kind='cauchy': must be one of"),
    ((SMOKE, "resources.gpus=0.5", "backend=slurm", "slurm.python=/opt/py"), "slurm.python='/opt/py': not supported"),
    (("status", SMOKE, "--wait"), "--dry-run, --show and --wait apply to 'run', not 'status'"),
    (("status", SMOKE, "--show", "1"), "--dry-run, --show and --wait apply to 'run', not 'status'"),
    ((SMOKE, "--json"), "--json and --csv apply to 'status', not 'run'"),
    (("status", SMOKE, "--json", "--csv"), "--json and --csv: choose one"),
    ((SMOKE, "--show", "4"), "trial index 4 is out of range: sweep 'smoke'"),
    ((SMOKE, "--show", "two"), "argument --show: invalid int value: 'two'"),
    (("configs/tiny.yaml",), f"configs/tiny.yaml is a trial config, not a sweep: run it with python -m jobs.train "
                             f"{REPO}/configs/tiny.yaml run.out_dir="),
    (("status", "configs/tiny.yaml"), "is a trial config, not a sweep"),
    ((SMOKE, "--frobnicate"), "unrecognized arguments: --frobnicate"),
])
def test_cli_errors_are_one_line_exit_2_and_create_nothing(sweep_env, capsys, monkeypatch, args, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep_env.uri)
    args = tuple(str(REPO / a) if a.endswith(".yaml") else a for a in args)
    code, out, err = _main(capsys, *args, *(sweep_env.overrides() if args else ()))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert out == ""
    assert not (sweep_env.root / "mlflow.db").exists() and not sweep_env.runs_dir.exists()


# ------------------------------------------------------------------------------------------------
# Pure pieces
# ------------------------------------------------------------------------------------------------

def test_state_file_round_trip_and_corruption(tmp_path):
    state = SweepState("s", "slurm", "sqlite:///x.db", "1", "abc", {"t1": TrialJob(0, "12_0", "13_0", 5.0)},
                       submitit_folder="/x/submitit")
    path = save_state(tmp_path, state)
    assert json.loads(path.read_text())["trials"]["t1"]["job_id"] == "12_0"
    assert load_state(tmp_path) == state and state.job_ids() == ["12_0", "13_0"]
    assert [p.name for p in tmp_path.iterdir()] == ["sweep-state.json"]  # no temp file left
    assert load_state(tmp_path / "elsewhere") is None
    path.write_text('{"version": 1, "trials": {')
    with pytest.raises(StateError, match="sweep-state.json: unreadable sweep state"):
        load_state(tmp_path)


def test_progress_line_redraws_only_on_change():
    stream = io.StringIO()
    progress = Progress("smoke", stream=stream)
    progress.update(count_states({"a": "finished", "b": "running", "c": "preempted", "d": "pending"}), None)
    progress.update(Counts(1, 2, 0, 1), None)  # unchanged: not written again (not a terminal)
    progress.update(Counts(2, 1, 0, 1), 5.43219)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("smoke: 1/4 done · 2 running · 0 failed · 1 pending · best val_bpd – ·")
    assert "2/4 done" in lines[1] and "best val_bpd 5.4322" in lines[1]
    assert format_line("x", Counts(0, 0, 0, 3), None, 3725).endswith("· 1:02:05")


@dataclass
class _Run:
    status: str
    tags: dict = field(default_factory=dict)
    state: str = ""


def test_plan_skips_finished_live_and_exhausted_trials():
    sweep = load_sweep(REPO / SMOKE, [])
    a, b, c, d = (t.trial_id for t in sweep.trials)
    runs = {a: _Run("FINISHED"), b: _Run("FAILED", {"rgflow.failures": "2"}), c: _Run("FAILED"), d: _Run("RUNNING")}
    states, todo, skipped = plan(sweep, runs, live={}, max_failures=1)
    assert states == {a: "finished", b: "failed", c: "pending", d: "pending"}
    assert todo == [c, d] and "failed 2 times" in skipped[b]
    states, todo, skipped = plan(sweep, {}, live={c: "17_2"}, max_failures=1)
    assert todo == [a, b, d] and states[c] == "running" and "17_2" in skipped[c]
    assert sweep_end_state(sweep.trials, runs) == ("failed", sweep_end_state(sweep.trials, runs)[1])
    assert sweep_end_state(sweep.trials, {t: _Run("FINISHED") for t in (a, b, c, d)}) == ("finished", None)


def test_slurm_job_tables_and_sbatch_flags():
    table = "41_0|COMPLETED\n41_[1-3%2]|PENDING\n42|CANCELLED by 0\n\n"
    assert parse_job_table(table) == {"41_0": "COMPLETED", "41_1": "PENDING", "41_2": "PENDING", "41_3": "PENDING",
                                      "42": "CANCELLED"}
    assert sbatch_options(("--exclusive", "--nodelist=n1")) == {"exclusive": True, "nodelist": "n1"}


def test_progress_and_eta_from_the_latest_metrics():
    train = load_sweep(REPO / SMOKE, ["train.epochs=2"]).trials[0].config.train  # batch 32, no step cap
    assert (train.batch_size, train.epochs, train.steps) == (32, 2, None)
    # 40 steps in 1.25 epochs → 32 steps/epoch; 100 s so far → 80 s/epoch; 0.75 epoch left → 60 s.
    metrics = {"samples_seen": 40 * 32.0, "epoch": 1.25, "wall_s": 100.0, "val_epoch": 1.0}
    assert progress_of(train, metrics) == TrialProgress(step=40, steps=64, epoch=1.25, epochs=2.0, eta_s=60.0)
    capped = load_sweep(REPO / SMOKE, ["train.epochs=2", "train.steps=48"]).trials[0].config.train
    assert progress_of(capped, metrics) == TrialProgress(step=40, steps=48, epoch=1.25, epochs=1.5, eta_s=20.0)
    # The final validation is logged after the last training log: it tells where training ended.
    assert progress_of(capped, {**metrics, "val_epoch": 1.5}) == TrialProgress(48, 48, 1.5, 1.5, 0.0)
    assert progress_of(train, {"val_bpd": 6.0}) == TrialProgress()  # no training log yet: all unknown
    assert progress_of(train, {**metrics, "wall_s": float("nan")}).eta_s is None

    rows = [{"index": 0, "trial_id": "abc", "axes": {"train.batch_size": 64, "run.seed": 1}, "state": "running",
             "attempts": 2, "step": 40, "steps": 64, "epoch": 1.25, "epochs": 2.0, "eta_s": 3725.0,
             "best_val_bpd": 5.5, "job_id": "41_0"},
            {"index": 1, "trial_id": "def", "axes": {"train.batch_size": 128, "run.seed": 1}, "state": "running",
             "attempts": 1, "step": None, "steps": None, "epoch": None, "epochs": None, "eta_s": None,
             "best_val_bpd": None, "job_id": ""}]
    header, first, second = format_table(rows).splitlines()
    assert header.split() == ["index", "trial", "id", "state", "attempts", "best", "val_bpd", "job", "id", "step",
                              "epoch", "ETA", "axes"]
    assert first.split() == ["0", "abc", "running", "2", "5.5000", "41_0", "40/64", "1.25/2", "1:02:05",
                             "train.batch_size=64", "seed=1"]
    assert second.split() == ["1", "def", "running", "1", "–", "–", "–", "–", "?", "train.batch_size=128", "seed=1"]


# ------------------------------------------------------------------------------------------------
# --show and status on real stores
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_show_prints_the_config_yaml_a_trial_writes_and_status_reads_its_real_run(sweep_env):
    """A real trial (4 optimizer steps) through ``jobs.train``: ``--show 1`` is its run folder's
    ``config.yaml``; ``status`` reads its MLflow run: finished at step 4 of 4 (256 images, batch 32:
    8 steps per epoch, so epoch 0.5 of 0.5), best val_bpd as logged."""
    overrides = sweep_env.overrides()
    shown = sweep_env.run(SMOKE, "--show", "1", *overrides)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    trained = subprocess.run([sys.executable, "-m", "jobs.train", SMOKE, "--trial", "1", *overrides], cwd=REPO,
                             env=sweep_env.env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    trial = load_sweep(REPO / SMOKE, overrides).trial(1)
    assert shown.stdout == (sweep_env.runs_dir / "smoke" / trial.trial_id / "config.yaml").read_text()

    status = sweep_env.run("status", SMOKE, "--json", *overrides)
    assert status.returncode == 0, status.stderr
    row = json.loads(status.stdout)["trials"][1]
    run = sweep_env.trial_runs()[0]
    assert (row["trial_id"], row["state"], row["attempts"]) == (trial.trial_id, "finished", 1)
    assert (row["step"], row["steps"], row["epoch"], row["epochs"], row["eta_s"]) == (4, 4, 0.5, 0.5, None)
    assert row["best_val_bpd"] == run.data.metrics.get("best_val_bpd", run.data.metrics["val_bpd"])
    assert row["axes"] == {"train.batch_size": 32, "prior.kind": "gaussian", "run.seed": 0}


THOUSAND = """name: thousand
base_config: {base}
base: {{train: {{epochs: 4}}, run: {{device: cpu}}}}
axes:
  grid:
    train.lr: [1.0e-4, 2.0e-4, 3.0e-4, 5.0e-4, 7.0e-4, 1.0e-3, 1.5e-3, 2.0e-3, 3.0e-3, 5.0e-3]
    train.batch_size: [16, 32, 48, 64, 96, 128, 192, 256, 384, 512]
  seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""


@dataclass
class _Store:
    root: Path
    path: Path
    uri: str
    sweep: object
    parent: str

    def status(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.sweep", "status", str(self.path), *args, *self.overrides],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300)

    @property
    def overrides(self) -> list[str]:
        return [f"run.out_dir={self.root / 'runs'}"]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri}


def _store(root: Path, text: str, name: str, parent_status: str) -> _Store:
    path = root / f"{name}.yaml"
    path.write_text(text)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep = load_sweep(path, [f"run.out_dir={root / 'runs'}"])
    experiment, parent = log_sweep_runs(uri, sweep, params=False, parent_status=parent_status)
    save_state(root / "runs" / name, SweepState(name, "local", uri, experiment, parent))  # launcher gone, no jobs
    return _Store(root, path, uri, sweep, parent)


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> _Store:
    """A 1,000-trial sweep whose runs (running, finished, failed, killed, none) are in a sqlite
    store; its parent run is FINISHED, so nothing is dead (≈20 s to log)."""
    return _store(tmp_path_factory.mktemp("thousand"), THOUSAND.format(base=REPO / "configs" / "tiny.yaml"),
                  "thousand", "FINISHED")


def _expected(trial) -> dict:
    """What status must say about a trial of the synthetic store (tests/fixtures/sweep_store.py)."""
    result, epochs = outcome(trial.index), trial.config.train.epochs
    if result.state is None:
        return {"state": "pending", "attempts": 0, "step": None, "steps": None, "epoch": None, "epochs": None,
                "eta_s": None, "best_val_bpd": None}
    step = round(result.fraction * epochs * STEPS_PER_EPOCH)
    running = result.state == "running"
    return {"state": f"failed ({REASON})" if result.state == "failed" else result.state, "attempts": 1,
            "step": step, "steps": epochs * STEPS_PER_EPOCH, "epoch": step / STEPS_PER_EPOCH, "epochs": float(epochs),
            "eta_s": (epochs - step / STEPS_PER_EPOCH) * result.seconds_per_epoch if running else None,
            "best_val_bpd": result.val_bpd}


@pytest.mark.slow
def test_status_of_1000_trials_lists_every_row(thousand):
    proc = thousand.status()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"thousand: MLflow store {thousand.uri}; run folder {thousand.root / 'runs' / 'thousand'}"
    lines = lines[1:]
    assert len(lines) == 1 + 1000 + 1
    rows = [re.split(r"\s{2,}", line) for line in lines[1:-1]]
    for trial, row in zip(thousand.sweep.trials, rows, strict=True):
        want = _expected(trial)
        assert row[:4] == [str(trial.index), trial.trial_id, want["state"], str(want["attempts"])]
        assert row[4] == ("–" if want["best_val_bpd"] is None else f"{want['best_val_bpd']:.4f}")
        assert row[6] == ("–" if want["step"] is None else f"{want['step']}/{want['steps']}")
        assert row[8] == ("–" if want["eta_s"] is None else _clock(want["eta_s"]))
    # trial 0: running, 8 of 80 steps, 30 s per epoch → 3.6 epochs × 30 s = 1:48 left
    assert rows[0][5:] == ["–", "8/80", "0.4/4", "1:48", "train.lr=0.0001 train.batch_size=16 seed=0"]
    assert rows[999][9] == "train.lr=0.005 train.batch_size=512 seed=9"
    etas = [_expected(t)["eta_s"] for t in thousand.sweep.trials if outcome(t.index).state == "running"]
    assert lines[-1] == (f"thousand: 125 failed, 375 finished, 125 killed, 125 pending, 250 running · ETA of the 250 "
                         f"running: longest {_clock(max(etas))}, total {_clock(sum(etas))}")


def _clock(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@pytest.mark.slow
def test_status_json_and_csv_are_the_same_table(thousand):
    as_json, as_csv = thousand.status("--json"), thousand.status("--csv")
    assert as_json.returncode == 0 and as_csv.returncode == 0, as_json.stderr + as_csv.stderr
    table = json.loads(as_json.stdout)  # nothing but the JSON document on stdout
    rows = table["trials"]
    assert len(rows) == 1000
    for trial, row in zip(thousand.sweep.trials, rows, strict=True):
        want = _expected(trial)
        assert row == {"index": trial.index, "trial_id": trial.trial_id, "axes": trial.varying, "job_id": "",
                       **{k: pytest.approx(v) if isinstance(v, float) else v for k, v in want.items()}}
    etas = [r["eta_s"] for r in rows if r["state"] == "running"]
    assert table["summary"] == {"sweep": "thousand", "trials": 1000, "running": 250, "eta_unknown": 0,
                                "counts": {"failed": 125, "finished": 375, "killed": 125, "pending": 125,
                                           "running": 250},
                                "eta_longest_s": max(etas), "eta_total_s": pytest.approx(sum(etas))}
    lines = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(lines) == 1000
    assert list(lines[0]) == ["index", "trial_id", "train.lr", "train.batch_size", "run.seed", "state", "attempts",
                              "step", "steps", "epoch", "epochs", "eta_s", "best_val_bpd", "job_id"]
    for row, line in zip(rows, lines, strict=True):
        assert line["trial_id"] == row["trial_id"] and line["state"] == row["state"]
        assert line["step"] == ("" if row["step"] is None else str(row["step"]))
        assert line["eta_s"] == ("" if row["eta_s"] is None else repr(row["eta_s"]))
        assert float(line["train.lr"]) == row["axes"]["train.lr"]


def _smoke_text() -> str:
    return (REPO / SMOKE).read_text().replace("../configs", str(REPO / "configs"))


def test_status_from_any_folder_reads_the_recorded_store_without_mlflow(tmp_path):
    """Runs in a sqlite store, launcher gone, parent run FINISHED; status run from an empty folder
    with no tracking.uri and no MLFLOW_TRACKING_URI: it reads the store the launch recorded in the
    sweep's run folder, says so, creates nothing there, and reads (and checks the parent's status)
    through sqlite3 alone."""
    store = _store(tmp_path, _smoke_text(), "smoke", "FINISHED")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = ("import json, sys; from jobs.sweep import main; code = main(sys.argv[1:]); "
            "print(json.dumps([code, [m for m in ('mlflow', 'torch', 'ray', 'pandas') if m in sys.modules]]), "
            "file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, "status", str(store.path), *store.overrides], cwd=elsewhere,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert json.loads(proc.stderr.splitlines()[-1]) == [0, []], proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"smoke: MLflow store {store.uri}; run folder {tmp_path / 'runs' / 'smoke'}"
    assert [line.split()[2] for line in lines[2:-1]] == ["running", "finished", "failed", "finished"]
    assert list(elsewhere.iterdir()) == []


def test_status_without_store_or_run_folder_says_so_and_creates_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.sweep", "status", str(REPO / SMOKE)], cwd=tmp_path,
                          env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
                               "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"smoke: MLflow store sqlite:///{tmp_path / 'mlflow.db'} (does not exist); run folder "
                        f"{tmp_path / 'runs' / 'smoke'} (no launch recorded there)")
    assert lines[1].startswith("smoke: no launch recorded and no store found, so every trial shows as pending; if the "
                               "sweep ran from another folder, run status there or pass run.out_dir=")
    assert lines[-1] == "smoke: 4 pending"
    assert list(tmp_path.iterdir()) == []


def test_status_counts_only_trials_with_a_live_attempt(tmp_path):
    """The Ray launcher records every trial it is handed as ``pid:<driver>`` (running while the
    driver lives); with 2 of 4 trials started (their attempt locks held by live processes), status
    says 2 running, 2 pending — not 4 running."""
    sweep = load_sweep(REPO / SMOKE, [f"run.out_dir={tmp_path / 'runs'}"])
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "jobs.sweep"])
    holders = []
    try:
        state = SweepState("smoke", "ray", f"sqlite:///{tmp_path / 'mlflow.db'}", "", "", driver_pid=driver.pid,
                           trials={t.trial_id: TrialJob(t.index, f"pid:{driver.pid}") for t in sweep.trials})
        save_state(tmp_path / "runs" / "smoke", state)
        hold = ("import sys, time; from jobs.run_lock import RunFolderLock; RunFolderLock(sys.argv[1]).acquire(); "
                "print('held', flush=True); time.sleep(120)")
        for trial in sweep.trials[:2]:
            holders.append(subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "runs" / "smoke" / trial.trial_id)],
                                            cwd=REPO, stdout=subprocess.PIPE, text=True))
            assert holders[-1].stdout.readline() == "held\n"
        proc = subprocess.run([sys.executable, "-m", "jobs.sweep", "status", str(REPO / SMOKE), "--json",
                               f"run.out_dir={tmp_path / 'runs'}"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    finally:
        for p in [driver, *holders]:
            p.kill()
            p.wait()
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    assert [r["state"] for r in table["trials"]] == ["running", "running", "pending", "pending"]
    assert table["summary"]["counts"] == {"pending": 2, "running": 2}


def test_status_closes_the_parent_run_of_a_dead_sweep(tmp_path):
    """Launcher and trial processes gone, parent run left RUNNING: status ends it (with mlflow)
    and says so on stderr, so that ``--json`` stays a JSON document."""
    store = _store(tmp_path, _smoke_text(), "smoke", "RUNNING")
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # a PID no process can have
    state = load_state(tmp_path / "runs" / "smoke")
    state.trials = {store.sweep.trials[0].trial_id: TrialJob(0, str(dead))}
    save_state(tmp_path / "runs" / "smoke", state)
    proc = store.status("--json")
    assert proc.returncode == 0, proc.stderr
    states = [r["state"] for r in json.loads(proc.stdout)["trials"]]
    assert states == ["interrupted", "finished", f"failed ({REASON})", "finished"]
    assert proc.stderr.splitlines() == [f"smoke: MLflow store {store.uri}; run folder {tmp_path / 'runs' / 'smoke'}",
                                        f"smoke: all jobs ended; parent run {store.parent} is now FAILED"]
    from mlflow import MlflowClient

    parent = MlflowClient(store.uri).get_run(store.parent)
    assert parent.info.status == "FAILED" and parent.data.tags["rgflow.state"] == "failed"
    assert parent.data.tags["rgflow.failure_reason"] == f"1 of 4 trials failed (2: {REASON})"
    again = store.status()
    assert again.returncode == 0 and "parent run" not in again.stdout  # closed once


def test_slurm_settings_reach_submitit_typed(tmp_path):
    """The backend gets the sweep file's typed ``SlurmSettings``: ``array_parallelism: null``
    (documented as no cap) must not become submitit's default of 256."""
    from jobs.backends.base import SweepContext, TrialResources
    from jobs.backends.slurm_backend import SlurmBackend
    from jobs.sweep_spec import SlurmSettings

    def params(**settings):
        ctx = SweepContext(name="x", sweep_path=str(tmp_path / "x.yaml"), overrides=(), sweep_dir=str(tmp_path),
                           tracking_uri="sqlite:///x.db", experiment_id="1", parent_run_id="p", backend="slurm",
                           settings=SlurmSettings(**settings), resources=TrialResources(2, 1, 3.5, 30))
        return SlurmBackend().executor(ctx)._executor.parameters

    uncapped = params(array_parallelism=None, max_array_size=1000, extra_sbatch=("--exclusive",))
    assert uncapped["array_parallelism"] == 1000
    assert uncapped["additional_parameters"] == {"exclusive": True}
    assert (uncapped["cpus_per_task"], uncapped["gpus_per_node"], uncapped["mem"], uncapped["time"]) == (2, 1, "4GB", 30)
    assert params(array_parallelism=16)["array_parallelism"] == 16


def test_max_failures_is_backend_neutral_and_accepts_its_old_name(tmp_path):
    from jobs.overrides import ConfigError

    assert load_sweep(REPO / SMOKE, []).max_failures == 1  # top-level in smoke.yaml
    assert load_sweep(REPO / SMOKE, ["max_failures=4"]).max_failures == 4
    text = _smoke_text().replace("max_failures: 1\n", "").replace("  max_concurrent_trials: 2\n",
                                                                  "  max_concurrent_trials: 2\n  max_failures: 3\n")
    assert "ray:\n  address: local\n  max_concurrent_trials: 2\n  max_failures: 3\n" in text
    (tmp_path / "old.yaml").write_text(text)
    assert load_sweep(tmp_path / "old.yaml", []).max_failures == 3
    with pytest.raises(ConfigError, match=r"max_failures=-1: must be an integer ≥ 0"):
        load_sweep(REPO / SMOKE, ["max_failures=-1"])
