"""One evaluation over a run folder or an HF export: `evaluate(run_or_hf_dir, eval_cfg) -> dict`.

The model is ``RUN/hf`` (a run folder, written by the engine's export) or the folder itself when it holds a
``config.json`` (any HF causal LM export), loaded with ``AutoModelForCausalLM.from_pretrained``; its
tokenizer is the one copied into the folder (or ``tokenizer_dir``). Each section runs when its inputs are
configured (:class:`EvalConfig`); the result is one JSON-ready dict:

    {"model", "clone_offset", "config", "lm": {"shards": {lang: {loss, ppl, tokens}}, "text": {...}},
     "probe": {"layers", "groups": {"seen": {...}, "unseen": {...}, "unseen-composed": {...}, "tsv:NAME": {...}}},
     "retrieval": {NAME: {...}}, "knowledge": {lang: {...}}, "transfer": {...}, "seconds": {section: s}}

English-Clone: ``clone_offset`` (V) comes from the config, else from the alignment table's or the shard
manifest's ``vocab_offset`` named by the run's config.yaml, else from the model (vocab = 2 x tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from prealign_scale.alignment import probe as core  # the probe core, shared with training
from prealign_scale.alignment.clone import CLONE, EN
from prealign_scale.alignment.table import AlignmentTable
from prealign_scale.config_loader import ConfigError, fill, read_yaml, where_of
from prealign_scale.data.facts import read_facts, read_templates
from prealign_scale.data.shard_format import MANIFEST_NAME, Manifest
from prealign_scale.eval import knowledge, lm_eval, probe, retrieval, transfer
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.progress import count_forwards, end_section, start_section
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView, load_hf_model

EVAL_DATA = Path(__file__).resolve().parents[2] / "data" / "eval"  # the shipped sets (make_eval_sets.py)


@dataclass
class EvalConfig:
    hf_dir: str | None = None  # default: RUN/hf, or the folder itself when it holds config.json
    tokenizer_dir: str | None = None  # default: the HF folder (export_hf copies the tokenizer in)
    clone_offset: int | None = None  # V for English-Clone, 0 for none; None: detect (module docstring)
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 32
    # tokens per text window / sentence / passage of the evaluators (not the training seq_len, which is the
    # shard manifest's, else the preset's default_seq_len)
    max_len: int = 256
    seed: int = 0
    progress: bool = True  # a tqdm bar per section on stderr (sequences run so far, rate)
    shipped_sets: bool = False  # fill unset facts / transfer / retrieval inputs with data/eval's sets
    # language modelling
    lm_shards: str | None = None  # held-out shard folder
    lm_max_samples: int | None = 200
    lm_doc_attention: bool = True
    lm_texts: dict[str, str] = field(default_factory=dict)  # lang -> text file (.txt lines / .jsonl "text")
    # alignment probe
    probe_table: str | None = None  # default: the run's data.table_dir; "" turns the table probe off
    probe_pairs: list[dict] = field(default_factory=list)  # [{"path", "src_lang", "tgt_lang", "name"?}] TSV
    probe_max_pairs: int | None = 2000  # per group
    # words run after the BOS id, as phase 1 trained them with align.word_bos (the vectors never pool it);
    # null: the run's align.word_bos (and its resolved align.bos_id)
    probe_word_bos: bool | None = None
    # also score each table group's pairs that share no token id (``seen-disjoint``, ...; probe.token_disjoint_groups)
    probe_token_disjoint: bool = False
    # held-out source-language text (.txt / .jsonl "text", .gz): its multi-token words made of seen tokens
    # form the group "unseen-composed" (English-Clone tables only; probe.composed_pairs)
    probe_composed_text: str | None = None
    # sentence retrieval
    retrieval: list[dict] = field(default_factory=list)  # [{"path", "src_lang", "tgt_lang", "name"?}] JSONL
    retrieval_max_pairs: int | None = 1000
    # cross-lingual knowledge
    facts: str | None = None
    templates: str | None = None
    knowledge_langs: list[str] | None = None  # default: the templates' languages (+ clone for Clone models)
    knowledge_max_facts: int | None = None  # a seeded subset of the facts (candidates still from all facts)
    # zero-shot transfer
    transfer_train: str | None = None
    transfer_train_lang: str = EN
    transfer_tests: dict[str, str] = field(default_factory=dict)  # lang -> labelled JSONL test set
    transfer_finetune: bool = True
    finetune_epochs: int = 2
    finetune_lr: float = 1e-4
    probe_layer: str = "final_norm"  # the linear probe's reported layer

    @classmethod
    def from_dict(cls, d: dict, where: str = "eval config", lines: dict | None = None) -> EvalConfig:
        """An EvalConfig from a mapping of its keys, type-checked (config_loader); an unknown key or a bad
        value is one ValueError naming `where` (``file:line`` when `lines`, the YAML line map, is given)."""
        values = fill(cls, d, lambda key: where if lines is None else where_of(where, lines, str(key)), quoted=True)
        for key in ("probe_pairs", "retrieval"):
            for i, item in enumerate(values.get(key) or []):
                missing = {"path", "src_lang", "tgt_lang"} - set(item)
                if missing:
                    raise ValueError(f"{where}: {key}[{i}] misses {sorted(missing)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> EvalConfig:
        """Read a YAML file of eval config keys; a missing file, invalid YAML (named ``path:line``) or an
        unknown key raises ValueError / EvalInputError with one message."""
        try:
            d, lines = read_yaml(path, "no such eval config file")
        except ConfigError as exc:
            raise EvalInputError(str(exc)) from None
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of eval config keys")  # noqa: TRY004 (bad file)
        return cls.from_dict(d, str(path), lines)


def with_shipped_sets(cfg: EvalConfig, clone: bool = True) -> EvalConfig:
    """`cfg` with the shipped English(-Clone) sets of data/eval filled in where unset (facts, templates,
    genre transfer task, parallel sentences)."""
    tgt = CLONE if clone else EN
    c = dataclasses.replace(cfg)
    c.facts = c.facts or str(EVAL_DATA / "facts.jsonl")
    c.templates = c.templates or str(EVAL_DATA / "fact_templates.json")
    c.transfer_train = c.transfer_train or str(EVAL_DATA / "genre_train.en.jsonl")
    if not c.transfer_tests:
        c.transfer_tests = {EN: str(EVAL_DATA / "genre_test.en.jsonl")}
        if clone:
            c.transfer_tests[CLONE] = str(EVAL_DATA / "genre_test.clone.jsonl")
    if not c.retrieval and clone:
        c.retrieval = [{"path": str(EVAL_DATA / "parallel.en-clone.jsonl"), "src_lang": EN, "tgt_lang": tgt,
                        "name": "kjv_heldout"}]
    return c


# --------------------------------------------------------------------------------------------- resolving

def _run_config(run_dir: Path) -> dict:
    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    return yaml.safe_load(p.read_text()) or {}


def _resolve(path: str | None, run_dir: Path) -> Path | None:
    """A path from a run's config: as given (relative to the working directory), else relative to the run."""
    if not path:
        return None
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return run_dir / p if (run_dir / p).exists() else p


