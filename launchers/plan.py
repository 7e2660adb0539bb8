"""Capacity planner: per-GPU memory, throughput and time to the token budget of a run config.

    python launchers/plan.py --config configs/7b.yaml --gpus 64 --gpu h100 [--mfu 0.4] [--vocab 32000]
        [section.key=value ...]

Pure arithmetic (prealign_scale/launch/plan.py; docs/training.md#capacity-planning): nothing is built.
Prints a table; exit 0 when the run fits, 1 when it does not (the fixes are listed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs")
    parser.add_argument("--gpu", default="h100", help="GPU kind: h100, h200, a100-80g, a100-40g")
    parser.add_argument("--mfu", type=float, default=0.40, help="assumed model FLOPs utilisation (default 0.40)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="vocabulary size when the config's model.vocab_size is null (default 32000)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_intermixed_args(argv)

    from prealign_scale.config import ConfigError, parse_config
    from prealign_scale.launch.plan import format_plan, plan_run

    try:
        cfg = parse_config(args.config, list(args.overrides))
        plan = plan_run(cfg, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu,
                        vocab=args.vocab if args.vocab is not None else 32000)
    except ConfigError as exc:
        print(f"plan error: {exc}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
