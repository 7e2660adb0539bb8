"""2-rank checks of the engine's losses and gradients against a single-process computation.

tests/test_engine_losses.py runs `check(CONFIG.yaml)` on 2 in-process ranks (tests/distributed.py).

Part 1, phase 1: the real ZeRO-3 engine runs one optimizer step's micro-batches (grad_accum=2) through
`AlignPhase` (per-layer word vectors, all-gather with gradient, rows loss, count all-reduce, loss scaling).
Rank 0 then rebuilds the same weights in a plain (unpartitioned) model, computes METHOD.md §2 over the
GLOBAL batch (both ranks' words, every micro-batch) in one process with the naive reference loss, and
compares the loss and every parameter's gradient with the engine's (DeepSpeed's full fp32 gradients).
Part 2, phase 2: the same for `LMPhase`, against a hand computation (log_softmax of the logits at the stored
targets, summed over every loss token of both ranks and both micro-batches, divided by their number).
Rank 0 returns the report (the other rank None).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from prealign_scale import dist as pdist
from prealign_scale.engine.resolve_config import load_config


def full_weights_and_grads(engine) -> tuple[dict, dict]:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    w, g = {}, {}
    for name, p in engine.module.named_parameters():
        w[name] = safe_get_full_fp32_param(p).detach().cpu().clone()
        g[name] = safe_get_full_grad(p).detach().cpu().clone()
    return w, g


def run_engine_step(engine, phase):
    """One optimizer step's forward/backward through the phase, stopping before the optimizer update."""
    batches = phase.fetch()
    ctx = phase.prepare(batches)
    stats = []
    for i, batch in enumerate(batches):
        loss, st = phase.micro_loss(batch, ctx)
        engine.backward(loss)
        stats.append(st)
        if i < len(batches) - 1:
            engine.step()  # not a boundary: only advances DeepSpeed's micro-step counter
    metrics = phase.step_metrics(stats, ctx)
    weights, grads = full_weights_and_grads(engine)  # collective
    return metrics, weights, grads


def plain_model(cfg, weights: dict):
    from prealign_scale.model.builder import build_gpt_model
    from prealign_scale.model.presets import get_preset

    model = build_gpt_model(get_preset(cfg.model.preset), int(cfg.model.vocab_size), int(cfg.model.seq_len))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return model


def compare_grads(model, grads: dict) -> float:
    """Largest |engine grad - reference grad| relative to the largest reference gradient entry."""
    worst = 0.0
    for name, p in model.named_parameters():
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        scale = max(float(ref.abs().max()), 1e-12)
        worst = max(worst, float((grads[name] - ref).abs().max()) / scale)
    return worst