def _vocab_offset_of(run_cfg: dict, run_dir: Path) -> int | None:
    data = run_cfg.get("data") or {}
    table = _resolve(data.get("table_dir"), run_dir)
    if table is not None and (table / "meta.json").is_file():
        meta = json.loads((table / "meta.json").read_text())
        if "vocab_offset" in meta:
            return int(meta["vocab_offset"])
    shards = _resolve(data.get("shard_dir"), run_dir)
    if shards is not None and (shards / MANIFEST_NAME).is_file():
        manifest = Manifest.read(shards)
        if manifest.vocab_offset is not None:
            return manifest.vocab_offset
    return None


def _read_texts(path: str) -> list[str]:
    """The documents of a text file (.txt one per line, .jsonl ``"text"``, optionally .gz)."""
    from prealign_scale.text.corpus import CorpusError, iter_documents

    try:
        return [doc.text for doc in iter_documents(path)]
    except CorpusError as exc:
        raise EvalInputError(str(exc)) from exc


def resolve_model_dir(run_or_hf_dir: str | Path, cfg: EvalConfig) -> tuple[Path, Path]:
    """(run folder, HF folder) for a run folder or an HF export."""
    root = Path(run_or_hf_dir)
    if cfg.hf_dir:
        return root, Path(cfg.hf_dir)
    if (root / "config.json").is_file():
        return root, root
    if (root / "hf" / "config.json").is_file():
        return root, root / "hf"
    raise FileNotFoundError(f"{root}: neither an HF model folder (config.json) nor a run folder with hf/ "
                            f"(train with run.export_hf: true, or pass --hf DIR)")


