"""Word vectors (METHOD.md §2): each layer's hidden states mean-pooled over a word's real tokens.

The one pooling used by the training engine (the alignment phase) and the evaluators (probe, transfer).
A word is one right-padded row of an id batch [b, s]; its vector in a layer is the mean of that layer's
states over the word's real tokens (the mask), computed in fp32. The layers, ``num_layers + 2`` of them:

    0            embedding      the embedding output
    1 .. n-1     block1 ..      the outputs of blocks 1 .. n-1
    n            final_norm     the final normed state (HF's ``output_hidden_states`` ends here)
    n + 1        unembedding    the unembedding (LM head) rows of the word's tokens

Where the states come from is the caller's business: megatron's GPTModel through
:class:`prealign_scale.model.taps.HiddenStateTaps`, an HF model through ``output_hidden_states``; for a
whole model, :func:`pooled_vectors` runs any :class:`prealign_scale.model.view.ModelView` batch by batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prealign_scale.model.view import ModelView, check_ids, length_batches, pad_right


def layer_names(num_layers: int) -> list[str]:
    """Names of the ``num_layers + 2`` word-vector layers, in order."""
    return ["embedding", *[f"block{i}" for i in range(1, num_layers)], "final_norm", "unembedding"]


def pool_words(states: Tensor, mask: Tensor) -> Tensor:
    """Mean over each word's real tokens, in fp32: states [b, s, h], mask [b, s] (True on real tokens) -> [b, h]."""
    m = mask.to(torch.float32)
    return torch.einsum("bsh,bs->bh", states.to(torch.float32), m) / m.sum(1, keepdim=True).clamp_min(1.0)


def word_vectors(layer_states: Sequence[Tensor], unembedding_rows: Tensor, mask: Tensor) -> Tensor:
    """Stack the pooled vectors of every layer: [L, b, h] with L = len(layer_states) + 1.

    `layer_states`: the [b, s, h] states of the embedding, blocks 1..n-1 and the final norm, in that order;
    `unembedding_rows`: [b, s, h] rows of the unembedding matrix for the input ids; `mask`: [b, s].
    """
    pooled = [pool_words(s, mask) for s in layer_states]
    pooled.append(pool_words(unembedding_rows, mask))
    return torch.stack(pooled)


def batch_vectors(view: ModelView, ids: Tensor, mask: Tensor) -> Tensor:
    """Mean-pooled vectors of every probe layer for one padded batch: [num_layers + 2, b, h] (with grad)."""
    return word_vectors(view.layer_states(ids), view.unembedding_rows(ids), mask)


@torch.no_grad()
def pooled_vectors(view: ModelView, seqs: Sequence[Sequence[int]], batch_size: int = 64,
                   pad_id: int = 0, bos_id: int | None = None) -> Tensor:
    """Mean-pooled vectors of every probe layer for each sequence: fp32 [num_layers + 2, n, h] on the CPU.

    `bos_id`: run each sequence after this id (as phase 1 does with ``align.word_bos``); the vectors still
    pool only the sequence's own tokens."""
    if bos_id is not None:
        seqs = [(bos_id, *s) for s in seqs]
    check_ids(view, seqs)
    out: Tensor | None = None
    for idx in length_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_right([seqs[i] for i in idx], pad_id, view.device)
        if bos_id is not None:
            mask[:, 0] = False  # the BOS is context, not part of the word
        vecs = batch_vectors(view, ids, mask).cpu()
        if out is None:
            out = torch.empty(vecs.shape[0], len(seqs), vecs.shape[2], dtype=torch.float32)
        out[:, idx] = vecs
    assert out is not None
    return out

