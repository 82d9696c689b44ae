#!/bin/bash
# A Ray cluster inside one Slurm allocation, running one sweep against it. Submit from the repo root:
#
#   sbatch --nodes=4 slurm/ray-cluster.sh sweeps/batchsize.yaml [overrides…]
#
# The Ray head runs on the first node of the allocation, a worker on each other node (one
# `srun … ray start --block` step per node, each with the task's CPUs and GPUs); then
# `python -m jobs.sweep SWEEP backend=ray ray.address=<head ip>:<port> [overrides…]` runs in this
# batch shell, and the Ray steps are stopped when it ends. Ray uses token authentication with a
# per-job token file (mode 600) under slurm-logs/, removed at the end: the submit folder must be on
# a filesystem shared by the nodes, as it is for the code and the run folders anyway. A one-node
# allocation keeps Ray on loopback (its local-only mode): nothing is exposed to the network.
# Re-submitting the same command continues the sweep (jobs.sweep skips finished trials and resumes
# unfinished ones from their checkpoints).
#
# Environment: RGFLOW_PYTHON (default <repo>/.venv/bin/python, else python3), RGFLOW_RAY_PORT
# (GCS port of the head, default 6379), RGFLOW_RAY_TIMEOUT (seconds to wait for the head, 120).
#
#SBATCH --job-name=rgflow-ray
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-task=4
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=slurm-logs/%x-%j.out
set -uo pipefail

log() { echo "ray-cluster.sh[$(date -u +%FT%TZ)]: $*" >&2; }
die() {
  log "$1"
  exit 2
}

cd "${SLURM_SUBMIT_DIR:-$PWD}" || exit 2
[[ -f jobs/sweep.py ]] || die "$PWD is not the repository root (no jobs/sweep.py): cd to the repo and submit from there"
[[ -n "${SLURM_JOB_ID:-}" ]] || die "not inside a Slurm job: submit with sbatch"
(($# >= 1)) || die "usage: sbatch [--nodes=N] slurm/ray-cluster.sh SWEEP.yaml [key=value …]"
sweep="$1"
shift
[[ -f "$sweep" ]] || die "$sweep: no such file (paths are relative to $PWD)"

if [[ -n "${RGFLOW_PYTHON:-}" ]]; then
  python="$RGFLOW_PYTHON"
elif [[ -x .venv/bin/python ]]; then
  python="$PWD/.venv/bin/python"
else
  python="python3"
fi
ray_cli=("$python" -m ray.scripts.scripts)
port="${RGFLOW_RAY_PORT:-6379}"
cpus="${SLURM_CPUS_PER_TASK:-1}"

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node="${nodes[0]}"
if ((${#nodes[@]} == 1)); then
  # One node: Ray's local-only mode keeps every listener on loopback (nothing exposed to the network).
  head_ip=127.0.0.1
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
else
  head_ip="$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')"
  [[ -n "$head_ip" ]] || die "could not read the IP address of $head_node"
fi
address="$head_ip:$port"

mkdir -p slurm-logs
token_file="$PWD/slurm-logs/.ray-token-$SLURM_JOB_ID"
(umask 077 && "$python" -c "import secrets; print(secrets.token_hex(32))" >"$token_file") \
  || die "could not write the Ray token file $token_file"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
export PYTHONUNBUFFERED=1

step_opts=(--nodes=1 --ntasks=1 --cpus-per-task="$cpus")
[[ -z "${SLURM_GPUS_PER_TASK:-}" ]] || step_opts+=(--gpus-per-task="$SLURM_GPUS_PER_TASK")
ray_opts=(--num-cpus="$cpus" --temp-dir="/tmp/ray-$SLURM_JOB_ID" --block --disable-usage-stats)

steps=()
cleanup() {
  if ((${#steps[@]})); then
    log "stopping Ray (steps ${steps[*]})"
    kill -TERM "${steps[@]}" 2>/dev/null
    wait "${steps[@]}" 2>/dev/null
  fi
  rm -f "$token_file"
}
trap cleanup EXIT
trap 'log "received SIGTERM"; exit 143' TERM

log "job $SLURM_JOB_ID: Ray head on $head_node ($address), workers on $((${#nodes[@]} - 1)) other node(s)"
srun "${step_opts[@]}" -w "$head_node" "${ray_cli[@]}" start --head --node-ip-address="$head_ip" \
  --port="$port" --include-dashboard=false "${ray_opts[@]}" &
steps+=($!)

deadline=$((SECONDS + ${RGFLOW_RAY_TIMEOUT:-120}))
until "${ray_cli[@]}" health-check --address="$address" >/dev/null 2>&1; do
  kill -0 "${steps[0]}" 2>/dev/null || die "the Ray head exited; see the lines above"
  ((SECONDS < deadline)) || die "the Ray head did not answer at $address within ${RGFLOW_RAY_TIMEOUT:-120} s"
  sleep 2
done
log "Ray head is up"

for node in "${nodes[@]:1}"; do
  srun "${step_opts[@]}" -w "$node" "${ray_cli[@]}" start --address="$address" "${ray_opts[@]}" &
  steps+=($!)
done

"$python" -m jobs.sweep "$sweep" backend=ray ray.address="$address" "$@"
rc=$?
log "jobs.sweep exited with $rc"
exit "$rc"
