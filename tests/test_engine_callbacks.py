"""The training loop's hooks and the phase registry, with a fake phase and engine in one process (gloo, world 1):
hook order, the record the callbacks see, log cadence, stop agreement, checkpoint cadence."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from prealign_scale import dist as pdist
from prealign_scale.config import PHASES, Config
from prealign_scale.engine.align_convergence import AlignConvergence, seen_retrieval
from prealign_scale.engine.callback import Callback
from prealign_scale.engine.callbacks import Checkpointing, MetricsFile, Preemption, StepBudget, Throughput
from prealign_scale.engine.loop import LoopState, PhaseLoop, describe_stop
from prealign_scale.engine.phases import PHASE_NAMES, PHASE_ORDER, phase_class, steps_before


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{pdist.free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class FakeEngine:
    def __init__(self):
        self.optimizer = type("Opt", (), {"param_groups": [{"lr": 0.0}]})()
        self.calls = []

    def train(self):
        self.calls.append("train")

    def backward(self, loss):
        self.calls.append("backward")

    def step(self):
        self.calls.append("step")


class FakePhase:
    """`total_steps` steps of 2 micro-batches of 10 tokens; the loss is the step number."""

    name, grad_accum, trains_alignment = "lm", 2, False
    section = staticmethod(phase_class("lm").section)

    def __init__(self, total_steps: int):
        self.total_steps, self.fetched = total_steps, 0

    def fetch(self):
        self.fetched += 1
        return [{"n": self.fetched}] * self.grad_accum

    def prepare(self, batches):
        return {"tokens": 10 * len(batches)}

    def micro_loss(self, batch, ctx):
        return float(batch["n"]), {"n": batch["n"]}

    def step_metrics(self, stats, ctx):
        return {"loss": float(stats[0]["n"])}

    def loader_state(self):
        return {"fetched": self.fetched}

    def seq_len_for_flops(self, batches):
        return 4


class Recorder(Callback):
    def __init__(self, log):
        self.log = log

    def on_phase_start(self, loop):
        self.log.append(("on_phase_start", loop.state.step))

    def pre_fetch(self, loop):
        self.log.append(("pre_fetch", loop.state.step))

    def pre_step(self, loop, batches):
        self.log.append(("pre_step", len(batches)))

    def post_step(self, loop, record):
        self.log.append(("post_step", record["step"], sorted(record)))

    def end_step(self, loop, stopping):
        self.log.append(("end_step", loop.state.step, stopping))

    def on_phase_end(self, loop):
        self.log.append(("on_phase_end", loop.state.step))


class FakeCheckpoints:
    def __init__(self):
        self.saved = []

    def save(self, engine, cfg, *, phase, step, phase_steps, train_state):
        self.saved.append((phase, step, phase_steps, train_state))


def test_hooks_run_in_order_and_the_record_carries_throughput():
    cfg = Config()
    cfg.lm.steps, cfg.lm.lr, cfg.lm.warmup_frac, cfg.lm.schedule = 2, 1.0, 0.0, "constant"
    log, engine = [], FakeEngine()
    result = PhaseLoop(engine, FakePhase(2), cfg, LoopState(), [Throughput(lambda s: 6.0 * s), Recorder(log)]).run()
    assert result == "done"
    keys = sorted(["phase", "step", "tokens", "loss", "lr", "tokens_per_s", "mfu", "data_wait", "step_time"])
    assert log == [("on_phase_start", 0),
                   ("pre_fetch", 0), ("pre_step", 2), ("post_step", 1, keys), ("end_step", 1, False),
                   ("pre_fetch", 1), ("pre_step", 2), ("post_step", 2, keys), ("end_step", 2, False),
                   ("on_phase_end", 2)]
    assert engine.calls == ["train"] + ["backward", "step"] * 4
    assert engine.optimizer.param_groups[0]["lr"] == 1.0


def test_metrics_cadence_budget_stop_and_checkpoints(tmp_path):
    cfg = Config()
    cfg.lm.steps, cfg.lm.warmup_frac = 10, 0.0
    metrics, ckpt, log = MetricsFile(tmp_path / "metrics.jsonl", every=3), FakeCheckpoints(), []
    budget = StepBudget(7)
    callbacks = [Throughput(lambda s: 1.0), metrics, Recorder(log), Preemption(), budget, Checkpointing(ckpt, 2)]
    state = LoopState(step=1, tokens=20)  # resumed after step 1
    assert PhaseLoop(FakeEngine(), FakePhase(10), cfg, state, callbacks).run() == "stopped"
    recs = [json.loads(x) for x in metrics.path.read_text().splitlines()]
    assert [(r["step"], r["tokens"], r["loss"]) for r in recs] == [(3, 60, 2.0), (6, 120, 5.0)]
    assert list(recs[0])[:3] == ["phase", "step", "tokens"] and list(recs[0])[-5:] == [
        "lr", "tokens_per_s", "mfu", "data_wait", "step_time"]
    assert state.step == 8 and budget.remaining == 0  # 7 steps in this process: 2..8
    assert [(s[1], s[3]) for s in ckpt.saved] == [(2, {"loader": {"fetched": 1}, "tokens": 40}),
                                                  (4, {"loader": {"fetched": 3}, "tokens": 80}),
                                                  (6, {"loader": {"fetched": 5}, "tokens": 120}),
                                                  (8, {"loader": {"fetched": 7}, "tokens": 160})]
    assert log[-2:] == [("end_step", 8, True), ("on_phase_end", 8)]


def test_a_signal_stops_after_the_step_and_the_phase_end_checkpoints():
    cfg = Config()
    cfg.lm.steps = 3
    ckpt, pre = FakeCheckpoints(), Preemption()
    assert PhaseLoop(FakeEngine(), FakePhase(3), cfg, LoopState(), [pre, Checkpointing(ckpt, 0)]).run() == "done"
    assert [s[1] for s in ckpt.saved] == [3]  # ckpt_every 0: only at the phase end
    pre.received = "SIGUSR1"
    ckpt.saved = []
    loop = PhaseLoop(FakeEngine(), FakePhase(3), cfg, LoopState(), [pre, Checkpointing(ckpt, 0)])
    assert loop.run() == "stopped"
    assert [s[1] for s in ckpt.saved] == [1]
    assert loop.stop_reasons == ["SIGUSR1 received"]  # gathered from every rank (world 1 here)


def test_the_stop_reason_names_the_ranks_that_asked():
    # issue 9 item 7: a SIGTERM that reached rank 1 only used to be reported as "run.stop_after reached"
    assert describe_stop(["SIGTERM received", "SIGTERM received"]) == "SIGTERM received"
    assert describe_stop([None, "SIGTERM received"]) == "SIGTERM received by rank 1"
    assert describe_stop([None, "SIGUSR1 received", None, "SIGUSR1 received"]) == "SIGUSR1 received by ranks 1, 3"
    assert describe_stop(["run.stop_after reached", "SIGTERM received"]) == (
        "run.stop_after reached by rank 0; SIGTERM received by rank 1")


def test_phase_registry_matches_the_phase_classes_and_config():
    assert tuple(phase_class(n).name for n in PHASE_NAMES) == PHASE_NAMES
    assert PHASES == ("all", *PHASE_NAMES)  # run.phase values
    assert PHASE_ORDER == {"align": 0, "lm": 1}
    cfg = Config()
    cfg.align.steps, cfg.lm.steps = 7, 5
    assert [phase_class(n).section(cfg).steps for n in PHASE_NAMES] == [7, 5]
    assert (steps_before(cfg, "align"), steps_before(cfg, "lm")) == (0, 7)
    cfg.align.entries_per_rank, cfg.lm.micro_batch_size = 8, 3
    assert [phase_class(n).micro_batch_size(cfg) for n in PHASE_NAMES] == [8, 3]
    assert [phase_class(n).allows_recompute for n in PHASE_NAMES] == [False, True]


# --- phase 1's convergence: align.stop_at_seen_acc and the end-of-phase warning ---------------------------------
class FakeAlignPhase(FakePhase):
    name, trains_alignment = "align", True
    section = staticmethod(phase_class("align").section)


class FakeProbe(Callback):
    """Probes at step 0 and every 2 steps: seen accuracy per layer from `seen(step)`, unseen always 0.99."""

    def __init__(self, seen):
        self.seen, self.latest = seen, None

    def on_phase_start(self, loop):
        self.post_step(loop, {})

    def post_step(self, loop, record):
        s = loop.state.step
        if s % 2 == 0:
            self.latest = {"kind": "probe", "phase": loop.phase.name, "step": s,
                           "probe_seen_acc": [0.1, self.seen(s), None], "probe_unseen_acc": [0.99, 0.99, 0.99]}


def _align_cfg(steps=10, stop=None, warn=0.9):
    cfg = Config()
    cfg.align.steps, cfg.align.warmup_frac, cfg.align.stop_at_seen_acc = steps, 0.0, stop
    cfg.align.warn_below_seen_acc, cfg.run.probe_every = warn, 2
    return cfg


def test_seen_retrieval_takes_the_best_layer_and_the_worst_language():
    assert seen_retrieval({"probe_seen_acc": [0.2, None, 0.7], "probe_unseen_acc": [1.0]}) == (0.7, 2)
    assert seen_retrieval({"probe_seen_de_acc": [0.2, 0.97], "probe_seen_fr_acc": [0.91, None]}) == (0.91, 0)
    assert seen_retrieval({"probe_unseen_acc": [1.0]}) is None and seen_retrieval(None) is None


def test_stop_at_seen_acc_ends_phase_1_as_done(tmp_path, capsys):
    from prealign_scale.engine.checkpoint import CheckpointInfo
    from prealign_scale.engine.run import plan_phase

    cfg = _align_cfg(stop=0.95)
    metrics, ckpt, log = MetricsFile(tmp_path / "metrics.jsonl", every=100), FakeCheckpoints(), []
    probe = FakeProbe(lambda s: {0: 0.0, 2: 0.5, 4: 0.96}.get(s, 1.0))  # unseen is 0.99 from the start
    callbacks = [probe, metrics, Recorder(log), AlignConvergence(cfg, probe, metrics), Preemption(),
                 Checkpointing(ckpt, 0)]
    loop = PhaseLoop(FakeEngine(), FakeAlignPhase(10), cfg, LoopState(), callbacks)
    assert loop.run() == "done" and loop.ended_early and loop.state.step == 4
    assert [(s[0], s[1], s[2]) for s in ckpt.saved] == [("align", 4, 4)]  # saved as the phase's end
    assert log[-2:] == [("end_step", 4, True), ("on_phase_end", 4)]
    events = [json.loads(x) for x in metrics.path.read_text().splitlines()]
    assert [(e["event"], e["step"], e["seen_acc"], e["seen_layer"]) for e in events] == [("align_stop", 4, 0.96, 1)]
    err = capsys.readouterr().err
    assert "seen retrieval 0.960 (layer 1) >= align.stop_at_seen_acc=0.95" in err and "WARNING" not in err
    # resume: phase 1 is done (skipped), phase 2 starts from its weights
    info = CheckpointInfo(tag="align-step00000004", phase="align", step=4, phase_steps=4)
    cfg.lm.steps = 3
    assert plan_phase("align", info, cfg) == ("skip", None)
    assert plan_phase("lm", info, cfg) == ("from_weights", info)


def test_phase_1_below_the_target_warns_what_to_do(tmp_path, capsys):
    cfg = _align_cfg(steps=6)
    metrics = MetricsFile(tmp_path / "metrics.jsonl", every=100)
    probe = FakeProbe(lambda s: 0.1 * s)
    loop = PhaseLoop(FakeEngine(), FakeAlignPhase(6), cfg, LoopState(),
                     [probe, AlignConvergence(cfg, probe, metrics)])
    assert loop.run() == "done" and not loop.ended_early and loop.state.step == 6
    err = capsys.readouterr().err
    assert "WARNING: phase align ended at step 6 with seen retrieval 0.600 (best layer 1), below " \
           "align.warn_below_seen_acc=0.9" in err and "raise align.epochs" in err
    assert not metrics.path.exists()  # the warning is for the console; metrics.jsonl keeps its records
    # reached: no warning; an LM phase: never; a stop for a signal: not the phase's end
    PhaseLoop(FakeEngine(), FakeAlignPhase(6), _align_cfg(steps=6, warn=0.5), LoopState(),
              [probe, AlignConvergence(_align_cfg(steps=6, warn=0.5), probe, metrics)]).run()
    cfg.lm.steps = 6
    PhaseLoop(FakeEngine(), FakePhase(6), cfg, LoopState(), [probe, AlignConvergence(cfg, probe, metrics)]).run()
    pre = Preemption()
    pre.received = "SIGTERM"
    assert PhaseLoop(FakeEngine(), FakeAlignPhase(6), cfg, LoopState(),
                     [probe, AlignConvergence(cfg, probe, metrics), pre]).run() == "stopped"
    assert capsys.readouterr().err == ""


def test_phase_1_without_a_probe_gets_a_note_and_no_early_end(tmp_path, capsys):
    cfg = _align_cfg(steps=3)
    cfg.run.probe_every = 0
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    loop = PhaseLoop(FakeEngine(), FakeAlignPhase(3), cfg, LoopState(), [AlignConvergence(cfg, None, metrics)])
    assert loop.run() == "done" and loop.state.step == 3
    assert "note: phase align ended without an alignment probe (run.probe_every=0)" in capsys.readouterr().err


def test_a_stale_probe_does_not_end_the_phase():
    """Only a probe of the current step decides (after a resume the probe's record is from an older step)."""
    cfg = _align_cfg(steps=5, stop=0.5)
    probe = FakeProbe(lambda s: 1.0)
    probe.latest = {"step": 0, "probe_seen_acc": [1.0]}
    conv = AlignConvergence(cfg, probe, None)
    loop = PhaseLoop(FakeEngine(), FakeAlignPhase(5), cfg, LoopState(step=1), [conv])
    assert loop.run() == "done" and loop.state.step == 5 and not loop.ended_early
