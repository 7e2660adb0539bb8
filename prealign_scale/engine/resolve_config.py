"""Resolution of a run config: read the files it names and return a NEW Config with the derived values.

`load_config(path, overrides, world_size=...)` is what the launchers call before any process group starts:

1. parse and type-check (prealign_scale.config.parse_config);
2. the pure value checks (prealign_scale.config.check_values): the first problem is the ConfigError;
3. resolution (`resolve_config`): the model preset (tensor-parallel default and split, Transformer Engine),
   the DeepSpeed config (no batch keys), the shard manifest (data/shard_format.Manifest), the alignment
   table's meta.json and entries (align.epochs), the tokenizer folder (and its BOS id for align.word_bos) and
   ``model.init_hf``. Derived values (model.tp, model.vocab_size, model.seq_len, align/lm grad_accum,
   align.steps from align.epochs, align.bos_id) go into a new Config (``dataclasses.replace``); the input is unchanged.

What would otherwise fail only after start-up is checked here too, each as one line naming the key and the
file: every shard the manifest lists exists; the alignment table has at least one phase-1 step of align
entries (``align.entries_per_rank`` x data-parallel ranks, words of at most seq_len tokens, as the phase-1
loader counts them); the table (meta.json) and ``data.tokenizer_dir`` (tokenizer.json) were made with the
tokenizer the shards were built with (the sha256 the manifest records; without shards, the table's).

The default of each derived value lives where its source is: tp in the preset (default_tp), seq_len in the
shard manifest (else the preset's default_seq_len), vocab_size in the manifest / table meta / init_hf folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from prealign_scale.alignment.table import ALIGN, AlignmentTable
from prealign_scale.config import Config, ConfigError, check_values, choice_problem, parse_config
from prealign_scale.data.shard_format import MANIFEST_NAME, Manifest, ManifestError
from prealign_scale.model.presets import PRESETS, ModelPreset, get_preset
from prealign_scale.text.tokenizer import tokenizer_sha256

DS_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def tp_size(cfg: Config) -> int:
    """model.tp, or the preset's default_tp while it is null (a Config built in code, not through load_config)."""
    if cfg.model.tp is not None:
        return cfg.model.tp
    return get_preset(cfg.model.preset).default_tp


