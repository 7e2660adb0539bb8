"""The launch layer: orchestration above the engine (the engine knows one run).

- `sweep`: the sweep file format, its expansion into runs, frozen task lists and SLURM task ids
- `sweep_local`: run (or resume) a sweep on this machine: train each run with the real launcher, then evaluate
- `probe_phase1`: the phase-1 alignment probe recipe (export the init, train phase 1, probe both)
- `supervise`: run a launcher (deepspeed, mpirun, srun) so that a stop signal checkpoints every rank before it exits

Front doors (launchers/run_sweep.py, submit_sweep.py, sweep_task.py, sweep_report.py, probe_phase1.py,
supervise.py) parse
arguments and call these. A run's completion marker belongs to the engine (engine/run_folder.py).
"""
