"""Knowledge-probe scoring: the plain path (every candidate sentence in full, as the evaluator did) against the
shared-prompt path (prompts run once, candidates' continuations on their key/value cache), in one run, same
model and facts.

    python benchmarks/bench_knowledge_eval.py [--facts 480] [--reference-facts 40] [--candidates 120]

The model is a randomly initialised HF Llama of the synth-3m preset's shape (12 layers, hidden 64, 4 heads,
FFN 256, vocabulary 16384 = English-Clone at V = 8192): the scoring cost depends on the shape, not on the
weights. Facts are synthetic: subject and object names of 1-3 tokens, `--candidates` objects per relation,
`--templates` templates per relation.

Both paths run on the first `--reference-facts` facts (the plain path at 480 x 120 takes tens of minutes on a
loaded 2-core machine), plain and shared prompt alternately `--repeats` times; both must give the same
accuracy and baselines. Then the shared-prompt path alone runs on all `--facts`. Times are wall-clock and this
process's CPU seconds (the machine is shared, so wall time depends on the other jobs; CPU time much less so).
Writes benchmarks/results/knowledge_eval.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from prealign_scale.data.facts import Fact
from prealign_scale.eval.knowledge import query_facts, score_candidates, score_candidates_reference
from prealign_scale.model.view import HFModelView


class IdEncoder:
    """A stand-in tokenizer: each whitespace word is a fixed pseudo-random 1-3 token id sequence (memoised, as
    a real tokenizer's cost is small next to the model's)."""

    pad_id = 0

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.words: dict[str, list[int]] = {}

    def check_lang(self, lang: str) -> None:
        pass

    def word(self, word: str) -> list[int]:
        if word not in self.words:
            rng = random.Random(word)
            self.words[word] = [rng.randrange(1, self.vocab) for _ in range(1 + rng.randrange(3))]
        return self.words[word]

    def encode(self, text: str, lang: str) -> list[int]:
        return [i for w in text.split() for i in self.word(w)]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    res = fn()
    return time.perf_counter() - w, time.process_time() - c, res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--facts", type=int, default=480)
    p.add_argument("--reference-facts", type=int, default=40, help="facts that both paths run (<= --facts)")
    p.add_argument("--candidates", type=int, default=120)
    p.add_argument("--templates", type=int, default=3)
    p.add_argument("--relations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of both paths on the scaled set")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/knowledge_eval.json"))
    a = p.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    cfg = LlamaConfig(vocab_size=16384, hidden_size=64, intermediate_size=256, num_hidden_layers=12,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False)
    view = HFModelView(LlamaForCausalLM(cfg).eval())
    rng = random.Random(0)
    rels = [f"rel{r}" for r in range(a.relations)]
    objs = {r: [f"obj{r}x{k}" for k in range(a.candidates)] for r in rels}
    facts = [Fact(f"subj{i}", rels[i % len(rels)], rng.choice(objs[rels[i % len(rels)]])) for i in range(a.facts)]
    for r in rels:  # every candidate occurs as an object somewhere (the candidates are the relation's objects)
        facts += [Fact(f"extra{r}{k}", r, o) for k, o in enumerate(objs[r])]
    shapes = ["{subject} was born in the city of {object} .", "the home of {subject} is {object} .",
              "people say {subject} lives near {object} ."]
    templates = {"en": {r: shapes[: a.templates] for r in rels}}
    enc = IdEncoder(cfg.vocab_size)
    n_ref = min(a.reference_facts, a.facts)
    print(f"model: random synth-3m-shaped Llama ({sum(x.numel() for x in view.model.parameters()):,} parameters), "
          f"{a.templates} templates x {a.candidates} candidates, {a.threads} torch thread(s); "
          f"both paths on {n_ref} facts, the shared-prompt path on {a.facts}")

    def run(scorer, n):
        return timed(lambda: query_facts(view, enc, facts, templates, "en", batch_size=a.batch_size,
                                         queries_of=facts[:n], scorer=scorer))

    times: dict[str, list[tuple[float, float]]] = {"plain": [], "shared prompt": []}
    results = {}
    for _ in range(a.repeats):
        for name, scorer in (("plain", score_candidates_reference), ("shared prompt", score_candidates)):
            wall, cpu, res = run(scorer, n_ref)
            times[name].append((wall, cpu))
            results[name] = res
            print(f"{name:>14} ({n_ref} facts): {wall:7.1f} s wall {cpu:7.1f} s CPU  accuracy {res['accuracy']:.4f}  "
                  f"subject-blind {res['subject_blind']:.4f}  majority {res['majority']:.4f}  "
                  f"chance {res['chance']:.4f}")
    assert results["plain"] == results["shared prompt"], "the two paths disagree"
    best = {name: (min(w for w, _ in ts), min(c for _, c in ts)) for name, ts in times.items()}
    ratio_wall = best["plain"][0] / best["shared prompt"][0]
    ratio_cpu = best["plain"][1] / best["shared prompt"][1]
    print(f"speed-up at {n_ref} facts: {ratio_wall:.1f}x wall, {ratio_cpu:.1f}x CPU (identical accuracies and "
          f"baselines)")
    record = {"model": "random synth-3m-shaped Llama", "candidates": a.candidates, "templates": a.templates,
              "threads": a.threads, "batch_size": a.batch_size, "scaled_facts": n_ref,
              "scaled": {name: {"wall_s": w, "cpu_s": c} for name, (w, c) in best.items()},
              "speedup_wall": ratio_wall, "speedup_cpu": ratio_cpu, "accuracy": results["plain"]["accuracy"]}
    if a.facts > n_ref:
        wall, cpu, res = run(score_candidates, a.facts)
        print(f" shared prompt ({a.facts} facts): {wall:7.1f} s wall {cpu:7.1f} s CPU  accuracy {res['accuracy']:.4f}")
        record["full"] = {"facts": a.facts, "queries": res["queries"], "shared prompt": {"wall_s": wall, "cpu_s": cpu}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
