"""What a packed sample's segment ids mean for the model: positions restart at 0 in every document, and
attention stays inside each document (METHOD.md §3). Used by the shard reader (positions), the LM phase (the
dense document mask), the flex-attention path and the benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch


def position_ids_from_segments(segments: np.ndarray) -> np.ndarray:
    """Position of every token within its document: restarts at 0 where the segment id changes (last axis)."""
    seq_len = segments.shape[-1]
    idx = np.broadcast_to(np.arange(seq_len, dtype=np.int64), segments.shape)
    start = np.ones(segments.shape, dtype=bool)
    start[..., 1:] = segments[..., 1:] != segments[..., :-1]
    return idx - np.maximum.accumulate(np.where(start, idx, 0), axis=-1)


def attention_mask_from_segments(segments: torch.Tensor) -> torch.Tensor:
    """[b, s] segment ids -> BoolTensor [b, 1, s, s], True = blocked (megatron's convention).

    Query i may attend key j iff j <= i and both lie in the same document.
    """
    s = segments.shape[-1]
    future = torch.ones(s, s, dtype=torch.bool, device=segments.device).triu(1)
    other_doc = segments[:, :, None] != segments[:, None, :]
    return (future[None] | other_doc)[:, None]


def causal_mask(b: int, s: int, device: torch.device | str | None = None) -> torch.Tensor:
    """BoolTensor [b, 1, s, s], True = blocked: plain causal attention (no document restriction)."""
    future = torch.ones(s, s, dtype=torch.bool, device=device).triu(1)
    return future[None, None].expand(b, 1, s, s)
