"""Typed run configuration: YAML file + dotted command-line overrides, validated before any process group.

The one place where defaults live. A config file has six sections (see configs/tiny.yaml and
docs/training.md):

    model:  preset, vocab_size (null: from the shard manifest / table), seq_len (null: from the manifest),
            tp (null: the preset's default_tp), attention, init_hf (an HF folder to start from)
    data:   shard_dir, table_dir, tokenizer_dir, num_workers, skip_corrupt
    align:  phase 1 (alignment initialisation): steps, entries_per_rank, grad_accum, lr, tau, alpha, ...
    lm:     phase 2 (LM pretraining): steps, micro_batch_size, grad_accum, lr, doc_attention, ...
    run:    out_dir, seed, ds_config, phase, log_every, ckpt_every, keep_last, export_hf, ...
    dist:   timeout_minutes, backend

`load_config(path, overrides, world_size=...)` parses, type-checks, resolves (vocab_size, seq_len,
grad_accum from a global batch) and validates. Every problem raises `ConfigError` with ONE message that
names the key and where it came from (``configs/x.yaml:12: lm.stepz: unknown key; did you mean lm.steps?``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from prealign_scale.model.presets import ModelPreset

ALIGN_LOSS_IMPLS = ("auto", "naive", "chunked", "triton")  # prealign_scale.alignment.loss.IMPLS
LM_LOSS_IMPLS = ("megatron", "auto", "chunked", "liger", "naive")  # megatron's CE, or kernels.lm_head_loss
PHASES = ("all", "align", "lm")
ATTENTION_IMPLS = ("auto", "sdpa", "te")  # prealign_scale.model.builder.layer_spec
DS_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and its origin (file:line or override)."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    vocab_size: int | None = None  # null: the shard manifest's (or the alignment table's) vocab_size
    seq_len: int | None = None  # null: the shard manifest's seq_len (else the preset's default)
    tp: int | None = None  # tensor-parallel size (null: the preset's default_tp); data-parallel = world_size / tp
    # auto: Transformer Engine's layers when TE imports (else megatron's local ones), PyTorch SDPA core
    # attention (honours lm.doc_attention's document mask); sdpa: local layers always; te: TE's layers and
    # TE's core attention (causal only, so it needs lm.doc_attention=false)
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


@dataclass
class AlignConfig:
    steps: int = 0  # optimizer steps of phase 1; 0 skips the phase
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
        return [p for p in wanted if getattr(self, p).steps > 0]


SECTIONS: dict[str, type] = typing.get_type_hints(Config)  # section name -> its dataclass


def tp_size(cfg: Config) -> int:
    """model.tp, or the preset's default_tp while it is null (a Config built in code, not through validate)."""
    if cfg.model.tp is not None:
        return cfg.model.tp
    from prealign_scale.model.presets import get_preset

    return get_preset(cfg.model.preset).default_tp


# ----------------------------------------------------------------------------------------------------------
# parsing: YAML (with line numbers) and dotted overrides


def _key_lines(text: str) -> dict[str, int]:
    """'section.key' -> 1-based line of that key in the YAML text (for error messages)."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for knode, vnode in root.value:
        lines[str(knode.value)] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                lines[f"{knode.value}.{k2.value}"] = k2.start_mark.line + 1
    return lines


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"command line: {item!r}: an override must look like section.key=value (e.g. lm.steps=20)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"command line: {item!r}: the key must be section.key (e.g. lm.steps), got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _check_type(key: str, value: Any, hint: Any, where: str) -> Any:
    """Return `value` converted to the field type `hint`, or raise ConfigError naming `key`."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {key}: must not be null (expected {base.__name__})")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str and isinstance(value, str):
        return value
    got = f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"{where}: {key}: expected {'null or ' if optional else ''}{base.__name__}, got {got}")


def _unknown(key: str, known: list[str], where: str, what: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"{where}: {key}: unknown {what}{hint}")


def _apply(cfg: Config, key: str, value: Any, where: str) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise _unknown(section, list(SECTIONS), where, "section")
    sec_type = SECTIONS[section]
    hints = typing.get_type_hints(sec_type)
    if name not in hints:
        raise _unknown(key, [f"{section}.{n}" for n in hints], where, "key")
    setattr(getattr(cfg, section), name, _check_type(key, value, hints[name], where))