def _fail(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def read_json(path: Path, key: str) -> dict:
    """A JSON object file named by config key `key` (ConfigError naming the key and the file)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(key, f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise _fail(key, f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(key, f"{path}: expected a JSON object")
    return data


def read_manifest(shard_dir: str) -> Manifest:
    """The shard manifest of data.shard_dir (ConfigError naming data.shard_dir and the file / field)."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise _fail("data.shard_dir", f"{path}: no such file")
    try:
        return Manifest.read(shard_dir)
    except ManifestError as exc:
        raise _fail("data.shard_dir", str(exc)) from None


def check_shard_files(cfg: Config, manifest: Manifest) -> None:
    """Every shard the manifest lists is a file in data.shard_dir (ConfigError naming the first missing one),
    and each has a sha256 to verify against when data.verify_sha256 is on."""
    shard_dir = cfg.data.shard_dir
    missing = [(i, rec["name"]) for i, rec in enumerate(manifest.shards) if not (Path(shard_dir) / rec["name"]).is_file()]
    if cfg.data.verify_sha256:
        unrecorded = [i for i, rec in enumerate(manifest.shards) if not rec.get("sha256")]
        if unrecorded:
            raise _fail("data.verify_sha256", f"true, but {Path(shard_dir) / MANIFEST_NAME} records no sha256 for "
                        f"shards[{unrecorded[0]}]; rebuild the shards or set data.verify_sha256=false")
    if missing:
        i, name = missing[0]
        more = f" ({len(missing) - 1} more listed shard(s) missing too)" if len(missing) > 1 else ""
        raise _fail("data.shard_dir", f"{Path(shard_dir) / name}: listed in {MANIFEST_NAME} (shards[{i}]) but missing"
                    f"{more}; copy the whole shard folder or rebuild it")


def check_align_entries(cfg: Config, dp: int, seq_len: int) -> None:
    """The table's align part holds one phase-1 step: entries_per_rank x dp entries whose words fit seq_len
    tokens (the phase-1 loader's count, data/dict_loader.py), else ConfigError naming the keys."""
    try:
        table = AlignmentTable.load(cfg.data.table_dir)
    except (OSError, ValueError) as exc:
        raise _fail("data.table_dir", f"{cfg.data.table_dir}: {exc}") from None
    part = table.part(ALIGN)
    usable = sum(max(len(t) for t in e.tokens) <= seq_len for e in part)
    need = cfg.align.entries_per_rank * dp
    if usable < need:
        left_out = f" ({len(part) - usable} have a word longer than seq_len={seq_len} tokens)" if usable < len(part) else ""
        raise _fail("align.entries_per_rank", f"{cfg.align.entries_per_rank} x {dp} data-parallel ranks = {need} entries "
                    f"a phase-1 step, but {cfg.data.table_dir} has {usable} usable align entries{left_out}; use a "
                    "smaller align.entries_per_rank or a larger table")


def check_tokenizers(cfg: Config, manifest: Manifest | None, table_meta: dict) -> None:
    """The table and data.tokenizer_dir were made with the shards' tokenizer (the sha256 of tokenizer.json each
    records); without shards, data.tokenizer_dir is checked against the table. ConfigError naming both files."""
    recorded = []  # (config key, file, sha256): the first one is the reference
    if manifest is not None and manifest.tokenizer_sha256:
        recorded.append(("data.shard_dir", Path(cfg.data.shard_dir) / MANIFEST_NAME, manifest.tokenizer_sha256))
    if table_meta.get("tokenizer_sha256"):
        recorded.append(("data.table_dir", Path(cfg.data.table_dir) / "meta.json", table_meta["tokenizer_sha256"]))
    tok = cfg.data.tokenizer_dir
    if tok is not None and (Path(tok) / "tokenizer.json").is_file():
        recorded.append(("data.tokenizer_dir", Path(tok) / "tokenizer.json", tokenizer_sha256(tok)))
    if not recorded:
        return
    _, ref_file, ref_sha = recorded[0]
    for key, file, sha in recorded[1:]:
        if sha != ref_sha:
            made = "is" if key == "data.tokenizer_dir" else "was made with"
            raise _fail(key, f"{file} {made} another tokenizer (sha256 {sha[:12]}...) than the one {ref_file} records "
                        f"(sha256 {ref_sha[:12]}...); use the files built with one tokenizer")


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


def align_entry_count(table_dir: str, max_word_tokens: int, bos: bool) -> int:
    """Entries of the table's align part that phase 1 trains on: those whose every word fits in
    `max_word_tokens` positions (one more for the BOS when `bos`; data/dict_loader.DictionaryLoader)."""
    from prealign_scale.alignment.table import ALIGN, AlignmentTable

    limit = max_word_tokens - (1 if bos else 0)
    return sum(1 for e in AlignmentTable.load(table_dir).part(ALIGN) if max(len(t) for t in e.tokens) <= limit)


def _steps_from_epochs(cfg: Config, seq_len: int, dp: int, grad_accum: int) -> int:
    """align.steps for align.epochs passes over the align entries: the loader's global step reads
    entries_per_rank x dp entries (an epoch drops the remainder), an optimizer step grad_accum of them."""
    n = align_entry_count(cfg.data.table_dir, seq_len, cfg.align.word_bos)
    per_pass = n // (cfg.align.entries_per_rank * dp)  # loader steps per epoch
    per_step = cfg.align.entries_per_rank * dp * grad_accum
    if per_pass < grad_accum:
        raise _fail("align.epochs", f"the align part of {cfg.data.table_dir} has {n} usable entries, fewer than "
                    f"one optimizer step of align.entries_per_rank x data-parallel size x align.grad_accum = "
                    f"{per_step}")
    steps = max(1, math.ceil(cfg.align.epochs * per_pass / grad_accum))
    if cfg.align.steps > 0 and cfg.align.steps != steps:
        raise _fail("align.epochs", f"{cfg.align.epochs:g} passes over {n} entries at {per_step} entries per step "
                    f"= {steps} steps, but align.steps={cfg.align.steps}; set only one of align.steps and "
                    "align.epochs")
    return steps


def _tokenizer_bos_id(tokenizer_dir: str | None) -> int:
    """The BOS id of data.tokenizer_dir, for align.word_bos (ConfigError when there is none)."""
    key = "align.word_bos"
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise _fail(key, f"true needs the tokenizer's BOS id: data.tokenizer_dir={tokenizer_dir} has no "
                    "tokenizer.json (or give align.bos_id)")
    from prealign_scale.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    if tok.bos_token_id is None:
        raise _fail(key, f"true, but the tokenizer {tokenizer_dir} has no BOS token; set align.bos_id to its "
                    "document start id or align.word_bos=false")
    return int(tok.bos_token_id)


def resolve_config(cfg: Config, world_size: int = 1) -> Config:
    """Check `cfg` against the model presets and the files it names; return a new Config with model.tp,
    model.vocab_size, model.seq_len and both grad_accum filled in (ConfigError naming the key)."""
    problem = choice_problem("model.preset", cfg.model.preset, tuple(PRESETS))
    if problem:
        raise ConfigError(problem)
    if cfg.model.attention == "te":
        from prealign_scale.model.builder import transformer_engine_available

        if not transformer_engine_available():
            raise _fail("model.attention", "'te' needs Transformer Engine (import transformer_engine.pytorch "
                        "failed); build the image with --build-arg TE_VERSION=<x.y> or use 'sdpa'")
    # Tensor parallelism: null takes the preset's default_tp (2 for 13b, 8 for 70b, else 1).
    preset = PRESETS[cfg.model.preset]
    tp, tp_origin = cfg.model.tp, ""
    if tp is None:
        tp = preset.default_tp
        tp_origin = f" (the default_tp of preset {preset.name!r}; set model.tp to choose another)"
    _check_tp_split(preset, tp, tp_origin)
    if cfg.lm.lm_loss_impl != "megatron" and tp > 1:
        raise _fail("lm.lm_loss_impl", f"{cfg.lm.lm_loss_impl!r} needs model.tp=1 (got {tp}{tp_origin}); "
                    "use megatron")
    if world_size % tp:
        raise _fail("model.tp", f"{tp}{tp_origin} does not divide the world size {world_size}")
    dp = world_size // tp

    # Files. Paths are relative to the working directory (the repository root for the shipped configs).
    ds_path = Path(cfg.run.ds_config)
    ds = read_json(ds_path, "run.ds_config")
    for k in DS_BATCH_KEYS:
        if k in ds and ds[k] != "auto":
            raise _fail("run.ds_config", f"{ds_path}: {k}={ds[k]!r}: batch sizes come from the align/lm sections "
                        "of the experiment config; remove the key or set it to \"auto\"")
    vocab_sources: dict[str, int] = {}
    manifest, meta = None, {}
    if "lm" in cfg.phases():
        if cfg.data.shard_dir is None:
            raise _fail("data.shard_dir", "required for phase lm (lm.steps > 0)")
        manifest = read_manifest(cfg.data.shard_dir)
        check_shard_files(cfg, manifest)
        vocab_sources[f"data.shard_dir ({MANIFEST_NAME})"] = manifest.vocab_size
        n_shards = len(manifest.shards)
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
    check_tokenizers(cfg, manifest, meta)

    # Derived sizes.
    hf_vocab = _check_init_hf(cfg.model.init_hf, preset) if cfg.model.init_hf is not None else None
    vocab = cfg.model.vocab_size
    if vocab is None:
        if hf_vocab is not None:  # the checkpoint fixes the embedding rows
            vocab = hf_vocab
        elif not vocab_sources:
            raise _fail("model.vocab_size", "null, and no shard manifest or table meta.json gives a vocab_size")
        else:
            vocab = max(vocab_sources.values())
    for src, v in vocab_sources.items():
        if v > vocab:
            origin = f" (the vocab_size of model.init_hf={cfg.model.init_hf})" if hf_vocab is not None else ""
            raise _fail("model.vocab_size", f"{vocab}{origin} is smaller than the vocab_size {v} of {src}")
    if hf_vocab is not None:
        from prealign_scale.model.builder import pad_vocab_size

        rows = vocab if tp == 1 else pad_vocab_size(vocab, tp, 1)
        if rows != hf_vocab:
            padded = f", padded to a multiple of model.tp={tp}" if rows != vocab else ""
            raise _fail("model.init_hf", f"{cfg.model.init_hf}/config.json: vocab_size={hf_vocab} differs from the "
                        f"model's {rows} embedding rows (model.vocab_size={vocab}{padded}); set "
                        f"model.vocab_size=null to take the checkpoint's")
    seq_len = cfg.model.seq_len
    if manifest is not None:
        if seq_len is not None and seq_len != manifest.seq_len:
            raise _fail("model.seq_len", f"{seq_len} differs from the shards' seq_len {manifest.seq_len} "
                        f"({cfg.data.shard_dir}/{MANIFEST_NAME}); set it to null")
        seq_len = manifest.seq_len
    elif seq_len is None:
        seq_len = preset.default_seq_len
    if "align" in cfg.phases():
        check_align_entries(cfg, dp, seq_len)
    align_accum = _resolve_accum("align", cfg.align.entries_per_rank, cfg.align.grad_accum,
                                 cfg.align.global_entries, dp, "align.entries_per_rank", "global_entries")
    lm_accum = _resolve_accum("lm", cfg.lm.micro_batch_size, cfg.lm.grad_accum,
                              cfg.lm.global_batch_size, dp, "lm.micro_batch_size", "global_batch_size")
    align_steps, bos_id = cfg.align.steps, cfg.align.bos_id
    if "align" in cfg.phases():
        if cfg.align.epochs is not None:
            align_steps = _steps_from_epochs(cfg, seq_len, dp, align_accum)
        if cfg.align.word_bos and bos_id is None:
            bos_id = _tokenizer_bos_id(cfg.data.tokenizer_dir)
        if bos_id is not None and bos_id >= vocab:
            raise _fail("align.bos_id", f"{bos_id} is not below model.vocab_size {vocab}")
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, tp=tp, vocab_size=vocab, seq_len=seq_len),
        data=dataclasses.replace(cfg.data),
        align=dataclasses.replace(cfg.align, grad_accum=align_accum, steps=align_steps, bos_id=bos_id),
        lm=dataclasses.replace(cfg.lm, grad_accum=lm_accum),
        run=dataclasses.replace(cfg.run),
        dist=dataclasses.replace(cfg.dist),
    )


def validate(cfg: Config, world_size: int = 1) -> Config:
    """The value checks, then the resolution: a new, resolved Config (ConfigError with the first problem)."""
    problems = check_values(cfg)
    if problems:
        raise ConfigError(problems[0])
    return resolve_config(cfg, world_size)


def load_config(path: str | Path | None, overrides: list[str] = (), *, world_size: int = 1) -> Config:
    """Parse, type-check, validate and resolve a run configuration (raises ConfigError)."""
    return validate(parse_config(path, overrides), world_size=world_size)
