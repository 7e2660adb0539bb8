"""Typed run configuration: YAML file + dotted command-line overrides, validated before any process group.

The one place where defaults live. A config file has six sections (see configs/tiny.yaml and
docs/training.md):

    model:  preset, vocab_size (null: from the shard manifest / table), seq_len (null: from the manifest),
            tp (null: the preset's default_tp), attention, init_hf (an HF folder to start from)
    data:   shard_dir, table_dir, tokenizer_dir, num_workers, skip_corrupt, verify_sha256
    align:  phase 1 (alignment initialisation): steps or epochs, stop_at_seen_acc, word_bos, entries_per_rank,
            grad_accum, lr, tau, alpha, ...
    lm:     phase 2 (LM pretraining): steps, micro_batch_size, grad_accum, lr, doc_attention, ...
    run:    out_dir, seed, ds_config, phase, log_every, ckpt_every, keep_last, export_hf, ...
    dist:   timeout_minutes, backend

This module owns the types, the defaults and the pure value checks:

- `parse_config(path, overrides)`: YAML + ``section.key=value`` overrides, type-checked (config_loader.py);
- `check_values(cfg)`: the checks that need no file and no model package; returns the problems (the first
  one is what `ConfigError` says).

The files a config names (ds_config, shard manifest, table meta, tokenizer, init_hf) and the model presets
are read by the resolution step, `prealign_scale.engine.resolve_config.load_config(path, overrides,
world_size=...)`, which returns a NEW Config with the derived values (vocab_size, seq_len, tp, grad_accum).
Every problem is a `ConfigError` with ONE message that names the key and where it came from
(``configs/x.yaml:12: lm.stepz: unknown key; did you mean lm.steps?``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prealign_scale.config_loader import ConfigError, load_tree

ALIGN_LOSS_IMPLS = ("auto", "naive", "chunked", "triton")  # prealign_scale.alignment.loss.IMPLS
LM_LOSS_IMPLS = ("megatron", "auto", "chunked", "liger", "naive")  # megatron's CE, or kernels.lm_head_loss
PHASES = ("all", "align", "lm")
ATTENTION_IMPLS = ("auto", "sdpa", "te", "flex")  # prealign_scale.model.builder.layer_spec
SCHEDULES = ("linear", "cosine", "constant")
DIST_BACKENDS = ("gloo", "nccl")

__all__ = ["Config", "ConfigError", "check_values", "parse_config", "save_config"]


@dataclass
class ModelConfig:
    preset: str = "tiny"
    vocab_size: int | None = None  # null: the shard manifest's (or the alignment table's) vocab_size
    seq_len: int | None = None  # null: the shard manifest's seq_len (else the preset's default)
    tp: int | None = None  # tensor-parallel size (null: the preset's default_tp); data-parallel = world_size / tp
    # auto: Transformer Engine's layers when TE imports (else megatron's local ones), PyTorch SDPA core
    # attention (honours lm.doc_attention's document mask); sdpa: local layers always; te: TE's layers and
    # TE's core attention (causal only, so it needs lm.doc_attention=false); flex: auto's layers with PyTorch
    # flex_attention and a document block mask built from the segment ids (no dense [b, s, s] mask, compiled
    # on GPU; it serves the document mask, so it needs lm.doc_attention=true)
    attention: str = "auto"
    # an HF LlamaForCausalLM folder (e.g. <run>/hf of an earlier run) whose weights a fresh run starts from
    # (continued pretraining); its config.json must match the preset and the vocab size. A checkpoint in
    # run.out_dir takes precedence (a restart resumes it). null: megatron's random initialisation
    init_hf: str | None = None


@dataclass
class DataConfig:
    shard_dir: str | None = None  # folder with manifest.json + shard-*.tar (phase lm)
    table_dir: str | None = None  # alignment table folder (phase align)
    tokenizer_dir: str | None = None  # copied into hf/ on export
    num_workers: int = 0  # DataLoader workers per rank for the shard reader
    skip_corrupt: bool = False  # unreadable shard samples become padding rows, counted in metrics (else: error)
    # each shard's sha256 is checked against the manifest the first time a reader opens it (false: not checked)
    verify_sha256: bool = True


@dataclass
class AlignConfig:
    steps: int = 0  # optimizer steps of phase 1; 0 skips the phase (unless epochs is set)
    # passes over the align entries instead of steps: steps = ceil(epochs x steps per pass), derived by the
    # resolution (engine/resolve_config.py) from the align entry count and the global entries per step
    epochs: float | None = None
    # end phase 1 as done when the in-training probe's seen retrieval accuracy (any layer) reaches this;
    # needs run.probe_every > 0. null: run every step
    stop_at_seen_acc: float | None = None
    # at the end of phase 1, warn when the last probe's seen retrieval (best layer) is below this
    warn_below_seen_acc: float = 0.9
    # put the BOS id (bos_id) before every dictionary word, so the LM term covers every word token; off by
    # default: on the real pair its effect on target perplexity was within the seed spread (docs/training.md)
    word_bos: bool = False
    bos_id: int | None = None  # null: the tokenizer's BOS token (data.tokenizer_dir), when word_bos is on
    entries_per_rank: int = 8  # dictionary entries per rank per micro-batch
    grad_accum: int | None = None  # null: 1, or derived from global_entries
    global_entries: int | None = None  # entries per optimizer step over all ranks (optional)
    lr: float = 5e-4
    warmup_frac: float = 0.05
    schedule: str = "linear"  # warmup then linear decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.1
    tau: float = 0.1
    alpha: float = 0.1  # total = L_LM + alpha * L_align
    loss_impl: str = "auto"  # triton on CUDA, chunked PyTorch elsewhere; naive = the plain reference


@dataclass
class LMConfig:
    steps: int = 0  # optimizer steps of phase 2; 0 skips the phase
    micro_batch_size: int = 4  # packed sequences per rank per micro-batch
    grad_accum: int | None = None  # null: 1, or derived from global_batch_size
    global_batch_size: int | None = None  # sequences per optimizer step over all ranks (optional)
    lr: float = 3e-4
    warmup_frac: float = 0.05
    schedule: str = "cosine"  # warmup then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    doc_attention: bool = True  # attention restricted to each packed document; false: plain causal
    lm_loss_impl: str = "megatron"  # megatron's vocab-parallel CE; or a fused linear CE (TP=1)


@dataclass
class RunSection:
    out_dir: str = "runs/default"
    seed: int = 1234
    ds_config: str = "ds_configs/cpu_zero3.json"
    phase: str = "all"  # all | align | lm (the launcher's --phase overrides it)
    log_every: int = 1
    ckpt_every: int = 0  # 0: checkpoint only at each phase end (and on a pre-emption signal)
    keep_last: int = 2
    stop_after: int | None = None  # stop (checkpoint, exit 0) after this many steps in this process
    max_bad_steps: int = 0  # steps with a non-finite loss / gradient norm skipped (update dropped) before the run stops
    export_hf: bool = True
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0
    probe_every: int = 0  # alignment probe every K steps (+ at each phase's start and end); 0: off
    probe_pairs: int = 256  # probe pairs per group (seen / unseen) of data.table_dir


@dataclass
class DistConfig:
    timeout_minutes: float = 30.0  # collective timeout of the process group
    backend: str | None = None  # null: nccl on GPU, gloo on CPU


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    run: RunSection = field(default_factory=RunSection)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def phases(self) -> list[str]:
        """The phases this run trains, in order (a phase with 0 steps is skipped)."""
        wanted = ["align", "lm"] if self.run.phase == "all" else [self.run.phase]
        return [p for p in wanted if getattr(self, p).steps > 0 or (p == "align" and (self.align.epochs or 0) > 0)]


SECTIONS: dict[str, type] = typing.get_type_hints(Config)  # section name -> its dataclass


def parse_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) then overrides, type-checked; no file-system or batch validation yet."""
    return load_tree(Config, path, overrides)