def check_align(cfg, report: dict) -> None:
    from prealign_scale.alignment.loss import contrastive_alignment_loss
    from prealign_scale.alignment.table import AlignmentTable
    from prealign_scale.alignment.word_vectors import word_vectors
    from prealign_scale.data.dict_loader import DictionaryLoader
    from prealign_scale.engine.align_phase import AlignPhase
    from prealign_scale.engine.deepspeed_setup import build_engine
    from prealign_scale.engine.run import seed_everything
    from prealign_scale.model.parallel import dp_group, dp_rank, dp_world_size
    from prealign_scale.model.taps import HiddenStateTaps

    seed_everything(cfg.run.seed)
    engine = build_engine(cfg, "align")
    # ZeRO-3 really partitions: outside forward each rank holds ceil(n / 2) elements of every parameter
    shards = [(p.ds_tensor.numel(), p.ds_numel, p.numel()) for p in engine.module.parameters()]
    partitioned = all(t == -(-n // 2) and live == 0 for t, n, live in shards)
    phase = AlignPhase(cfg, engine, dp_rank=dp_rank(), dp_world_size=dp_world_size(), dp_group=dp_group())
    metrics, weights, grads = run_engine_step(engine, phase)
    engine.destroy()
    if dist.get_rank() != 0:
        return
    model = plain_model(cfg, weights)
    taps = HiddenStateTaps(model)
    table = AlignmentTable.load(cfg.data.table_dir)
    loaders = [DictionaryLoader(table, cfg.align.entries_per_rank, dp_rank=r, dp_world_size=2, seed=cfg.run.seed,
                                pad_id=0, max_word_tokens=cfg.model.seq_len,
                                bos_id=cfg.align.bos_id if cfg.align.word_bos else None) for r in range(2)]
    lm_sum, lm_count, align_terms, words_per_rank, word_tokens = 0.0, 0, [], [], 0
    for m in range(int(cfg.align.grad_accum)):
        vecs, ents = [], []
        for r in range(2):
            b = loaders[r].batch_at(0, m)
            with taps:
                logits = model(b["input_ids"], b["position_ids"], None)  # [n, s, V]
            rows = F.embedding(b["input_ids"], model.output_layer.weight)
            vecs.append(word_vectors(taps.batch_first(), rows, b["word_mask"]))  # the word's tokens, never a BOS
            ents.append(b["entry_ids"])
            t = b["targets"]
            lm_sum = lm_sum + F.cross_entropy(logits.flatten(0, 1), t.flatten(), ignore_index=-100, reduction="sum")
            lm_count += int((t != -100).sum())
            words_per_rank.append(int(b["input_ids"].shape[0]))
            word_tokens += int(b["word_mask"].sum())
        mean, _ = contrastive_alignment_loss(torch.cat(vecs, dim=1), torch.cat(ents), tau=cfg.align.tau)
        align_terms.append(mean)
    lm = lm_sum / lm_count
    align = torch.stack(align_terms).mean()
    total = lm + cfg.align.alpha * align
    total.backward()
    report["align"] = {
        "engine_loss": metrics["loss"], "ref_loss": total.item(), "engine_align": metrics["align_loss"],
        "ref_align": align.item(), "engine_lm": metrics["lm_loss"], "ref_lm": lm.item(), "lm_tokens": lm_count,
        "grad_rel_err": compare_grads(model, grads), "words_per_rank": words_per_rank,
        "words": sum(words_per_rank), "word_tokens": word_tokens, "word_bos": bool(cfg.align.word_bos),
        "n_layers": len(metrics["align_loss_layers"]), "partitioned": partitioned, "n_params": len(shards),
    }


def check_lm(cfg, report: dict) -> None:
    from prealign_scale.data.packed_masks import attention_mask_from_segments
    from prealign_scale.data.shard_reader import ShardLoader
    from prealign_scale.engine.deepspeed_setup import build_engine
    from prealign_scale.engine.lm_phase import LMPhase
    from prealign_scale.engine.run import seed_everything
    from prealign_scale.model.parallel import dp_group, dp_rank, dp_world_size

    seed_everything(cfg.run.seed)
    engine = build_engine(cfg, "lm")
    phase = LMPhase(cfg, engine, dp_rank=dp_rank(), dp_world_size=dp_world_size(), dp_group=dp_group())
    metrics, weights, grads = run_engine_step(engine, phase)
    engine.destroy()
    if dist.get_rank() != 0:
        return
    model = plain_model(cfg, weights)
    total, count, shifted, causal_only, switched = 0.0, 0, 0.0, 0.0, 0
    for r in range(2):
        it = iter(ShardLoader(cfg.data.shard_dir, cfg.lm.micro_batch_size, dp_rank=r, dp_world_size=2,
                              seed=cfg.run.seed, num_workers=0))
        for _ in range(int(cfg.lm.grad_accum)):
            b = next(it)
            ids, t = b["input_ids"], b["targets"]
            logits = model(ids, b["position_ids"], attention_mask_from_segments(b["segments"]))
            logp = torch.log_softmax(logits.float(), dim=-1)
            lp = logp.detach()
            keep = t != -100
            total = total - logp.gather(-1, t.clamp(min=0)[..., None])[..., 0][keep].sum()
            count += int(keep.sum())
            # what a second label shift of the inputs would train on instead (for the input-only check)
            nxt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
            shifted += float(-lp.gather(-1, nxt[..., None])[..., 0][keep].sum())
            switched += int(((nxt != t) & keep).sum())
            with torch.no_grad():
                lp2 = torch.log_softmax(model(ids, b["position_ids"], None).float(), dim=-1)
                causal_only += float(-lp2.gather(-1, t.clamp(min=0)[..., None])[..., 0][keep].sum())
    loss = total / count
    loss.backward()
    report["lm"] = {
        "engine_loss": metrics["loss"], "ref_loss": loss.item(), "shifted_loss": shifted / count,
        "causal_loss": causal_only / count, "loss_tokens": count, "targets_not_next_input": switched,
        "grad_rel_err": compare_grads(model, grads),
        "lang_losses": {k: v for k, v in metrics.items() if k.startswith("loss_")},
    }


def check(config: str, overrides: tuple[str, ...] = ()) -> dict | None:
    env = pdist.discover()
    cfg = load_config(config, list(overrides), world_size=env.world_size)
    pdist.init_process_group(env, cfg.dist.timeout_minutes)
    from prealign_scale.model.parallel import init_model_parallel

    init_model_parallel(1, seed=cfg.run.seed)
    report: dict = {}
    check_align(cfg, report)
    dist.barrier()
    check_lm(cfg, report)
    return report if dist.get_rank() == 0 else None
