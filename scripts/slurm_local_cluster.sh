#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian slurm-wlm 22.05 + munge, as root, no systemd),
# for the SLURM tests and for trying the sbatch templates by hand. Recipe: STACK.md, "A real single-node
# SLURM cluster".
#
#   bash scripts/slurm_local_cluster.sh start [SCRATCH]   # default SCRATCH: /tmp/prealign-slurm
#   export SLURM_CONF=SCRATCH/slurm.conf                  # printed by `start`; sbatch/squeue/scontrol read it
#   bash scripts/slurm_local_cluster.sh status [SCRATCH]
#   bash scripts/slurm_local_cluster.sh stop [SCRATCH]    # cancels jobs, stops the daemons by their pids
#
# Ports: PREALIGN_SLURMCTLD_PORT (default 6817) and PREALIGN_SLURMD_PORT (6818), for a second cluster beside one.
# Everything of the cluster lives in SCRATCH (slurm.conf, state, spool, logs, pid files, and its own munged
# with its socket); nothing is written to /etc/slurm. The munge key is the machine's (/etc/munge/munge.key,
# created only if absent); the machine's munged, if any, is neither used nor touched.
# Packages: apt-get install -y slurm-wlm munge (scripts/install.sh installs them).
set -euo pipefail

cmd=${1:-}
SCRATCH=$(realpath -m "${2:-${PREALIGN_SLURM_DIR:-/tmp/prealign-slurm}}")
CONF="$SCRATCH/slurm.conf"
MUNGE_SOCKET="$SCRATCH/munge/munge.socket"
export SLURM_CONF="$CONF"
WAIT_S=${PREALIGN_SLURM_WAIT_S:-60}

log() { echo "[slurm-local] $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# nproc honours OMP_NUM_THREADS (often 1 in the tests' environment): count without it
cpu_count() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }

munge_ok() { munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
  # The machine's key (STACK.md: created if absent), but a munged of our own on a socket in SCRATCH, named in
  # slurm.conf (AuthInfo=socket=...): two clusters, or a cluster and the machine's munged, never share one,
  # so stopping this cluster cannot break another. As root, munged wants a root-owned copy of the key.
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key (1 KiB random)"
    install -d -o munge -g munge -m 700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  [ ${#MUNGE_SOCKET} -le 100 ] || die "$MUNGE_SOCKET: too long for a Unix socket path; use a shorter SCRATCH"
  install -d -m 755 "$SCRATCH/munge"
  install -m 400 /etc/munge/munge.key "$SCRATCH/munge/munge.key"
  # -F: foreground (we keep its pid); -f: accept the scratch folder's parents (pytest's are mode 700)
  setsid "$(command -v munged || echo /usr/sbin/munged)" -F -f --key-file="$SCRATCH/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$SCRATCH/munge/munged.pid" --log-file="$SCRATCH/munge/munged.log" \
    --seed-file="$SCRATCH/munge/munged.seed" > "$SCRATCH/munge/munged.stdout" 2>&1 < /dev/null &
  echo $! > "$SCRATCH/munged.daemon.pid"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { stop; die "munged does not answer on $MUNGE_SOCKET (see $SCRATCH/munge/munged.log)"; }
}

write_conf() {
  local host cpus
  host=$(hostname -s)
  cpus=$(cpu_count)
  mkdir -p "$SCRATCH/state" "$SCRATCH/spool" "$SCRATCH/log"
  cat > "$CONF" <<EOF
# Written by scripts/slurm_local_cluster.sh: a single-node test cluster (CPU only, no accounting).
ClusterName=prealign-local
SlurmctldHost=$host
SlurmctldPort=${PREALIGN_SLURMCTLD_PORT:-6817}
SlurmdPort=${PREALIGN_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/slurmctld.pid
SlurmdPidFile=$SCRATCH/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() { sinfo -h -o %T 2>/dev/null | head -n1; }

start() {
  command -v slurmctld >/dev/null 2>&1 || die "slurmctld not found: apt-get install -y slurm-wlm munge"
  [ "$(id -u)" = 0 ] || die "run as root (SlurmUser=root; jobs run as root)"
  mkdir -p "$SCRATCH/log"
  if pid_alive "$SCRATCH/slurmctld.daemon.pid" || pid_alive "$SCRATCH/slurmd.daemon.pid" || pid_alive "$SCRATCH/munged.daemon.pid"; then
    die "a cluster from $SCRATCH is already running (stop it first: $0 stop $SCRATCH)"
  fi
  start_munge
  write_conf
  # -D: stay in the foreground (we keep its pid); setsid: detached from the caller's terminal and signals.
  setsid slurmctld -D -c -f "$CONF" > "$SCRATCH/log/slurmctld.stdout" 2>&1 < /dev/null &
  echo $! > "$SCRATCH/slurmctld.daemon.pid"
  setsid slurmd -D -f "$CONF" > "$SCRATCH/log/slurmd.stdout" 2>&1 < /dev/null &
  echo $! > "$SCRATCH/slurmd.daemon.pid"
  local t0=$SECONDS state=""
  while [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do
    state=$(node_state || true)
    [ "$state" = idle ] && break
    pid_alive "$SCRATCH/slurmctld.daemon.pid" || { stop; die "slurmctld exited; see $SCRATCH/log/slurmctld.log"; }
    pid_alive "$SCRATCH/slurmd.daemon.pid" || { stop; die "slurmd exited; see $SCRATCH/log/slurmd.log"; }
    sleep 0.5
  done
  [ "$state" = idle ] || { stop; die "node not idle after ${WAIT_S}s (state: ${state:-none}); logs: $SCRATCH/log"; }
  log "cluster up: node $(hostname -s) idle ($(cpu_count) CPUs); export SLURM_CONF=$CONF"
}

kill_pidfile() {  # kill_pidfile FILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
  local f=$1 name=$2 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

stop() {
  if pid_alive "$SCRATCH/slurmctld.daemon.pid"; then
    # Cancel what is left so that no job step outlives the daemons, and give slurmd time to clean up.
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  kill_pidfile "$SCRATCH/slurmd.daemon.pid" slurmd
  kill_pidfile "$SCRATCH/slurmctld.daemon.pid" slurmctld
  kill_pidfile "$SCRATCH/munged.daemon.pid" munged
  log "stopped (scratch kept: $SCRATCH)"
}

status() {
  local up=0
  pid_alive "$SCRATCH/slurmctld.daemon.pid" && { log "slurmctld running ($(cat "$SCRATCH/slurmctld.daemon.pid"))"; up=1; }
  pid_alive "$SCRATCH/slurmd.daemon.pid" && log "slurmd running ($(cat "$SCRATCH/slurmd.daemon.pid"))"
  if [ $up = 1 ]; then sinfo; squeue; else log "not running"; return 1; fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [SCRATCH]" >&2; exit 2 ;;
esac
