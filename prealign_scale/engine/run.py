"""`run(cfg)`: phase 1 then phase 2 (or the one the config selects), resuming where the run folder stopped.

The run folder's layout, its completion marker (``DONE``, written last on rank 0) and its lock (``LOCK``, taken by
rank 0 before anything is written, released at the exit; a second job exits 2) belong to run_folder.py.

Resume rules, from the checkpoint that `checkpoints/latest` names, once verified (a damaged one is replaced
by the newest intact older tag, with a warning: checkpoint.py) (phase P, step k):
- a phase before P is skipped (done);
- phase P itself continues at step k with its optimizer, RNG states and data position (or is skipped when
  k reached its steps, or P ended early as done: align.stop_at_seen_acc);
- a checkpoint written by another data-parallel size is converted and continued on this one (elastic
  resume, elastic.py): weights and optimizer state exactly, the rest of the epoch's samples split over the new
  ranks (each read once), RNG states of old rank ``r % N``;
- a phase after P starts at step 0 from P's final weights with a fresh optimizer (this is also how phase 2
  starts in the same process after phase 1). A checkpoint in the middle of P cannot start a later phase.
Without a checkpoint, the first phase starts from ``model.init_hf`` (an HF folder) when set, else from
megatron's random initialisation; any checkpoint of the run folder takes precedence over ``model.init_hf``.
"""

from __future__ import annotations

import gc
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from prealign_scale import dist as pdist
from prealign_scale.config import Config, save_config
from prealign_scale.engine.align_convergence import AlignConvergence
from prealign_scale.engine.callback import Callback
from prealign_scale.engine.callbacks import (
    Checkpointing,
    MetricsFile,
    NonFiniteError,
    NonFiniteGuard,
    Preemption,
    Progress,
    StepBudget,
    TensorBoard,
    Throughput,
)
from prealign_scale.engine.checkpoint import CheckpointInfo, CheckpointManager, CheckpointWriteError
from prealign_scale.engine.elastic import ElasticResumeError
from prealign_scale.engine.loop import LoopState, PhaseLoop, describe_stop
from prealign_scale.engine.phases import PHASE_ORDER, phase_class
from prealign_scale.engine.probe_callback import make_probe
from prealign_scale.engine.resolve_config import tp_size
from prealign_scale.engine.run_folder import RunFolderBusy, acquire_lock, mark_finished, release_lock


