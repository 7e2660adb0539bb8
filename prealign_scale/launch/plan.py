"""Capacity planning: will a run config fit a GPU count, how fast does it go, how long does its budget take.

Pure arithmetic over a model preset and the run config (nothing is built or measured):

    plan = plan_run(cfg, gpus=64, gpu="h100", mfu=0.40, vocab=32000)
    print(format_plan(plan))

Per-GPU memory, in bytes (`MemoryPlan`):

- **model states** under ZeRO-3, as DeepSpeed keeps them with bf16 on and ``grad_accum_dtype: fp32``
  (ds_configs/gpu_zero3_bf16*.json): per parameter 2 bytes of bf16 weight, 4 of fp32 gradient partition and
  12 of fp32 optimizer state (master weight, Adam m and v) = 18 bytes, split over *all* GPUs (TP shards the
  tensors, ZeRO-3 partitions each shard over the data-parallel ranks), plus ``4 x largest layer / tp`` for the
  gathered bf16 weights and gradients of the layer in flight. This is DeepSpeed's own
  ``estimate_zero3_model_states_mem_needs`` (no offload); tests/test_plan.py checks the two agree.
  With the optimizer offloaded to CPU (``offload_optimizer``) only the 2-byte weights stay on the GPU (the
  same estimator's ``cpu_offload=True, cpu_offload_params=False`` case); with ``offload_param`` too, only the
  gathered layer (``cpu_offload_params=True``).
- **ZeRO buffers**: the ds config's ``reduce_bucket_size`` (fp32 gradients, 4 bytes) and
  ``stage3_prefetch_bucket_size`` (bf16 weights, 2 bytes) elements.
- **activations** of one micro-batch (``lm.micro_batch_size`` x seq) saved for the backward pass, bf16, flash
  attention (no seq x seq scores), no dropout (the builder sets it to 0), no sequence parallelism. Elements
  per token and layer, this model (pre-norm RMSNorm, GQA, SwiGLU), TP ``t``::

      4h                      norm inputs and outputs of attention and MLP (replicated across TP)
      + ((a + 2g) d) / t      q, k, v kept by the attention kernel
      + h / t                 attention output (input of the output projection)
      + 3f / t                fc1 output (gate and up, 2f) and the SwiGLU output (f)

  plus 3h per token outside the blocks (embedding output, final norm input and output; the fused LM head
  keeps no [tokens, vocab] logits). With full activation checkpointing (megatron's recompute, one layer at a
  time) each block keeps only its input (h per token) and one block's full activations are live during its
  recomputation.

Throughput: tokens/s per GPU = MFU x the card's dense bf16 peak / training FLOPs per token
(`ModelPreset.flops_per_token`, the PaLM formula the engine's MFU uses). Time to the phase-2 budget =
``lm.steps x global batch x seq`` tokens / (tokens/s per GPU x GPUs).

What does not fit comes with the fix to apply, in this order of preference: activation checkpointing (the
``_actckpt`` ds config), tensor parallelism (``model.tp``; shrinks activations and the gathered layer), more
GPUs (the smallest count that fits), optimizer offload (the ``_offload`` ds config), a smaller
``lm.micro_batch_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prealign_scale.config import Config, ConfigError
from prealign_scale.model.presets import ModelPreset, get_preset

GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: memory as nvidia-smi reports it (MiB) and the dense bf16 peak (no sparsity)."""

    name: str
    memory_mib: int
    peak_bf16_flops: float

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024**2


# Memory: nvidia-smi's "Total" of the SXM parts; peak: NVIDIA's dense bf16 tensor-core figure.
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("H100 80GB SXM", 81559, 989e12),
    "h200": GpuSpec("H200 141GB SXM", 143771, 989e12),
    "a100-80g": GpuSpec("A100 80GB SXM", 81920, 312e12),
    "a100-40g": GpuSpec("A100 40GB SXM", 40960, 312e12),
}

USABLE_FRACTION = 0.90  # of the card's memory: the rest for the CUDA context, NCCL and allocator fragmentation
BYTES_PARAM_BF16 = 2  # the bf16 weight partition
BYTES_GRAD_FP32 = 4  # the gradient partition (grad_accum_dtype fp32)
BYTES_OPTIMIZER = 12  # fp32 master weight + Adam m + Adam v
BYTES_ACT = 2  # bf16 activations


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU bytes of one configuration (see the module docstring for each term)."""

    params: int
    grads: int
    optimizer: int
    gathered_layer: int
    zero_buffers: int
    activations: int  # of one micro-batch, with the checkpointing setting of this plan
    activations_no_ckpt: int
    activations_ckpt: int

    @property
    def model_states(self) -> int:
        """What DeepSpeed's estimator counts: the partitions plus the gathered largest layer."""
        return self.params + self.grads + self.optimizer + self.gathered_layer

    @property
    def total(self) -> int:
        return self.model_states + self.zero_buffers + self.activations


