"""``model.init_hf``: start a run from the weights of an HF `LlamaForCausalLM` folder (continued pretraining).

`deepspeed_setup.build_engine` calls `load_hf_weights` between building the partitioned model
(``deepspeed.zero.Init``) and ``deepspeed.initialize``: the optimizer's fp32 master copy is made from the
parameters at that point, so the loaded values are the ones training starts from. Every parameter in turn
is gathered (``deepspeed.zero.GatheredParameters(..., modifier_rank=0)``); the data-parallel rank 0 of each
tensor-parallel slice copies its TP slice of the converted HF tensor into it; on leaving the context
DeepSpeed broadcasts it to the other data-parallel ranks and partitions it again. Only those ranks read the
folder, one transformer block at a time (`hf_convert.HFCheckpointReader`), so no rank ever holds the whole
checkpoint. With bf16 parameters the fp32 weights are rounded to bf16 once (the master copy starts there).

run.py decides when: only for a phase that starts from scratch (no checkpoint in ``run.out_dir`` yet); a
resume, or a phase continuing from an earlier phase's weights, loads the checkpoint instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prealign_scale.model.presets import ModelPreset


def load_hf_weights(model: torch.nn.Module, hf_dir: str | Path, preset: ModelPreset) -> int:
    """Copy the weights of the HF folder `hf_dir` into the ZeRO-3 partitioned megatron `model`.

    Collective: every rank calls it, with the same model. Returns the number of parameters loaded. The folder
    was checked against the preset and the vocab size by the config validation (`hf_convert.check_hf_folder`);
    a shape that still differs raises ValueError naming the parameter.
    """
    import deepspeed

    from prealign_scale.model.hf_convert import HFCheckpointReader, split_tp_shards
    from prealign_scale.model.parallel import dp_rank, tp_rank, tp_world_size

    # Transformer Engine's layers hold the RMSNorm weights inside the next linear (`layer_norm_weight`)
    te_layout = any(name.endswith("layer_norm_weight") for name, _ in model.named_parameters())
    reader = HFCheckpointReader(hf_dir, preset, te_layout=te_layout) if dp_rank() == 0 else None
    tp = tp_world_size()
    count = 0
    for name, param in model.named_parameters():
        # modifier_rank is a rank of the parameter's data-parallel group: its DP rank 0 writes, the rest receive
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if reader is not None:
                value = reader.tensor(name)
                if tp > 1:
                    value = split_tp_shards({name: value}, tp)[tp_rank()][name]
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"model.init_hf={hf_dir}: {name} has shape {tuple(value.shape)} there (TP "
                                     f"slice {tp_rank()} of {tp}), the model's is {tuple(param.shape)}")
                with torch.no_grad():
                    param.data.copy_(value)
        count += 1
    return count
