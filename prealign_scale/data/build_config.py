"""The shard builder's typed config and its validation.

Checked before any work starts (:func:`prepare`, :func:`check_quotas`): every setting, every input file up to
its first document, the tokenizer against the table, and upper bounds on the tokens the corpora can give
(a quota or a shard count they certainly cannot meet). Found later, by the stages that read everything: a bad
line further into a corpus (stage A stops with a BuildError naming ``file:line``) and a quota that the bound
allowed but the real token counts do not meet (the plan stops with a BuildError).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


class BuildError(ValueError):
    """Bad input to the shard builder: the message says what, where and how to fix it."""


@dataclass
class BuildConfig:
    corpora: dict[str, list[str]]  # language tag -> corpus files (plain text or JSONL, optionally .gz/.zst)
    tokenizer: str  # tokenizer folder (data_tools/train_tokenizer.py)
    table: str | None = None  # alignment table folder (data_tools/build_table.py or make_english_clone.py)
    mixture: dict[str, float] | None = None  # token-ratio weights per language; None = every document
    p: float = 0.05  # probability of switching each dictionary-covered word
    switch_langs: list[str] | None = None  # languages whose documents are code-switched (default: the first)
    clone_langs: list[str] = field(default_factory=list)  # languages rendered as English-Clone (ids + V)
    include_heldout: bool = False  # also switch the table's held-out words (default: keep them unseen)
    seed: int = 0
    seq_len: int = 512  # tokens per packed sample; the run config takes it from the manifest (model.seq_len)
    total_tokens: int | None = None  # cap on the mixture's tokens (error if it cannot be met)
    samples_per_shard: int = 1000
    shard_multiple: int = 1  # shard count is a multiple of this (ranks x loader workers)
    docs_per_chunk: int = 256  # unit of work (and of resume) of the tokenise+switch stage
    text_field: str = "text"
    corpus_format: str | None = None  # lines | paragraphs | jsonl; None = from the extension
    # Knowledge facts (METHOD.md §5): rendered with `facts_lang` templates into documents of that language
    # only, `fact_repeats` statements of each fact, placed ahead of the language's corpus (always included).
    facts: str | None = None  # JSONL {"subject","relation","object"}
    fact_templates: str | None = None  # JSON {lang: {relation: [templates]}}
    fact_repeats: int = 10
    facts_lang: str | None = None  # default: the first switched language

    def resolved_facts_lang(self) -> str | None:
        if not self.facts:
            return None
        return self.facts_lang or (self.resolved_switch_langs() or [next(iter(self.corpora))])[0]

    def fact_documents(self) -> list[str]:
        """The rendered fact documents (empty without facts); a pure function of the config."""
        if not self.facts:
            return []
        from prealign_scale.data.facts import read_facts, read_templates, render_fact_documents

        return render_fact_documents(read_facts(self.facts), read_templates(self.fact_templates),
                                     self.resolved_facts_lang(), self.fact_repeats, self.seed)

    def resolved_switch_langs(self) -> list[str]:
        if self.switch_langs is not None:
            return list(self.switch_langs)
        first = next(iter(self.corpora), None)
        return [first] if first is not None and first not in self.clone_langs else []

    def normalized_mixture(self) -> dict[str, float] | None:
        if self.mixture is None:
            return None
        total = sum(self.mixture.values())
        return {lang: w / total for lang, w in sorted(self.mixture.items())}

    def to_manifest(self) -> dict:
        d = asdict(self)
        d["switch_langs"] = self.resolved_switch_langs()
        d["mixture"] = self.normalized_mixture()
        return d

    def _shared_inputs(self) -> dict[str, list[int]]:
        """(size, mtime) of the tokenizer and table files, which every language's chunks depend on."""
        files = {}
        if self.tokenizer:
            files[str(Path(self.tokenizer) / "tokenizer.json")] = _input_id(Path(self.tokenizer) / "tokenizer.json")
        if self.table:
            for name in ("entries.jsonl", "meta.json"):
                files[str(Path(self.table) / name)] = _input_id(Path(self.table) / name)
        return files

    def _fact_inputs(self) -> dict[str, list[int]]:
        return {p: _input_id(p) for p in (self.facts, self.fact_templates) if p}

    def fingerprint(self) -> str:
        """Identity of a build: the config plus size and mtime of every input (a resume must see the same).

        The mtime makes an edited file a changed input even when its size stays the same (a corrected
        corpus line): work done from the old content is not reused for the new one.
        """
        inputs = {p: _input_id(p) for paths in self.corpora.values() for p in paths}
        inputs.update(self._fact_inputs())
        inputs.update(self._shared_inputs())
        blob = json.dumps({"config": self.to_manifest(), "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def chunk_keys(self) -> dict[str, str]:
        """Per language: the identity of its tokenised chunks (stage A), a hash of everything they depend on.

        That is the language's corpora (paths, size, mtime), the facts when they go into this language, the
        tokenizer and table files, and the tokenisation settings (p, seed, switch/clone languages, ...). NOT
        the mixture, total_tokens, seq_len, samples_per_shard or shard_multiple: those only change the plan,
        so a build that changes them reuses the chunks (see build_shards._claim_folder).
        """
        m = self.to_manifest()
        shared = {k: m[k] for k in ("tokenizer", "table", "p", "seed", "include_heldout", "switch_langs",
                                    "clone_langs", "docs_per_chunk", "text_field", "corpus_format")}
        shared["inputs"] = self._shared_inputs()
        keys = {}
        for lang, paths in self.corpora.items():
            own: dict = {"lang": lang, "corpora": [[p, _input_id(p)] for p in paths], "shared": shared}
            if lang == self.resolved_facts_lang():
                own["facts"] = {"files": self._fact_inputs(), "facts": self.facts,
                                "fact_templates": self.fact_templates, "fact_repeats": self.fact_repeats}
            keys[lang] = hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()
        return keys


def read_build_yaml(path: str | Path) -> dict:
    """The BuildConfig keys of a YAML file (``--config build.yaml``), type-checked by the config loader;
    a missing file, invalid YAML, an unknown key or a wrong type is one BuildError naming ``path:line``."""
    from prealign_scale.config_loader import ConfigError, fill, read_yaml, where_of

    try:
        raw, lines = read_yaml(path)
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of BuildConfig keys")
        return fill(BuildConfig, raw, lambda key: where_of(path, lines, str(key)), quoted=True)
    except ConfigError as exc:
        raise BuildError(str(exc)) from None


def _input_id(path) -> list[int]:
    """[size, mtime in ns] of an input file; [-1, -1] when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


@dataclass
class Prepared:
    """What the validated config resolves to (per process, cached)."""

    contexts: dict  # lang -> doc_chunks.ChunkContext
    vocab_size: int
    clone_offset: int
    eos_id: int
    pad_id: int | None
    tokenizer_sha256: str
    dictionary_sha256: str | None
    # lang -> most tokens one byte of its text can become (None: no bound known); see check_quotas
    tokens_per_byte: dict[str, int | None] = field(default_factory=dict)


_PREPARED: dict[str, Prepared] = {}


def prepare(cfg: BuildConfig) -> Prepared:
    """Validate `cfg` and load the tokenizer and table; raise BuildError naming the bad field or file."""
    key = cfg.fingerprint()
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = _prepare(cfg)
    return _PREPARED[key]


def _prepare(cfg: BuildConfig) -> Prepared:
    from prealign_scale.alignment.codeswitch import make_switcher
    from prealign_scale.alignment.table import AlignmentTable
    from prealign_scale.data.doc_chunks import ChunkContext
    from prealign_scale.data.word_encoder import word_encoder
    from prealign_scale.text.corpus import CorpusError, check_corpus
    from prealign_scale.text.tokenizer import load_tokenizer, tokenizer_sha256

    _check_numbers(cfg)
    if not cfg.corpora:
        raise BuildError("corpora: at least one corpus is needed (lang=path)")
    for lang, paths in cfg.corpora.items():
        if not paths:
            raise BuildError(f"corpora.{lang}: no files given")
        for path in paths:
            try:
                check_corpus(path, text_field=cfg.text_field, fmt=cfg.corpus_format)
            except CorpusError as exc:
                raise BuildError(f"corpora.{lang}: {exc}") from exc
    unknown = [x for x in (cfg.clone_langs or []) + (cfg.switch_langs or []) if x not in cfg.corpora]
    if unknown:
        raise BuildError(f"switch_langs/clone_langs: {unknown} have no corpus (corpora: {sorted(cfg.corpora)})")
    if set(cfg.resolved_switch_langs()) & set(cfg.clone_langs):
        raise BuildError("switch_langs: a Clone language cannot be code-switched (it is the target side)")
    if cfg.facts:
        from prealign_scale.data.input_files import InputFileError

        if not cfg.fact_templates:
            raise BuildError("fact_templates: needed with facts (JSON {lang: {relation: [templates]}})")
        if cfg.resolved_facts_lang() not in cfg.corpora:
            raise BuildError(f"facts_lang: {cfg.resolved_facts_lang()!r} has no corpus")
        if not (isinstance(cfg.fact_repeats, int) and cfg.fact_repeats >= 1):
            raise BuildError(f"fact_repeats: must be an integer >= 1, got {cfg.fact_repeats!r}")
        try:
            cfg.fact_documents()
        except (InputFileError, OSError, ValueError) as exc:
            raise BuildError(f"facts: {exc}") from exc
    if cfg.mixture is not None:
        if set(cfg.mixture) != set(cfg.corpora):
            raise BuildError(f"mixture: languages {sorted(cfg.mixture)} must equal corpora {sorted(cfg.corpora)}")
        bad = {k: w for k, w in cfg.mixture.items() if not (isinstance(w, (int, float)) and w > 0)}
        if bad:
            raise BuildError(f"mixture: weights must be positive numbers, got {bad}")

    try:
        hf_tok = load_tokenizer(cfg.tokenizer)
    except (OSError, ValueError) as exc:
        raise BuildError(f"tokenizer: {exc}") from exc
    if hf_tok.eos_token_id is None:
        raise BuildError(f"tokenizer: {cfg.tokenizer} has no eos token (retrain with --eos)")
    tok = hf_tok.backend_tokenizer
    tok_sha = tokenizer_sha256(cfg.tokenizer)
    V = len(hf_tok)

    table = None
    if cfg.table:
        try:
            table = AlignmentTable.load(cfg.table)
        except (OSError, ValueError) as exc:
            raise BuildError(f"table: {exc}") from exc
        want = table.meta.get("tokenizer_sha256")
        if want and want != tok_sha:
            raise BuildError(f"table: {cfg.table} was built with another tokenizer (sha256 {want[:12]}...) "
                             f"than {cfg.tokenizer} ({tok_sha[:12]}...): rebuild the table with this tokenizer")
        is_clone_table = table.meta.get("kind") == "clone"
        if is_clone_table and table.vocab_offset != V:
            raise BuildError(f"table: Clone offset {table.vocab_offset} != tokenizer size {V}")
        limit = 2 * V if is_clone_table else V
        worst = max(t for e in table.entries for toks in e.tokens for t in toks)
        if worst >= limit:
            raise BuildError(f"table: token id {worst} out of range for vocabulary {limit}: tokenizer mismatch")
        if cfg.clone_langs and not is_clone_table:
            raise BuildError("table: clone_langs need a Clone table (data_tools/make_english_clone.py)")
    clone_offset = V if cfg.clone_langs or (table is not None and table.meta.get("kind") == "clone") else 0

    switcher = make_switcher(table, tok, _source_lang(cfg, table), cfg.include_heldout) if cfg.p > 0 else None
    encoder = word_encoder(tok)
    contexts = {}
    growth = _tokens_per_byte(cfg, tok, table, switcher)
    for lang in cfg.corpora:
        contexts[lang] = ChunkContext(
            encoder=encoder,
            switcher=switcher if lang in cfg.resolved_switch_langs() else None,
            p=cfg.p,
            seed=cfg.seed,
            eos_id=int(hf_tok.eos_token_id),
            clone_offset=V if lang in cfg.clone_langs else 0,
        )
    return Prepared(contexts, V + clone_offset, clone_offset, int(hf_tok.eos_token_id), hf_tok.pad_token_id,
                    tok_sha, table.sha256() if table is not None else None, growth)


def _tokens_per_byte(cfg: BuildConfig, tok, table, switcher) -> dict[str, int | None]:
    """Per language, an upper bound on tokens per byte of text (None when none is known).

    Without a normaliser (which may lengthen text), every tokenizer model makes at most one token per byte
    (byte-level BPE: exactly the bytes in the worst case; others: at least a character, or an unknown token,
    per token). English-Clone shifts ids (the same count). A dictionary switch replaces a word (>= 1 byte)
    by a translation of at most `longest` tokens (its stored tokens, or its no-space form: <= its bytes).
    """
    if tok.normalizer is not None:
        return {lang: None for lang in cfg.corpora}
    longest = 1
    if switcher is not None and table is not None and table.meta.get("kind") != "clone":
        longest = max(max(len(toks), len(w.encode("utf-8"))) for e in table.entries
                      for w, toks in zip(e.words, e.tokens))
    switched = set(cfg.resolved_switch_langs())
    return {lang: longest if lang in switched and lang not in cfg.clone_langs else 1 for lang in cfg.corpora}


def _source_lang(cfg: BuildConfig, table) -> str:
    if table is not None and table.meta.get("source_lang"):
        return table.meta["source_lang"]
    langs = cfg.resolved_switch_langs()
    return langs[0] if langs else "src"


def _check_numbers(cfg: BuildConfig) -> None:
    checks = [
        ("p", 0.0 <= cfg.p <= 1.0, "a probability in [0, 1]"),
        ("seq_len", isinstance(cfg.seq_len, int) and 2 <= cfg.seq_len <= 65535, "an integer in [2, 65535]"),
        ("samples_per_shard", isinstance(cfg.samples_per_shard, int) and cfg.samples_per_shard >= 1, "an integer >= 1"),
        ("shard_multiple", isinstance(cfg.shard_multiple, int) and cfg.shard_multiple >= 1, "an integer >= 1"),
        ("docs_per_chunk", isinstance(cfg.docs_per_chunk, int) and cfg.docs_per_chunk >= 1, "an integer >= 1"),
        ("total_tokens", cfg.total_tokens is None or cfg.total_tokens > 0, "a positive integer"),
    ]
    for name, ok, what in checks:
        if not ok:
            raise BuildError(f"{name}: must be {what}, got {getattr(cfg, name)!r}")


def check_quotas(cfg: BuildConfig, prepared: Prepared) -> None:
    """Before any tokenising: refuse a mixture quota or a shard count that the corpora certainly cannot meet.

    Upper bound on a language's tokens: ``k * (content bytes + 1)`` per file (every document's text is at
    most its bytes in the file minus its line break, which pays for the document's EOS; ``k`` from
    :func:`_tokens_per_byte`), plus the fact documents. Compressed files are counted by decompressing them
    (corpus.decompressed_size), which stops as soon as the count proves the bound: a mixture that can be
    met costs reading at most its quota's bytes. The exact check, on the real token counts, is the plan's.
    """
    from prealign_scale.text.corpus import CorpusError, decompressed_size

    mix = cfg.normalized_mixture()
    need = {lang: mix[lang] * cfg.total_tokens if mix and cfg.total_tokens else 0.0 for lang in cfg.corpora}
    # shard_multiple samples of seq_len need a stream of shard_multiple * seq_len + 1 tokens (packing.py)
    stream_need = cfg.shard_multiple * cfg.seq_len + 1
    bound: dict[str, int] = {}
    for lang, paths in cfg.corpora.items():
        k = prepared.tokens_per_byte.get(lang)
        if k is None:
            continue  # a normaliser may lengthen the text: no bound
        goal = max(need[lang], stream_need)  # count no further than both checks need
        total = sum(k * len(t.encode("utf-8")) + 1 for t in cfg.fact_documents()) \
            if lang == cfg.resolved_facts_lang() else 0
        n_bytes = 0
        for path in paths:
            stop = max(0, -(-(int(goal) + 1 - total) // k))  # bytes that would prove the goal
            try:
                n = decompressed_size(path, stop_after=stop)
            except CorpusError as exc:
                raise BuildError(f"corpora.{lang}: {exc}") from exc
            n_bytes += n
            total += k * (n + 1)
        bound[lang] = total
        if need[lang] > total:
            raise BuildError(f"mixture cannot be met: {lang} needs {int(need[lang]):,} tokens of total_tokens="
                             f"{cfg.total_tokens:,} but its files hold only {n_bytes:,} bytes of text (at most "
                             f"{total:,} tokens); lower total_tokens or {lang}'s weight, or add data")
    if len(bound) == len(cfg.corpora) and sum(bound.values()) < stream_need:
        raise BuildError(f"shard_multiple: the corpora make at most {sum(bound.values()):,} tokens, fewer than "
                         f"the {stream_need:,} that shard_multiple={cfg.shard_multiple} samples of seq_len="
                         f"{cfg.seq_len} need (one sample per shard at least); add data, shorten seq_len or "
                         "lower shard_multiple")
