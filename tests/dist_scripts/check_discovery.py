"""Rank discovery + process group under a launcher (mpirun in the tests): writes one JSON file per rank.

``mpirun -np 2 python tests/dist_scripts/check_discovery.py OUT_DIR``: each rank discovers its rank, starts
the process group through `prealign_scale.dist`, all-reduces its rank (0 + 1 = 1 on two ranks) and writes
``OUT_DIR/rank<r>.json``. Files, not stdout: mpirun forwards the ranks' stdout in chunks that can run two
ranks' lines together.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from prealign_scale import dist as pdist


def main() -> None:
    info = pdist.discover()
    pdist.init_process_group(info, timeout_minutes=2)
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(info.rank)])
    dist.all_reduce(t)
    row = {"rank": info.rank, "local_rank": info.local_rank, "world": info.world_size,
           "launcher": info.launcher, "addr": os.environ["MASTER_ADDR"], "port": info.master_port,
           "sum": t.item(), "backend": dist.get_backend()}
    (Path(sys.argv[1]) / f"rank{info.rank}.json").write_text(json.dumps(row))
    pdist.shutdown()


if __name__ == "__main__":
    main()
