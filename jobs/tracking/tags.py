"""Every MLflow tag name the project writes or reads: the one list (docs/ARCHITECTURE.md, "MLflow layout").

Code outside ``jobs/tracking/`` names a tag only through these constants
(``tests/test_tracking_boundary.py`` checks it). Tag values are MLflow strings. Imports nothing, so
that light readers (``layout.py``, ``fast_read``) can use it without mlflow.

A name ending in ``.`` is a prefix: the tags are ``<prefix><key>``.
"""
from __future__ import annotations

# ---- run structure (parent sweep run and trial runs) -------------------------------------------
ROLE_TAG = "rgflow.role"  # "sweep" on a sweep's parent run, "trial" on a trial's run
SWEEP_TAG = "rgflow.sweep"  # the sweep's name (= experiment name); "single" for a lone trial
SWEEP_ID_TAG = "rgflow.sweep_id"  # 12 hex digits of SHA-256 over the sweep name and its trial ids: one parent run each
TRIAL_ID_TAG = "rgflow.trial_id"  # 12-hex-digit hash of the trial's resolved config (jobs.config.trial_id)
TRIAL_INDEX_TAG = "rgflow.trial_index"  # the trial's position in its sweep (0-based, decimal string)
BACKEND_TAG = "rgflow.backend"  # what launched it: single | local | ray | slurm
RAY_NODE_TAG = "rgflow.ray_node_id"  # Ray backend: the id of the Ray node the trial's last attempt ran on
SWEEP_OVERRIDES_TAG = "rgflow.sweep_overrides"  # parent run: the command-line overrides of the sweep file, space-separated
RUN_DIR_TAG = "rgflow.run_dir"  # absolute path of the trial's run folder (checkpoints, spool, config.yaml)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the trial's parent (sweep) run id, always set explicitly
REUSED_FROM_TAG = "rgflow.reused_from"  # on a link run (jobs.reuse): the id of the FINISHED run of the same trial, in another experiment, it copies
REUSED_FROM_EXPERIMENT_TAG = "rgflow.reused_from_experiment"  # on a link run: the name of that original run's experiment
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own: trial runs are named from their axis values (bs512-sqrt-laplace-s0)
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the sweep's description, on its parent run and as experiment tag

# ---- MLflow's standard source tags (set by the project on every trial run; jobs.tracking.env) ------
SOURCE_GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the same commit as rgflow.git_commit ("unknown" without git)
SOURCE_NAME_TAG = "mlflow.source.name"  # the entry point that trained the trial: always "jobs.train" (CLI or run_trial)
SOURCE_TYPE_TAG = "mlflow.source.type"  # "JOB": every trial is a batch job, never a notebook or a project
USER_TAG = "mlflow.user"  # the login name of the user whose process ran the attempt (getpass.getuser())

# ---- lifecycle ------------------------------------------------------------------------------------
STATE_TAG = "rgflow.state"  # true state: running | finished | pruned | failed | preempted | killed
REASON_TAG = "rgflow.failure_reason"  # one line on why a run failed or was killed (absent when finished)
ATTEMPT_TAG = "rgflow.attempt"  # attempts of the trial so far, counting this one (1, 2, …; bumped on reopen)
FAILURES_TAG = "rgflow.failures"  # failed attempts of a trial, deaths included: counted by the attempt itself and by whoever reaps a dead one

# ---- outputs ---------------------------------------------------------------------------------------
CHECKPOINT_TAG = "rgflow.checkpoint"  # path of the trial's last checkpoint file
BEST_CHECKPOINT_TAG = "rgflow.best_checkpoint"  # path of the lowest-validation-BPD checkpoint ("" if none)
MODEL_ARTIFACT_TAG = "rgflow.model_artifact"  # which checkpoint's weights are under the run's model/: best | last

# ---- resources (read by jobs.report when present; else the sweep file's resources) ----------------
GPUS_TAG = "rgflow.gpus"  # GPUs the trial held (count, may be fractional)
CPUS_TAG = "rgflow.cpus"  # CPU cores the trial held (count)

# ---- evaluation (jobs.evaluate) ---------------------------------------------------------------------
EVAL_TAG_PREFIX = "rgflow.eval."  # prefix of the protocol tags: rgflow.eval.<key> per key of EVAL_PROTOCOL_KEYS
EVAL_PROTOCOL_TAG = "rgflow.eval.protocol"  # 16-hex-digit hash of the protocol: marks a complete evaluation
#: The keys of ``jobs.evaluate.make_protocol`` (one ``rgflow.eval.<key>`` tag each).
EVAL_PROTOCOL_KEYS = (
    "checkpoint", "checkpoint_step", "checkpoint_sha256", "evaluations", "seed", "test_images", "test_draws",
    "noise_seed", "dequantisation", "temperatures", "fid_images", "fid_network", "fid_weights_sha256",
    "fid_reference", "fid_samples_quantisation", "receptive_field_samples", "receptive_field_space",
)

# ---- environment (jobs.tracking.env.environment_tags) ---------------------------------------------
GIT_COMMIT_TAG = "rgflow.git_commit"  # HEAD commit of the code that ran ("unknown" without git)
GIT_DIRTY_TAG = "rgflow.git_dirty"  # "true" if tracked files had uncommitted changes, "false", or "unknown"
HOST_TAG = "rgflow.host"  # host name of the machine that ran the attempt
DEVICE_TAG = "rgflow.device"  # human name of the device (GPU model, else CPU model)
VERSION_TAG_PREFIX = "rgflow.version."  # rgflow.version.<lib>: python, torch, mlflow, ray, submitit, rgflow
SLURM_JOB_ID_TAG = "rgflow.slurm_job_id"  # $SLURM_JOB_ID of the attempt
SLURM_ARRAY_JOB_ID_TAG = "rgflow.slurm_array_job_id"  # $SLURM_ARRAY_JOB_ID (array jobs only)
SLURM_ARRAY_TASK_ID_TAG = "rgflow.slurm_array_task_id"  # $SLURM_ARRAY_TASK_ID (array jobs only)
SLURM_RESTART_COUNT_TAG = "rgflow.slurm_restart_count"  # $SLURM_RESTART_COUNT (requeued jobs)

# ---- experiment tags --------------------------------------------------------------------------------
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow's own kind tag: "custom_model_development" (model training)

#: Every tag name above (prefixes included), for checks such as tests/test_tracking_boundary.py.
ALL_TAGS = frozenset(v for k, v in dict(globals()).items() if k.endswith(("_TAG", "_TAG_PREFIX")))
#: The prefixes among :data:`ALL_TAGS`.
TAG_PREFIXES = frozenset(t for t in ALL_TAGS if t.endswith("."))