# ----------------------------------------------------------------------------------------------------------
# value checks (pure: no files, no model package)


def _value(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _positive(cfg: Config, keys: tuple[str, ...], allow_zero: bool = False) -> list[str]:
    problems = []
    for key in keys:
        v = _value(cfg, key)
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            problems.append(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return problems


def _finite(cfg: Config) -> list[str]:
    """``key: must be a finite number`` for every float value that is inf or nan (``lm.lr=.inf`` parses)."""
    problems = []
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            v = getattr(getattr(cfg, section.name), f.name)
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"{section.name}.{f.name}: must be a finite number, got {v!r}")
    return problems


def choice_problem(key: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    """``key: must be one of ...`` (with the close name) when `value` is not among `choices`, else None."""
    if value in choices:
        return None
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: must be one of {', '.join(choices)}, got {value!r}{hint}"


def check_values(cfg: Config) -> list[str]:
    """Every problem of the values themselves (choices, ranges, combinations), in a fixed order.

    Needs no file and no model package: the presets, the tensor-parallel split and the data files are the
    resolution step's (engine/resolve_config.py). Returns one ``key: what is wrong`` line per problem.
    """
    problems = _finite(cfg)  # inf / nan first: the range checks below cannot see them (nan < 0 is False)
    problems += [choice_problem(key, _value(cfg, key), choices) for key, choices in (
        ("run.phase", PHASES), ("align.schedule", SCHEDULES), ("lm.schedule", SCHEDULES),
        ("align.loss_impl", ALIGN_LOSS_IMPLS), ("lm.lm_loss_impl", LM_LOSS_IMPLS),
        ("model.attention", ATTENTION_IMPLS))]
    if cfg.model.attention == "te" and cfg.lm.doc_attention and cfg.lm.steps > 0:
        problems.append("model.attention: 'te' runs megatron's TE core attention with a causal mask type, which "
                        "ignores the per-document mask; set lm.doc_attention=false or use 'sdpa'")
    if cfg.model.attention == "flex" and not cfg.lm.doc_attention and cfg.lm.steps > 0:
        problems.append("model.attention: 'flex' builds the per-document block mask, but lm.doc_attention=false "
                        "asks for plain causal attention; use 'auto' or 'sdpa' (SDPA's flash kernel) or set "
                        "lm.doc_attention=true")
    if cfg.dist.backend is not None:
        problems.append(choice_problem("dist.backend", cfg.dist.backend, DIST_BACKENDS))
    problems += _positive(cfg, (
        "model.vocab_size", "model.seq_len", "model.tp", "align.entries_per_rank", "align.grad_accum",
        "align.global_entries", "align.lr", "align.tau", "lm.micro_batch_size", "lm.grad_accum",
        "lm.global_batch_size", "lm.lr", "run.log_every", "run.keep_last", "run.stop_after", "dist.timeout_minutes"))
    problems += _positive(cfg, (
        "align.steps", "lm.steps", "align.alpha", "align.weight_decay", "lm.weight_decay", "data.num_workers",
        "run.ckpt_every", "align.min_lr_ratio", "lm.min_lr_ratio", "run.probe_every", "run.max_bad_steps"),
        allow_zero=True)
    problems += _positive(cfg, ("run.probe_pairs", "align.epochs"))
    problems += _positive(cfg, ("align.bos_id",), allow_zero=True)
    for key in ("align.stop_at_seen_acc", "align.warn_below_seen_acc"):
        v = _value(cfg, key)
        if v is not None and not 0.0 <= v <= 1.0:
            problems.append(f"{key}: must be between 0 and 1, got {v!r}")
    if cfg.align.stop_at_seen_acc is not None and cfg.run.probe_every <= 0:
        problems.append(f"align.stop_at_seen_acc: {cfg.align.stop_at_seen_acc} needs the in-training probe "
                        f"(run.probe_every > 0, got {cfg.run.probe_every}), which measures the seen retrieval")
    for key in ("align.warmup_frac", "lm.warmup_frac", "align.min_lr_ratio", "lm.min_lr_ratio"):
        if not 0.0 <= _value(cfg, key) <= 1.0:
            problems.append(f"{key}: must be between 0 and 1, got {_value(cfg, key)!r}")
    if cfg.run.phase in PHASES and not cfg.phases():
        problems.append(f"run.phase: nothing to train: phase {cfg.run.phase!r} with align.steps="
                        f"{cfg.align.steps}, lm.steps={cfg.lm.steps}")
    return [p for p in problems if p is not None]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
