"""Run a launcher so that a stop signal checkpoints every rank before anything exits (the recommended way to
start training with ``deepspeed`` or ``mpirun`` on one machine; docs/cluster.md, "Signals").

    python launchers/supervise.py deepspeed --num_gpus 2 launchers/pretrain.py --config configs/tiny.yaml
    python launchers/supervise.py mpirun -np 2 python launchers/pretrain.py --config configs/tiny.yaml
    python launchers/supervise.py srun python launchers/pretrain.py --config configs/tiny.yaml

SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 to this process reach every training rank (SIGTERM, or SIGUSR1; under
srun, SIGUSR1 through srun, which would cancel the step on a SIGTERM of its own); they
finish the step, write the checkpoint and exit 0, and only then does this process exit, with the launcher's
status. A second SIGTERM / SIGINT kills the launcher and the ranks at once. Logic:
prealign_scale/launch/supervise.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 0 if argv else 2
    from prealign_scale.launch.supervise import supervise

    return supervise(argv)


if __name__ == "__main__":
    sys.exit(main())
