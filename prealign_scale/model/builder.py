"""Build the Llama-style megatron-core `GPTModel` of a size preset (the one place models are constructed).

The model: RMSNorm (pre-norm in every block, plus a final norm), SwiGLU MLP (``gated_linear_unit=True``,
SiLU; fc1 rows = [gate; up]), RoPE (non-interleaved halves, theta from the preset), no biases, grouped-query
attention, untied input embedding and output layer. Dropout is 0. Initialisation is megatron's: every weight
N(0, init_std) except the two residual output projections (``linear_proj``, ``linear_fc2``) at
N(0, init_std / sqrt(2 * num_layers)); norm weights 1. The output layer uses init_std too.

Layer spec (``attention``, config ``model.attention``):
- ``auto`` (default): Transformer Engine's spec when ``transformer_engine`` imports (GPU images: fused
  norm+linear layers), else megatron's local spec with RMSNorm; in both the core attention is
  `SDPAttention` (PyTorch SDPA), which honours the per-document mask.
- ``sdpa``: megatron's local spec with `SDPAttention`, whether or not TE is installed.
- ``flex``: the layers of ``auto`` (TE's when it imports, else local) with `FlexAttention`: given the [b, s]
  segment ids as ``attention_mask``, it restricts attention to each packed document through a
  ``flex_attention`` block mask (compiled on GPU) instead of a dense mask; a boolean mask or ``None`` goes
  to SDPA as in ``sdpa`` (see `flex_attention`).
- ``te``: TE's spec with TE's own core attention. megatron builds it with a *causal* mask type, and TE then
  ignores an explicit ``attention_mask``, so it cannot restrict attention to packed documents (the config
  refuses ``te`` with ``lm.doc_attention``).
On CPU the tests run the local spec; the TE variants need a GPU image with TE. On CPU the accommodations of
`cpu_compat` are applied and weights are initialised on CPU.

ZeRO-3: with ``ds_config`` the model is built inside ``deepspeed.zero.Init`` over megatron's data-parallel
group, so parameters arrive partitioned (``p.ds_tensor`` is this rank's shard, ``p.numel() == 0`` outside
forward). megatron initialises inside each constructor, so the initialisation survives (checked by a test).

Calling the model: ``model(input_ids [b, s], position_ids [b, s], attention_mask)`` returns logits
[b, s, V / tp] (``labels=`` [b, s] makes it return the unreduced per-token loss [b, s] instead).
``attention_mask`` is boolean [b, 1, s, s] (or broadcastable), **True where attention is blocked**, and must
include causality; ``None`` means plain causal attention; with ``flex`` it may also be the integer [b, s]
segment ids (causal within each document). RoPE positions are 0..s-1 (megatron's ``rope``
ignores ``position_ids``; they only feed learned position embeddings, which this model has none of).

Per-layer hidden states (for the alignment phase), without changing the model:
- register forward hooks on ``model.embedding`` (output: embedding output), on each
  ``model.decoder.layers[i]`` (output: a tuple whose first element is the block's output hidden state) and on
  ``model.decoder.final_layernorm`` (output: the final normed state). All are sequence-first [s, b, h].
- the unembedding matrix is ``model.output_layer.weight`` [V / tp, h] (under ZeRO-3 it is partitioned:
  gather it, or register it as an external parameter of the module that uses it).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from prealign_scale.model.cpu_compat import apply_cpu_accommodations, cuda_available
from prealign_scale.model.presets import ModelPreset


def transformer_engine_available() -> bool:
    """True when Transformer Engine can be imported (then its layer spec is used)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # a broken TE install (e.g. no CUDA) is treated as absent
        return False
    return True


ATTENTION_CHOICES = ("auto", "sdpa", "te", "flex")


def resolve_attention(attention: str = "auto") -> str:
    """``auto`` -> ``te+sdpa`` (TE layers, SDPA core attention) when TE imports, else ``sdpa``; ``flex`` ->
    ``te+flex`` (TE layers, flex core attention) when TE imports, else ``flex``."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    if attention in ("auto", "flex"):
        core = "sdpa" if attention == "auto" else "flex"
        return f"te+{core}" if transformer_engine_available() else core
    if attention == "te" and not transformer_engine_available():
        raise RuntimeError("attention='te' but transformer_engine.pytorch does not import")
    return attention


def layer_spec(attention: str = "auto"):
    """The transformer-layer ModuleSpec for `attention` (see the module docstring)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    from prealign_scale.model.flex_attention import FlexAttention
    from prealign_scale.model.sdpa_attention import SDPAttention

    kind = resolve_attention(attention)
    if kind == "te":
        return get_gpt_layer_with_transformer_engine_spec()
    if kind.startswith("te+"):
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    core = FlexAttention if kind.endswith("flex") else SDPAttention
    spec.submodules.self_attention.submodules.core_attention = core
    return spec


def ds_config_dtype(ds_config: dict) -> torch.dtype:
    """The parameter dtype a DeepSpeed config implies: bf16 / fp16 when enabled there, else fp32."""
    if ds_config.get("bf16", {}).get("enabled", False):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled", False):
        return torch.float16
    return torch.float32


