"""The exported hf/ folder reproduces the training model: ``python check_export.py RUN_DIR``.

Single process (a world-1 gloo group): builds the plain megatron model from the consolidated fp32 weights of
the run's latest DeepSpeed checkpoint (``zero_to_fp32``), loads RUN_DIR/hf with
``transformers.AutoModelForCausalLM``, and prints the largest logit difference on a fixed input as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from prealign_scale import dist as pdist
from prealign_scale.config import parse_config


def main() -> None:
    run_dir = Path(sys.argv[1])
    cfg = parse_config(run_dir / "config.yaml")
    pdist.init_process_group(pdist.discover(), 5.0, "gloo")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from prealign_scale.model.builder import build_gpt_model
    from prealign_scale.model.parallel import init_model_parallel
    from prealign_scale.model.presets import get_preset

    init_model_parallel(1, seed=0)
    sd = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"))
    model = build_gpt_model(get_preset(cfg.model.preset), int(cfg.model.vocab_size), int(cfg.model.seq_len)).eval()
    model.load_state_dict(sd, strict=False)
    hf = AutoModelForCausalLM.from_pretrained(str(run_dir / "hf"), dtype=torch.float32).eval()
    ids = torch.randint(0, int(cfg.model.vocab_size), (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids, torch.arange(32).expand(2, 32), None).float()
        theirs = hf(input_ids=ids).logits.float()
    print(json.dumps({"max_abs_diff": float((ours - theirs).abs().max()), "logit_scale": float(ours.abs().max()),
                      "hf_vocab": int(hf.config.vocab_size)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
