"""Knowledge-probe scoring: the plain path (every candidate sentence in full, as the evaluator did) against the
shared-prompt path (the prompt run once, candidates on its key/value cache), in one run, same model and facts.

    python benchmarks/bench_knowledge_eval.py [--facts 480] [--candidates 120] [--templates 3]

The model is a randomly initialised HF Llama of the synth-3m preset's shape (12 layers, hidden 64, 4 heads,
FFN 256, vocabulary 16384 = English-Clone at V = 8192): the scoring cost depends on the shape, not on the
weights. Facts are synthetic: subject and object names of 1-3 tokens, `--candidates` objects per relation,
`--templates` templates per relation. Prints the seconds of each path, the ratio, and checks that both give
the same accuracy (and scores within 1e-4 nats).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from prealign_scale.data.facts import Fact
from prealign_scale.eval.knowledge import query_facts, score_candidates, score_candidates_reference
from prealign_scale.model.view import HFModelView


class IdEncoder:
    """A stand-in tokenizer: each whitespace word is a fixed pseudo-random 1-3 token id sequence."""

    pad_id = 0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def check_lang(self, lang: str) -> None:
        pass

    def encode(self, text: str, lang: str) -> list[int]:
        out = []
        for word in text.split():
            rng = random.Random(word)
            out += [rng.randrange(1, self.vocab) for _ in range(1 + rng.randrange(3))]
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--facts", type=int, default=480)
    p.add_argument("--candidates", type=int, default=120)
    p.add_argument("--templates", type=int, default=3)
    p.add_argument("--relations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
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
    asked = facts[: a.facts]
    shapes = ["{subject} was born in the city of {object} .", "the home of {subject} is {object} .",
              "people say {subject} lives near {object} ."]
    templates = {"en": {r: shapes[: a.templates] for r in rels}}
    enc = IdEncoder(cfg.vocab_size)
    print(f"model: random synth-3m-shaped Llama ({sum(x.numel() for x in view.model.parameters()):,} parameters), "
          f"{a.facts} facts x {a.templates} templates x {a.candidates} candidates, "
          f"{torch.get_num_threads()} threads")
    out = {}
    for name, scorer in (("plain", score_candidates_reference), ("shared prompt", score_candidates)):
        t0 = time.perf_counter()
        res = query_facts(view, enc, facts, templates, "en", batch_size=a.batch_size, queries_of=asked,
                          scorer=scorer)
        out[name] = (time.perf_counter() - t0, res)
        print(f"{name:>14}: {out[name][0]:8.1f} s  accuracy {res['accuracy']:.4f}  subject-blind "
              f"{res['subject_blind']:.4f}  majority {res['majority']:.4f}  chance {res['chance']:.4f}")
    (t_old, r_old), (t_new, r_new) = out["plain"], out["shared prompt"]
    assert r_old == r_new, "the two paths disagree"
    print(f"speed-up: {t_old / t_new:.1f}x (identical accuracies and baselines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