@dataclass(frozen=True)
class Plan:
    preset: ModelPreset
    vocab: int
    seq_len: int
    gpus: int
    tp: int
    dp: int
    micro_batch: int
    global_batch: int
    steps: int
    gpu: GpuSpec
    mfu: float
    checkpointing: bool
    offload_optimizer: bool
    offload_params: bool
    memory: MemoryPlan
    tokens_per_s_per_gpu: float
    budget_tokens: int
    fixes: list[str] = field(default_factory=list)

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_bytes * USABLE_FRACTION

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable_bytes

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_s_per_gpu * self.gpus

    @property
    def seconds_to_budget(self) -> float:
        return self.budget_tokens / self.tokens_per_s


# --------------------------------------------------------------------------------------------- the terms
def largest_layer_params(preset: ModelPreset, vocab: int, tp: int = 1) -> int:
    """Parameters of the largest single module (DeepSpeed gathers one module's parameters at a time): the
    embedding / output layer (V x h) or fc1 (2f x h), whichever is larger, split by TP."""
    h = preset.hidden_size
    qkv = h * preset.head_dim * (preset.num_attention_heads + 2 * preset.num_query_groups)
    return max(vocab * h, 2 * preset.ffn_hidden_size * h, qkv) // tp


def zero3_model_state_bytes(num_params: int, largest_layer: int, gpus: int, *, offload_optimizer: bool = False,
                            offload_params: bool = False) -> tuple[int, int, int, int]:
    """(params, grads, optimizer, gathered layer) bytes per GPU of ZeRO-3 with bf16 weights.

    Without offload the sum equals DeepSpeed's ``estimate_zero3_model_states_mem_needs(total_params,
    largest_layer_params, cpu_offload=False)`` GPU figure: 4 x largest + 18 x P / gpus. With the optimizer
    offloaded (``cpu_offload=True, cpu_offload_params=False``) gradients and optimizer states live on the CPU;
    with the parameters offloaded too (``cpu_offload_params=True``) only the gathered layer stays on the GPU.
    """
    params = 0 if offload_params else BYTES_PARAM_BF16 * num_params // gpus
    grads = 0 if offload_optimizer else BYTES_GRAD_FP32 * num_params // gpus
    optimizer = 0 if offload_optimizer else BYTES_OPTIMIZER * num_params // gpus
    return params, grads, optimizer, 4 * largest_layer


def activation_elements_per_token_layer(preset: ModelPreset, tp: int = 1) -> float:
    """Activation elements one block keeps per token for its backward pass (no checkpointing)."""
    h, d, f = preset.hidden_size, preset.head_dim, preset.ffn_hidden_size
    a, g = preset.num_attention_heads, preset.num_query_groups
    return 4 * h + ((a + 2 * g) * d + h + 3 * f) / tp


def activation_bytes(preset: ModelPreset, seq_len: int, micro_batch: int, tp: int, *,
                     checkpointing: bool) -> int:
    """Bytes of activations of one micro-batch (bf16) with or without full activation checkpointing."""
    tokens = seq_len * micro_batch
    h, layers = preset.hidden_size, preset.num_layers
    per_layer = activation_elements_per_token_layer(preset, tp) * tokens
    outside = 3 * h * tokens
    if checkpointing:
        elements = layers * h * tokens + per_layer + outside  # block inputs + one block recomputed
    else:
        elements = layers * per_layer + outside
    return int(BYTES_ACT * elements)


def zero_buffer_bytes(ds: dict) -> int:
    """The reduce bucket (fp32 gradients) and the parameter prefetch bucket (bf16) of a ZeRO-3 ds config."""
    zero = ds.get("zero_optimization", {})
    return int(4 * zero.get("reduce_bucket_size", 0) + 2 * zero.get("stage3_prefetch_bucket_size", 0))


def memory_plan(preset: ModelPreset, vocab: int, seq_len: int, micro_batch: int, gpus: int, tp: int, *,
                checkpointing: bool, offload_optimizer: bool = False, offload_params: bool = False,
                zero_buffers: int = 0) -> MemoryPlan:
    params, grads, opt, layer = zero3_model_state_bytes(
        preset.num_params(vocab), largest_layer_params(preset, vocab, tp), gpus, offload_optimizer=offload_optimizer,
        offload_params=offload_params)
    no_ckpt = activation_bytes(preset, seq_len, micro_batch, tp, checkpointing=False)
    ckpt = activation_bytes(preset, seq_len, micro_batch, tp, checkpointing=True)
    return MemoryPlan(params, grads, opt, layer, zero_buffers, ckpt if checkpointing else no_ckpt, no_ckpt, ckpt)


