"""Document-masked core attention through PyTorch `flex_attention` (``model.attention: flex``).

With `SDPAttention`, a packed sample's per-document mask reaches SDPA as a dense boolean [b, 1, s, s]
tensor: O(s²) memory and no flash kernel. Here the mask is a flex-attention *block mask* built from the
[b, s] segment ids: query i may attend key j iff ``j <= i`` and both lie in the same document (the exact rule
of `data.packed_masks.attention_mask_from_segments`). Tiles that are fully blocked are skipped, so the cost
falls with the number of documents per row instead of growing with a dense mask.

Interface: megatron's core-attention contract (see `sdpa_attention`), with one extension of what
``attention_mask`` may be:
- an **integer [b, s] tensor**: the segment ids of the packed rows (what the LM phase passes when
  ``model.attention`` is ``flex``); the block mask is built from them here, once per forward (a one-entry
  cache keyed on the tensor object is shared by all layers; under activation recomputation it is rebuilt per
  layer in the backward). megatron hands the tensor through unchanged, also through its checkpointing;
- a boolean mask or ``None``: exactly `SDPAttention` (dense mask; ``None`` = causal through SDPA's flash
  kernel). Phase 1's words use this path.

Kernels: on CUDA `flex_attention` is `torch.compile`d once per process (its fused Triton kernel, the fast
path). On CPU it runs eagerly (torch warns that it materialises the scores); torch 2.13's flex_attention has
**no backward on CPU** (NotImplementedError), so on CPU, whenever gradients are needed, the module computes
the same document mask densely and calls SDPA (equal by construction; CPU is only for tests and demos). The
CPU tests check the real flex forward against the dense path; the gradient through the real flex kernel is
checked where CUDA exists (tests skip on CPU saying so; benchmarks/gpu_check.py section ``flex_attention``).

Out of scope: Transformer Engine's own packed-sequence (THD, ``PackedSeqParams`` with cumulative sequence
lengths) path; attention dropout (the model has none; the constructor refuses it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prealign_scale.model.sdpa_attention import SDPAttention

# The one-entry block-mask cache: (segments tensor, its _version, block mask). Every layer of one forward
# receives the same segments tensor object, so the mask is built once per micro-batch.
_CACHE: list = []
_COMPILED = {}  # "flex": the torch.compile'd flex_attention (CUDA only), made on first use


def document_block_mask(segments: Tensor):
    """[b, s] integer segment ids -> flex-attention BlockMask: causal AND same document (cached, see above)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if _CACHE and _CACHE[0] is segments and _CACHE[1] == segments._version:
        return _CACHE[2]
    b, s = segments.shape

    def causal_same_document(batch, head, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (segments[batch, q_idx] == segments[batch, kv_idx])

    mask = create_block_mask(causal_same_document, B=b, H=None, Q_LEN=s, KV_LEN=s, device=segments.device)
    _CACHE[:] = [segments, segments._version, mask]
    return mask


def dense_document_allowed(segments: Tensor) -> Tensor:
    """[b, s] segment ids -> boolean [b, 1, s, s], **True where attention is allowed** (the same rule)."""
    s = segments.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segments.device).tril()
    return (causal[None] & (segments[:, :, None] == segments[:, None, :]))[:, None]


def _flex_fn():
    """flex_attention itself on CPU (eager), its torch.compile'd form on CUDA (built once)."""
    from torch.nn.attention.flex_attention import flex_attention

    if not torch.cuda.is_available():
        return flex_attention
    if "flex" not in _COMPILED:
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["flex"]


class FlexAttention(SDPAttention):
    """Core attention with a flex-attention document block mask. See the module docstring for the contract."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout=attention_dropout,
                         softmax_scale=softmax_scale, cp_comm_type=cp_comm_type, pg_collection=pg_collection)
        if self.dropout_p > 0.0:
            raise ValueError("FlexAttention: attention dropout is not supported (flex_attention has none)")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                attn_mask_type=None, attention_bias=None, packed_seq_params=None) -> Tensor:
        if attention_mask is None or attention_mask.dtype == torch.bool or attention_mask.is_floating_point():
            # causal or a dense mask: exactly SDPAttention's path
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("FlexAttention: packed_seq_params and attention_bias are not supported")
        segments = attention_mask
        sq, b = query.shape[0], query.shape[1]
        if segments.dim() != 2 or tuple(segments.shape) != (b, sq) or key.size(0) != sq:
            raise ValueError(f"FlexAttention: segment ids must be [b, s] = [{b}, {sq}] with self-attention, got "
                             f"{tuple(segments.shape)} (keys: {key.size(0)})")
        # [s, b, heads, hn] -> [b, heads, s, hn]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        grad_needed = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if q.device.type == "cpu" and grad_needed:
            # torch 2.13: no flex backward on CPU; the same mask, dense, through SDPA (see the module docstring)
            rep = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_document_allowed(segments),
                                                     scale=self.softmax_scale)
        else:
            if q.device.type == "cpu":  # no autograd wanted; flex refuses CPU inputs that require grad at all
                q, k, v = q.detach(), k.detach(), v.detach()
            context = _flex_fn()(q, k, v, block_mask=document_block_mask(segments), scale=self.softmax_scale,
                                 enable_gqa=self.num_attention_heads_per_partition
                                 != self.num_query_groups_per_partition)
        # [b, heads, sq, hn] -> [sq, b, heads * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
