"""align.word_bos: the word vectors pool only the word's own tokens, and the phase-1 LM term then covers every
word token; both against a hand computation on a toy model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prealign_scale.alignment.table import Entry
from prealign_scale.alignment.word_vectors import pooled_vectors, word_vectors
from prealign_scale.data.dict_loader import collate_words
from prealign_scale.data.shard_format import IGNORE_INDEX

BOS, PAD = 1, 0


class ContextFreeView:
    """A 'model' whose state at a position depends only on its token (no attention): layer k = (k+1) * E[id]."""

    num_layers, vocab_size, device = 2, 10, torch.device("cpu")

    def __init__(self):
        self.emb = torch.arange(10 * 2, dtype=torch.float32).reshape(10, 2) + 1.0

    def layer_states(self, ids):
        return [(k + 1) * self.emb[ids] for k in range(self.num_layers + 1)]

    def unembedding_rows(self, ids):
        return -self.emb[ids]


def test_pooled_vectors_with_bos_pool_the_word_only():
    view = ContextFreeView()
    seqs = [(4, 5), (7,), (2, 3, 9)]
    plain, with_bos = pooled_vectors(view, seqs), pooled_vectors(view, seqs, bos_id=BOS)
    assert torch.equal(plain, with_bos)  # context-free states: only the pooling mask could differ
    # hand: layer 0 of word (4, 5) = mean(E[4], E[5]) = mean([9, 10], [11, 12]) = [10, 11]
    assert with_bos[0, 0].tolist() == [10.0, 11.0]
    assert with_bos[-1, 1].tolist() == [-15.0, -16.0]  # unembedding rows of (7,)


def test_phase1_batch_with_bos_word_vectors_and_lm_sum_by_hand():
    """The training path (collate_words -> word_vectors with word_mask, LM sum over targets != -100) with
    bigram logits W[prev] (a 1-layer 'model'): the LM sum equals the hand-written log-probabilities."""
    e = Entry(id=0, words=("a", "b"), langs=("en", "xx"), tokens=((4, 5), (7,)))
    b = collate_words([e], PAD, bos_id=BOS)
    view = ContextFreeView()
    states = view.layer_states(b["input_ids"])
    vecs = word_vectors(states, view.unembedding_rows(b["input_ids"]), b["word_mask"])
    assert vecs[0, 0].tolist() == [10.0, 11.0] and vecs[0, 1].tolist() == [15.0, 16.0]  # E[7] = [15, 16]
    W = torch.arange(100, dtype=torch.float32).reshape(10, 10).sin()  # logits of the next token given the token
    logits = W[b["input_ids"]]
    per_token = F.cross_entropy(logits.transpose(1, 2), b["targets"].clamp(min=0), reduction="none")
    lm_sum = float((per_token * (b["targets"] != IGNORE_INDEX)).sum())

    def lp(prev, nxt):
        return math.log(math.exp(W[prev, nxt]) / sum(math.exp(W[prev, j]) for j in range(10)))

    hand = -(lp(BOS, 4) + lp(4, 5) + lp(BOS, 7))  # 3 loss tokens = 3 word tokens; without BOS only lp(4, 5)
    assert int((b["targets"] != IGNORE_INDEX).sum()) == 3
    assert abs(lm_sum - hand) < 1e-5
    plain = collate_words([e], PAD)
    assert int((plain["targets"] != IGNORE_INDEX).sum()) == 1