def log0(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[prealign] {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


COMM_FAILURE_HINTS = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "broken pipe")


def failure_line(exc: BaseException, cfg: Config, ckpt: CheckpointManager) -> str:
    """One line about a failed run: the error, what a failed collective means, where a restart resumes."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    line = f"training failed: {type(exc).__name__}: {first}"
    if isinstance(exc, dist.DistError) or any(h in first.lower() for h in COMM_FAILURE_HINTS):
        line += (f" (a collective operation failed: another rank died (see its log) or stalled for longer than "
                 f"dist.timeout_minutes={cfg.dist.timeout_minutes:g})")
    if isinstance(exc, ElasticResumeError):
        return line  # the message itself says on how many ranks to resume
    tag = ckpt.pointer()
    # right on any rank count: a checkpoint of another rank count is continued (elastic resume, elastic.py)
    return line + (f". Run the same command to resume from {tag}" if tag else ". No checkpoint was written yet")


def plan_phase(phase: str, latest: CheckpointInfo | None, cfg: Config) -> tuple[str, CheckpointInfo | None]:
    """("skip" | "resume" | "from_weights" | "fresh", checkpoint to load)."""
    steps = phase_class(phase).section(cfg).steps
    if latest is None:
        return "fresh", None
    if PHASE_ORDER[latest.phase] > PHASE_ORDER[phase]:
        return "skip", None
    if latest.phase == phase:  # done: all its steps, or ended early (phase_steps = the step it ended at)
        return ("skip", None) if latest.step >= steps or latest.phase_done else ("resume", latest)
    if not latest.phase_done:
        raise RuntimeError(f"{cfg.run.out_dir}: the latest checkpoint is {latest.tag}, phase {latest.phase} at step "
                           f"{latest.step} of {latest.phase_steps}; finish that phase first (--phase "
                           f"{latest.phase} or all) or use another run.out_dir")
    return "from_weights", latest


def _build_phase(cfg: Config, name: str, engine):
    from prealign_scale.model.parallel import dp_group, dp_rank, dp_world_size

    return phase_class(name)(cfg, engine, dp_rank=dp_rank(), dp_world_size=dp_world_size(), dp_group=dp_group())


def make_callbacks(cfg: Config, ckpt: CheckpointManager, metrics: MetricsFile | None, flops_per_token,
                   preemption: Preemption) -> list[Callback]:
    """The run's callbacks, in the order the loop calls them: the non-finite guard, throughput, then rank 0's
    metrics.jsonl, TensorBoard and progress bar, the alignment probe and phase 1's convergence check (its early
    end and warning), then the stop conditions (signal, step budget), then the checkpoint cadence. `metrics` is
    None on ranks other than 0."""
    rank0 = metrics is not None
    callbacks: list[Callback] = [NonFiniteGuard(cfg.run.max_bad_steps), Throughput(flops_per_token)]
    if rank0:
        callbacks += [metrics, TensorBoard(Path(cfg.run.out_dir) / "tensorboard", cfg.run.tensorboard,
                                           cfg.run.log_every)]
        if cfg.run.progress:
            callbacks.append(Progress())
    probe = make_probe(cfg, metrics)  # the alignment probe every run.probe_every steps (None: off)
    if probe is not None:
        callbacks.append(probe)
    # phase 1's early end at align.stop_at_seen_acc and its end-of-phase warning, from the probe's latest record
    callbacks.append(AlignConvergence(cfg, probe, metrics))
    return callbacks + [preemption, StepBudget(cfg.run.stop_after), Checkpointing(ckpt, cfg.run.ckpt_every)]


def _release(engine) -> None:
    engine.destroy()
    del engine
    gc.collect()


def start_distributed(cfg: Config, env: pdist.DistEnv | None = None) -> None:
    """The process group (unless one is running), megatron's TP x DP groups, and the collective timeout
    `dist.timeout_minutes` on every group (megatron's come with their own 30 minutes)."""
    from prealign_scale.model.parallel import init_model_parallel

    env = env or pdist.discover()
    if not dist.is_initialized():
        pdist.init_process_group(env, cfg.dist.timeout_minutes, cfg.dist.backend)
    init_model_parallel(tp_size(cfg), seed=cfg.run.seed)
    pdist.set_collective_timeout(cfg.dist.timeout_minutes)


def run(cfg: Config, env: pdist.DistEnv | None = None) -> int:
    """Train the configured phases in `cfg.run.out_dir` (resuming), export at the end.

    Returns 0, or 1 when a checkpoint could not be written (every rank returns 1; rank 0 prints why, and the
    previous checkpoint stays the resume point), or 2 when another job holds the run folder's lock (nothing
    is written). Other failures raise, after one line per failing rank.
    """
    start_distributed(cfg, env)
    out = Path(cfg.run.out_dir)
    # The run folder's lock (run_folder.py), before anything is written; rank 0 takes it, every rank learns
    # the answer, so a refused job exits on all ranks at once with one line.
    answer = [None]
    if dist.get_rank() == 0:
        try:
            answer = [("ok", acquire_lock(out))]
        except RunFolderBusy as exc:
            answer = [("busy", str(exc))]
    dist.broadcast_object_list(answer, src=0)
    status, text = answer[0]
    if status == "busy":
        log0(text)
        return 2
    if text:
        log0(text)  # a stale lock taken over
    try:
        return _train(cfg)
    finally:
        if dist.get_rank() == 0:
            release_lock(out)


def _train(cfg: Config) -> int:
    """`run` once the process groups are up and the run folder is locked."""
    from prealign_scale.engine.deepspeed_setup import build_engine, model_vocab_size, reset_optimizer
    from prealign_scale.engine.export import export_run
    from prealign_scale.model.presets import get_preset

    rank0 = dist.get_rank() == 0
    out = Path(cfg.run.out_dir)
    ckpt = CheckpointManager(out, cfg.run.keep_last)
    latest = ckpt.resume_point()  # verified; a damaged latest tag falls back to the previous one (warning)
    metrics = MetricsFile(out / "metrics.jsonl", cfg.run.log_every) if rank0 else None
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if latest is not None:
            metrics.truncate_after(latest.phase, latest.step)
            log0(f"resuming from {ckpt.root / latest.tag} (phase {latest.phase}, step {latest.step})")
            if cfg.model.init_hf is not None:
                log0(f"model.init_hf={cfg.model.init_hf} is not loaded: the checkpoint {latest.tag} of this run "
                     "folder takes precedence")
        else:
            metrics.path.unlink(missing_ok=True)  # lines of an attempt that died before its first checkpoint
    dist.barrier()
    vocab = model_vocab_size(cfg)
    preset = get_preset(cfg.model.preset)
    preemption = Preemption()
    callbacks = make_callbacks(cfg, ckpt, metrics, lambda s: preset.flops_per_token(vocab, s), preemption)
    preemption.install()
    engine = None
    try:
        phases = cfg.phases()
        for name in phases:
            action, info = plan_phase(name, latest, cfg)
            if action == "skip":
                continue
            seed_everything(cfg.run.seed)
            # only a phase trained from scratch starts from model.init_hf (a checkpoint wins: plan_phase)
            init_hf = cfg.model.init_hf if action == "fresh" else None
            if init_hf is not None:
                log0(f"phase {name}: starting from the weights of model.init_hf={init_hf}")
            engine = build_engine(cfg, name, init_hf=init_hf)
            pdist.set_collective_timeout(cfg.dist.timeout_minutes)  # and any group DeepSpeed created
            phase = _build_phase(cfg, name, engine)
            state = LoopState()
            if action == "resume":
                ours = ckpt.load(engine, info, restore_training_state=True)
                if "from_ranks" in ours:  # written by another data-parallel size: remap the data position
                    phase.load_remapped_loader_state([t["loader"] for t in ours["from_ranks"]])
                else:
                    phase.load_loader_state(ours["train"]["loader"])
                state = LoopState(step=ours["step"], tokens=ours["train"]["tokens"])
            elif action == "from_weights":
                ckpt.load(engine, info, restore_training_state=False)
                reset_optimizer(engine, phase.section(cfg).weight_decay)
                log0(f"phase {name}: starting from the weights of {info.tag} with a fresh optimizer")
            loop = PhaseLoop(engine, phase, cfg, state, callbacks)
            result = loop.run()
            phase.close()
            latest = ckpt.latest()
            if result == "stopped":
                why = describe_stop(loop.stop_reasons)  # agreed by every rank: the rank that got a signal
                log0(f"{why}: checkpoint {ckpt.root / latest.tag} saved; exiting. Run the same command to resume.")
                return 0
            if name != phases[-1]:
                _release(engine)
                engine = None
        if cfg.run.export_hf and not (out / "hf" / "config.json").is_file():
            if engine is None:  # every phase was already done: rebuild the last one from its checkpoint
                seed_everything(cfg.run.seed)
                engine = build_engine(cfg, phases[-1])
                pdist.set_collective_timeout(cfg.dist.timeout_minutes)
                ckpt.load(engine, latest, restore_training_state=False)
            folder = export_run(engine, cfg, out, vocab)
            log0(f"exported {folder}")
        if rank0:  # the completion marker sweeps and the SLURM script look for (run_folder.py)
            mark_finished(out, {"phases": phases, "checkpoint": latest.tag if latest else None,
                                "hf": cfg.run.export_hf})
        log0(f"run finished: {out}")
        return 0
    except NonFiniteError as exc:  # every rank raises it at the same step; the latest checkpoint is the last good
        tag = ckpt.pointer()
        log0(f"{exc}; stopping without a checkpoint of this step, DONE or export. "
             + (f"The last good checkpoint is {tag}" if tag else "No checkpoint was written yet"))
        dist.barrier()
        return 1
    except CheckpointWriteError as exc:  # agreed by every rank; the previous checkpoint is intact
        log0(str(exc))
        dist.barrier()  # rank 0 has printed before any rank exits (launchers kill the others on the first exit)
        return 1
    except Exception as exc:
        print(f"[prealign] rank {dist.get_rank()}: {failure_line(exc, cfg, ckpt)}", file=sys.stderr, flush=True)
        raise
    finally:
        for cb in callbacks:
            cb.close()  # the signal handlers go back, TensorBoard's file is closed
        if engine is not None:
            _release(engine)
