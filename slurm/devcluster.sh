#!/usr/bin/env bash
# A real single-node Slurm 22.05 with accounting, for tests, CI and trying the sbatch scripts.
#
#   slurm/devcluster.sh start  [DIR]   start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   slurm/devcluster.sh stop   [DIR]   cancel its jobs, stop the daemons (reverse order, by PID)
#   slurm/devcluster.sh status [DIR]   daemons, node state, queue; exit 0 only when all are up
#   slurm/devcluster.sh env    [DIR]   print the `export SLURM_CONF=...` line
#
# Every state/spool/log/pid/socket path lives under DIR (default: $RGFLOW_SLURM_DIR, else
# `.slurm-dev/` in the repository, git-ignored). `start` prints the export line on stdout and its
# progress on stderr, so `eval "$(slurm/devcluster.sh start)"` works; it is idempotent.
# Needs root and the Debian packages slurmctld slurmd slurm-client munge mariadb-server slurmdbd.
#
# Tunables (read by `start` when no daemon is running; it then rewrites the configuration):
#   RGFLOW_SLURM_CPUS  CPUs the node advertises (default: nproc, at least 8: on a small machine
#                      jobs of concurrent test sessions share the cores instead of queueing)
#   RGFLOW_SLURM_GPUS  fake GPUs (empty device files) so `--gpus=N` schedules (default 2)
#   RGFLOW_SLURM_PORT  first of four consecutive ports: slurmctld, slurmd, slurmdbd, mariadb
#                      (default 6817; all bound to 127.0.0.1)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"
DIR="${2:-${RGFLOW_SLURM_DIR:-$REPO/.slurm-dev}}"
CLUSTER=rgflow-dev
NODE=localhost

die() { echo "devcluster: $*" >&2; exit 1; }
say() { echo "devcluster: $*" >&2; }

case "$CMD" in
  start|stop|status|env) ;;
  *) die "usage: $0 start|stop|status|env [DIR]  (DIR defaults to \$RGFLOW_SLURM_DIR or $REPO/.slurm-dev)" ;;
esac

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
ETC="$DIR/etc"
export SLURM_CONF="$ETC/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
DB_SOCKET="$DIR/mysql/mysqld.sock"

# Daemons in start order; `stop` walks this list backwards.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
pidfile() {
  case "$1" in
    munged) echo "$DIR/munge/munged.pid" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.pid" ;;
    *) echo "$DIR/run/$1.pid" ;;
  esac
}
logfile() {
  case "$1" in
    munged) echo "$DIR/munge/munged.log" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.err" ;;
    *) echo "$DIR/log/$1.log" ;;
  esac
}
running_pid() {  # print the daemon's PID if its pid file names a live process of that program
  local f pid
  f="$(pidfile "$1")"
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc 0-9 <"$f")"
  [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
  [[ "$(cat "/proc/$pid/comm")" == "$1" ]] || return 1
  echo "$pid"
}
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "timed out waiting for $what; logs under $DIR/log, $DIR/munge, $DIR/mysql"
      return 1
    fi
    sleep 0.2
  done
}

