#!/usr/bin/env bash
# Self-install for `make demo` / `make test` on a fresh Debian machine (root): system packages when missing,
# then .venv with the pinned dependencies (torch first, so pip never picks a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/openmpi ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include ] || need_apt+=(libopenmpi-dev)
command -v numactl >/dev/null 2>&1 || need_apt+=(numactl)
# --- cluster operations (tests/test_slurm.py: a single-node SLURM cluster, scripts/slurm_local_cluster.sh)
{ command -v slurmctld && command -v slurmd && command -v munged; } >/dev/null 2>&1 || need_apt+=(slurm-wlm munge)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[install] apt-get install ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  "$PY" -m venv .venv
fi
echo "[install] pip install (torch==2.13.0 first, then the project with its pins)"
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
# liger-kernel: the LM head's fused cross-entropy on CUDA (lm.lm_loss_impl auto/liger); its own requirements
# would pull a CUDA torch, so without them (STACK.md). Tested on CPU under the Triton interpreter.
.venv/bin/pip install -q --no-deps liger-kernel==0.8.5
echo "[install] done"
