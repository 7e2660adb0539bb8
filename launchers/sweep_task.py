"""Resolve which run a SLURM job (or job-array task) trains, for launchers/slurm/train.sbatch.

    python launchers/sweep_task.py --sweep runs/sweeps/x/sweep-<hash>.json --shell      # task SLURM_ARRAY_TASK_ID
    python launchers/sweep_task.py --sweep configs/sweeps/x.yaml --task-id 3 --shell
    python launchers/sweep_task.py --sweep configs/sweeps/x.yaml --list                 # index, name, status
    python launchers/sweep_task.py --shell --config configs/tiny.yaml lm.steps=20       # a single run

--shell prints shell assignments for ``eval`` (values quoted with shlex):

    RUN_INDEX=3  RUN_NAME=tiny_prealign_s1  RUN_DIR=runs/sweeps/x/tiny_prealign_s1
    RUN_DONE=runs/sweeps/x/tiny_prealign_s1/DONE  RUN_FINISHED=0|1  RUN_ARGS=(--config ... run.out_dir=...)

RUN_ARGS are the arguments of launchers/pretrain.py. Exit status 2 (one message on stderr) for a bad sweep,
config or task id. The logic lives in prealign_scale/launch/sweep.py (the DONE marker: prealign_scale/engine/run_folder.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def shell_assignments(index: int, spec) -> str:
    from prealign_scale.engine.run_folder import done_path, run_is_finished

    finished = "1" if run_is_finished(spec.out_dir) else "0"
    values = {"RUN_INDEX": str(index), "RUN_NAME": spec.name, "RUN_DIR": spec.out_dir,
              "RUN_DONE": str(done_path(spec.out_dir)), "RUN_FINISHED": finished}
    lines = [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    lines.append("RUN_ARGS=(" + " ".join(shlex.quote(a) for a in spec.launcher_args()) + ")")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--sweep", help="sweep YAML, or the frozen task list sweep-<hash>.json (submit_sweep.py)")
    src.add_argument("--config", help="a single run: experiment YAML (then section.key=value overrides)")
    parser.add_argument("--task-id", type=int, help="run index in the sweep (default: $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--phase", choices=["all", "align", "lm"], help="single run: passed on to pretrain.py")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--shell", action="store_true", help="print the run as shell assignments (for eval)")
    out.add_argument("--list", action="store_true", help="print every run of the sweep: index, status, name")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)

    from prealign_scale.engine.run_folder import run_is_finished
    from prealign_scale.launch import sweep as sw

    try:
        if args.config is not None:
            if args.list or args.task_id is not None:
                raise sw.SweepError("--list and --task-id need --sweep")
            overrides = list(args.overrides) + ([f"run.phase={args.phase}"] if args.phase else [])
            spec, index = sw.single_run(args.config, overrides), 0
        else:
            if args.overrides or args.phase:
                raise sw.SweepError(f"--sweep takes no overrides (got {' '.join(args.overrides) or '--phase'}); "
                                    "put them in the sweep file")
            runs = sw.load_runs(args.sweep)
            if args.list:
                for i, r in enumerate(runs):
                    print(f"{i}\t{'finished' if run_is_finished(r.out_dir) else 'todo'}\t{r.name}")
                return 0
            index = args.task_id if args.task_id is not None else sw.task_id_from_env()
            spec = sw.task_run(runs, index, args.sweep)
    except sw.SweepError as exc:
        print(f"sweep_task: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(shell_assignments(index, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
