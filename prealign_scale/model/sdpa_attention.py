"""Core attention through `torch.nn.functional.scaled_dot_product_attention`, a drop-in for megatron's
`DotProductAttention` in the local layer spec.

megatron's `DotProductAttention` materialises the [b, heads, s, s] score matrix; SDPA dispatches to fused
kernels (flash / memory-efficient attention on GPU) that never do. The builder puts this module in the local
spec (GPU without Transformer Engine, and CPU, so that one attention path is tested everywhere).

Interface (identical to megatron's DotProductAttention):
- constructor ``(config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
  softmax_scale=None, cp_comm_type=None, pg_collection=None)``;
- ``forward(query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
  packed_seq_params=None)`` with query [sq, b, np, hn], key/value [sk, b, ng, hn] (ng query groups), output
  [sq, b, np * hn].
- ``attention_mask``: megatron's boolean mask, broadcastable to [b, np, sq, sk], **True where attention is
  blocked**; ``None`` means causal (for the causal mask type, as megatron does). As in megatron, a given mask
  is used as is (it must contain causality itself).

One deliberate difference: a query row whose keys are *all* blocked. megatron fills blocked scores with
-10000 and so averages all values uniformly; SDPA would return NaN. Here such a row attends to every key
(finite output). Either way the row is meaningless and must not carry loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide
from torch import Tensor


class SDPAttention(MegatronModule):
    """Scaled dot-product core attention (no parameters). See the module docstring for the contract."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention: context parallelism needs Transformer Engine's attention")
        if config.softmax_type != "vanilla":
            raise ValueError(f"SDPAttention: softmax_type={config.softmax_type!r} is not supported (vanilla only)")
        if config.window_size is not None:
            raise ValueError("SDPAttention: sliding-window attention is not supported")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type

        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        tp_size = pg_collection.tp.size()

        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection_size, tp_size)
        self.hidden_size_per_attention_head = divide(projection_size, config.num_attention_heads)
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.num_query_groups_per_partition = divide(config.num_query_groups, tp_size)
        # megatron's apply_query_key_layer_scaling divides the scale by layer_number and multiplies the scores
        # back inside its softmax: the net softmax input is unchanged, so only the plain scale matters here.
        if softmax_scale is None:
            softmax_scale = 1.0 / math.sqrt(self.hidden_size_per_attention_head)
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> Tensor:
        if packed_seq_params is not None:
            raise ValueError("SDPAttention: packed sequences (thd) need Transformer Engine's attention")
        if attention_bias is not None:
            raise ValueError("SDPAttention: attention_bias is not supported")
        sq, b = query.shape[0], query.shape[1]
        sk = key.size(0)

        # [s, b, heads, hn] -> [b, heads, s, hn]; GQA: repeat each key/value group for its query heads.
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        rep = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)

        # Like megatron's DotProductAttention, the module's own mask type decides (the argument is ignored).
        mask: Tensor | None = None
        is_causal = False
        if attention_mask is not None:
            allowed = ~attention_mask.to(torch.bool)
            # A row with every key blocked would give NaN: let it see all keys instead (see module docstring).
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
            mask = allowed
        elif self.attn_mask_type == AttnMaskType.causal and sq > 1:
            if sq != sk:
                raise ValueError(f"SDPAttention: the causal mask needs sq == sk, got {sq} and {sk}")
            is_causal = True

        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.softmax_scale
                )
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.softmax_scale
            )
        # [b, heads, sq, hn] -> [sq, b, heads * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