def make_transformer_config(
    preset: ModelPreset,
    *,
    params_dtype: torch.dtype = torch.float32,
    init_std: float = 0.02,
    tensor_parallel_size: int = 1,
    recompute_activations: bool = False,
):
    """megatron's TransformerConfig for the Llama-style model of `preset`."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_cpu = not cuda_available()
    if recompute_activations and on_cpu:
        raise ValueError("recompute_activations=True needs CUDA: megatron's activation checkpoint saves and "
                         "restores CUDA RNG states")
    recompute: dict[str, Any] = {}
    if recompute_activations:
        recompute = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return TransformerConfig(
        num_layers=preset.num_layers,
        hidden_size=preset.hidden_size,
        num_attention_heads=preset.num_attention_heads,
        num_query_groups=preset.num_query_groups,
        ffn_hidden_size=preset.ffn_hidden_size,
        kv_channels=preset.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=preset.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_std,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        tensor_model_parallel_size=tensor_parallel_size,
        sequence_parallel=False,
        use_cpu_initialization=on_cpu,
        perform_initialization=True,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        **recompute,
    )


def build_gpt_model(
    preset: ModelPreset,
    vocab_size: int,
    max_seq_len: int,
    *,
    ds_config: dict | None = None,
    params_dtype: torch.dtype = torch.float32,
    init_std: float = 0.02,
    recompute_activations: bool = False,
    attention: str = "auto",
):
    """Build megatron-core's `GPTModel` for `preset` (see the module docstring for the architecture).

    Needs megatron's groups (`prealign_scale.model.parallel.init_model_parallel`); the tensor-parallel size
    is theirs. With `ds_config` (a DeepSpeed config dict with ZeRO stage 3) the parameters are created
    partitioned over the data-parallel group; `params_dtype` must then match the config's bf16/fp16 switch.
    `attention` picks the layer spec: auto, sdpa, te or flex (see the module docstring).
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"build_gpt_model: vocab_size must be a positive int, got {vocab_size!r}")
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ValueError(f"build_gpt_model: max_seq_len must be a positive int, got {max_seq_len!r}")
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_gpt_model: megatron model parallelism is not initialised; call "
                           "prealign_scale.model.parallel.init_model_parallel(tensor_parallel_size) first")
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if vocab_size % tp:
        raise ValueError(f"build_gpt_model: vocab_size={vocab_size} is not divisible by the tensor-parallel size "
                         f"{tp}; pad it (pad_vocab_size)")
    if preset.num_query_groups % tp or preset.num_attention_heads % tp or preset.ffn_hidden_size % tp:
        raise ValueError(f"build_gpt_model: preset {preset.name!r} (heads={preset.num_attention_heads}, "
                         f"query groups={preset.num_query_groups}, ffn={preset.ffn_hidden_size}) cannot be split "
                         f"over tensor-parallel size {tp}")
    if ds_config is not None:
        stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        if stage != 3:
            raise ValueError(f"build_gpt_model: ds_config zero_optimization.stage is {stage}; partitioned "
                             f"construction (zero.Init) needs stage 3 (or pass ds_config=None)")
        wanted = ds_config_dtype(ds_config)
        if wanted != params_dtype:
            raise ValueError(f"build_gpt_model: params_dtype={params_dtype} but ds_config implies {wanted} "
                             f"(bf16/fp16 .enabled); pass params_dtype={wanted}")
    if not cuda_available():
        apply_cpu_accommodations()

    config = make_transformer_config(
        preset,
        params_dtype=params_dtype,
        init_std=init_std,
        tensor_parallel_size=tp,
        recompute_activations=recompute_activations,
    )
    spec = layer_spec(attention)

    def construct():
        return GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=vocab_size,
            max_sequence_length=max_seq_len,
            pre_process=True,
            post_process=True,
            parallel_output=True,
            share_embeddings_and_output_weights=False,
            position_embedding_type="rope",
            rotary_percent=1.0,
            rotary_base=preset.rotary_base,
        )

    if ds_config is None:
        # The local spec's torch.nn.RMSNorm ignores params_dtype (fp32 weights): cast everything to one dtype.
        # (zero.Init below casts to the config's dtype itself; DeepSpeed's engine does the same.)
        return construct().to(params_dtype)
    import deepspeed
    import deepspeed.comm

    from prealign_scale.model.parallel import MegatronMPU, dp_group

    # zero.Init reads the world size through deepspeed.comm *before* starting it itself, and falls back to a
    # world of 1 when it is not started yet (then its batch-size check fails). Wrap the existing group first.
    if not deepspeed.comm.is_initialized():
        if not cuda_available():
            from prealign_scale.dist import disable_deepspeed_shm_allreduce

            disable_deepspeed_shm_allreduce()
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    with deepspeed.zero.Init(config_dict_or_path=ds_config, data_parallel_group=dp_group(), mpu=MegatronMPU()):
        return construct()


def pad_vocab_size(vocab_size: int, tensor_parallel_size: int = 1, multiple: int = 128) -> int:
    """The smallest size >= vocab_size divisible by multiple * tensor_parallel_size (Megatron-LM's rule)."""
    step = multiple * tensor_parallel_size
    return ((vocab_size + step - 1) // step) * step
