"""Submit a sweep (sizes x languages x arms x seeds) as one SLURM job array of launchers/slurm/train.sbatch.

    python launchers/submit_sweep.py configs/sweeps/X.yaml [--max-parallel 4] [--all] [--dry-run] \
        [-- sbatch options, e.g. --nodes=1 --ntasks-per-node=8 --gpus-per-node=8 --time=12:00:00]

Expands the sweep (prealign_scale/launch/sweep.py), checks every run's config and overrides, freezes the run list to
``<out_root>/sweep-<hash>.json`` and submits ``sbatch --array=<ids> ... train.sbatch`` with PREALIGN_SWEEP
pointing at that list: array task i trains run i in ``<out_root>/<run name>``. Finished runs (their DONE
marker exists) are left out of the array unless --all (a task of a finished run exits at once anyway).
Logs: ``<out_root>/logs/<run index>-<job id>.out``. Prints the job id (or, with --dry-run, the sbatch command).
Sbatch options come from the sweep file's ``sbatch:`` list, then from the command line after ``--``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def array_spec(ids: list[int], max_parallel: int | None) -> str:
    """sbatch --array value: ranges for consecutive ids (0-3,5,7-8), then %max_parallel."""
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts) + (f"%{max_parallel}" if max_parallel else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, sbatch_extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("sweep", help="sweep YAML (prealign_scale/launch/sweep.py describes the format)")
    parser.add_argument("--max-parallel", type=int, help="at most this many array tasks run at once (%%N)")
    parser.add_argument("--all", action="store_true", help="submit finished runs too (their tasks skip at once)")
    parser.add_argument("--dry-run", action="store_true", help="write the task list, print the sbatch command")
    parser.add_argument("--script", default=str(ROOT / "launchers/slurm/train.sbatch"), help="the batch script")
    args = parser.parse_args(ours)

    from prealign_scale.engine.run_folder import run_is_finished
    from prealign_scale.launch import sweep as sw

    try:
        if args.max_parallel is not None and args.max_parallel < 1:
            raise sw.SweepError(f"--max-parallel: must be >= 1, got {args.max_parallel}")
        sweep = sw.load_sweep(args.sweep)
        runs = sw.expand_sweep(sweep)
        sw.check_runs(runs, args.sweep)
    except sw.SweepError as exc:
        print(f"submit_sweep: {exc}", file=sys.stderr)
        return 2
    ids = [i for i, r in enumerate(runs) if args.all or not run_is_finished(r.out_dir)]
    print(f"submit_sweep: {len(runs)} runs, {len(runs) - len(ids)} left out as finished", file=sys.stderr)
    if not ids:
        print("submit_sweep: every run is finished; nothing to submit", file=sys.stderr)
        return 0
    # absolute: they stay valid whatever --chdir the sbatch options give (run folders stay as written:
    # relative to the job's working directory, like pretrain.py's paths)
    tasks = sw.save_tasks(runs, sweep.out_root, source=args.sweep).resolve()
    logs = Path(sweep.out_root).resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable", f"--array={array_spec(ids, args.max_parallel)}",
           f"--job-name=sweep-{Path(sweep.out_root).name}", f"--output={logs}/%a-%A.out",
           f"--export=ALL,PREALIGN_SWEEP={tasks}", *sweep.sbatch, *sbatch_extra, args.script]
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"submit_sweep: sbatch failed ({proc.returncode}): {proc.stderr.strip()}", file=sys.stderr)
        return proc.returncode
    job_id = proc.stdout.strip().split(";")[0]
    print(f"submit_sweep: job array {job_id}: tasks {array_spec(ids, None)} of {tasks}", file=sys.stderr)
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
