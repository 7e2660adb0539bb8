#!/bin/bash
# One torchrun per node, started by launchers/slurm/train.sbatch (PREALIGN_LAUNCH=torchrun) through srun:
#   srun --ntasks-per-node=1 bash launchers/slurm/torchrun_node.sh ENTRY [pretrain.py arguments ...]
# The rendezvous comes from SLURM: nodes SLURM_JOB_NUM_NODES, this node SLURM_NODEID, processes per node
# PREALIGN_NPROC_PER_NODE or SLURM_GPUS_ON_NODE, master MASTER_ADDR:MASTER_PORT (exported by train.sbatch).
set -euo pipefail

# SLURM's --signal=USR1 reaches every process of the step. torchrun has no SIGUSR1 handler, so the default
# action would kill it and orphan its workers mid-checkpoint. Ignore it here: torchrun inherits the ignore,
# and the training processes install their own SIGUSR1 handler (checkpoint and exit 0).
trap '' USR1

entry=$1
shift
nproc=${PREALIGN_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
exec "${PREALIGN_PYTHON:-python3}" -m torch.distributed.run \
  --nnodes="${SLURM_JOB_NUM_NODES:-1}" --node_rank="${SLURM_NODEID:-0}" --nproc_per_node="$nproc" \
  --master_addr="${MASTER_ADDR:?set by train.sbatch}" --master_port="${MASTER_PORT:?set by train.sbatch}" \
  "$entry" "$@"
