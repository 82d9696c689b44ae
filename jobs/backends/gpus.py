"""GPUs for trials run as subprocesses on this machine: which are visible, how trials share them.

* :func:`visible_gpus` — the launcher's ``CUDA_VISIBLE_DEVICES`` when set (its entries up to the
  first one that is not a device, as CUDA reads it: ``""`` and ``-1`` hide every GPU), else
  ``nvidia-smi -L`` (one device per ``GPU N:`` line; a GPU split into MIG instances gives its
  ``MIG-…`` UUIDs instead), else ``torch.cuda.device_count()`` in a subprocess (no ``nvidia-smi``,
  e.g. ROCm), else none. torch is never imported in the launcher.
* :func:`gpu_slots` — the device groups that trials asking ``resources.gpus`` GPUs each run on:
  below 1, ``floor(1/gpus)`` slots per GPU, in round-robin order (slot ``i`` is on GPU
  ``i mod n``, so trials spread over the GPUs before they share one); 1 or more, consecutive groups
  of ``gpus`` devices (a remainder stays unused).
* :func:`gpu_pool` — the slots for a launch, or the one-line error when there are fewer than the
  trials run at once; trials asking for no GPU get ``CUDA_VISIBLE_DEVICES=""`` (GPUs hidden).
* :class:`SlotPool` — a starting trial takes the lowest-numbered free slot, its exit frees it.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from jobs.overrides import ConfigError

DEVICE_ENTRY = re.compile(r"^([0-9]+|GPU-\S+|MIG-\S+)$")
NVIDIA_GPU = re.compile(r"^GPU ([0-9]+):")
NVIDIA_MIG = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")
PROBE_TIMEOUT_S = 12.0


def parse_visible_devices(value: str) -> tuple[str, ...]:
    """``'0,1'`` → ``('0', '1')``; entries after the first that is not a device index or
    ``GPU-``/``MIG-`` UUID are ignored, as CUDA does (``'-1'``, ``''``: none)."""
    devices = []
    for entry in (e.strip() for e in value.split(",")):
        if not DEVICE_ENTRY.match(entry):
            break
        devices.append(entry)
    return tuple(devices)


def parse_nvidia_smi(listing: str) -> tuple[str, ...]:
    """The devices of ``nvidia-smi -L`` output: GPU indexes, or the MIG UUIDs of a split GPU."""
    gpus: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        if gpu := NVIDIA_GPU.match(line):
            gpus.append((gpu.group(1), []))
        elif gpus and (mig := NVIDIA_MIG.match(line)):
            gpus[-1][1].append(mig.group(1))
    return tuple(device for index, migs in gpus for device in (migs or [index]))


def visible_gpus(environ: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """``(devices, where they were found)`` for a launcher with environment ``environ``."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"]
        return parse_visible_devices(value), f"CUDA_VISIBLE_DEVICES={value!r}"
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi:
        try:
            done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0:
            return parse_nvidia_smi(done.stdout), "nvidia-smi -L"
    probe = "import torch; print(torch.cuda.device_count())"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              env=dict(environ))
        count = int(done.stdout.strip()) if done.returncode == 0 else 0
    except (OSError, subprocess.TimeoutExpired, ValueError):
        count = 0
    return tuple(str(i) for i in range(count)), "torch.cuda.device_count()" + ("" if smi else ", no nvidia-smi")


def trials_per_gpu(gpus: float) -> int:
    """How many trials of ``gpus`` (< 1) GPUs each share one GPU: ``floor(1/gpus)``."""
    return math.floor(1 / gpus + 1e-9)


def gpu_slots(devices: Sequence[str], gpus: float) -> list[tuple[str, ...]]:
    """The device groups for trials of ``gpus`` GPUs each (``gpus`` > 0; see the module docstring)."""
    if gpus < 1:
        return [(device,) for _ in range(trials_per_gpu(gpus)) for device in devices]
    size = int(gpus)
    return [tuple(devices[i:i + size]) for i in range(0, len(devices) - size + 1, size)]


class SlotPool:
    """The slots of one launch; :meth:`take` the lowest-numbered free one, :meth:`free` it again."""

    def __init__(self, slots: Sequence[tuple[str, ...]]):
        self.slots = list(slots)
        self._busy: set[int] = set()

    def take(self) -> int:
        """The index of the lowest-numbered free slot, now busy (``IndexError`` when none is free)."""
        free = [i for i in range(len(self.slots)) if i not in self._busy]
        if not free:
            raise IndexError(f"all {len(self.slots)} slots are busy")
        self._busy.add(free[0])
        return free[0]

    def free(self, index: int) -> None:
        self._busy.discard(index)

    def visible_devices(self, index: int) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` value of slot ``index`` (``""`` for a CPU slot)."""
        return ",".join(self.slots[index])


def gpu_pool(parallel: int, gpus: float, environ: Mapping[str, str]) -> SlotPool:
    """The slots for ``parallel`` trials at once, each asking ``gpus`` GPUs (``resources.gpus``):
    CPU slots (no device) when ``gpus`` is 0, else :func:`gpu_slots` of :func:`visible_gpus`.
    Fewer slots than ``parallel`` → :class:`ConfigError` (one line naming the keys to change)."""
    if gpus == 0:
        return SlotPool([()] * parallel)
    devices, source = visible_gpus(environ)
    slots = gpu_slots(devices, gpus)
    if not devices:
        raise ConfigError(f"resources.gpus={gpus:g}: the local backend finds no GPU here ({source}): set "
                          "resources.gpus=0 to run the trials on the CPU, or CUDA_VISIBLE_DEVICES to the GPUs to use",
                          "resources.gpus", gpus)
    have = _count(len(devices), "GPU")
    if not slots:
        raise ConfigError(f"resources.gpus={gpus:g}: more GPUs per trial than the {have} here ({source}): "
                          f"lower resources.gpus to {len(devices)} or less", "resources.gpus", gpus)
    if parallel > len(slots):
        share = f", {trials_per_gpu(gpus)} trials per GPU" if gpus < 1 else ""
        raise ConfigError(f"local.parallel={parallel}: more trials at once than the {_count(len(slots), 'GPU slot')} "
                          f"here ({have} from {source}, resources.gpus={gpus:g} per trial{share}): "
                          f"set local.parallel={len(slots)} or less, or lower resources.gpus", "local.parallel", parallel)
    return SlotPool(slots)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
