"""Cross-lingual knowledge application (METHOD.md §5): facts learnt in the source language, asked in the target.

The fact and template files and the training documents are `prealign_scale.data.facts`' (re-exported here);
subjects and objects may carry per-language names. This module asks the facts.

Query side (:func:`query_facts`): for each fact and each template of its relation in the asked language
`lang`, every candidate object (all objects that the facts file pairs with that relation, by their `lang`
names) is substituted with the subject's `lang` name, and the whole sentence is scored by its log-likelihood
(sum over its tokens after the first). The query is right when the true object scores highest; ties share
the credit (1/k for a k-way tie at the top; scores within a relative 1e-6 of the best tie, as float rounding
of a batched forward differs by about 1e-7), so a constant model scores chance. ``accuracy`` is the mean over
queries (fact x template); ``per_relation`` comes with it, and three baselines, each a mean over the same
queries, to tell a learnt fact from a learnt prior:

- ``chance``: 1 / candidates.
- ``majority``: always answering the relation's most frequent object (counted over all facts, by `lang` name;
  a k-way tie for most frequent shares the credit).
- ``subject_blind``: the model's own choice among the same candidates with the subject left out of the
  sentence (``{subject}`` removed, runs of whitespace collapsed): what the model's prior over objects alone
  answers. A model that learnt the facts beats it; one that learnt only which objects are common does not.

Speed: the candidates of one query share the tokens before the object (the prompt). :func:`score_candidates`
runs that prompt once and scores all continuations on its key/value cache (the prompts of one length in one
batch, then their continuations batched by length across queries, so no forward carries padding);
:func:`score_candidates_reference` is the plain path (every sentence in full), kept as the reference
that the tests and ``benchmarks/bench_knowledge_eval.py`` compare against. Both give the same scores up to
float rounding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prealign_scale.data.facts import (
    Fact,
    Templates,
    render,
    templates_for,
)
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import ModelView, check_ids, sequence_logprobs

Scorer = Callable[[ModelView, Sequence[Sequence[Sequence[int]]], int, int], list[list[float]]]


def candidates_by_relation(facts: list[Fact], lang: str | None = None) -> dict[str, list[str]]:
    """Every object seen with each relation, by its `lang` name, sorted (the candidate answers of its queries).
    ``lang=None``: the objects must be plain strings."""
    out: dict[str, set[str]] = {}
    for f in facts:
        out.setdefault(f.relation, set()).add(f.object_in(lang))
    return {rel: sorted(objs) for rel, objs in sorted(out.items())}


def render_blind(template: str, obj: str) -> str:
    """The template with the subject left out and `obj` filled in (whitespace runs collapsed)."""
    return " ".join(render(template, "", obj).split())


# ------------------------------------------------------------------------------------------------ scoring

def score_candidates_reference(view: ModelView, groups: Sequence[Sequence[Sequence[int]]], batch_size: int = 64,
                               pad_id: int = 0) -> list[list[float]]:
    """Log-likelihood of every candidate sequence of every group, each sequence run in full (the plain path;
    identical sequences are scored once)."""
    index: dict[tuple[int, ...], int] = {}
    for seqs in groups:
        for s in seqs:
            index.setdefault(tuple(s), len(index))
    scores = sequence_logprobs(view, list(index), batch_size, pad_id)
    return [[scores[index[tuple(s)]] for s in seqs] for seqs in groups]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix that all `seqs` share (at most the shortest one's length)."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n


def _continuation_scores(view: ModelView, cache, rows: list[int], conts: list[list[int]], budget: int,
                         out: Tensor) -> None:
    """Add to ``out[i]`` the log-likelihood of ``conts[i][1:]`` given prompt ``rows[i]`` of `cache` and
    ``conts[i][:1]``: continuations of the same length run together (no padding), ``budget`` tokens per forward."""
    dev = view.device
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(conts):
        if len(x) > 1:
            by_len.setdefault(len(x), []).append(i)
    for n, members in sorted(by_len.items()):
        per_forward = max(1, budget // (n - 1))
        for k in range(0, len(members), per_forward):
            part = members[k : k + per_forward]
            seqs = torch.tensor([conts[i] for i in part], dtype=torch.long, device=dev)
            logits = view.logits_on_prefix(cache, torch.tensor([rows[i] for i in part], device=dev), seqs[:, :-1])
            # rows of the vocabulary contiguous: cross-entropy over a transposed [n, V, w] view is several times slower
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seqs[:, 1:].reshape(-1),
                                  reduction="none").view(len(part), n - 1)
            out[torch.tensor(part, device=dev)] -= nll.double().sum(1)


@torch.inference_mode()
def score_candidates(view: ModelView, groups: Sequence[Sequence[Sequence[int]]], batch_size: int = 64,
                     pad_id: int = 0) -> list[list[float]]:
    """The scores of :func:`score_candidates_reference`, with each group's shared prompt run once.

    A group's score of sequence s with shared prefix p (P tokens) is
    ``sum_{i=1}^{P-1} log p(p_i | p_<i) + sum_{j>=P} log p(s_j | s_<j)``: the first sum once per group (its
    last position also predicts every candidate's first token after the prompt), the rest from the candidate's
    continuation run on the prompt's key/value cache. The prompts of all groups with the same prompt length run
    together, then all their candidates' continuations, batched by continuation length (no padding) across
    groups, up to ``batch_size x (longest sentence)`` tokens per forward (the reference path's budget). Views
    without ``prefix_cache``, and groups whose sequences share no first token, take the reference path.
    """
    out: list[list[float] | None] = [None] * len(groups)
    fallback = []
    buckets: dict[int, list[int]] = {}
    for g, seqs in enumerate(groups):
        check_ids(view, seqs)
        p = _common_prefix(seqs)
        if p == 0 or not hasattr(view, "prefix_cache"):
            fallback.append(g)
        else:
            buckets.setdefault(p, []).append(g)
    if fallback:
        for g, scores in zip(fallback, score_candidates_reference(view, [groups[g] for g in fallback], batch_size,
                                                                  pad_id)):
            out[g] = scores
    dev = view.device
    for p, members in sorted(buckets.items()):
        longest = max(len(s) for g in members for s in groups[g])
        budget = batch_size * longest  # tokens per forward
        per_chunk = max(1, budget // p)
        for k in range(0, len(members), per_chunk):
            chunk = members[k : k + per_chunk]
            prefix = torch.tensor([list(groups[g][0][:p]) for g in chunk], dtype=torch.long, device=dev)
            plog, cache = view.prefix_cache(prefix)
            plp = F.log_softmax(plog.float(), -1)  # [q, P, V]
            prompt = plp[:, :-1].gather(-1, prefix[:, 1:, None])[..., 0].double().sum(1)  # [q]
            # one row per (query, candidate): its prompt's index and its tokens after the prompt
            rows = [q for q, g in enumerate(chunk) for _ in groups[g]]
            conts = [list(s[p:]) for g in chunk for s in groups[g]]
            row_t = torch.tensor(rows, dtype=torch.long, device=dev)
            total = prompt[row_t]
            # the prompt's last position predicts each continuation's first token
            first = torch.tensor([x[0] if x else 0 for x in conts], dtype=torch.long, device=dev)
            has = torch.tensor([bool(x) for x in conts], device=dev)
            last = plp[:, -1].double()[row_t, first]
            total = total + last.masked_fill(~has, 0.0)
            _continuation_scores(view, cache, rows, conts, budget, total)
            scores = total.tolist()
            r = 0
            for g in chunk:
                out[g] = scores[r : r + len(groups[g])]
                r += len(groups[g])
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- query

TIE_RTOL = 1e-6  # scores this close to the best (relative) tie: a batched fp32 forward rounds at ~1e-7


def _credit(objs: list[str], scores: Sequence[float], truth: str) -> float:
    """Credit of one query: 1/k when the true object is among the k candidates that tie for the top score."""
    best = max(scores)
    tol = TIE_RTOL * max(1.0, abs(best))
    top = [o for o, v in zip(objs, scores) if v >= best - tol]
    return (truth in top) / len(top)


def _majority(facts: list[Fact], lang: str) -> dict[str, list[str]]:
    """The most frequent object(s) of each relation, by `lang` name (several when tied)."""
    counts: dict[str, Counter] = {}
    for f in facts:
        counts.setdefault(f.relation, Counter())[f.object_in(lang)] += 1
    return {rel: sorted(o for o, n in cnt.items() if n == max(cnt.values())) for rel, cnt in counts.items()}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def query_facts(view: ModelView, encoder: TextEncoder, facts: list[Fact], templates: Templates, lang: str, *,
                batch_size: int = 128, queries_of: list[Fact] | None = None,
                scorer: Scorer = score_candidates) -> dict:
    """Accuracy of the facts queried in `lang`, with its baselines (see the module docstring). The candidates
    come from all `facts`; only the facts of `queries_of` (default: all) are asked."""
    encoder.check_lang(lang)
    cands = candidates_by_relation(facts, lang)
    asked = facts if queries_of is None else queries_of
    queries = [(f, t) for f in asked for t in templates_for(templates, lang, f.relation, f.where)]
    groups = [[encoder.encode(render(t, f.subject_in(lang), o), lang) for o in cands[f.relation]]
              for f, t in queries]
    scores = scorer(view, groups, batch_size, encoder.pad_id)
    # subject-blind: one group per (relation, template), shared by all its queries
    blind_keys = list(dict.fromkeys((f.relation, t) for f, t in queries))
    blind_groups = [[encoder.encode(render_blind(t, o), lang) for o in cands[rel]] for rel, t in blind_keys]
    blind = dict(zip(blind_keys, scorer(view, blind_groups, batch_size, encoder.pad_id)))
    majority = _majority(facts, lang)
    credit: dict[str, list[float]] = {}
    blind_credit: dict[str, list[float]] = {}
    major_credit: dict[str, list[float]] = {}
    chance: list[float] = []
    for (f, t), s in zip(queries, scores):
        objs, truth = cands[f.relation], f.object_in(lang)
        credit.setdefault(f.relation, []).append(_credit(objs, s, truth))
        blind_credit.setdefault(f.relation, []).append(_credit(objs, blind[(f.relation, t)], truth))
        top = majority[f.relation]
        major_credit.setdefault(f.relation, []).append((truth in top) / len(top))
        chance.append(1.0 / len(objs))

    def overall(by_rel: dict[str, list[float]]) -> float:
        return _mean([c for cs in by_rel.values() for c in cs])

    return {
        "lang": lang,
        "accuracy": overall(credit),
        "queries": len(chance),
        "facts": len(asked),
        "chance": _mean(chance),
        "majority": overall(major_credit),
        "subject_blind": overall(blind_credit),
        "per_relation": {rel: _mean(cs) for rel, cs in sorted(credit.items())},
        "majority_per_relation": {rel: _mean(cs) for rel, cs in sorted(major_credit.items())},
        "subject_blind_per_relation": {rel: _mean(cs) for rel, cs in sorted(blind_credit.items())},
    }
