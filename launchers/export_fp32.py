"""Consolidated fp32 weights of a run's ZeRO-3 checkpoint, after verifying it against its manifest.

    python launchers/export_fp32.py RUN_DIR [--tag TAG] [--out PATH] [--torch]

Checks the tag (default: the one ``RUN_DIR/checkpoints/latest`` names): its completeness marker, then the
size and sha256 of every file its manifest lists. A damaged checkpoint is refused with one line naming the
file (exit 2). Then writes an HF folder (default ``RUN_DIR/hf-<tag>``) or, with ``--torch``, a torch state
dict of the megatron parameter names (default ``RUN_DIR/fp32-<tag>.pt``). One process, CPU; TP=1 checkpoints.
Use this instead of DeepSpeed's unchecked ``checkpoints/zero_to_fp32.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("run_dir", type=Path, help="a run folder (run.out_dir)")
    parser.add_argument("--tag", help="checkpoint tag, e.g. lm-step00000008 (default: checkpoints/latest)")
    parser.add_argument("--out", type=Path, help="output HF folder, or torch file with --torch")
    parser.add_argument("--torch", action="store_true", help="write a torch state dict instead of an HF folder")
    args = parser.parse_args(argv)

    from prealign_scale.config import ConfigError
    from prealign_scale.engine.export import CheckpointDamagedError, export_checkpoint

    try:
        out = export_checkpoint(args.run_dir, args.tag, args.out, torch_file=args.torch)
    except (CheckpointDamagedError, ConfigError) as exc:
        print(f"[export_fp32] error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"[export_fp32] wrote {out}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