def parse_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) then overrides, type-checked; no file-system or batch validation yet."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: {path}: no such file")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
        lines = _key_lines(text)
        for section, body in raw.items():
            where = f"{path}:{lines.get(str(section), '?')}"
            if section not in SECTIONS:
                raise _unknown(str(section), list(SECTIONS), where, "section")
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{where}: {section}: must be a mapping of keys, got {type(body).__name__}")
            for name, value in body.items():
                key = f"{section}.{name}"
                _apply(cfg, key, value, f"{path}:{lines.get(key, '?')}")
    for item in overrides:
        key, value = _parse_override(item)
        _apply(cfg, key, value, f"command line {item!r}")
    return cfg


# ----------------------------------------------------------------------------------------------------------
# validation and resolution


def _fail(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def _positive(cfg: Config, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v is None:
            continue
        if v < 0 or (v == 0 and not allow_zero):
            raise _fail(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def _choice(key: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(key, f"must be one of {', '.join(choices)}, got {value!r}{hint}")


def read_json(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(key, f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise _fail(key, f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(key, f"{path}: expected a JSON object")
    return data


def _resolve_accum(key_prefix: str, per_rank: int, accum: int | None, global_batch: int | None,
                   dp: int, per_rank_key: str, global_key: str) -> int:
    """grad_accum from the global batch: global = per_rank * grad_accum * dp must hold exactly."""
    if global_batch is None:
        return 1 if accum is None else accum
    unit = per_rank * dp
    if global_batch % unit:
        raise _fail(f"{key_prefix}.{global_key}", f"{global_batch} is not divisible by {per_rank_key} x "
                    f"data-parallel size = {per_rank} x {dp} = {unit}")
    derived = global_batch // unit
    if accum is not None and accum != derived:
        raise _fail(f"{key_prefix}.grad_accum", f"{accum} disagrees with {key_prefix}.{global_key}={global_batch} "
                    f"(= {per_rank} x {dp} ranks x {derived}); set only one of them")
    return derived


def _check_tp_split(preset: ModelPreset, tp: int, origin: str) -> None:
    """megatron splits the attention heads, the key/value groups and the FFN width over the TP ranks."""
    import math

    sizes = {"num_attention_heads": preset.num_attention_heads, "num_query_groups": preset.num_query_groups,
             "ffn_hidden_size": preset.ffn_hidden_size}
    bad = [f"{k}={v}" for k, v in sizes.items() if v % tp]
    if bad:
        common = math.gcd(*sizes.values())
        ok = ", ".join(str(t) for t in range(1, common + 1) if common % t == 0)
        raise _fail("model.tp", f"{tp}{origin} cannot split preset {preset.name!r}: {', '.join(bad)} not divisible "
                    f"by {tp} (tensor parallelism splits the heads, query groups and FFN width); use one of {ok}")


def _check_init_hf(folder: str, preset: ModelPreset) -> int:
    """The vocab size of the HF folder `model.init_hf`, after checking it matches `preset` (ConfigError)."""
    from prealign_scale.model.hf_convert import check_hf_folder

    try:
        return check_hf_folder(folder, preset)
    except (OSError, ValueError) as exc:
        raise _fail("model.init_hf", str(exc)) from None


def validate(cfg: Config, world_size: int = 1) -> Config:
    """Check values, files and batch arithmetic; fill the derived fields. Returns `cfg` (modified)."""
    from prealign_scale.model.presets import PRESETS

    _choice("model.preset", cfg.model.preset, tuple(PRESETS))
    _choice("run.phase", cfg.run.phase, PHASES)
    _choice("align.schedule", cfg.align.schedule, ("linear", "cosine", "constant"))
    _choice("lm.schedule", cfg.lm.schedule, ("linear", "cosine", "constant"))
    _choice("align.loss_impl", cfg.align.loss_impl, ALIGN_LOSS_IMPLS)
    _choice("lm.lm_loss_impl", cfg.lm.lm_loss_impl, LM_LOSS_IMPLS)
    _choice("model.attention", cfg.model.attention, ATTENTION_IMPLS)
    if cfg.model.attention == "te":
        from prealign_scale.model.builder import transformer_engine_available

        if cfg.lm.doc_attention and cfg.lm.steps > 0:
            raise _fail("model.attention", "'te' runs megatron's TE core attention with a causal mask type, "
                        "which ignores the per-document mask; set lm.doc_attention=false or use 'sdpa'")
        if not transformer_engine_available():
            raise _fail("model.attention", "'te' needs Transformer Engine (import transformer_engine.pytorch "
                        "failed); build the image with --build-arg TE_VERSION=<x.y> or use 'sdpa'")
    if cfg.dist.backend is not None:
        _choice("dist.backend", cfg.dist.backend, ("gloo", "nccl"))
    # Tensor parallelism: null takes the preset's default_tp (2 for 13b, 8 for 70b, else 1).
    preset = PRESETS[cfg.model.preset]
    tp_origin = ""
    if cfg.model.tp is None:
        cfg.model.tp = preset.default_tp
        tp_origin = f" (the default_tp of preset {preset.name!r}; set model.tp to choose another)"
    _positive(cfg, "model.vocab_size", "model.seq_len", "model.tp", "align.entries_per_rank", "align.grad_accum",
              "align.global_entries", "align.lr", "align.tau", "lm.micro_batch_size", "lm.grad_accum",
              "lm.global_batch_size", "lm.lr", "run.log_every", "run.keep_last", "run.stop_after",
              "dist.timeout_minutes")
    _positive(cfg, "align.steps", "lm.steps", "align.alpha", "align.weight_decay", "lm.weight_decay",
              "data.num_workers", "run.ckpt_every", "align.min_lr_ratio", "lm.min_lr_ratio", "run.probe_every",
              allow_zero=True)
    _positive(cfg, "run.probe_pairs")
    for key in ("align.warmup_frac", "lm.warmup_frac", "align.min_lr_ratio", "lm.min_lr_ratio"):
        section, name = key.split(".")
        if not 0.0 <= getattr(getattr(cfg, section), name) <= 1.0:
            raise _fail(key, f"must be between 0 and 1, got {getattr(getattr(cfg, section), name)!r}")
    _check_tp_split(preset, cfg.model.tp, tp_origin)
    if cfg.lm.lm_loss_impl != "megatron" and cfg.model.tp > 1:
        raise _fail("lm.lm_loss_impl", f"{cfg.lm.lm_loss_impl!r} needs model.tp=1 (got {cfg.model.tp}{tp_origin}); "
                    "use megatron")
    if world_size % cfg.model.tp:
        raise _fail("model.tp", f"{cfg.model.tp}{tp_origin} does not divide the world size {world_size}")
    dp = world_size // cfg.model.tp
    if not cfg.phases():
        raise _fail("run.phase", f"nothing to train: phase {cfg.run.phase!r} with align.steps="
                    f"{cfg.align.steps}, lm.steps={cfg.lm.steps}")

    # Files. Paths are relative to the working directory (the repository root for the shipped configs).
    ds_path = Path(cfg.run.ds_config)
    ds = read_json(ds_path, "run.ds_config")
    for k in DS_BATCH_KEYS:
        if k in ds and ds[k] != "auto":
            raise _fail("run.ds_config", f"{ds_path}: {k}={ds[k]!r}: batch sizes come from the align/lm sections "
                        "of the experiment config; remove the key or set it to \"auto\"")
    vocab_sources: dict[str, int] = {}
    manifest = None
    if "lm" in cfg.phases():
        if cfg.data.shard_dir is None:
            raise _fail("data.shard_dir", "required for phase lm (lm.steps > 0)")
        manifest = read_json(Path(cfg.data.shard_dir) / "manifest.json", "data.shard_dir")
        for k in ("seq_len", "vocab_size", "shards"):
            if k not in manifest:
                raise _fail("data.shard_dir", f"{cfg.data.shard_dir}/manifest.json: missing field {k!r}")
        vocab_sources["data.shard_dir (manifest.json)"] = int(manifest["vocab_size"])
        n_shards = len(manifest["shards"])
        if n_shards % dp:
            raise _fail("data.shard_dir", f"{n_shards} shards are not divisible by the data-parallel size {dp}; "
                        "rebuild the shards with a multiple of it (ranks would see unequal sample counts)")
        readers = dp * max(1, cfg.data.num_workers)
        if n_shards % readers:
            raise _fail("data.num_workers", f"{cfg.data.num_workers} workers x {dp} data-parallel ranks = {readers} "
                        f"readers do not divide the {n_shards} shards of {cfg.data.shard_dir}; use fewer workers")
    if "align" in cfg.phases():
        if cfg.data.table_dir is None:
            raise _fail("data.table_dir", "required for phase align (align.steps > 0)")
        if not (Path(cfg.data.table_dir) / "entries.jsonl").is_file():
            raise _fail("data.table_dir", f"{cfg.data.table_dir}: no alignment table here (no entries.jsonl)")
        meta_path = Path(cfg.data.table_dir) / "meta.json"
        meta = read_json(meta_path, "data.table_dir") if meta_path.is_file() else {}
        if meta.get("vocab_size") is not None:
            vocab_sources["data.table_dir (meta.json)"] = int(meta["vocab_size"])
    if cfg.run.export_hf:
        tok = cfg.data.tokenizer_dir
        if tok is None or not (Path(tok) / "tokenizer.json").is_file():
            raise _fail("data.tokenizer_dir", f"{tok}: no tokenizer.json (needed by run.export_hf=true; "
                        "set data.tokenizer_dir or run.export_hf=false)")

    # Derived sizes.
    hf_vocab = _check_init_hf(cfg.model.init_hf, preset) if cfg.model.init_hf is not None else None
    if cfg.model.vocab_size is None:
        if hf_vocab is not None:  # the checkpoint fixes the embedding rows
            cfg.model.vocab_size = hf_vocab
        elif not vocab_sources:
            raise _fail("model.vocab_size", "null, and no shard manifest or table meta.json gives a vocab_size")
        else:
            cfg.model.vocab_size = max(vocab_sources.values())
    for src, v in vocab_sources.items():
        if v > cfg.model.vocab_size:
            origin = f" (the vocab_size of model.init_hf={cfg.model.init_hf})" if hf_vocab is not None else ""
            raise _fail("model.vocab_size", f"{cfg.model.vocab_size}{origin} is smaller than the vocab_size {v} "
                        f"of {src}")
    if hf_vocab is not None:
        from prealign_scale.model.builder import pad_vocab_size

        rows = cfg.model.vocab_size if cfg.model.tp == 1 else pad_vocab_size(cfg.model.vocab_size, cfg.model.tp, 1)
        if rows != hf_vocab:
            padded = f", padded to a multiple of model.tp={cfg.model.tp}" if rows != cfg.model.vocab_size else ""
            raise _fail("model.init_hf", f"{cfg.model.init_hf}/config.json: vocab_size={hf_vocab} differs from the "
                        f"model's {rows} embedding rows (model.vocab_size={cfg.model.vocab_size}{padded}); set "
                        f"model.vocab_size=null to take the checkpoint's")
    if manifest is not None:
        if cfg.model.seq_len is not None and cfg.model.seq_len != int(manifest["seq_len"]):
            raise _fail("model.seq_len", f"{cfg.model.seq_len} differs from the shards' seq_len "
                        f"{manifest['seq_len']} ({cfg.data.shard_dir}/manifest.json); set it to null")
        cfg.model.seq_len = int(manifest["seq_len"])
    elif cfg.model.seq_len is None:
        cfg.model.seq_len = preset.default_seq_len
    cfg.align.grad_accum = _resolve_accum("align", cfg.align.entries_per_rank, cfg.align.grad_accum,
                                          cfg.align.global_entries, dp, "align.entries_per_rank", "global_entries")
    cfg.lm.grad_accum = _resolve_accum("lm", cfg.lm.micro_batch_size, cfg.lm.grad_accum,
                                       cfg.lm.global_batch_size, dp, "lm.micro_batch_size", "global_batch_size")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = (), *, world_size: int = 1) -> Config:
    """Parse, type-check, validate and resolve a run configuration (raises ConfigError)."""
    return validate(parse_config(path, overrides), world_size=world_size)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
