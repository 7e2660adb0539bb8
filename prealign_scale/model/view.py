"""How the evaluators run a model: one small interface over HF models and the training engine's GPTModel.

A *view* answers three questions about a causal LM, for right-padded id batches [b, s] (positions 0..s-1,
plain causal attention, no BOS added; right padding never changes the real positions' outputs, so no
attention mask is needed):

- ``logits(ids)`` -> [b, s, vocab]
- ``layer_states(ids)`` -> ``num_layers + 1`` tensors [b, s, h]: the embedding output, the outputs of
  blocks 1 .. n-1 and the final normed state (HF's ``output_hidden_states``; METHOD.md §2)
- ``unembedding_rows(ids)`` -> [b, s, h]: the output-embedding (LM head) rows of the ids

:class:`HFModelView` also has ``prefix_cache`` and ``logits_on_prefix`` (prompts run once, their key/value cache
reused for many continuations), which the knowledge probe uses when a view offers them.

:class:`HFModelView` wraps any ``LlamaForCausalLM``-like HF model (a run folder's ``hf/``);
:class:`MegatronView` wraps the engine's megatron ``GPTModel`` (single process or every rank together, since
a forward under ZeRO-3 is collective), so the alignment probe can run during training.

Built on them: :func:`pooled_vectors` (the word vectors of :mod:`prealign_scale.alignment.word_vectors`,
``num_layers + 2`` layers, the same pooling the alignment phase trains) and :func:`sequence_logprobs` (sum of
next-token log-probabilities), batched by length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prealign_scale.model.taps import UNEMBED_ATTR, HiddenStateTaps


class ModelView(Protocol):
    num_layers: int  # transformer blocks n; the probe has n + 2 layers
    vocab_size: int
    device: torch.device

    def logits(self, ids: Tensor) -> Tensor: ...

    def layer_states(self, ids: Tensor) -> list[Tensor]: ...

    def unembedding_rows(self, ids: Tensor) -> Tensor: ...


class HFModelView:
    """A view of an HF causal LM with ``output_hidden_states`` (Llama and the like)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.num_layers = int(model.config.num_hidden_layers)
        self.vocab_size = int(model.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids).logits

    def layer_states(self, ids: Tensor) -> list[Tensor]:
        out = self.model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
        states = list(out.hidden_states)
        if len(states) != self.num_layers + 1:
            raise RuntimeError(f"HF model returned {len(states)} hidden states, expected {self.num_layers + 1}")
        return states

    def unembedding_rows(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.model.get_output_embeddings().weight)

    def prefix_cache(self, prefix: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Logits [q, P, vocab] of the prompts `prefix` [q, P] and their key/value cache (per layer, keys and
        values [q, ...]; for :meth:`logits_on_prefix`)."""
        out = self.model(input_ids=prefix, use_cache=True)
        cache = out.cache
        return out.logits, [(layer.keys, layer.values) for layer in cache.layers]

    def logits_on_prefix(self, cache: list[tuple[Tensor, Tensor]], rows: Tensor, conts: Tensor) -> Tensor:
        """Logits [n, w, vocab] of continuations `conts` [n, w] (right-padded), continuation r following prompt
        ``rows[r]`` of `cache` (as :meth:`prefix_cache` returns it; positions P .. P + w - 1): the prompts' keys
        and values are reused, never recomputed."""
        from transformers import DynamicCache

        picked = DynamicCache([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache],
                              config=self.model.config)
        return self.model(input_ids=conts, cache=picked, use_cache=True).logits


class MegatronView:
    """A view of megatron-core's ``GPTModel`` (as `prealign_scale.model.builder.build_gpt_model` makes it).

    Hidden states come from forward hooks (`prealign_scale.model.taps.HiddenStateTaps`), in the
    same layer order as the alignment loss; unembedding rows go through the model's attached
    ``UnembeddingRows`` child when present (gathered correctly under ZeRO-3 and TP), else index the output
    layer's weight. ``logits`` needs tensor-parallel size 1 (megatron returns vocab-sharded logits otherwise).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.num_layers = len(model.decoder.layers)
        self.vocab_size = int(model.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _positions(self, ids: Tensor) -> Tensor:
        return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)

    def logits(self, ids: Tensor) -> Tensor:
        from prealign_scale.model.parallel import tp_world_size

        if tp_world_size() != 1:
            raise NotImplementedError("MegatronView.logits needs tensor-parallel size 1; export to HF instead")
        return self.model(ids, self._positions(ids), None)

    def layer_states(self, ids: Tensor) -> list[Tensor]:
        taps = HiddenStateTaps(self.model)
        try:
            with taps:
                self.model(ids, self._positions(ids), None)
            states = taps.batch_first()  # megatron's [s, b, h] -> [b, s, h]
        finally:
            taps.remove()
        if len(states) != self.num_layers + 1:
            raise RuntimeError(f"hooks recorded {len(states)} states, expected {self.num_layers + 1}")
        return states

    def unembedding_rows(self, ids: Tensor) -> Tensor:
        rows = getattr(self.model, UNEMBED_ATTR, None)
        if rows is not None:
            return rows(ids)
        return F.embedding(ids, self.model.output_layer.weight)


def load_hf_model(hf_dir: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(hf_dir)`` in eval mode, with a clear error for a wrong folder."""
    from transformers import AutoModelForCausalLM

    folder = Path(hf_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not an HF model folder (no config.json); a run folder keeps its "
                                f"export in hf/ (run.export_hf)")
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()


# ----------------------------------------------------------------------------------------------- batching

def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0, device: Any = None) -> tuple[Tensor, Tensor]:
    """Right-padded LongTensor [b, s] and the BoolTensor mask of real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids.to(device), mask.to(device)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def check_ids(view: ModelView, seqs: Sequence[Sequence[int]]) -> None:
    for n, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"sequence {n} is empty")
        bad = [i for i in s if not 0 <= i < view.vocab_size]
        if bad:
            raise ValueError(f"sequence {n} has ids {bad[:5]} outside the model's vocabulary [0, {view.vocab_size})"
                             f" (wrong tokenizer, or a Clone id for a model without Clone?)")


@torch.no_grad()
def token_nll(view: ModelView, ids: Tensor, targets: Tensor) -> Tensor:
    """Per-position negative log-likelihood of `targets` (fp32 [b, s]; 0 where the target is -100)."""
    logits = view.logits(ids).float()
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
    return nll.masked_fill(targets < 0, 0.0)


@torch.no_grad()
def sequence_logprobs(view: ModelView, seqs: Sequence[Sequence[int]], batch_size: int = 64,
                      pad_id: int = 0) -> list[float]:
    """Sum of log p(s[i] | s[:i]) over i >= 1 for each sequence (the first token is context only)."""
    check_ids(view, seqs)
    out = [0.0] * len(seqs)
    for idx in length_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_right([seqs[i] for i in idx], pad_id, view.device)
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        nll = token_nll(view, ids[:, :-1], targets) if ids.shape[1] > 1 else torch.zeros(len(idx), 0)
        for row, i in enumerate(idx):
            out[i] = -float(nll[row].double().sum())
    return out
