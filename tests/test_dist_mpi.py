"""MPI discovery of the offline tools: plain multi-task srun (no MPI variables) is refused, not run N times."""

import pytest

from prealign_scale.dist_mpi import LauncherError, check_launcher, slurm_step_tasks, under_mpi_launcher

# what `srun -n 4 python ...` (no --mpi) puts in each task's environment (the parts that matter here)
PLAIN_SRUN = {"SLURM_JOB_ID": "17", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "2"}
# the batch script of `sbatch --ntasks=4`: one process, though SLURM_NTASKS says 4
BATCH_SCRIPT = {"SLURM_JOB_ID": "17", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}


def test_plain_srun_with_several_tasks_is_refused():
    assert slurm_step_tasks(PLAIN_SRUN) == 4 and not under_mpi_launcher(PLAIN_SRUN)
    with pytest.raises(LauncherError, match=r"one of 4 srun tasks without MPI.*srun --mpi=pmix.*mpirun"):
        check_launcher(PLAIN_SRUN)
    # an older SLURM without SLURM_STEP_NUM_TASKS: inside a step, SLURM_NTASKS is the step's task count
    old = {k: v for k, v in PLAIN_SRUN.items() if k != "SLURM_STEP_NUM_TASKS"}
    with pytest.raises(LauncherError, match="one of 4 srun tasks"):
        check_launcher(old)


@pytest.mark.parametrize("env", [
    {},  # no launcher at all
    BATCH_SCRIPT,  # a batch script is a single process
    {**PLAIN_SRUN, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"},  # srun -n 1
    {**PLAIN_SRUN, "PMIX_RANK": "2"},  # srun --mpi=pmix
    {**PLAIN_SRUN, "PMI_SIZE": "4"},  # srun --mpi=pmi2
    {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"},  # mpirun
])
def test_single_process_or_mpi_launch_is_accepted(env):
    check_launcher(env)  # no error
    assert slurm_step_tasks(BATCH_SCRIPT) == 1
