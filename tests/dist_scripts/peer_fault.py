"""One rank of a 2-rank job that all-reduces over the engine's data-parallel group until a peer fails.

    python tests/dist_scripts/peer_fault.py TIMEOUT_MINUTES      (rank variables in the environment)

The process groups come from the engine's own start (`engine.run.start_distributed`: the world group,
megatron's groups, `dist.timeout_minutes` applied to all of them). The rank prints ``READY`` once the loop
runs; when a collective fails it prints one JSON line {"rank", "error", "t_error"} (wall-clock time of the
failure) and exits 3. tests/test_fault_tolerance.py kills (SIGKILL) or stops (SIGSTOP) the other rank.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    import torch
    import torch.distributed as dist

    from prealign_scale.config import Config
    from prealign_scale.engine.run import start_distributed
    from prealign_scale.model.parallel import dp_group

    cfg = Config()
    cfg.dist.timeout_minutes = float(sys.argv[1])
    start_distributed(cfg)
    group, t = dp_group(), torch.ones(1024)
    dist.all_reduce(t, group=group)
    print("READY", flush=True)
    try:
        while True:
            dist.all_reduce(t, group=group)
            t.fill_(1.0)
            time.sleep(0.001)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        print(json.dumps({"rank": dist.get_rank(), "error": first, "t_error": time.time()}), flush=True)
        return 3


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # os._exit, not sys.exit: after a failed collective the process groups cannot be torn down cleanly, and
    # an interpreter exit with them alive can abort (SIGABRT, "terminate called without an active exception")
    # instead of exiting with the status the test checks.
    os._exit(code)
