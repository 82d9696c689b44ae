"""GPU pinning of the local backend: the slot arithmetic as pure functions, GPU discovery through a
real ``nvidia-smi`` stand-in and a real torch probe, and real trial processes launched by
``LocalBackend.launch`` that record the ``CUDA_VISIBLE_DEVICES`` they were given."""
from __future__ import annotations

import io
import json
import os
import sys
import time

import pytest

from jobs.backends import local_backend
from jobs.backends.base import ProgressTracker, SweepContext, TrialResources, TrialTask
from jobs.backends.gpus import (
    SlotPool, gpu_pool, gpu_slots, parse_nvidia_smi, parse_visible_devices, trials_per_gpu, visible_gpus,
)
from jobs.overrides import ConfigError
from jobs.progress import Progress
from jobs.sweep_state import SweepState
from jobs.sweep_spec import LocalSettings

NVIDIA_SMI_MIG = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
  MIG 3g.40gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
  MIG 3g.40gb     Device  1: (UUID: MIG-ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-2222-3333-4444-555555555555)
"""


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("devices, gpus, slots", [
    (["0", "1"], 1, [("0",), ("1",)]),
    (["0", "1"], 0.5, [("0",), ("1",), ("0",), ("1",)]),            # round-robin: spread before sharing
    (["0", "1"], 0.3, [("0",), ("1",)] * 3),                        # floor(1/0.3) = 3 per GPU
    (["0"], 1 / 3, [("0",)] * 3),
    (["0"], 0.7, [("0",)]),
    (["0", "1", "2", "3"], 2, [("0", "1"), ("2", "3")]),
    (["0", "1", "2"], 2, [("0", "1")]),                              # a remainder stays unused
    (["0"], 2, []),
    ([], 1, []),
])
def test_gpu_slots(devices, gpus, slots):
    assert gpu_slots(devices, gpus) == slots


def test_trials_per_gpu_is_the_floor_of_the_inverse():
    assert [trials_per_gpu(g) for g in (0.5, 0.25, 0.2, 0.1, 0.3, 0.9)] == [2, 4, 5, 10, 3, 1]


@pytest.mark.parametrize("value, devices", [
    ("0,1", ("0", "1")), (" 2 , 3 ", ("2", "3")), ("", ()), ("-1", ()), ("1,-1,2", ("1",)), ("NoDevFiles", ()),
    ("GPU-1234,MIG-abcd", ("GPU-1234", "MIG-abcd")),
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, devices):
    assert parse_visible_devices(value) == devices


def test_nvidia_smi_listing_gives_gpu_indexes_and_mig_instances():
    assert parse_nvidia_smi(NVIDIA_SMI_MIG) == ("MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                                                "MIG-ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee", "1")
    assert parse_nvidia_smi("GPU 0: A (UUID: GPU-a)\nGPU 1: B (UUID: GPU-b)\n") == ("0", "1")
    assert parse_nvidia_smi("No devices were found\n") == ()


def test_slot_pool_takes_the_lowest_free_slot_and_frees_it():
    pool = SlotPool(gpu_slots(["0", "1"], 0.5))
    taken = [pool.take() for _ in range(3)]
    assert taken == [0, 1, 2] and [pool.visible_devices(i) for i in taken] == ["0", "1", "0"]
    pool.free(1)
    assert pool.visible_devices(pool.take()) == "1"  # the freed GPU, not a third trial on GPU 0
    assert pool.take() == 3
    with pytest.raises(IndexError):
        pool.take()
    assert SlotPool(gpu_slots(["0", "1"], 2)).visible_devices(0) == "0,1"


def test_cpu_trials_get_no_gpu_and_any_parallelism():
    pool = gpu_pool(8, 0, {})
    assert len(pool.slots) == 8 and {pool.visible_devices(pool.take()) for _ in range(8)} == {""}


@pytest.mark.parametrize("parallel, gpus, visible, message", [
    (3, 1, "0,1", "local.parallel=3: more trials at once than the 2 GPU slots here (2 GPUs from "
                  "CUDA_VISIBLE_DEVICES='0,1', resources.gpus=1 per trial): set local.parallel=2 or less, or lower "
                  "resources.gpus"),
    (5, 0.5, "0,1", "local.parallel=5: more trials at once than the 4 GPU slots here (2 GPUs from "
                    "CUDA_VISIBLE_DEVICES='0,1', resources.gpus=0.5 per trial, 2 trials per GPU): set local.parallel=4 "
                    "or less, or lower resources.gpus"),
    (1, 4, "0,1", "resources.gpus=4: more GPUs per trial than the 2 GPUs here (CUDA_VISIBLE_DEVICES='0,1'): lower "
                  "resources.gpus to 2 or less"),
    (1, 1, "", "resources.gpus=1: the local backend finds no GPU here (CUDA_VISIBLE_DEVICES=''): set "
               "resources.gpus=0 to run the trials on the CPU, or CUDA_VISIBLE_DEVICES to the GPUs to use"),
])
def test_more_parallel_trials_than_gpu_slots_is_one_line(parallel, gpus, visible, message):
    with pytest.raises(ConfigError) as info:
        gpu_pool(parallel, gpus, {"CUDA_VISIBLE_DEVICES": visible})
    assert str(info.value) == message


# ----------------------------------------------------------------------------------------------
# Discovery with real processes
# ----------------------------------------------------------------------------------------------

def test_gpus_are_counted_with_nvidia_smi_when_cuda_visible_devices_is_unset(tmp_path):
    listing = tmp_path / "listing.txt"
    listing.write_text(NVIDIA_SMI_MIG)
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] && exec cat {listing}\nexit 9\n")
    smi.chmod(0o755)
    devices, source = visible_gpus({"PATH": str(tmp_path)})
    assert source == "nvidia-smi -L" and len(devices) == 3 and devices[2] == "1"
    assert visible_gpus({"PATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": "3"}) == (("3",), "CUDA_VISIBLE_DEVICES='3'")


def test_without_nvidia_smi_torch_counts_the_gpus_in_a_subprocess(tmp_path):
    import torch

    devices, source = visible_gpus({"PATH": str(tmp_path)})  # an empty PATH: no nvidia-smi
    assert source == "torch.cuda.device_count(), no nvidia-smi"
    assert devices == tuple(str(i) for i in range(torch.cuda.device_count()))


# ----------------------------------------------------------------------------------------------
# Real trial processes
# ----------------------------------------------------------------------------------------------

CHILD = """
import json, os, sys, time
start = time.time()
time.sleep(float(sys.argv[3]))
with open(os.path.join(sys.argv[1], sys.argv[2] + ".json"), "w") as out:
    json.dump({"devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}, out)
"""


def _launch(tmp_path, monkeypatch, n_trials: int, parallel: int, gpus: float, seconds: float = 0.8):
    """``LocalBackend.launch`` of ``n_trials`` real child processes that record their environment."""
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    monkeypatch.setattr(local_backend, "trial_command",
                        lambda ctx, index: [sys.executable, "-c", CHILD, str(records), str(index), str(seconds)])
    monkeypatch.setattr(local_backend, "_run_bpd", lambda ctx, trial_id: None)  # no tracking store here
    ctx = SweepContext(name="gpus", sweep_path=str(tmp_path / "sweep.yaml"), overrides=(),
                       sweep_dir=str(tmp_path / "sweep"), tracking_uri="sqlite:///unused.db", experiment_id="1",
                       parent_run_id="p", backend="local", settings=LocalSettings(parallel=parallel),
                       resources=TrialResources(cpus=1, gpus=gpus))
    tasks = [TrialTask(i, f"trial{i:07d}", None, str(tmp_path / f"run{i}")) for i in range(n_trials)]
    progress = Progress("gpus", stream=io.StringIO(), enabled=False)
    tracker = ProgressTracker(progress, {t.trial_id: "pending" for t in tasks})
    state = SweepState("gpus", "local", ctx.tracking_uri, "1", "p")
    result = local_backend.LocalBackend().launch(ctx, tasks, tracker, state, wait=True)
    seen = {i: json.loads((records / f"{i}.json").read_text()) for i in range(n_trials)}
    return result, seen, tmp_path / "sweep" / "logs"


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_each_trial_process_runs_on_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    result, seen, logs = _launch(tmp_path, monkeypatch, n_trials=4, parallel=2, gpus=1)
    assert set(result.states.values()) == {"finished"}
    assert seen[0]["devices"] == "0" and seen[1]["devices"] == "1"  # the first two start together
    assert {s["devices"] for s in seen.values()} == {"0", "1"}
    for i in seen:
        for j in seen:
            if i < j and _overlap(seen[i], seen[j]):
                assert seen[i]["devices"] != seen[j]["devices"], (i, j, seen)
    first = (logs / "trial-0001.log").read_text().splitlines()[0]
    assert first == "local backend: trial 1 starts with CUDA_VISIBLE_DEVICES=1 (GPU slot 1 of 2)"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # the launcher's own environment is untouched


def test_fractional_gpus_share_a_gpu_up_to_floor_of_one_over_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    result, seen, _ = _launch(tmp_path, monkeypatch, n_trials=6, parallel=4, gpus=0.5)
    assert [seen[i]["devices"] for i in range(4)] == ["0", "1", "0", "1"]
    for s in seen.values():  # at any trial's start, at most 2 trials (itself and one more) run on its GPU
        running = [t for t in seen.values() if t["devices"] == s["devices"] and t["start"] <= s["start"] < t["end"]]
        assert len(running) <= 2, seen


def test_trials_asking_for_no_gpu_see_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    _, seen, logs = _launch(tmp_path, monkeypatch, n_trials=2, parallel=2, gpus=0, seconds=0.1)
    assert [s["devices"] for s in seen.values()] == ["", ""]
    first = (logs / "trial-0000.log").read_text().splitlines()[0]
    assert first == "local backend: trial 0 starts with CUDA_VISIBLE_DEVICES= (resources.gpus=0: GPUs hidden)"


def test_too_many_parallel_trials_start_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    started = time.time()
    with pytest.raises(ConfigError, match=r"^local\.parallel=3: more trials at once than the 2 GPU slots here"):
        _launch(tmp_path, monkeypatch, n_trials=3, parallel=3, gpus=1)
    assert list((tmp_path / "records").iterdir()) == [] and not (tmp_path / "sweep").exists()
    assert time.time() - started < 5
