"""Train a PreAlign model: phase 1 (alignment initialisation) then phase 2 (LM pretraining).

    deepspeed --num_gpus 2 launchers/pretrain.py --config configs/tiny.yaml [section.key=value ...] [--phase P]
    torchrun --nproc_per_node 2 launchers/pretrain.py --config configs/tiny.yaml lm.steps=20
    mpirun -np 2 python launchers/pretrain.py --config configs/tiny.yaml
    srun python launchers/pretrain.py --config configs/tiny.yaml

Overrides are dotted keys (``lm.steps=20``, ``run.out_dir=runs/x``); ``--phase align|lm|all`` is short for
``run.phase=...``. The config is validated before any process group starts: a bad value prints one message
naming the key (on rank 0) and exits with status 2; so does a run folder another job holds (its ``LOCK``).
Re-running the same command resumes from the run folder's latest checkpoint. See docs/training.md; to stop
every rank with a checkpoint on a signal to the launcher, start it under launchers/supervise.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    # allow_abbrev=False: no prefix matching of our flags (torchrun's own parser has that trap, STACK.md)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    parser.add_argument("--phase", choices=["all", "align", "lm"], help="train only this phase (run.phase)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed passes it
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_intermixed_args(argv)

    from prealign_scale import dist as pdist
    from prealign_scale.config import ConfigError
    from prealign_scale.engine.resolve_config import load_config

    env = pdist.discover()
    overrides = list(args.overrides) + ([f"run.phase={args.phase}"] if args.phase else [])
    try:
        cfg = load_config(args.config, overrides, world_size=env.world_size)
    except ConfigError as exc:
        if env.rank == 0:
            print(f"config error: {exc}", file=sys.stderr, flush=True)
        else:
            # Launchers kill every rank once one fails: give rank 0 the time to print the message first.
            time.sleep(5)
        return 2

    from prealign_scale.engine.run import run

    return run(cfg, env)


if __name__ == "__main__":
    sys.exit(main())
