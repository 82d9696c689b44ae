#!/usr/bin/env bash
# Start, stop or query a local MLflow tracking server for this project.
#
#   mlflow/server.sh start    # prints: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   mlflow/server.sh status   # exit 0 when running and healthy, 1 otherwise
#   mlflow/server.sh stop     # SIGTERM to the server's PID, waits for it to exit
#
# Settings (environment variables; see mlflow/README.md):
#   MLFLOW_SERVER_DIR        folder for the pid file, log, sqlite store and artifacts
#                            (default: <repo>/mlruns/server — git-ignored)
#   MLFLOW_BACKEND_URI       store URI, e.g. postgresql://user@db-host/mlflow (default: sqlite in the folder)
#   MLFLOW_ARTIFACTS_DESTINATION  where the server keeps artifacts it proxies (default: <folder>/artifacts)
#   MLFLOW_DEFAULT_ARTIFACT_ROOT  instead: a location every client writes to directly (shared file
#                            system or object store); turns artifact proxying off
#   MLFLOW_HOST              interface to bind (default 127.0.0.1; 0.0.0.0 only with authentication)
#   MLFLOW_PORT              port (default 5000)
#   MLFLOW_WORKERS           uvicorn workers (default 1: two processes, healthy in ≈6 s)
#   MLFLOW_ALLOWED_HOSTS     Host headers accepted when bound beyond localhost (e.g. "login01:5000")
#   MLFLOW_AUTH=1            basic authentication (--app-name basic-auth); needs the mlflow[auth] extra,
#                            MLFLOW_FLASK_SERVER_SECRET_KEY and, on first start, MLFLOW_AUTH_ADMIN_PASSWORD
#   PYTHON                   interpreter with mlflow installed (default: <repo>/.venv/bin/python)
#
# The folder, and all the server writes in it (sqlite store, artifacts, log, pid file), is readable
# by its owner only: the script runs under umask 077, so a folder it creates is mode 0700 (an
# existing folder open to others is kept as it is, with a warning).
set -euo pipefail
umask 077

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${MLFLOW_SERVER_DIR:-$repo/mlruns/server}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-1}"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
pidfile="$dir/server.pid"
logfile="$dir/server.log"
client_host="$host"
[[ "$host" == "0.0.0.0" || "$host" == "::" ]] && client_host="$(hostname)"
uri="http://$client_host:$port"

die() { echo "mlflow/server.sh: $*" >&2; exit 2; }

pid_alive() {
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # a zombie (exited, not yet reaped by its new parent) is not running
  [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != "Z" ]]
}

healthy() {
  "$python" - "$uri/health" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as resp:
    sys.exit(0 if resp.status == 200 else 1)
EOF
}

start() {
  if pid_alive; then
    echo "already running (pid $(cat "$pidfile")); log: $logfile" >&2
    echo "export MLFLOW_TRACKING_URI=$uri"
    return 0
  fi
  [[ "$port" =~ ^[0-9]+$ ]] || die "MLFLOW_PORT=$port: must be a port number"
  [[ "$workers" =~ ^[0-9]+$ ]] || die "MLFLOW_WORKERS=$workers: must be a positive integer"
  "$python" -c "import mlflow.server" 2>/dev/null || die "$python cannot import mlflow.server: install the full 'mlflow' package (make install)"
  mkdir -p "$dir"
  [[ -z "${MLFLOW_DEFAULT_ARTIFACT_ROOT:-}${MLFLOW_ARTIFACTS_DESTINATION:-}" ]] && mkdir -p "$dir/artifacts"
  local mode
  mode="$(stat -c %a "$dir")"
  (( (8#$mode & 8#077) == 0 )) || echo "warning: $dir is mode $mode: others can read the store; chmod 700 $dir" >&2
  local args=(-m mlflow server
    --backend-store-uri "${MLFLOW_BACKEND_URI:-sqlite:///$dir/mlflow.db}"
    --host "$host" --port "$port" --workers "$workers")
  if [[ -n "${MLFLOW_DEFAULT_ARTIFACT_ROOT:-}" ]]; then
    args+=(--no-serve-artifacts --default-artifact-root "$MLFLOW_DEFAULT_ARTIFACT_ROOT")
  else
    args+=(--artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$dir/artifacts}")
  fi
  [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]] && args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
  if [[ "${MLFLOW_AUTH:-0}" == "1" ]]; then
    "$python" -c "import flask_wtf" 2>/dev/null || die "MLFLOW_AUTH=1 needs the auth extra: pip install 'mlflow[auth]'"
    [[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]] || die "MLFLOW_AUTH=1 needs MLFLOW_FLASK_SERVER_SECRET_KEY (a long random string, same for all workers)"
    if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
      export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini"
      [[ -f "$MLFLOW_AUTH_CONFIG_PATH" ]] || printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s/basic_auth.db\nadmin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' "$dir" > "$MLFLOW_AUTH_CONFIG_PATH"
    fi
    args+=(--app-name basic-auth)
  elif [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
    echo "warning: binding $host without authentication: anyone who can reach port $port can read and delete runs (set MLFLOW_AUTH=1)" >&2
  fi
  echo "starting mlflow server on $host:$port (store: ${MLFLOW_BACKEND_URI:-sqlite:///$dir/mlflow.db}); log: $logfile" >&2
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
    setsid nohup "$python" "${args[@]}" >>"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local waited=0
  until healthy; do
    if ! pid_alive; then
      rm -f "$pidfile"
      echo "mlflow/server.sh: the server exited during start-up; last log lines:" >&2
      tail -n 20 "$logfile" >&2
      exit 1
    fi
    (( waited++ < 600 )) || { echo "mlflow/server.sh: not healthy after 120 s; see $logfile" >&2; stop; exit 1; }
    sleep 0.2
  done
  echo "healthy (pid $(cat "$pidfile"))" >&2
  echo "export MLFLOW_TRACKING_URI=$uri"
}

stop() {
  if ! pid_alive; then
    echo "not running" >&2
    rm -f "$pidfile"
    return 0
  fi
  local pid
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "stopped (pid $pid)" >&2; return 0; }
    sleep 0.1
  done
  echo "mlflow/server.sh: pid $pid still running 30 s after SIGTERM; sending SIGKILL to its process group" >&2
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  if pid_alive && healthy; then
    echo "running (pid $(cat "$pidfile")) at $uri"
    echo "export MLFLOW_TRACKING_URI=$uri"
  elif pid_alive; then
    echo "starting or unhealthy (pid $(cat "$pidfile")); see $logfile"
    return 1
  else
    echo "not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: mlflow/server.sh start|stop|status   (settings: see the top of this file)" >&2; exit 2 ;;
esac
