"""The fused LM head of phase 2 (``lm.lm_loss_impl`` other than ``megatron``; TP=1): a child module of the
GPTModel that computes the per-language sums of the token losses of ``hidden @ output_layer.weightᵀ`` with a
fused linear cross-entropy (`prealign_scale.kernels.lm_head_loss`), never forming the [tokens, V] logits.

`attach_fused_lm_head` (called by `LMPhase.prepare_model`, before deepspeed.initialize) turns the output layer's
post-processing off, so the GPTModel returns its final normed hidden states, and registers the output layer's
weight as a ZeRO-3 external parameter of the head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prealign_scale.data.shard_format import IGNORE_INDEX

FUSED_HEAD_ATTR = "prealign_fused_lm_head"


class FusedLMHeadLoss(nn.Module):
    """Per-language sums of the token losses of ``hidden @ output_layer.weightᵀ`` (fused, no logits)."""

    def __init__(self, weight: nn.Parameter, impl: str):
        super().__init__()
        self._weight = [weight]  # owned by the output layer; registered as external under ZeRO-3
        self.impl = impl

    def forward(self, hidden: Tensor, targets: Tensor, token_lang: Tensor, n_langs: int) -> Tensor:
        from prealign_scale.kernels.lm_head_loss import fused_linear_cross_entropy

        h = hidden.reshape(-1, hidden.shape[-1])
        t, lang = targets.reshape(-1), token_lang.reshape(-1)
        sums = []
        for i in range(n_langs):  # only this language's loss tokens: together one pass over the tokens
            idx = ((lang == i) & (t != IGNORE_INDEX)).nonzero().squeeze(1)
            if idx.numel() == 0:
                sums.append(h.sum().float() * 0.0)  # keeps the graph (and ZeRO-3's hooks) identical
                continue
            sums.append(fused_linear_cross_entropy(h[idx], self._weight[0], t[idx], reduction="sum",
                                                   impl=self.impl).float())
        return torch.stack(sums)


def attach_fused_lm_head(model: nn.Module, impl: str) -> None:
    """Make `model` return final hidden states and add the fused head (before deepspeed.initialize)."""
    head = FusedLMHeadLoss(model.output_layer.weight, impl)
    setattr(model, FUSED_HEAD_ATTR, head)
    model.post_process = False  # GPTModel._postprocess returns the (final-normed) hidden states
    if hasattr(model.output_layer.weight, "ds_id"):
        import deepspeed

        deepspeed.zero.register_external_parameter(head, model.output_layer.weight)
