"""The attempt contract (``jobs.attempt``) and the run-folder lock (``jobs.run_lock``): exit codes,
the one retry rule, re-run plans, sweep end states; locks held by real processes."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest

from jobs.attempt import (
    CODE_OF, STATE_OF, Action, ExitCode, death_reason, exit_code, next_action, plan_trial, sweep_end_state, trial_state,
)
from jobs.run_lock import DRIVER_LOCK, RunFolderLock, RunFolderLocked, holder_alive, read_holder


@dataclass
class _Run:
    status: str
    tags: dict = field(default_factory=dict)
    state: str = ""
    run_id: str = "r"


@dataclass
class _Trial:
    index: int
    trial_id: str


def test_exit_codes_are_one_table():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 75, 130]
    assert set(STATE_OF) == set(ExitCode)
    for state, code in CODE_OF.items():
        assert STATE_OF[code] == ("finished" if state == "pruned" else state)  # pruned: exit 0, done for good
    assert exit_code(75) is ExitCode.PREEMPTED and exit_code(-9) is None and exit_code(137) is None


def test_death_reasons_name_the_signal():
    assert death_reason(-signal.SIGKILL) == "killed by SIGKILL (signal 9) — out of memory?"
    assert death_reason(-signal.SIGSEGV) == "killed by SIGSEGV (signal 11)"
    assert death_reason(137) == "killed by SIGKILL (signal 9) — out of memory?"  # a shell's 128 + 9
    assert death_reason(42) == "exited with code 42 (not a jobs.train exit code)"


@pytest.mark.parametrize(("code", "failures", "stopping", "action"), [
    (ExitCode.FINISHED, 0, False, Action.DONE),
    (ExitCode.LOCKED, 0, False, Action.DONE),
    (ExitCode.BAD_INPUT, 0, False, Action.STOP_SWEEP),
    (ExitCode.KILLED, 0, False, Action.STOP_SWEEP),
    (ExitCode.PREEMPTED, 5, False, Action.REQUEUE),  # preemption is never a failure
    (ExitCode.PREEMPTED, 0, True, Action.DONE),
    (ExitCode.FAILED, 2, False, Action.RETRY),  # 2 failures, max 2: one more try
    (ExitCode.FAILED, 3, False, Action.GIVE_UP),
    (ExitCode.FAILED, 1, True, Action.DONE),
    (None, 1, False, Action.RETRY),  # killed by a signal: counted as a failure by the caller
    (None, 3, False, Action.GIVE_UP),
])
def test_next_action_is_the_one_retry_rule(code, failures, stopping, action):
    assert next_action(code, failures, max_failures=2, stopping=stopping) is action


def test_plan_trial_evaluates_finished_trials_without_an_evaluation():
    evals = ("test_bpd",)
    assert plan_trial(_Run("FINISHED", {"rgflow.eval.protocol": "x"}), None, 1, evals, 0).launch is False
    missing = plan_trial(_Run("FINISHED"), None, 1, evals, 0)
    assert missing.launch and missing.state == "finished" and "not evaluated" in missing.why
    assert plan_trial(_Run("FINISHED"), None, 1, (), 0).launch is False  # no evaluation asked for
    assert plan_trial(None, "17_2", 1, evals, 0) .state == "running"
    assert plan_trial(_Run("FAILED"), None, 1, evals, 2).launch is False
    assert plan_trial(_Run("FAILED"), None, 1, evals, 1).launch is True
    assert plan_trial(_Run("RUNNING"), None, 1, evals, 0).launch is True


def test_sweep_end_state_and_trial_state():
    trials = [_Trial(0, "a"), _Trial(1, "b")]
    assert sweep_end_state(trials, {"a": _Run("FINISHED"), "b": _Run("FINISHED")}) == ("finished", None)
    state, reason = sweep_end_state(trials, {"a": _Run("FINISHED"), "b": _Run("FAILED", {"rgflow.failure_reason": "boom"})})
    assert state == "failed" and reason == "1 of 2 trials failed (1: boom)"
    assert sweep_end_state(trials, {"a": _Run("FINISHED")}, {"b": "failed"})[1].endswith("(1: rejected its input (no run))")
    assert sweep_end_state(trials, {"a": _Run("KILLED")}) == ("killed", "2 of 2 trials unfinished")
    evaluated = _Run("FINISHED", {"rgflow.eval.protocol": "p"})
    both = {"a": evaluated, "b": _Run("FINISHED")}
    assert sweep_end_state(trials, both) == ("finished", None)  # no evaluation asked for
    state, reason = sweep_end_state(trials, both, evaluations=("test_bpd",))
    assert state == "failed" and reason.startswith("1 of 2 trials finished but their evaluation did not complete")
    assert sweep_end_state(trials, {"a": evaluated, "b": evaluated}, evaluations=("test_bpd",)) == ("finished", None)
    assert trial_state("RUNNING", None) == "running"
    assert trial_state("PENDING", _Run("KILLED", state="preempted")) == "preempted"
    assert trial_state("CANCELLED", _Run("RUNNING")) == "killed"
    assert trial_state("OUT_OF_MEMORY", _Run("RUNNING")) == "failed"


HOLDER = textwrap.dedent("""
    import sys, time
    from jobs.run_lock import RunFolderLock
    with RunFolderLock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("name", ["attempt.lock", DRIVER_LOCK])
def test_a_held_folder_refuses_a_second_holder_naming_the_first(tmp_path, name):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), name], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert holder_alive(tmp_path, name) is True
        with pytest.raises(RunFolderLocked, match=rf"pid {proc.pid}\b") as err:
            RunFolderLock(tmp_path, name).acquire(tries=2)
        assert err.value.holder.pid == proc.pid
        proc.kill()  # however it dies, the kernel drops the lock
        proc.wait()
        assert holder_alive(tmp_path, name) is False
        assert read_holder(tmp_path, name).pid == proc.pid  # who held it last stays readable
        with RunFolderLock(tmp_path, name):
            assert holder_alive(tmp_path, name) is True
            assert read_holder(tmp_path, name).pid != proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_on_another_host_cannot_be_judged(tmp_path):
    (tmp_path / "attempt.lock").write_text('{"host": "elsewhere", "pid": 1, "boot_id": "x", "job_id": "7_1", '
                                           '"started": 0}\n')
    assert holder_alive(tmp_path) is None
    assert holder_alive(tmp_path / "never-held") is False
