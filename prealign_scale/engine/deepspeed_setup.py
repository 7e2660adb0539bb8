"""The one place a DeepSpeed engine is created: the phase's ds_config, the partitioned model, the optimizer.

- ds_config: the JSON file of ``run.ds_config`` plus what the experiment config decides: the batch sizes
  (``train_micro_batch_size_per_gpu`` = entries_per_rank / micro_batch_size, ``gradient_accumulation_steps``,
  ``train_batch_size``), the optimizer's lr and weight decay. The learning rate is set by the training loop
  every step (`schedule.lr_at`), so a DeepSpeed ``scheduler`` section is refused.
- model: `build_gpt_model` inside ``deepspeed.zero.Init`` over megatron's data-parallel group (the builder
  does this), with the weights of an HF folder copied in when asked (``model.init_hf``: `hf_init.py`), plus
  the parameter-free helper modules the phase needs (unembedding rows, the phase's `prepare_model`: phase 2's
  fused LM head). Activation recomputation (megatron's, full, per layer) is on when the phase allows it
  (phase 2), the JSON has an ``activation_checkpointing`` section and CUDA is present (it saves and restores
  CUDA RNG states).
- the phase's choices come from its class (`phases.phase_class`): its config section, its micro-batch size.
- optimizer: the JSON's (AdamW; ``"torch_adam": true`` on CPU), over two parameter groups: matrices
  (embeddings, linear layers) with weight decay, vectors (RMSNorm weights) without.
- ``deepspeed.initialize(..., mpu=MegatronMPU())`` so ZeRO-3 partitions over the data-parallel group only.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from prealign_scale.config import Config
from prealign_scale.engine.phases import phase_class
from prealign_scale.engine.resolve_config import tp_size
from prealign_scale.model.taps import attach_unembedding_rows


def phase_ds_config(cfg: Config, phase: str, dp_world_size: int) -> dict:
    """The DeepSpeed config dict of the phase named `phase`."""
    ds = json.loads(Path(cfg.run.ds_config).read_text())
    if "scheduler" in ds:
        raise ValueError(f"{cfg.run.ds_config}: remove the 'scheduler' section: the learning rate comes from the "
                         f"{phase}.lr / warmup_frac / schedule keys of the experiment config")
    cls = phase_class(phase)
    p, micro = cls.section(cfg), cls.micro_batch_size(cfg)
    ds["train_micro_batch_size_per_gpu"] = int(micro)
    ds["gradient_accumulation_steps"] = int(p.grad_accum)
    ds["train_batch_size"] = int(micro) * int(p.grad_accum) * dp_world_size
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    opt.setdefault("params", {})
    opt["params"]["lr"] = float(p.lr)
    opt["params"]["weight_decay"] = float(p.weight_decay)
    ds.setdefault("steps_per_print", 2**31 - 1)  # our own metrics replace DeepSpeed's periodic prints
    return ds


def model_vocab_size(cfg: Config) -> int:
    """The embedding rows: the config's vocab size, padded to a multiple of the TP size when TP > 1."""
    from prealign_scale.model.builder import pad_vocab_size

    v, tp = int(cfg.model.vocab_size), tp_size(cfg)
    return v if tp == 1 else pad_vocab_size(v, tp, multiple=1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay, vectors (norm weights) do not. Under zero.Init the full shape is ``p.ds_shape``."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_engine(cfg: Config, phase: str, init_hf: str | None = None):
    """Model + ZeRO-3 engine for `phase`, starting from the HF folder `init_hf` when given (else megatron's
    random initialisation). Needs the process group and megatron's groups (run.py)."""
    import deepspeed

    from prealign_scale.model.builder import build_gpt_model, ds_config_dtype
    from prealign_scale.model.cpu_compat import cuda_available
    from prealign_scale.model.parallel import MegatronMPU, dp_world_size
    from prealign_scale.model.presets import get_preset

    cls = phase_class(phase)
    ds = phase_ds_config(cfg, phase, dp_world_size())
    recompute = "activation_checkpointing" in ds and cuda_available() and cls.allows_recompute
    model = build_gpt_model(get_preset(cfg.model.preset), model_vocab_size(cfg), int(cfg.model.seq_len),
                            ds_config=ds, params_dtype=ds_config_dtype(ds), recompute_activations=recompute,
                            attention=cfg.model.attention)
    if init_hf is not None:  # before deepspeed.initialize, which copies the parameters into the optimizer
        from prealign_scale.engine.hf_init import load_hf_weights

        load_hf_weights(model, init_hf, get_preset(cfg.model.preset))
    # word vectors use the unembedding rows outside the output layer: phase 1, and the alignment probe
    if cls.uses_word_vectors or (cfg.run.probe_every > 0 and cfg.data.table_dir):
        attach_unembedding_rows(model)
    cls.prepare_model(model, cfg)  # e.g. phase 2's fused LM head
    weight_decay = cls.section(cfg).weight_decay
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, weight_decay),
                                           config=copy.deepcopy(ds), mpu=MegatronMPU())
    return engine


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def reset_optimizer(engine, weight_decay: float) -> None:
    """A fresh optimizer on loaded weights (phase 2 starting from phase 1): drop the moment estimates and
    step counts, and put back this phase's weight decay (load_state_dict restored the saved groups)."""
    inner = engine.optimizer.optimizer if hasattr(engine.optimizer, "optimizer") else engine.optimizer
    inner.state.clear()
    for group in engine.optimizer.param_groups:
        group["weight_decay"] = 0.0 if group.get("name") == "no_decay" else weight_decay
    engine.global_steps, engine.global_samples = 0, 0
