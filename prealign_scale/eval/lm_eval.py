"""Language modelling per language: loss and perplexity on held-out shards or on plain text files.

Shards (the training format, `prealign_scale.data.shard_format`): the loss is taken on the **stored
targets** exactly as training takes it (never shifted again, ``-100`` ignored), and each target token counts
for the language of its document (``meta.json`` langs by segment). With ``doc_attention=True`` (the training
default) every document fragment of a sample runs on its own with positions from 0, which is what the engine's
document-restricted attention computes; with ``False`` the whole sample runs as one causal sequence.

Text files (one document per line ``.txt``, or JSONL with a ``"text"`` field, optionally ``.gz``): each
document is tokenised in its language (Clone shifted), EOS appended (as the shard builder does), and cut into
windows of at most ``max_len`` tokens that overlap by one token, so every token after the first is predicted
exactly once.

Per language: ``loss`` = mean NLL (nats) over the scored tokens, ``ppl`` = exp(loss), ``tokens`` = count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from prealign_scale.data.shard_format import IGNORE_INDEX, Sample, SampleFormatError, decode_sample
from prealign_scale.data.shard_reader import load_manifest
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import ModelView, length_batches, pad_right, token_nll


def summarize(nll_sum: float, tokens: int) -> dict:
    loss = nll_sum / tokens if tokens else float("nan")
    return {"loss": loss, "ppl": math.exp(loss) if tokens else float("nan"), "tokens": int(tokens)}


def iter_shard_samples(shard_dir: str | Path) -> Iterator[Sample]:
    """Every sample of a shard folder, in manifest order (shards) and tar order (samples)."""
    from prealign_scale.data.verify import iter_tar_samples

    folder = Path(shard_dir)
    manifest = load_manifest(folder)
    for rec in manifest.shards:
        for raw in iter_tar_samples(folder / rec["name"]):
            try:
                yield decode_sample(raw, manifest.seq_len)
            except (KeyError, TypeError) as exc:
                raise SampleFormatError(f"{raw.get('__url__')}: sample {raw.get('__key__')}: bad meta.json: "
                                        f"{exc!r}") from exc


def fragments(sample: Sample, doc_attention: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input ids, targets, language index per token) of the pieces a sample runs as.

    The language index points into ``sample.langs``. One piece per document segment with `doc_attention`,
    else the whole sample.
    """
    seg = sample.segments.astype(np.int64)
    ids, tgt = sample.input_ids.astype(np.int64), sample.targets.astype(np.int64)
    if not doc_attention:
        return [(ids, tgt, seg)]
    out = []
    bounds = np.flatnonzero(np.diff(seg)) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(seg)]):
        out.append((ids[start:end], tgt[start:end], seg[start:end]))
    return out


Piece = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # inputs, targets, language index per token, names


def _run_pieces(view: ModelView, pieces: list[Piece], batch_size: int, pad_id: int,
                totals: dict[str, list[float]]) -> None:
    """Add each piece's NLL sum and target count to ``totals[lang]`` (each target counts for its token's
    language)."""
    for idx in length_batches([len(p[0]) for p in pieces], batch_size):
        ids, _ = pad_right([pieces[i][0].tolist() for i in idx], pad_id, view.device)
        targets, _ = pad_right([pieces[i][1].tolist() for i in idx], IGNORE_INDEX, view.device)
        scored = targets != IGNORE_INDEX
        if bool(((targets[scored] < 0) | (targets[scored] >= view.vocab_size)).any()) or \
                int(ids.max()) >= view.vocab_size:
            raise ValueError(f"ids or targets outside the model's vocabulary [0, {view.vocab_size}): wrong model "
                             f"for these shards?")
        nll = token_nll(view, ids, targets).double().cpu().numpy()
        for row, i in enumerate(idx):
            _, tgt, lang_idx, names = pieces[i]
            keep = tgt != IGNORE_INDEX
            sums = np.bincount(lang_idx[keep], weights=nll[row, : len(tgt)][keep], minlength=len(names))
            counts = np.bincount(lang_idx[keep], minlength=len(names))
            for k, name in enumerate(names):
                if counts[k]:
                    acc = totals.setdefault(name, [0.0, 0])
                    acc[0] += float(sums[k])
                    acc[1] += int(counts[k])


def shard_lm_eval(view: ModelView, shard_dir: str | Path, *, max_samples: int | None = None,
                  batch_size: int = 16, doc_attention: bool = True, pad_id: int = 0) -> dict:
    """``{lang: {"loss", "ppl", "tokens"}, ..., "all": {...}, "samples": n}`` over the first `max_samples`
    samples of a shard folder (all when None)."""
    totals: dict[str, list[float]] = {}
    pieces: list[Piece] = []
    n = 0
    for sample in iter_shard_samples(shard_dir):
        if max_samples is not None and n >= max_samples:
            break
        n += 1
        for ids, tgt, seg in fragments(sample, doc_attention):
            pieces.append((ids, tgt, seg, list(sample.langs)))
        if len(pieces) >= 16 * batch_size:
            _run_pieces(view, pieces, batch_size, pad_id, totals)
            pieces = []
    if pieces:
        _run_pieces(view, pieces, batch_size, pad_id, totals)
    out: dict = {lang: summarize(*totals[lang]) for lang in sorted(totals)}
    out["all"] = summarize(sum(t[0] for t in totals.values()), sum(int(t[1]) for t in totals.values()))
    out["samples"] = n
    return out


def document_windows(ids: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows of a token sequence: at most `max_len` inputs each, consecutive windows
    overlapping by one token, so each token after the first is a target exactly once."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = []
    for start in range(0, len(ids) - 1, max_len):
        chunk = ids[start : start + max_len + 1]
        out.append((chunk[:-1], chunk[1:]))
    return out


def text_lm_eval(view: ModelView, encoder: TextEncoder, path: str | Path, lang: str, *, max_len: int = 512,
                 append_eos: bool = True, batch_size: int = 16, max_docs: int | None = None,
                 text_field: str = "text") -> dict:
    """``{"loss", "ppl", "tokens", "docs"}`` of the documents of a text file read as language `lang`."""
    from prealign_scale.text.corpus import CorpusError, iter_documents

    encoder.check_lang(lang)
    pieces = []
    docs = 0
    try:
        for doc in iter_documents(path, text_field=text_field):
            if max_docs is not None and docs >= max_docs:
                break
            docs += 1
            ids = encoder.encode(doc.text, lang)
            if append_eos and encoder.eos_id is not None:
                ids.append(int(encoder.eos_id))
            for inp, tgt in document_windows(ids, max_len):
                pieces.append((np.asarray(inp), np.asarray(tgt), np.zeros(len(inp), dtype=np.int64), [lang]))
    except CorpusError as exc:
        raise EvalInputError(str(exc)) from exc
    totals: dict[str, list[float]] = {}
    if pieces:
        _run_pieces(view, pieces, batch_size, encoder.pad_id, totals)
    nll, tokens = totals.get(lang, [0.0, 0])
    return {**summarize(nll, int(tokens)), "docs": docs}
