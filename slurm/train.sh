#!/bin/bash
# One RG-Flow trial as a Slurm batch job, preemptible and self-requeueing. Submit from the repo root:
#
#   sbatch slurm/train.sh configs/X.yaml [overrides…]              one trial from a config file
#   sbatch slurm/train.sh sweeps/X.yaml N [overrides…]             the N-th trial of a sweep
#   sbatch --array=0-23 slurm/train.sh sweeps/X.yaml [overrides…]  trial N = SLURM_ARRAY_TASK_ID
#
# Command-line sbatch options override the defaults below (e.g. `sbatch --time=2:00:00 -p gpu …`).
# The trainer (`python -m jobs.train`) runs in the background so that this shell can forward
# SIGUSR2 (sent 120 s before the time limit, or by `scancel --signal=USR2 --batch`) and SIGTERM
# (preemption, `scancel`, `scontrol requeue`) to it. Its exit code decides what happens next:
#   0 finished → exit 0;  1 failed, 2 bad input, 3 run folder held by another attempt → exit with
#      that code, no requeue;
#   75 interrupted after a checkpoint → `scontrol requeue` this job (or array task) unless Slurm is
#      already requeueing or cancelling it; the next attempt resumes from the checkpoint;
#   130 interrupted by the user → exit 130, no requeue.
# Python: $RGFLOW_PYTHON, else <repo>/.venv/bin/python, else python3.
#
#SBATCH --job-name=rgflow-train
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-logs/%x-%j.out
set -uo pipefail

EXIT_PREEMPTED=75

log() { echo "train.sh[$(date -u +%FT%TZ)]: $*" >&2; }
usage() {
  log "$1"
  log "usage: sbatch [--array=A-B] slurm/train.sh CONFIG_OR_SWEEP.yaml [N] [key=value …]"
  exit 2
}

cd "${SLURM_SUBMIT_DIR:-$PWD}" || exit 2
if [[ ! -f jobs/train.py ]]; then
  usage "$PWD is not the repository root (no jobs/train.py): cd to the repo and submit from there"
fi
(($# >= 1)) || usage "missing CONFIG_OR_SWEEP.yaml"
file="$1"
shift
[[ -f "$file" ]] || usage "$file: no such file (paths are relative to $PWD)"

trial=""
if (($# >= 1)) && [[ "$1" =~ ^[0-9]+$ ]]; then
  trial="$1"
  shift
fi
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  [[ -z "$trial" ]] || usage "trial index $trial given to an array job: use either N or --array, not both"
  trial="$SLURM_ARRAY_TASK_ID"
fi

if [[ -n "${RGFLOW_PYTHON:-}" ]]; then
  python="$RGFLOW_PYTHON"
elif [[ -x .venv/bin/python ]]; then
  python="$PWD/.venv/bin/python"
else
  python="python3"
fi

cmd=("$python" -m jobs.train)
[[ -z "$trial" ]] || cmd+=(--trial "$trial")
cmd+=("$file" "$@")

if [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
  job="${SLURM_JOB_ID:-}"
fi

export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
log "job ${job:-<none>} restart ${SLURM_RESTART_COUNT:-0} on $(hostname): $(printf '%q ' "${cmd[@]}")"

child=""
forwarded=""
forward() {
  log "received SIG$1; forwarding to the trainer (pid ${child:-none})"
  forwarded="$1"
  [[ -z "$child" ]] || kill -s "$1" "$child" 2>/dev/null || true
}
trap 'forward USR2' USR2
trap 'forward TERM' TERM
trap 'forward INT' INT

"${cmd[@]}" &
child=$!
# `wait` returns early when a trapped signal arrives: wait again until the trainer has exited,
# then once more to read its saved exit status.
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
done
wait "$child"
rc=$?
log "trainer exited with $rc"
if [[ "$forwarded" == USR2 || "$forwarded" == TERM ]] && ((rc == 128 + $(kill -l "$forwarded"))); then
  # The signal arrived before the trainer installed its handlers (still importing): it is as
  # unfinished as after a checkpoint, and resumes from its newest one.
  log "trainer was killed by SIG$forwarded before it could checkpoint; treating it as interrupted"
  rc=$EXIT_PREEMPTED
fi

job_state() { scontrol show job -o "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n1 | cut -d= -f2; }

if ((rc == EXIT_PREEMPTED)); then
  if [[ -z "$job" ]]; then
    log "not inside a Slurm job: nothing to requeue"
    exit "$rc"
  fi
  state="$(job_state)"
  if [[ "$state" != RUNNING ]]; then
    # Preemption, `scontrol requeue` or `scancel`: Slurm already decided what happens next.
    log "job $job is $state: leaving it to Slurm"
    exit "$rc"
  fi
  if scontrol requeue "$job"; then
    log "requeued job $job"
    exit 0
  fi
  log "scontrol requeue $job failed; the trial resumes from its checkpoint when resubmitted"
fi
exit "$rc"
