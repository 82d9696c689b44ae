"""``python -m jobs.sweep``: dry-run, overrides that change an axis, status of a fresh sweep, CLI
errors (one line, exit 2, nothing created), and the pure pieces (state file, progress line, plan,
Slurm job tables)."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pytest

from jobs.progress import Counts, Progress, count_states, format_line
from jobs.sweep import format_rows, main, plan, sbatch_options, summarize
from jobs.sweep_state import StateError, SweepState, TrialJob, load_state, save_state
from jobs.sweep_spec import load_sweep
from jobs.backends.slurm_backend import parse_job_table
from tests.fixtures.sweep import REPO, SMOKE


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
    assert "GPU-h" in proc.stdout
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
    (("status", SMOKE, "--wait"), "--dry-run and --wait apply to 'run', not 'status'"),
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
    assert summarize(sweep, runs) == ("failed", summarize(sweep, runs)[1])
    assert summarize(sweep, {t: _Run("FINISHED") for t in (a, b, c, d)}) == ("finished", None)


def test_slurm_job_tables_and_sbatch_flags():
    table = "41_0|COMPLETED\n41_[1-3%2]|PENDING\n42|CANCELLED by 0\n\n"
    assert parse_job_table(table) == {"41_0": "COMPLETED", "41_1": "PENDING", "41_2": "PENDING", "41_3": "PENDING",
                                      "42": "CANCELLED"}
    assert sbatch_options(("--exclusive", "--nodelist=n1")) == {"exclusive": True, "nodelist": "n1"}
    rows = [{"index": 0, "trial_id": "abc", "state": "failed (nan loss)", "attempts": 2, "best_val_bpd": 5.5,
             "job_id": "41_0"}]
    header, line = format_rows(rows).splitlines()
    assert header.split() == ["index", "trial", "id", "state", "attempts", "best", "val_bpd", "job", "id"]
    assert line.split() == ["0", "abc", "failed", "(nan", "loss)", "2", "5.5000", "41_0"]