# ------------------------------------------------------------------------------------------------ evaluate

def probe_bos_id(cfg: EvalConfig, run_cfg: dict) -> int | None:
    """The id the probe's words run after: the run's align.bos_id when it trained phase 1 with align.word_bos
    (or when probe_word_bos says so), else None (the words alone, as phase 1 ran them without it)."""
    align = run_cfg.get("align") or {}
    word_bos = cfg.probe_word_bos if cfg.probe_word_bos is not None else bool(align.get("word_bos"))
    if not word_bos:
        return None
    if align.get("bos_id") is None:
        raise EvalInputError("probe_word_bos: the run's config.yaml records no align.bos_id (a run trained "
                             "with align.word_bos records it); set probe_word_bos: false")
    return int(align["bos_id"])


def evaluate(run_or_hf_dir: str | Path, eval_cfg: EvalConfig | dict | None = None) -> dict:
    """Run every configured evaluator on the model of a run folder or HF folder (module docstring)."""
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_dict(eval_cfg or {})
    run_dir, hf_dir = resolve_model_dir(run_or_hf_dir, cfg)
    run_cfg = _run_config(run_dir)
    torch.manual_seed(cfg.seed)
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"eval config: dtype {cfg.dtype!r} is not one of float32, bfloat16, float16")
    model = load_hf_model(hf_dir, cfg.device, getattr(torch, cfg.dtype))
    view = HFModelView(model)
    if cfg.progress:
        count_forwards(view)  # every forward batch moves the open section's bar
    from prealign_scale.text.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer_dir or hf_dir)
    offset = cfg.clone_offset
    if offset is None:
        offset = _vocab_offset_of(run_cfg, run_dir)
    if offset is None:
        offset = len(tok) if view.vocab_size == 2 * len(tok) else 0
    enc = TextEncoder(tok, offset)
    if cfg.shipped_sets:
        cfg = with_shipped_sets(cfg, clone=bool(offset))
    results: dict[str, Any] = {"model": str(hf_dir), "clone_offset": offset, "config": dataclasses.asdict(cfg)}
    seconds: dict[str, float] = {}
    bs = cfg.batch_size

    t0 = time.perf_counter()
    lm: dict[str, Any] = {}
    start_section("perplexity", cfg.progress and bool(cfg.lm_shards or cfg.lm_texts))
    if cfg.lm_shards:
        lm["shards"] = lm_eval.shard_lm_eval(view, cfg.lm_shards, max_samples=cfg.lm_max_samples, batch_size=bs,
                                             doc_attention=cfg.lm_doc_attention, pad_id=enc.pad_id)
    if cfg.lm_texts:
        lm["text"] = {lang: lm_eval.text_lm_eval(view, enc, p, lang, max_len=cfg.max_len, batch_size=bs)
                      for lang, p in cfg.lm_texts.items()}
    if lm:
        results["lm"] = lm
        seconds["lm"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start_section("probe", cfg.progress and (cfg.probe_table != "" or bool(cfg.probe_pairs)))
    groups: dict[str, list[core.ProbePair]] = {}
    composed: list[core.ProbePair] = []
    table_dir = cfg.probe_table if cfg.probe_table is not None else \
        _resolve((run_cfg.get("data") or {}).get("table_dir"), run_dir)
    if table_dir:
        table = AlignmentTable.load(table_dir)
        table_groups = core.probe_set_from_table(table, cfg.probe_max_pairs, cfg.seed).groups
        groups.update(table_groups)
        if cfg.probe_token_disjoint:
            groups.update(probe.token_disjoint_groups(table_groups))
        if cfg.probe_composed_text:
            pairs = probe.composed_pairs(table, enc, _read_texts(cfg.probe_composed_text))
            if not pairs:
                raise EvalInputError(f"{cfg.probe_composed_text}: no word of this text is made of several seen "
                                     f"tokens of {table_dir} (probe_composed_text)")
            composed = core.subsample(pairs, cfg.probe_max_pairs, cfg.seed)
    elif cfg.probe_composed_text:
        raise ValueError("eval config: probe_composed_text needs the alignment table (probe_table, or the run's "
                         "data.table_dir)")
    for item in cfg.probe_pairs:
        name = item.get("name") or Path(item["path"]).stem
        pairs = probe.read_pairs_tsv(item["path"], enc, item["src_lang"], item["tgt_lang"])
        groups[f"tsv:{name}"] = core.subsample(pairs, cfg.probe_max_pairs, cfg.seed)
    if groups:
        bos_id = probe_bos_id(cfg, run_cfg)
        results["probe"] = core.run_probe(view, core.ProbeSet(groups), max(bs, 64), enc.pad_id, bos_id)
        if composed:  # its own forward batches, so the other groups' numbers are those of a run without it
            extra = core.run_probe(view, core.ProbeSet({probe.COMPOSED_GROUP: composed}), max(bs, 64), enc.pad_id,
                                   bos_id)
            results["probe"]["groups"][probe.COMPOSED_GROUP] = extra["groups"][probe.COMPOSED_GROUP]
        results["probe"]["table"] = str(table_dir) if table_dir else None
        results["probe"]["bos_id"] = bos_id
        seconds["probe"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start_section("retrieval", cfg.progress and bool(cfg.retrieval))
    if cfg.retrieval:
        results["retrieval"] = {
            item.get("name") or Path(item["path"]).stem: retrieval.sentence_retrieval(
                view, enc, item["path"], item["src_lang"], item["tgt_lang"], max_len=cfg.max_len,
                max_pairs=cfg.retrieval_max_pairs, seed=cfg.seed, batch_size=bs)
            for item in cfg.retrieval
        }
        seconds["retrieval"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start_section("knowledge", cfg.progress and bool(cfg.facts))
    if cfg.facts:
        if not cfg.templates:
            raise ValueError("eval config: facts needs templates (a JSON file of templates per language)")
        facts = read_facts(cfg.facts)
        temps = read_templates(cfg.templates)
        langs = cfg.knowledge_langs
        if langs is None:
            langs = list(temps) + ([CLONE] if offset and CLONE not in temps and EN in temps else [])
        asked = core.subsample(facts, cfg.knowledge_max_facts, cfg.seed)
        results["knowledge"] = {lang: knowledge.query_facts(view, enc, facts, temps, lang, batch_size=max(bs, 64),
                                                            queries_of=asked) for lang in langs}
        seconds["knowledge"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start_section("transfer", cfg.progress and bool(cfg.transfer_train))
    if cfg.transfer_train:
        results["transfer"] = transfer.transfer_eval(
            view, enc, cfg.transfer_train, cfg.transfer_train_lang, cfg.transfer_tests,
            finetune=cfg.transfer_finetune, probe_layer=cfg.probe_layer, max_len=cfg.max_len, batch_size=bs,
            finetune_epochs=cfg.finetune_epochs, finetune_lr=cfg.finetune_lr, seed=cfg.seed)
        seconds["transfer"] = time.perf_counter() - t0
    end_section()
    results["seconds"] = seconds
    return results