def tokens_per_s_per_gpu(preset: ModelPreset, vocab: int, seq_len: int, mfu: float, peak_flops: float) -> float:
    return mfu * peak_flops / preset.flops_per_token(vocab, seq_len)


# --------------------------------------------------------------------------------------------- the plan
def _tp_choices(preset: ModelPreset, gpus: int, start: int) -> list[int]:
    """TP sizes above `start` that split the heads, the GQA groups and the GPU count."""
    return [t for t in (2, 4, 8) if t > start and preset.num_query_groups % t == 0
            and preset.num_attention_heads % t == 0 and gpus % t == 0]


def suggest_fixes(preset: ModelPreset, vocab: int, seq_len: int, micro_batch: int, gpus: int, tp: int,
                  gpu: GpuSpec, *, checkpointing: bool, offload_optimizer: bool, zero_buffers: int,
                  global_batch: int | None = None) -> list[str]:
    """What to change when the plan does not fit, each with the memory it would reach; [] when it fits.

    A larger GPU count is proposed only where `global_batch` stays a multiple of micro batch x DP ranks."""
    usable = gpu.memory_bytes * USABLE_FRACTION

    def total(**kw) -> int:
        args = {"gpus": gpus, "tp": tp, "checkpointing": checkpointing, "offload_optimizer": offload_optimizer,
                    "micro_batch": micro_batch}
        args.update(kw)
        return memory_plan(preset, vocab, seq_len, args["micro_batch"], args["gpus"], args["tp"],
                           checkpointing=args["checkpointing"], offload_optimizer=args["offload_optimizer"],
                           zero_buffers=zero_buffers).total

    if total() <= usable:
        return []
    fixes = []
    if not checkpointing:
        t = total(checkpointing=True)
        fixes.append(f"activation checkpointing (run.ds_config=ds_configs/gpu_zero3_bf16_actckpt.json): "
                     f"{t / GIB:.1f} GiB{'' if t <= usable else ', still too much'}")
    for t_size in _tp_choices(preset, gpus, tp):
        t = total(tp=t_size, checkpointing=True)
        if t <= usable:
            fixes.append(f"tensor parallelism model.tp={t_size} (with checkpointing): {t / GIB:.1f} GiB")
            break
    for more in (gpus * k for k in (2, 4, 8, 16, 32, 64)):
        if global_batch is not None and global_batch % (micro_batch * (more // tp)):
            continue
        t = total(gpus=more, checkpointing=True)
        if t <= usable:
            fixes.append(f"more GPUs: {more} (with checkpointing): {t / GIB:.1f} GiB")
            break
    if not offload_optimizer:
        t = total(offload_optimizer=True, checkpointing=True)
        fixes.append(f"optimizer offload to CPU (run.ds_config=ds_configs/gpu_zero3_bf16_offload.json, "
                     f"with checkpointing): {t / GIB:.1f} GiB{'' if t <= usable else ', still too much'}")
    if micro_batch > 1:
        t = total(micro_batch=1, checkpointing=True)
        if t <= usable:
            fixes.append(f"lm.micro_batch_size=1 (with checkpointing): {t / GIB:.1f} GiB")
    if not fixes:
        fixes.append("no single change fits: combine the above or pick a larger GPU")
    return fixes


def read_ds_config(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"run.ds_config: {path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run.ds_config: {path}:{exc.lineno}: not JSON ({exc.msg})") from None


def plan_run(cfg: Config, *, gpus: int, gpu: str, mfu: float, vocab: int | None = None,
             ds: dict | None = None) -> Plan:
    """The plan of `cfg`'s phase 2 on `gpus` GPUs of kind `gpu` (a key of GPUS); ConfigError for bad input.

    vocab: the model's vocabulary when the config leaves ``model.vocab_size`` null (it comes from the shards).
    ds: the DeepSpeed config (default: read ``run.ds_config``); checkpointing and offload are taken from it.
    """
    if gpu not in GPUS:
        raise ConfigError(f"--gpu: unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"--gpus: must be a positive integer, got {gpus!r}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu: must be in (0, 1], got {mfu!r}")
    try:
        preset = get_preset(cfg.model.preset)
    except KeyError as exc:
        raise ConfigError(f"model.preset: {exc.args[0]}") from None
    vocab = cfg.model.vocab_size if cfg.model.vocab_size is not None else vocab
    if vocab is None or vocab < 1:
        raise ConfigError("model.vocab_size is null in the config: pass --vocab (the tokenizer's size)")
    tp = cfg.model.tp if cfg.model.tp is not None else preset.default_tp
    if gpus % tp:
        raise ConfigError(f"model.tp={tp} does not divide --gpus {gpus}")
    dp = gpus // tp
    seq = cfg.model.seq_len if cfg.model.seq_len is not None else preset.default_seq_len
    micro = cfg.lm.micro_batch_size
    if cfg.lm.global_batch_size is not None:
        global_batch = cfg.lm.global_batch_size
        if global_batch % (micro * dp):
            raise ConfigError(f"lm.global_batch_size={global_batch} is not a multiple of lm.micro_batch_size x "
                              f"data-parallel ranks = {micro} x {dp}")
    else:
        global_batch = micro * (cfg.lm.grad_accum or 1) * dp
    ds = read_ds_config(cfg.run.ds_config) if ds is None else ds
    checkpointing = "activation_checkpointing" in ds
    zero = ds.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    offload_params = zero.get("offload_param", {}).get("device", "none") not in ("none", None)
    buffers = zero_buffer_bytes(ds)
    spec = GPUS[gpu]
    memory = memory_plan(preset, vocab, seq, micro, gpus, tp, checkpointing=checkpointing,
                         offload_optimizer=offload, offload_params=offload_params, zero_buffers=buffers)
    fixes = suggest_fixes(preset, vocab, seq, micro, gpus, tp, spec, checkpointing=checkpointing,
                          offload_optimizer=offload, zero_buffers=buffers, global_batch=global_batch)
    return Plan(preset=preset, vocab=vocab, seq_len=seq, gpus=gpus, tp=tp, dp=dp, micro_batch=micro,
                global_batch=global_batch, steps=cfg.lm.steps, gpu=spec, mfu=mfu, checkpointing=checkpointing,
                offload_optimizer=offload, offload_params=offload_params, memory=memory,
                tokens_per_s_per_gpu=tokens_per_s_per_gpu(preset, vocab, seq, mfu, spec.peak_bf16_flops),
                budget_tokens=cfg.lm.steps * global_batch * seq, fixes=fixes)


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_plan(p: Plan) -> str:
    """The plan as a readable markdown table plus a verdict line and the fixes."""
    m = p.memory
    gib = lambda b: f"{b / GIB:.2f} GiB"
    rows = [
        ("model", f"{p.preset.name}: {p.preset.num_params(p.vocab):,} parameters at vocab {p.vocab}"),
        ("layout", f"{p.gpus} x {p.gpu.name}: TP {p.tp} x ZeRO-3 DP {p.dp}"),
        ("batch", (f"micro {p.micro_batch} x seq {p.seq_len}; global {p.global_batch} sequences "
                  f"({p.global_batch * p.seq_len:,} tokens) per step")),
        ("bf16 weights (ZeRO-3 partition)", gib(m.params) + (" (offloaded)" if p.offload_params else "")),
        ("fp32 gradients (partition)", gib(m.grads) + (" (offloaded)" if p.offload_optimizer else "")),
        ("fp32 master + Adam m, v (partition)", gib(m.optimizer) + (" (offloaded)" if p.offload_optimizer else "")),
        ("gathered largest layer (4 B x params)", gib(m.gathered_layer)),
        ("= model states (DeepSpeed's estimate)", gib(m.model_states)),
        ("ZeRO buffers (reduce + prefetch buckets)", gib(m.zero_buffers)),
        ("activations, no checkpointing", gib(m.activations_no_ckpt) + ("" if p.checkpointing else "  <- used")),
        ("activations, full checkpointing", gib(m.activations_ckpt) + ("  <- used" if p.checkpointing else "")),
        ("total per GPU", (f"{gib(m.total)} of {gib(p.usable_bytes)} usable "
                          f"({USABLE_FRACTION:.0%} of {p.gpu.memory_mib} MiB)")),
        (f"throughput at MFU {p.mfu:.0%}", (f"{p.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, "
                                            f"{p.tokens_per_s:,.0f} tokens/s in all")),
        ("phase-2 budget", (f"{p.steps} steps x {p.global_batch} x {p.seq_len} = {p.budget_tokens / 1e9:.2f} B "
                           f"tokens: {_duration(p.seconds_to_budget)}")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'what'.ljust(width)} | value |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    lines.append("")
    if p.fits:
        lines.append(f"FITS: {gib(m.total)} per GPU <= {gib(p.usable_bytes)} usable.")
    else:
        lines.append(f"DOES NOT FIT: {gib(m.total)} per GPU > {gib(p.usable_bytes)} usable. Fixes:")
        lines += [f"  - {f}" for f in p.fixes]
    return "\n".join(lines)
