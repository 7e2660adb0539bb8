"""Phase 2, LM pretraining on the shards (METHOD.md §3): packed samples in, next-token loss out.

Targets are the stored ones (input-only code-switching lives in them), used as they are: the model gets
``labels=targets`` with no shift. Attention is restricted to each packed document (``segments``), or plain
causal with ``lm.doc_attention: false``. The document mask goes to the model as a dense boolean
[b, 1, s, s] mask, or, with ``model.attention: flex``, as the [b, s] segment ids themselves (the flex core
attention builds its block mask from them: no O(s²) tensor). RoPE is relative, so restricting attention to
the document makes every document see the same positions it would alone.

Normalisation: the loss of a step is (sum of the token losses over all micro-batches and ranks) / (number of
loss tokens over all micro-batches and ranks), not a mean of per-micro-batch means. The step's micro-batches
are fetched first and their token count all-reduced; rank r then back-propagates, for each micro-batch,
``grad_accum * dp * sum_{r,m} / N_tokens``: DeepSpeed's 1/grad_accum and its average over DP ranks turn
that into exactly d(sum / N_tokens)/dθ.

Loss implementations (``lm.lm_loss_impl``): ``megatron`` (the model's vocab-parallel cross-entropy: per-token
losses from ``GPTModel(labels=...)``), or a fused linear cross-entropy of `prealign_scale.kernels.lm_head_loss`
(``auto``, ``chunked``, ``liger``, ``naive``; TP=1) that never forms the [tokens, V] logits. For the fused
path the GPTModel returns its final normed hidden states (``post_process`` off at the output layer) and
`fused_lm_head.FusedLMHeadLoss`, a child module that registers the output layer's weight as a ZeRO-3 external
parameter, computes the loss per language.
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor, nn

from prealign_scale.config import Config, LMConfig
from prealign_scale.data.packed_masks import attention_mask_from_segments
from prealign_scale.data.shard_format import IGNORE_INDEX
from prealign_scale.data.shard_reader import ShardCorruptError, ShardLoader
from prealign_scale.dist import all_reduce_sum
from prealign_scale.engine.device import compute_device
from prealign_scale.engine.fused_lm_head import FUSED_HEAD_ATTR, attach_fused_lm_head
from prealign_scale.engine.phase import Phase


class LMPhase(Phase):
    name = "lm"

    @staticmethod
    def section(cfg: Config) -> LMConfig:
        return cfg.lm

    @staticmethod
    def micro_batch_size(cfg: Config) -> int:
        return cfg.lm.micro_batch_size

    @staticmethod
    def prepare_model(model: nn.Module, cfg: Config) -> None:
        if cfg.lm.lm_loss_impl != "megatron":
            attach_fused_lm_head(model, cfg.lm.lm_loss_impl)

    def __init__(self, cfg: Config, engine, *, dp_rank: int, dp_world_size: int, dp_group):
        self.cfg, self.engine = cfg, engine
        self.total_steps, self.grad_accum = cfg.lm.steps, int(cfg.lm.grad_accum)
        self.dp_world_size, self.dp_group = dp_world_size, dp_group
        self.loader = ShardLoader(cfg.data.shard_dir, cfg.lm.micro_batch_size, dp_rank=dp_rank,
                                  dp_world_size=dp_world_size, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                                  skip_corrupt=cfg.data.skip_corrupt, verify_sha256=cfg.data.verify_sha256)
        self.languages = self.loader.languages
        self._it = None
        self.fused = getattr(engine.module, FUSED_HEAD_ATTR, None)
        self.device = compute_device()
        # test hook: with PREALIGN_SAMPLE_LOG=<prefix>, each rank appends the sample keys of every step it
        # fetches to <prefix>.rank<R> (one JSON list a line), so tests can check which samples an epoch read
        log = os.environ.get("PREALIGN_SAMPLE_LOG")
        self.sample_log = f"{log}.rank{dp_rank}" if log else None

    # --- data ---------------------------------------------------------------------------------------------
    def fetch(self) -> list[dict]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            batches = [next(self._it) for _ in range(self.grad_accum)]
        except ShardCorruptError as exc:  # the reader names the shard and the sample; add the engine's switch
            raise ShardCorruptError(f"{exc} (run config: data.skip_corrupt=true replaces unreadable samples by "
                                    "padding rows and counts them in metrics.jsonl)") from None
        if self.sample_log:
            with open(self.sample_log, "a") as f:
                f.write(json.dumps([k for b in batches for k in b["keys"] if k is not None]) + "\n")
        return batches

    def loader_state(self) -> dict:
        return self.loader.state_dict()

    def load_loader_state(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None

    def load_remapped_loader_state(self, states: list[dict]) -> None:
        self.loader.load_remapped_state(states)  # the epoch's unread samples, split over the new ranks
        self._it = None

    # --- loss ---------------------------------------------------------------------------------------------
    def prepare(self, batches: list[dict]) -> dict:
        # counts of this step over all ranks; the unreadable samples (data.skip_corrupt) ride along
        local = torch.tensor([sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches),
                              sum(b["input_ids"].numel() for b in batches),
                              sum(int(b["skipped"]) for b in batches), self.loader.skipped_samples],
                             dtype=torch.float64)
        total = all_reduce_sum(local.to(self.device), self.dp_group)
        return {"lm_tokens": total[0].clamp_min(1.0).item(), "tokens": int(total[1].item()),
                "skipped": int(total[2].item()), "skipped_total": int(total[3].item())}

    def micro_loss(self, batch: dict, ctx: dict) -> tuple[Tensor, dict]:
        dev = self.device
        ids, pos, targets = batch["input_ids"].to(dev), batch["position_ids"].to(dev), batch["targets"].to(dev)
        lang = batch["token_lang"].to(dev)
        mask = None  # plain causal
        if self.cfg.lm.doc_attention and self.cfg.model.attention == "flex":
            mask = batch["segments"].to(dev)  # FlexAttention builds the document block mask from the ids
        elif self.cfg.lm.doc_attention:
            mask = attention_mask_from_segments(batch["segments"].to(dev))
        n_langs = len(self.languages)
        loss_mask = targets != IGNORE_INDEX
        if self.fused is None:
            per_token = self.engine(ids, pos, mask, labels=targets.clamp(min=0)).float()  # [b, s]
            per_token = per_token * loss_mask
            total = per_token.sum()
            lang_sums = torch.zeros(n_langs, dtype=torch.float64, device=dev)
            lang_sums.index_add_(0, lang.reshape(-1), per_token.detach().double().reshape(-1))
        else:
            hidden = self.engine(ids, pos, mask).transpose(0, 1)  # [s, b, h] -> [b, s, h]
            per_lang = self.fused(hidden, targets, lang, n_langs)
            total, lang_sums = per_lang.sum(), per_lang.detach().double()
        lang_counts = torch.zeros(n_langs, dtype=torch.float64, device=dev)
        lang_counts.index_add_(0, lang.reshape(-1), loss_mask.double().reshape(-1))
        loss = self.grad_accum * self.dp_world_size * total / ctx["lm_tokens"]
        return loss, {"lang_sums": lang_sums, "lang_counts": lang_counts}

    def step_metrics(self, stats: list[dict], ctx: dict) -> dict:
        sums = all_reduce_sum(torch.stack([s["lang_sums"] for s in stats]).sum(0), self.dp_group)
        counts = all_reduce_sum(torch.stack([s["lang_counts"] for s in stats]).sum(0), self.dp_group)
        out = {"loss": (sums.sum() / ctx["lm_tokens"]).item(), "lm_loss": (sums.sum() / ctx["lm_tokens"]).item()}
        for lang, s, c in zip(self.languages, sums.tolist(), counts.tolist()):
            out[f"loss_{lang}"] = s / c if c > 0 else None
        if self.cfg.data.skip_corrupt:  # unreadable samples replaced by padding rows: this step, and the phase
            out["skipped_samples"], out["skipped_samples_total"] = ctx["skipped"], ctx["skipped_total"]
        return out

    def seq_len_for_flops(self, batches: list[dict]) -> int:
        return int(self.cfg.model.seq_len)

    def close(self) -> None:
        self._it = None  # lets the DataLoader workers shut down
