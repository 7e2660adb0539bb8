"""Export a run's freshly initialised model (no training step) as an HF folder, to probe it.

    python launchers/export_init.py --config configs/repro/base.yaml [section.key=value ...]

Writes ``run.out_dir/hf`` and ``run.out_dir/config.yaml`` (so `launchers/evaluate.py run.out_dir` finds the
alignment table). The model is exactly the one `prealign_scale.engine.run.run` starts phase 1 from: the same
process group setup, ``seed_everything(run.seed)`` and ``build_engine(cfg, "align")`` (from ``model.init_hf``
when the config sets one), then the engine's own export. One process (or any launcher pretrain.py accepts); nothing is trained and no checkpoint is written.
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
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed passes it
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_intermixed_args(argv)

    from prealign_scale import dist as pdist
    from prealign_scale.config import ConfigError, save_config
    from prealign_scale.engine.resolve_config import load_config

    env = pdist.discover()
    try:
        cfg = load_config(args.config, list(args.overrides) + ["run.phase=align"], world_size=env.world_size)
    except ConfigError as exc:
        if env.rank == 0:
            print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    if cfg.align.steps <= 0:  # phase 1 is what the exported weights would start; it must exist
        print("config error: align.steps must be > 0 (the model phase 1 starts from)", file=sys.stderr)
        return 2

    import torch.distributed as dist

    from prealign_scale.engine.deepspeed_setup import build_engine, model_vocab_size
    from prealign_scale.engine.export import export_run
    from prealign_scale.engine.run import log0, seed_everything, start_distributed

    out = Path(cfg.run.out_dir)
    if (out / "hf" / "config.json").is_file():
        print(f"[export_init] {out}/hf exists; nothing to do", file=sys.stderr)
        return 0
    start_distributed(cfg, env)
    # the same sequence as run(): seed, then build the phase-1 engine (model init happens inside)
    seed_everything(cfg.run.seed)
    engine = build_engine(cfg, "align", init_hf=cfg.model.init_hf)  # model.init_hf: a run that starts there
    if dist.get_rank() == 0:
        save_config(cfg, out / "config.yaml")
    folder = export_run(engine, cfg, out, model_vocab_size(cfg))
    log0(f"exported the initial model: {folder}")
    dist.barrier()
    engine.destroy()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
