"""Preflight: everything a sweep needs that can be checked before it costs GPU-hours.

:func:`preflight` (``python -m jobs.sweep`` runs it for ``--dry-run`` and before a launch creates
anything) returns every :class:`Problem` at once, each one line saying what is wrong and how to
fix it. ``error`` problems are fatal (the sweep would fail or never run: exit 2, nothing created);
``warning`` problems are printed and the launch goes on. The checks:

* **data** — for each data set of the sweep: CelebA's folder (``data.celeba_dir``, else
  ``$RGFLOW_CELEBA_DIR``, else ``<data.root>/celeba``) with ``img_align_celeba/`` and
  ``list_eval_partition.txt`` (the first and last image of each split present), or a built cache; MSDS's
  cache, or a writable ``data.root`` with room to build it (uint8 ``N×3×32×32`` images plus
  float32 ``N×16×6`` labels, N = 100,000);
* **fid** — the Inception weights (``jobs.fid.resolve_weights``) when the sweep asks for FID;
* **tracking** — the store of the launcher's tracking URI: sqlite (its folder exists and is
  writable; a warning when trials run on other nodes: Slurm, or Ray with a cluster address),
  ``http(s)`` (``GET /health`` answered within :data:`HTTP_TIMEOUT_S`, with the credentials and TLS
  settings of ``jobs.tracking.rest_read``; URIs are printed redacted), a file store (its folder);
  other stores are not checked (a warning);
* **resources** — a sweep whose trials could never start is refused within 30 s. Slurm: ``sinfo``
  answers (within :data:`SINFO_TIMEOUT_S`) in a form that parses, the partition (``slurm.partition``,
  else the default one) exists and its nodes have the GPUs (GRES ``gpu``; none on the whole cluster
  is said so), CPUs, memory and time limit a trial asks for;
  local: the GPU slots for ``local.parallel`` trials (``jobs.backends.gpus.gpu_pool``, as the
  backend itself); Ray started here (``ray.address=local``): this machine has the CPUs, memory and
  GPUs one trial asks for; a Ray cluster: reachable (TCP), and one alive node has the CPUs, GPUs and
  memory of a trial (``ray.nodes()``, read by a short-lived driver in a child process);
  ``run.device=cuda`` with no GPU given to the trial (every backend hides the GPUs then);
* **dashboard** — ``ray.dashboard=true`` with Ray started here: the packages Ray's dashboard imports
  (``ray[default]``, :data:`DASHBOARD_MODULES`) are installed — found, not imported, Ray not started;
* **scheduler** — ``tune.scheduler``'s first rung (``grace_images``, or ``grace_epochs`` × the
  trial's training split) is no shorter than each trial's warm-up in images (``train.warmup_steps ×
  train.batch_size``): an error per batch size and warm-up, else warm-up arms are pruned by construction;
* **time** — each trial's estimated time (``jobs.dryrun``) against its limit (``slurm.time_min`` on
  Slurm, else ``resources.time_limit_min``): a warning (trials resume from their checkpoints);
* **disk** — the checkpoints of all trials (parameters × 4 bytes × 3 — weights and AdamW's two
  moments — per file, ``train.keep_last`` + 1 best files per trial, less what each trial's
  checkpoint folder holds already) against the free space of ``run.out_dir``.

Nothing is created: no folder, no database, no MLflow experiment; mlflow is not imported.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jobs.dryrun import Estimate, estimates, flow_parameters, split_sizes, trial_gpus
from jobs.sweep_spec import Sweep

LEVELS = ("error", "warning")
HTTP_TIMEOUT_S = 3.0
RAY_PROBE_TIMEOUT_S = 25.0  # s: connecting a driver takes a few seconds; a sweep that cannot run fails within 30 s
RAY_TIMEOUT_S = 3.0
SINFO_TIMEOUT_S = 15.0
SINFO_FORMAT = "%P|%G|%c|%m|%l"  # partition (default: *), GRES, CPUs, memory (MB), time limit
CHECKPOINT_COPIES = 3  # weights + AdamW's two moments, float32 each
MSDS_BYTES_PER_IMAGE = 3 * 32 * 32 + 16 * 6 * 4  # uint8 image + float32 labels
CELEBA_BYTES_PER_IMAGE = 3 * 32 * 32
#: What Ray 2.60's dashboard imports before it starts (``ray/dashboard/optional_deps.py``), parents first.
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "opentelemetry.exporter.prometheus",
                     "opentelemetry.proto", "prometheus_client", "pydantic")


@dataclass(frozen=True)
class Problem:
    """``level`` ``error`` (fatal) or ``warning``; ``key`` the check (``data``, ``fid``, ``tracking``,
    ``resources``, ``dashboard``, ``scheduler``, ``time``, ``disk``); ``message`` one line: what is wrong and how to fix it."""

    level: str
    key: str
    message: str

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Problem.level={self.level!r}: must be one of {', '.join(LEVELS)}")
        object.__setattr__(self, "message", " ".join(self.message.split()))

    @property
    def fatal(self) -> bool:
        return self.level == "error"

    def __str__(self) -> str:
        return f"preflight {self.level} [{self.key}]: {self.message}"


def _error(key: str, message: str) -> Problem:
    return Problem("error", key, message)


def _warning(key: str, message: str) -> Problem:
    return Problem("warning", key, message)


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.0f} MB" if nbytes < 1e9 else f"{nbytes / 1e9:,.1f} GB"


def _ranges(indexes: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2, 5``."""
    out, start = [], None
    for i, n in enumerate(indexes):
        if start is None:
            start = n
        if i + 1 == len(indexes) or indexes[i + 1] != n + 1:
            out.append(str(n) if n == start else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _room(folder: Path, nbytes: int) -> str | None:
    """Why ``nbytes`` cannot be written under ``folder`` (created if missing), or ``None``."""
    base = _existing_ancestor(folder)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        return f"{base} is not a writable folder"
    free = shutil.disk_usage(base).free
    if free < nbytes:
        return f"it needs {_mb(nbytes)}, only {_mb(free)} are free on {base}"
    return None


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def _cache_ready(path: Path, identity: dict) -> bool:
    """Whether ``path`` holds a cache built for ``identity`` with every file at its size (the
    checksums are verified by the trials themselves)."""
    from rgflow.data import cache

    try:
        manifest = cache.read_manifest(path)
    except cache.CacheInvalid:
        return False
    if manifest.get("format") != cache.FORMAT or manifest.get("identity") != identity:
        return False
    files = manifest.get("files") or {}
    return bool(files) and all((path / name).is_file() and (path / name).stat().st_size == info.get("bytes")
                               for name, info in files.items())


def _check_msds(data) -> list[Problem]:
    from rgflow.data import msds, splits

    path = splits.cache_path(data)
    if _cache_ready(path, splits.msds_identity(data.name, data.seed, dict(msds.SPLIT_COUNTS))):
        return []
    why = _room(path.parent, sum(msds.SPLIT_COUNTS.values()) * MSDS_BYTES_PER_IMAGE)
    if why is None:
        return []
    return [_error("data", f"data.name={data.name}: the cache {path} is missing and cannot be built there ({why}); "
                           f"set data.root to a writable folder with room, or build it once elsewhere with "
                           f"'python -m rgflow.data {data.name} --seed {data.seed} --root DIR' and set data.root=DIR")]


def _celeba_images(data) -> tuple[Path, int]:
    """(partition file, number of listed images) of the CelebA folder, with the first and last
    image of each split present; raises ``CelebAMissing`` (one line) otherwise."""
    from rgflow.data import celeba

    folder, source = celeba.resolve_dir(data.celeba_dir, data.root)
    partition = celeba.check_dir(folder, source)
    try:
        listed = celeba.read_partition(partition)
    except ValueError as err:
        raise celeba.CelebAMissing(f"CelebA's partition file is malformed ({err}); fix that line, or "
                                   f"{celeba.OBTAIN}") from None
    count = sum(map(len, listed.values()))
    if not count:
        raise celeba.CelebAMissing(f"CelebA's {partition.resolve()} lists no images; {celeba.OBTAIN}")
    celeba.check_images(folder, [n for names in listed.values() for n in names[:1] + names[-1:]])
    return partition, count


def _check_celeba(data) -> list[Problem]:
    from rgflow.data import cache, celeba, splits

    path = splits.cache_path(data)
    try:
        partition, count = _celeba_images(data)
    except celeba.CelebAMissing as missing:
        try:   # no folder: a cache built from it earlier is enough (as rgflow.data.splits.ensure_celeba)
            have = cache.read_manifest(path)["identity"]["partition_sha256"]
        except (cache.CacheInvalid, KeyError, TypeError):
            return [_error("data", str(missing))]
        if _cache_ready(path, splits.celeba_identity(data.interpolation, have)):
            return []
        return [_error("data", f"{missing} (the cache {path} cannot be used instead: it is incomplete or was built "
                               "for other settings)")]
    if _cache_ready(path, splits.celeba_identity(data.interpolation, celeba.partition_sha256(partition))):
        return []
    why = _room(path.parent, count * CELEBA_BYTES_PER_IMAGE)
    if why is None:
        return []
    return [_error("data", f"data.name=celeba: the cache {path} is missing and cannot be built there ({why}); set "
                           "data.root to a writable folder with room")]


def check_data(sweep: Sweep) -> list[Problem]:
    """Each distinct data set of the sweep is present or can be built (see module docstring)."""
    seen = {}
    for trial in sweep.trials:
        d = trial.config.data
        key = (d.name, str(Path(d.root).resolve()), d.seed if d.name != "celeba" else None, d.celeba_dir,
               d.interpolation if d.name == "celeba" else None)
        seen.setdefault(key, d)
    problems = []
    for data in seen.values():
        problems += _check_celeba(data) if data.name == "celeba" else _check_msds(data)
    return problems


# ----------------------------------------------------------------------------------------------
# fid
# ----------------------------------------------------------------------------------------------

def check_fid(sweep: Sweep) -> list[Problem]:
    """The Inception weights exist when the sweep's evaluation includes FID."""
    if "fid" not in sweep.evaluation.selected:
        return []
    from jobs.fid import FidUnavailable, resolve_weights

    problems = []
    for configured in dict.fromkeys(t.config.eval.fid_weights for t in sweep.trials):
        try:
            resolve_weights(configured)
        except FidUnavailable as err:
            why = str(err).removeprefix("FID skipped: ")
            problems.append(_error("fid", f"the sweep asks for FID (evaluation.fid=true) but {why}; "
                                          "or run without FID: evaluation.fid=false"))
    return problems


# ----------------------------------------------------------------------------------------------
# tracking
# ----------------------------------------------------------------------------------------------

def multi_node(sweep: Sweep) -> bool:
    """Whether trials may run on other machines than the launcher."""
    return sweep.backend == "slurm" or (sweep.backend == "ray" and sweep.ray.address != "local")


def _folder_problem(folder: Path, existing_file: Path | None = None) -> str | None:
    if existing_file is not None and existing_file.exists():
        if not os.access(existing_file, os.R_OK | os.W_OK):
            return f"{existing_file} is not readable and writable"
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


def check_tracking(sweep: Sweep) -> list[Problem]:
    """The launcher's tracking store is reachable (see module docstring); sqlite across nodes warns."""
    from jobs.tracking.uri import redact_uri, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(sweep.first_config.tracking.uri)
    shown = redact_uri(uri)
    fix = "set tracking.uri (or MLFLOW_TRACKING_URI) to a reachable store"
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        db = sqlite_path(uri)
        if db is None:
            return [_error("tracking", f"tracking store {shown}: an in-memory store is not shared with the trials; "
                                       f"{fix}")]
        why = _folder_problem(db.parent, db)
        problems = [_error("tracking", f"tracking store {shown}: {why}; create the folder or {fix}")] if why else []
        if multi_node(sweep):
            where = "backend=slurm" if sweep.backend == "slurm" else f"ray.address={sweep.ray.address}"
            problems.append(_warning("tracking", f"tracking store {shown} with {where}: trials on other nodes need "
                                                 "this file on a shared filesystem, and sqlite locking over NFS is "
                                                 "unreliable; run an MLflow server (mlflow/server.sh start) and set "
                                                 "tracking.uri=http://HOST:PORT"))
        return problems
    if scheme in ("http", "https"):
        from jobs.tracking.rest_read import health

        why = health(uri, HTTP_TIMEOUT_S)
        if why is None:
            return []
        return [_error("tracking", f"tracking server {shown} {why}; start it (mlflow/server.sh start) or {fix}")]
    if scheme in ("", "file"):
        folder = Path(urlsplit(uri).path if scheme == "file" else uri).resolve()
        why = _folder_problem(_existing_ancestor(folder))
        return [_error("tracking", f"tracking store {shown}: {why}; {fix}")] if why else []
    return [_warning("tracking", f"tracking store {shown} was not checked (only sqlite, file and http(s) stores are); "
                                 "make sure the launcher and every trial can reach it")]


# ----------------------------------------------------------------------------------------------
# resources
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """What ``sinfo`` says of one partition: the largest node's GPUs (GRES ``gpu``), CPUs and
    memory (MB), the time limit (minutes, ``None``: unlimited), and whether it is the default."""

    name: str
    default: bool
    gpus: int
    cpus: int
    memory_mb: int
    time_limit_min: int | None


_GPU_GRES = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def slurm_minutes(text: str) -> int | None:
    """A Slurm time (``infinite``, ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in
    whole minutes; ``None`` for no limit. Raises ``ValueError`` for anything else."""
    if text.lower() in ("infinite", "unlimited"):
        return None
    days, dash, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = [int(p) for p in clock.split(":")]
    if dash:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return int(days) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


def _leading_int(text: str) -> int:
    """``'64+'`` (sinfo's "at least") → 64; no digits → 0."""
    digits = re.match(r"\d+", text)
    return int(digits.group()) if digits else 0


def parse_sinfo(text: str) -> dict[str, Partition]:
    """``sinfo -h -o '%P|%G|%c|%m|%l'`` output → partitions by name (nodes of one partition merged:
    the largest of each); lines without those five fields are skipped."""
    out: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        name, gres, cpus, memory, limit = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = max((int(n) for n in _GPU_GRES.findall(gres)), default=0)
        try:
            minutes = slurm_minutes(limit)
        except (ValueError, KeyError):
            minutes = None
        old = out.get(name)
        if old:
            longest = None if None in (old.time_limit_min, minutes) else max(old.time_limit_min, minutes)
            out[name] = Partition(name, old.default or default, max(old.gpus, gpus), max(old.cpus, _leading_int(cpus)),
                                  max(old.memory_mb, _leading_int(memory)), longest)
        else:
            out[name] = Partition(name, default, gpus, _leading_int(cpus), _leading_int(memory), minutes)
    return out


def _check_slurm(sweep: Sweep) -> list[Problem]:
    s = sweep.slurm
    if shutil.which("sinfo") is None:
        partition = s.partition or "(default)"
        return [_warning("resources", f"backend=slurm: sinfo is not on PATH, so slurm.partition={partition} and its "
                                      "GPUs were not checked; launch from a Slurm login node (sbatch, squeue, sacct, "
                                      "sinfo)")]
    try:
        done = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True,
                              timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [_error("resources", f"backend=slurm: sinfo gave no answer within {SINFO_TIMEOUT_S:g} s; is the Slurm "
                                    "controller up (SLURM_CONF)?")]
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[:200]
        return [_error("resources", f"backend=slurm: sinfo failed (exit {done.returncode}: {detail}); is the Slurm "
                                    "controller up (SLURM_CONF)?")]
    partitions = parse_sinfo(done.stdout)
    if done.stdout.strip() and not partitions:
        first = " ".join(done.stdout.strip().splitlines()[0].split())[:120]
        return [_error("resources", f"backend=slurm: cannot parse the partitions sinfo lists (expected "
                                    f"'{SINFO_FORMAT}' fields, got {first!r}); check the Slurm client "
                                    "(sinfo --version) and SLURM_CONF")]
    names = ", ".join(sorted(partitions)) or "none"
    if s.partition:
        wanted = [p.strip() for p in s.partition.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in partitions]
        if unknown:
            return [_error("resources", f"slurm.partition={s.partition}: no partition {', '.join(unknown)} on this "
                                        f"cluster (partitions: {names}); set slurm.partition to one of them")]
        chosen = [partitions[p] for p in wanted]
    else:
        chosen = [p for p in partitions.values() if p.default]
        if not chosen:
            return [_error("resources", f"slurm.partition is not set and this cluster has no default partition "
                                        f"(partitions: {names}); set slurm.partition")]
    problems = []
    gpus, cpus, mem_gb, minutes = s.gpus_per_trial or 0, s.cpus_per_trial or 1, s.mem_gb, s.time_min
    label = f"slurm.partition={s.partition}" if s.partition else f"the default partition {chosen[0].name}"
    if gpus and not any(p.gpus for p in partitions.values()):
        problems.append(_error("resources", f"trials ask for {gpus} GPU(s) (slurm.gpus_per_trial) but no node of this "
                                            f"cluster has GPUs (no GRES gpu in any partition: {names}): the jobs "
                                            "would never start; set resources.gpus=0 (and run.device=cpu) or use "
                                            "a cluster with GPUs"))
    elif gpus and not any(p.gpus >= gpus for p in chosen):
        have = ", ".join(f"{p.name}: {p.gpus}" for p in chosen)
        problems.append(_error("resources", f"trials ask for {gpus} GPU(s) (slurm.gpus_per_trial) but the nodes of "
                                            f"{label} have at most {have} (GRES gpu); choose a GPU partition "
                                            "(slurm.partition) or set resources.gpus=0"))
    if not any(p.cpus >= cpus for p in chosen):
        problems.append(_error("resources", f"trials ask for {cpus} CPUs (slurm.cpus_per_trial) but the nodes of "
                                            f"{label} have at most {max(p.cpus for p in chosen)}; lower "
                                            "resources.cpus"))
    if mem_gb and not any(p.memory_mb >= mem_gb * 1024 for p in chosen):
        most = max(p.memory_mb for p in chosen) / 1024
        problems.append(_error("resources", f"trials ask for {mem_gb:g} GB (slurm.mem_gb) but the nodes of {label} "
                                            f"have at most {most:.1f} GB; lower resources.memory_gb"))
    if minutes and not any(p.time_limit_min is None or p.time_limit_min >= minutes for p in chosen):
        longest = max(p.time_limit_min for p in chosen)
        problems.append(_error("resources", f"slurm.time_min={minutes} is over the time limit of {label} ({longest} "
                                            f"min): the jobs would never start; set slurm.time_min={longest} or less"))
    return problems


def _check_this_machine(sweep: Sweep) -> list[Problem]:
    """Ray started here: this machine has the CPUs, memory and GPUs one trial asks for; the local
    backend: the GPU slots its trials need (:func:`jobs.backends.gpus.gpu_pool`, as the backend)."""
    from jobs.backends.gpus import gpu_pool, visible_gpus
    from jobs.overrides import ConfigError

    r = sweep.resources
    if sweep.backend == "local":
        try:
            gpu_pool(min(sweep.local.parallel, len(sweep.trials)), r.gpus, os.environ)
        except ConfigError as err:
            return [_error("resources", str(err))]
        return []
    problems = []
    never = "with ray.address=local no trial would ever start"
    if r.cpus > (os.cpu_count() or 1):
        problems.append(_error("resources", f"resources.cpus={r.cpus} but this machine has {os.cpu_count()} CPUs: "
                                            f"{never}; lower resources.cpus"))
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if r.memory_gb and r.memory_gb > memory_gb:
        problems.append(_error("resources", f"resources.memory_gb={r.memory_gb:g} but this machine has "
                                            f"{memory_gb:.1f} GB: {never}; lower resources.memory_gb"))
    if r.gpus:
        devices, source = visible_gpus(os.environ)
        if len(devices) < max(r.gpus, 1):
            problems.append(_error("resources", f"resources.gpus={r.gpus:g} but this machine has {len(devices)} "
                                                f"GPU(s) ({source}): {never}; set resources.gpus=0 (and "
                                                "run.device=cpu) or use a Ray cluster with GPUs (ray.address)"))
    return problems


def _ray_endpoint(address: str) -> tuple[str, int] | None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else None


#: Run in a child process (the launcher's own Ray connection comes later, and must start clean):
#: the alive nodes' resources as JSON on stdout.
RAY_NODES_PROBE = """
import json, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False, logging_level="ERROR")
print(json.dumps([n["Resources"] for n in ray.nodes() if n.get("Alive")]))
ray.shutdown()
"""


def ray_nodes(address: str, timeout_s: float = RAY_PROBE_TIMEOUT_S) -> list[dict[str, float]] | str:
    """The resources of each alive node of the Ray cluster at ``address`` (``CPU``, ``GPU``,
    ``memory`` in bytes, …), or why they could not be read (one phrase)."""
    env = {**os.environ}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        done = subprocess.run([sys.executable, "-c", RAY_NODES_PROBE, address], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return f"no answer within {timeout_s:g} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        return last[:300]
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "unreadable answer from the probe"


def _check_ray_cluster(sweep: Sweep) -> list[Problem]:
    """A Ray cluster (``ray.address``): reachable, and one alive node has what one trial asks for."""
    from jobs.backends.base import TrialResources
    from jobs.backends.ray_backend import trial_request

    address = sweep.ray.address
    endpoint = _ray_endpoint(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=RAY_TIMEOUT_S).close()
        except OSError as err:
            return [_error("resources", f"ray.address={address}: the Ray cluster is unreachable ({err}); start it "
                                        "(slurm/ray-cluster.sh) or fix ray.address")]
    nodes = ray_nodes(address)
    if isinstance(nodes, str):
        return [_error("resources", f"ray.address={address}: cannot read the cluster's resources ({nodes}); check "
                                    "that a Ray head runs there (ray status --address ADDRESS)")]
    r = sweep.resources
    wanted = trial_request(TrialResources(r.cpus, r.gpus, r.memory_gb))
    names = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}
    if any(all(node.get(names[k], 0.0) >= v for k, v in wanted.items()) for node in nodes):
        return []
    largest = {k: max((node.get(names[k], 0.0) for node in nodes), default=0.0) for k in wanted}
    shown = ", ".join(f"{k} {v / 2**30:.1f} GB" if k == "memory" else f"{k} {v:g}" for k, v in largest.items())
    asked = ", ".join(f"{k} {v / 2**30:.1f} GB" if k == "memory" else f"{k} {v:g}" for k, v in wanted.items())
    return [_error("resources", f"ray.address={address}: no node of the cluster's {len(nodes)} has what a trial asks "
                                f"for ({asked}; the most any node has: {shown}): no trial would ever start; lower "
                                "resources.* or add such a node")]


def check_resources(sweep: Sweep) -> list[Problem]:
    """The resources one trial asks for exist where the backend will run it (see module docstring)."""
    problems = []
    if trial_gpus(sweep) == 0:
        cuda = sorted({t.config.run.device for t in sweep.trials if t.config.run.device.startswith("cuda")})
        if cuda:
            key = "slurm.gpus_per_trial" if sweep.backend == "slurm" else "resources.gpus"
            problems.append(_error("resources", f"run.device={cuda[0]} but {key}=0: backend={sweep.backend} gives the "
                                                f"trials no GPU; set resources.gpus=1 or run.device=auto"))
    if sweep.backend == "slurm":
        return problems + _check_slurm(sweep)
    if sweep.backend == "ray" and sweep.ray.address != "local":
        return problems + _check_ray_cluster(sweep)
    return problems + _check_this_machine(sweep)


# ----------------------------------------------------------------------------------------------
# dashboard
# ----------------------------------------------------------------------------------------------

def _missing_module(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is not installed (found without importing it), or None."""
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:  # a parent package is missing
            return name
    return None


def check_dashboard(sweep: Sweep) -> list[Problem]:
    """``ray.dashboard=true`` with Ray started here needs Ray's dashboard packages (``ray[default]``)."""
    if sweep.backend != "ray" or sweep.ray.address != "local" or not sweep.ray.dashboard:
        return []
    missing = _missing_module(DASHBOARD_MODULES)
    if missing is None:
        return []
    return [_error("dashboard", f"ray.dashboard=true but Ray's dashboard needs packages that are not installed (no "
                                f"module {missing!r}): pip install 'ray[default]' or set ray.dashboard=false")]


# ----------------------------------------------------------------------------------------------
# scheduler
# ----------------------------------------------------------------------------------------------

def check_scheduler(sweep: Sweep) -> list[Problem]:
    """An error per batch size and warm-up whose warm-up, in images, is longer than the scheduler's
    first rung: those trials would be compared (and pruned) before their LR has warmed up."""
    scheduler = sweep.tune.scheduler
    if scheduler is None:
        return []
    short: dict[tuple, list[int]] = {}
    for trial in sweep.trials:
        train = trial.config.train
        grace = scheduler.grace_images or scheduler.grace_epochs * split_sizes(trial.config)[0]
        if train.warmup_steps * train.batch_size > grace:
            short.setdefault((train.batch_size, train.warmup_steps, grace), []).append(trial.index)
    key = "tune.scheduler.grace_images" if scheduler.grace_images else "tune.scheduler.grace_epochs"
    return [_error("scheduler", f"sweep {sweep.name}, trials {_ranges(indexes)}: train.warmup_steps={warmup} × "
                                f"train.batch_size={batch} = {warmup * batch:,} images of warm-up, but {scheduler.kind}'s "
                                f"first rung is at {grace:,.0f} images ({key}={getattr(scheduler, key.rsplit('.', 1)[1]):g}): "
                                f"it would prune them while warming up; set tune.scheduler.grace_images: "
                                f"{warmup * batch} or more (or shorten the warm-up)")
            for (batch, warmup, grace), indexes in short.items()]


# ----------------------------------------------------------------------------------------------
# time
# ----------------------------------------------------------------------------------------------

def check_time(sweep: Sweep, found: list[Estimate]) -> list[Problem]:
    """A warning when a trial's estimated time is over its time limit."""
    key, limit = (("slurm.time_min", sweep.slurm.time_min) if sweep.backend == "slurm"
                  else ("resources.time_limit_min", sweep.resources.time_limit_min))
    over = [e for e in found if limit and e.hours * 60 > limit]
    if not over:
        return []
    longest = max(over, key=lambda e: e.hours)
    minutes = f"{longest.hours * 60:,.0f} min ({longest.throughput.basis})"
    then = ("Slurm stops each at the limit and it resumes from its checkpoint in a requeued job"
            if sweep.backend == "slurm" else f"backend={sweep.backend} does not enforce the limit (Slurm would)")
    if len(over) == 1:
        what = f"trial {longest.index} ({longest.trial_id}) is estimated at {minutes}, over {key}={limit} min"
    else:
        what = (f"{len(over)} trials ({_ranges([e.index for e in over])}) are estimated over {key}={limit} min, up to "
                f"{minutes} for trial {longest.index} ({longest.trial_id})")
    return [_warning("time", f"{what}: {then}; raise {key} or shorten the trials (train.epochs, train.steps)")]


# ----------------------------------------------------------------------------------------------
# disk
# ----------------------------------------------------------------------------------------------

def checkpoint_bytes(config) -> int:
    """Bytes of one checkpoint file: parameters × 4 bytes × (weights + AdamW's two moments)."""
    return flow_parameters(config.model) * 4 * CHECKPOINT_COPIES


def check_disk(sweep: Sweep) -> list[Problem]:
    """The checkpoints of all trials fit in the free space of their ``run.out_dir``."""
    from jobs.train import run_dir_for

    needs: dict[Path, list] = {}
    for trial in sweep.trials:
        cfg = trial.config
        files = cfg.train.keep_last + 1
        full = files * checkpoint_bytes(cfg)
        folder = run_dir_for(cfg, sweep.name) / "checkpoints"
        have = sum(f.stat().st_size for f in folder.glob("*.ckpt")) if folder.is_dir() else 0
        entry = needs.setdefault(Path(cfg.run.out_dir).resolve(), [0, 0, 0, 0])
        entry[0] += max(0, full - have)
        entry[1] += 1
        entry[2] = max(entry[2], files)
        entry[3] = max(entry[3], checkpoint_bytes(cfg))
    problems = []
    for out_dir, (need, trials, files, size) in needs.items():
        base = _existing_ancestor(out_dir)
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            problems.append(_error("disk", f"run.out_dir={out_dir} cannot be created: {base} is not a writable folder; "
                                           "set run.out_dir to a writable folder"))
            continue
        free = shutil.disk_usage(base).free
        if need > free:
            problems.append(_error("disk", f"the checkpoints need ≈ {_mb(need)} under run.out_dir={out_dir} ({trials} "
                                           f"trials × up to {files} files × {_mb(size)}) but only {_mb(free)} are free "
                                           "there; free space, set run.out_dir to a larger disk, or lower "
                                           "train.keep_last"))
    return problems


# ----------------------------------------------------------------------------------------------

def preflight(sweep: Sweep, found: list[Estimate] | None = None) -> list[Problem]:
    """Every problem of ``sweep`` (errors first, then warnings, each in check order); ``found`` are
    the trials' estimates (default: ``jobs.dryrun.estimates(sweep)``)."""
    found = estimates(sweep) if found is None else found
    problems = [*check_data(sweep), *check_fid(sweep), *check_tracking(sweep), *check_resources(sweep),
                *check_dashboard(sweep), *check_scheduler(sweep), *check_time(sweep, found), *check_disk(sweep)]
    return [p for p in problems if p.fatal] + [p for p in problems if not p.fatal]


def format_problems(problems: list[Problem], launching: bool) -> str:
    """The problems, one per line, and a summary line."""
    errors = sum(p.fatal for p in problems)
    warnings = len(problems) - errors
    counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if not problems:
        return "preflight: no problems found"
    if errors:
        summary = f"preflight: {counts}: " + ("nothing was started or created; fix the errors and run again"
                                              if launching else "a launch would stop here")
    else:
        summary = f"preflight: {counts}"
    return "\n".join([*map(str, problems), summary])


__all__ = ["Problem", "Partition", "preflight", "format_problems", "check_data", "check_fid", "check_tracking",
           "check_resources", "check_dashboard", "check_scheduler", "check_time", "check_disk", "checkpoint_bytes", "parse_sinfo", "slurm_minutes",
           "multi_node"]
