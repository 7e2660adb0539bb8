"""Run a sweep locally, one run after another (or `--parallel N` at a time); re-running resumes it.

    python launchers/run_sweep.py configs/repro/english_clone.sweep.yaml [--nproc 2] [--parallel 1]
        [--only NAME ...] [--dry-run] [-- EVALUATE FLAGS ...]

Each run trains with launchers/pretrain.py (deepspeed launcher with --nproc ranks, or one plain process)
unless its folder has the DONE marker, then is evaluated with launchers/evaluate.py unless
<run>/eval/results.json exists. The flags after `--` go to launchers/evaluate.py. SLURM clusters use
launchers/submit_sweep.py with the same sweep file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.launch.sweep import SweepError
from prealign_scale.launch.sweep_local import LocalSweepOptions, run_local_sweep


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    eval_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, eval_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("sweep", help="sweep YAML (prealign_scale/launch/sweep.py)")
    p.add_argument("--nproc", type=int, default=2, help="ranks per run (default 2; 1 = a plain process)")
    p.add_argument("--parallel", type=int, default=1, help="runs at the same time (default 1)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs of the sweep")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    try:
        status = run_local_sweep(a.sweep, LocalSweepOptions(nproc=a.nproc, parallel=a.parallel,
                                                            eval_args=tuple(eval_args)), a.only, a.dry_run)
    except (SweepError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = {k: v for k, v in status.items() if v.startswith("failed")}
    print(f"[sweep] {len(status) - len(failed)} of {len(status)} runs ok" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
