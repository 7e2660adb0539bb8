"""Hidden-state taps and unembedding rows of megatron's GPTModel: what the word vectors are read from.

The "layers" of a word (METHOD.md §2), L = n_layers + 2 of them, in this order (the release's HF
``output_hidden_states`` plus the unembedding rows):

    0            the embedding output
    1 .. n-1     the outputs of blocks 1 .. n-1
    n            the final normed state (the last block's output after the final RMSNorm)
    n + 1        the unembedding rows (``output_layer.weight``) of the word's tokens

`HiddenStateTaps` records the first n + 1 of them, `UnembeddingRows` looks up the last; the pooling into word
vectors is :mod:`prealign_scale.alignment.word_vectors` (used by the training engine and the evaluators).

Hooks: forward hooks on ``model.embedding``, ``model.decoder.layers[:-1]`` and
``model.decoder.final_layernorm`` keep their outputs while a `HiddenStateTaps` context is active (megatron's
layout is sequence-first, [s, b, h]; `HiddenStateTaps.batch_first` transposes). Outside the context (e.g.
when activation recomputation re-runs a block during backward) nothing is recorded.

Unembedding rows under ZeRO-3: the output layer's weight is partitioned and is gathered only around the
forward/backward of a module that owns it or registered it. `UnembeddingRows` is a parameter-free child
module of the GPTModel that uses the weight in its own forward, and registers it with
``deepspeed.zero.register_external_parameter`` so ZeRO-3 gathers it there. With tensor parallelism the
weight holds the rows of this TP rank's vocabulary slice: the lookup masks the other ids and sums over the TP
group (megatron's vocab-parallel embedding rule).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

UNEMBED_ATTR = "prealign_unembedding_rows"  # the child module's name on the GPTModel


class HiddenStateTaps:
    """Forward hooks that record the hidden states the alignment loss pools, in layer order."""

    def __init__(self, model: nn.Module):
        modules = [model.embedding, *list(model.decoder.layers)[:-1], model.decoder.final_layernorm]
        self.states: list[Tensor] = []
        self.active = False
        self._handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, args, output) -> None:
        if not self.active:
            return
        out = output[0] if isinstance(output, (tuple, list)) else output  # a block returns (hidden, context)
        self.states.append(out)

    def __enter__(self):  # returns self
        self.states, self.active = [], True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def batch_first(self) -> list[Tensor]:
        """The recorded states in layer order, each transposed from megatron's [s, b, h] to [b, s, h]."""
        return [s.transpose(0, 1) for s in self.states]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class UnembeddingRows(nn.Module):
    """rows(ids) = output_layer.weight[ids] (vocab-parallel aware); holds no parameter of its own."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self._weight = [weight]  # a list, so nn.Module does not register the output layer's weight twice

    def forward(self, ids: Tensor) -> Tensor:
        from prealign_scale.model.parallel import tp_rank, tp_world_size

        weight = self._weight[0]
        if tp_world_size() == 1:
            return F.embedding(ids, weight)
        from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

        start = tp_rank() * weight.shape[0]
        local = ids - start
        outside = (local < 0) | (local >= weight.shape[0])
        rows = F.embedding(local.masked_fill(outside, 0), weight).masked_fill(outside[..., None], 0.0)
        return reduce_from_tensor_model_parallel_region(rows)


def attach_unembedding_rows(model: nn.Module) -> UnembeddingRows:
    """Add `UnembeddingRows` as a child of `model` (before deepspeed.initialize, so ZeRO-3 hooks it)."""
    rows = UnembeddingRows(model.output_layer.weight)
    setattr(model, UNEMBED_ATTR, rows)
    if hasattr(model.output_layer.weight, "ds_id"):  # partitioned by zero.Init
        import deepspeed

        deepspeed.zero.register_external_parameter(rows, model.output_layer.weight)
    return rows