write_config() {
  local port="${RGFLOW_SLURM_PORT:-6817}"
  local cpus="${RGFLOW_SLURM_CPUS:-$(($(nproc) > 8 ? $(nproc) : 8))}"
  local gpus="${RGFLOW_SLURM_GPUS:-2}"
  local mem_mb def_mem i files
  [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "RGFLOW_SLURM_CPUS=$cpus: must be a positive integer"
  [[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "RGFLOW_SLURM_GPUS=$gpus: must be a positive integer"
  [[ "$port" =~ ^[1-9][0-9]{2,4}$ ]] || die "RGFLOW_SLURM_PORT=$port: must be a port number"
  mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
  def_mem=$((mem_mb / cpus / 2))

  mkdir -p "$ETC" "$DIR/gpu"
  for ((i = 0; i < gpus; i++)); do : >"$DIR/gpu/gpu$i"; done
  files="$DIR/gpu/gpu0"
  ((gpus == 1)) || files="$DIR/gpu/gpu[0-$((gpus - 1))]"
  echo "NodeName=$NODE Name=gpu File=$files" >"$ETC/gres.conf"
  cat >"$ETC/slurm.conf.tmp" <<EOF
# Written by slurm/devcluster.sh: single-node dev cluster, everything under $DIR
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=slurm
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10,socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerParameters=bf_interval=5,sched_interval=5
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStoragePort=$((port + 2))
# Clients authenticate to slurmdbd with this munge socket (AuthInfo socket= is not used for it).
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=5
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
  mv "$ETC/slurm.conf.tmp" "$ETC/slurm.conf"

  local pass
  pass="$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  (
    umask 077
    cat >"$ETC/slurmdbd.conf.tmp" <<EOF
# Written by slurm/devcluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$((port + 2))
SlurmUser=slurm
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((port + 3))
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
  )
  chown slurm:slurm "$ETC/slurmdbd.conf.tmp"
  mv "$ETC/slurmdbd.conf.tmp" "$ETC/slurmdbd.conf"
}

conf_value() {  # conf_value FILE KEY
  sed -n "s/^$2=//p" "$1" | head -n1
}

prepare_dirs() {
  mkdir -p "$DIR/munge" "$DIR/mysql" "$DIR/spool/ctld" "$DIR/spool/d" "$DIR/log" "$DIR/run"
  chown munge:munge "$DIR/munge"
  chmod 755 "$DIR/munge"
  chown mysql:mysql "$DIR/mysql"
  chown slurm:slurm "$DIR/spool/ctld" "$DIR/log" "$DIR/run"
  chmod 755 "$DIR/log" "$DIR/run"
  if [[ ! -s "$DIR/munge/munge.key" ]]; then
    (umask 077 && dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
    chown munge:munge "$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
  fi
}

start_munged() {
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$(pidfile munged)" --log-file="$(logfile munged)" \
    --seed-file="$DIR/munge/munged.seed" 9>&- </dev/null >>"$DIR/munge/munged.out" 2>&1 \
    || die "munged failed to start; see $(logfile munged)"
  wait_for 10 munged test -S "$MUNGE_SOCKET"
}

mysql_root() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_mariadbd() {
  local port="$(conf_value "$ETC/slurmdbd.conf" StoragePort)"
  if [[ ! -d "$DIR/mysql/data/mysql" ]]; then
    say "initialising MariaDB in $DIR/mysql/data"
    rm -rf "$DIR/mysql/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql/data" --skip-test-db \
      --skip-name-resolve >"$DIR/mysql/install.log" 2>&1 \
      || die "mariadb-install-db failed; see $DIR/mysql/install.log"
  fi
  touch "$(logfile mariadbd)"
  chown mysql:mysql "$(logfile mariadbd)"
  setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" --socket="$DB_SOCKET" \
    --pid-file="$(pidfile mariadbd)" --log-error="$(logfile mariadbd)" \
    --bind-address=127.0.0.1 --port="$port" --skip-name-resolve --skip-log-bin \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
    9>&- </dev/null >>"$DIR/mysql/mariadbd.out" 2>&1 &
  wait_for 30 mariadbd mysql_root -e "SELECT 1"
  local pass
  pass="$(conf_value "$ETC/slurmdbd.conf" StoragePass)"
  mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
  slurmdbd 9>&- </dev/null >>"$DIR/log/slurmdbd.out" 2>&1 || die "slurmdbd failed; see $(logfile slurmdbd)"
  wait_for 60 slurmdbd sacctmgr -n show cluster
  if [[ -z "$(sacctmgr -n -P show cluster format=cluster where cluster="$CLUSTER")" ]]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurmctld() {
  slurmctld 9>&- </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || die "slurmctld failed; see $(logfile slurmctld)"
  wait_for 30 slurmctld scontrol ping
}

start_slurmd() {
  slurmd -N "$NODE" 9>&- </dev/null >>"$DIR/log/slurmd.out" 2>&1 || die "slurmd failed; see $(logfile slurmd)"
}

no_jobs() { [[ -z "$(squeue -h -o %A 2>/dev/null)" ]]; }
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_usable() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

cmd_start() {
  command -v slurmctld >/dev/null && command -v mariadbd >/dev/null && command -v munged >/dev/null \
    && command -v slurmdbd >/dev/null || die "Slurm/MariaDB/munge binaries missing; install with:
  apt-get install -y slurmctld slurmd slurm-client munge && apt-get install -y --no-install-recommends mariadb-server slurmdbd"
  [[ "$(id -u)" == 0 ]] || die "must run as root (daemons switch to the munge, mysql and slurm users)"
  local d all=1
  for d in "${DAEMONS[@]}"; do running_pid "$d" >/dev/null || all=0; done
  if ((all)) && node_usable; then
    say "already running in $DIR (node $(node_state))"
    cmd_env
    return 0
  fi
  local any=0
  for d in "${DAEMONS[@]}"; do running_pid "$d" >/dev/null && any=1; done
  ((any)) && [[ -s "$ETC/slurm.conf" && -s "$ETC/slurmdbd.conf" ]] || write_config
  prepare_dirs
  local t0=$SECONDS
  for d in "${DAEMONS[@]}"; do
    if running_pid "$d" >/dev/null; then
      say "$d already running"
    else
      say "starting $d"
      "start_$d"
    fi
  done
  if ! wait_for 30 "node $NODE to register" node_usable; then
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    wait_for 10 "node $NODE to become idle" node_usable \
      || die "node $NODE is '$(node_state)'; see $(logfile slurmd) and $(logfile slurmctld)"
  fi
  say "up in $((SECONDS - t0)) s: node $NODE $(node_state)"
  cmd_env
}

stop_pid() {  # stop_pid NAME PID: SIGTERM, wait up to 20 s, then SIGKILL
  local deadline=$((SECONDS + 20))
  kill -TERM "$2" 2>/dev/null || return 0
  while [[ -e "/proc/$2" ]] && ((SECONDS < deadline)); do sleep 0.1; done
  if [[ -e "/proc/$2" ]]; then
    say "$1 ($2) ignored SIGTERM; killing"
    kill -KILL "$2" 2>/dev/null || true
  fi
}

cmd_stop() {
  local d pid i jobs
  if running_pid slurmctld >/dev/null; then
    jobs="$(squeue -h -o %A 2>/dev/null || true)"
    if [[ -n "$jobs" ]]; then
      say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086  # one job id per word
      scancel $jobs 2>/dev/null || true
      wait_for 30 "jobs to end" no_jobs || true
    fi
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d="${DAEMONS[$i]}"
    if pid="$(running_pid "$d")"; then
      say "stopping $d ($pid)"
      stop_pid "$d" "$pid"
    fi
  done
}

cmd_status() {
  local d pid rc=0
  for d in "${DAEMONS[@]}"; do
    if pid="$(running_pid "$d")"; then
      printf '%-10s running (pid %s)\n' "$d" "$pid"
    else
      printf '%-10s stopped\n' "$d"
      rc=1
    fi
  done
  if ((rc == 0)); then
    sinfo || rc=1
    squeue || rc=1
  fi
  return "$rc"
}

cmd_env() { printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"; }

exec 9>"$DIR/.lock"
[[ "$CMD" == env ]] || flock 9
"cmd_$CMD"
