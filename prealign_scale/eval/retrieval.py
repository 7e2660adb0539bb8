"""Sentence retrieval (METHOD.md §5 family): find a sentence's translation among all target sentences.

Input: a parallel set, JSONL ``{"src": "...", "tgt": "..."}`` per line (for English-Clone the ``tgt`` side
is read as Clone: plain or marked "§the §house" text). Each sentence is tokenised in its language (no BOS,
truncated to ``max_len`` tokens) and mean-pooled per layer; accuracy@1 by cosine over all target sentences of
the set, in both directions, with the same tie rule and statistics as the word probe
(`prealign_scale.eval.probe`): the result has the probe's per-layer fields (``acc``, ``acc_src2tgt``,
``acc_tgt2src``, ``cos_true``, ``cos_random``, ``chance``). Identical sentences count as one candidate
(any of their partners is a right answer).
"""

from __future__ import annotations

from pathlib import Path

from prealign_scale.alignment.probe import ProbePair, ProbeSet, run_probe, subsample
from prealign_scale.eval.io import EvalInputError, read_jsonl
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import ModelView


def read_parallel(path: str | Path) -> list[tuple[int, str, str]]:
    """(line, src, tgt) of a parallel JSONL file; errors name ``path:line``."""
    return [(lineno, r["src"], r["tgt"]) for lineno, r in read_jsonl(path, {"src": str, "tgt": str})]


def parallel_pairs(path: str | Path, encoder: TextEncoder, src_lang: str, tgt_lang: str,
                   max_len: int = 128) -> list[ProbePair]:
    encoder.check_lang(src_lang)
    encoder.check_lang(tgt_lang)
    pairs = []
    for lineno, src, tgt in read_parallel(path):
        s, t = encoder.encode(src, src_lang)[:max_len], encoder.encode(tgt, tgt_lang)[:max_len]
        if not s or not t:
            raise EvalInputError(f"{path}:{lineno}: a sentence tokenises to nothing")
        pairs.append(ProbePair(tuple(s), tuple(t), src, tgt))
    return pairs


def sentence_retrieval(view: ModelView, encoder: TextEncoder, path: str | Path, src_lang: str, tgt_lang: str, *,
                       max_len: int = 128, max_pairs: int | None = None, seed: int = 0,
                       batch_size: int = 64) -> dict:
    """Per-layer retrieval statistics of a parallel file: ``{"layers", "src_lang", "tgt_lang", ...group}``."""
    pairs = subsample(parallel_pairs(path, encoder, src_lang, tgt_lang, max_len), max_pairs, seed)
    res = run_probe(view, ProbeSet({"sentences": pairs}), batch_size, encoder.pad_id)
    return {"layers": res["layers"], "src_lang": src_lang, "tgt_lang": tgt_lang, **res["groups"]["sentences"]}
