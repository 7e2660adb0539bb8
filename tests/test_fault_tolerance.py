"""Fault tolerance (issue 6 §4), each fault injected for real on 2 CPU ranks through the `deepspeed` launcher.

1. A rank killed with SIGKILL mid-run: the survivor's collective fails at once (gloo sees the closed
   connection), the launcher ends the job non-zero, and a restart resumes from the last checkpoint with
   bitwise the losses of an uninterrupted run. Without a launcher, a dead peer fails the survivor at once and
   a stalled (SIGSTOPped) peer after exactly `dist.timeout_minutes`, on megatron's data-parallel group too.
2. A damaged latest checkpoint (a truncated file, a deleted completeness marker, a flipped byte): detected at
   the start, the previous tag is used with a warning naming both, and the losses equal the reference.
3. A truncated shard: the error names the shard and the sample; with `data.skip_corrupt=true` the run goes on
   and metrics.jsonl counts exactly the unreadable samples (both with `data.verify_sha256=false`: the
   per-sample checks behind the checksum). A byte flipped inside the id range, which every per-sample check
   passes: the shard's sha256 check at its first read stops the job naming the shard.
4. A full disk (a size-limited tmpfs) while writing a checkpoint: rank 0 prints one line saying what and where,
   the job exits non-zero, `latest` still names the previous checkpoint, intact, and the partial tag is gone.

Measured figures (detection times, samples lost) go to $PREALIGN_RELIABILITY_JSON (default: pytest's
basetemp/reliability.json); docs/reliability.md points to them. No timing is asserted, only hang guards.
Each fault also records itself as a case of docs/reliability.md's table (tests/reliability_cases.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from engine_common import read_metrics
from fault_common import (
    HANG_GUARD_S,
    STEPS,
    checkpoint_differences,
    failure_record,
    fault_config,
    flip_byte,
    kill_quietly,
    launch,
    metric_lines,
    rank_processes,
    read_until_ready,
    start_launcher,
    start_peer_pair,
    truncate_half,
    truncate_shard_inside_sample,
    wait_for,
    write_figures,
)
from reliability_cases import first_line, record_case

from prealign_scale.data.shard_order import epoch_shard_order
from prealign_scale.data.shard_reader import load_manifest
from prealign_scale.engine.checkpoint import CheckpointInfo, CheckpointManager
from prealign_scale.engine.checkpoint_integrity import (
    MANIFEST,
    MARKER,
    check_files,
    describe_write_error,
    read_manifest,
    write_manifest_and_marker,
)

slow = pytest.mark.slow
MODEL0, OPTIM1 = "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"
TAG = {s: f"lm-step{s:08d}" for s in range(2, STEPS + 1, 2)}


def damage(folder: Path, kind: str) -> str:
    """Damage a tag folder; returns the reason `verify` must give."""
    if kind == "truncated_file":
        size = (folder / OPTIM1).stat().st_size
        truncate_half(folder / OPTIM1)
        return f"{OPTIM1} has {size // 2} bytes, the manifest says {size} (truncated or rewritten)"
    if kind == "missing_marker":
        (folder / MARKER).unlink()
        return f"no completeness marker {MARKER} (the checkpoint was never finished, or the marker was lost)"
    flip_byte(folder / MODEL0)
    return f"{MODEL0}: sha256 differs from the manifest (corrupted)"


def mount_tmpfs(folder: Path, size_kib: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("a size-limited tmpfs needs root (mount -t tmpfs)")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    found: dict = {}
    yield found
    path = write_figures(found, tmp_path_factory.getbasetemp() / "reliability.json")
    print(f"\nreliability figures: {path}")


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # tests/conftest.py (read-only: bad_shard damages a copy)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, figures):
    """The uninterrupted run: 8 LM steps, checkpoints lm-step2/4/6/8."""
    root = tmp_path_factory.mktemp("reference")
    rc, out, secs = launch(fault_config(root / "cfg.yaml", data, root / "run"))
    assert rc == 0, out[-6000:]
    figures["launch_s"] = round(secs, 1)
    assert sorted(p.name for p in (root / "run/checkpoints").iterdir() if p.is_dir()) == sorted(TAG.values())
    return root / "run"


# --------------------------------------------------------------------- fast checks of the integrity rules
def test_manifest_and_marker_catch_each_damage(tmp_path):
    folder = tmp_path / "lm-step00000002"
    folder.mkdir()
    (folder / "a.pt").write_bytes(b"x" * 100)
    (folder / "state.json").write_text("{}")
    files = {"a.pt": {"bytes": 100, "sha256": hashlib.sha256(b"x" * 100).hexdigest()}}
    write_manifest_and_marker(folder, folder.name, files)
    assert read_manifest(folder) == (None, files) and check_files(folder, files, ["a.pt"]) == []
    seen = {}  # case -> the reason the check gave (docs/reliability.md)
    (folder / "a.pt").write_bytes(b"x" * 99 + b"y")
    seen["one byte of a checkpoint file changed"] = check_files(folder, files, ["a.pt"])
    assert seen["one byte of a checkpoint file changed"] == ["a.pt: sha256 differs from the manifest (corrupted)"]
    (folder / "a.pt").write_bytes(b"x" * 10)
    seen["a checkpoint file truncated"] = check_files(folder, files, ["a.pt"])
    assert seen["a checkpoint file truncated"] == ["a.pt has 10 bytes, the manifest says 100 (truncated or rewritten)"]
    (folder / "a.pt").unlink()
    seen["a checkpoint file deleted"] = check_files(folder, files, ["a.pt"])
    assert seen["a checkpoint file deleted"] == ["a.pt is missing"]
    (folder / MANIFEST).write_text((folder / MANIFEST).read_text().replace("100", "101"))
    seen["manifest.json edited"] = [read_manifest(folder)[0]]
    assert read_manifest(folder) == (f"{MANIFEST} does not match the digest in {MARKER} (corrupted)", None)
    (folder / MARKER).unlink()
    seen["the marker COMPLETE deleted"] = [read_manifest(folder)[0]]
    assert read_manifest(folder)[0].startswith(f"no completeness marker {MARKER}")
    (folder / MANIFEST).unlink()
    assert read_manifest(folder) == (None, None)  # state.json alone: a folder from before checksums (legacy)
    for case, reasons in seen.items():
        record_case("checkpoints", f"integrity rule: {case}", "the tag is found damaged, with the reason",
                    f"reason `{reasons[0]}`")


def test_write_error_on_a_full_disk_says_enospc_and_where(tmp_path):
    import torch

    disk = tmp_path / "disk"
    mount_tmpfs(disk, 64)
    try:
        target = disk / "big.pt"
        with pytest.raises(RuntimeError) as info:  # torch.save's zip writer hides the OS error
            torch.save({"w": torch.zeros(64 * 1024)}, target)
        msg = describe_write_error(info.value, target)
        assert msg.startswith("No space left on device (ENOSPC); a test write failed the same way after RuntimeError")
        assert f", while writing {target} (" in msg and "MiB free of 0.1 MiB on that filesystem)" in msg
        exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        assert describe_write_error(exc, target).startswith(f"No space left on device (ENOSPC), while writing {target}")
        record_case("checkpoints", "torch.save into a full filesystem (a bare RuntimeError)",
                    "the message says ENOSPC and where", f"`{msg}`")
    finally:
        unmount(disk)


# ----------------------------------------------------------------------------- 1. a rank dies or stalls
@pytest.fixture(scope="module")
def peer_faults():
    """Two light 2-rank jobs over the engine's groups: rank 1 of one is SIGKILLed, of the other SIGSTOPped."""
    dead, stalled = start_peer_pair(5.0), start_peer_pair(0.1)  # 0.1 minutes = 6000 ms
    try:
        for proc in dead + stalled:
            read_until_ready(proc)
        t_fault = time.time()
        dead[1].send_signal(signal.SIGKILL)
        stalled[1].send_signal(signal.SIGSTOP)
        results = {}
        for name, pair in (("dead", dead), ("stalled", stalled)):
            out, _ = pair[0].communicate(timeout=HANG_GUARD_S)
            results[name] = (pair[0].returncode, out, time.time() - t_fault, t_fault)
        return results
    finally:
        for proc in dead + stalled:
            kill_quietly(proc)


@slow
def test_dead_peer_fails_the_survivor_at_once(peer_faults, figures):
    rc, out, exit_s, t_fault = peer_faults["dead"]
    rec = failure_record(out)
    assert rc == 3 and rec["rank"] == 0, out[-3000:]
    assert "Connection reset by peer" in rec["error"] or "Connection closed by peer" in rec["error"], rec
    record_case("training", "a peer SIGKILLed, no launcher (the engine's own process groups)",
                "the survivor fails at once with a one-line reason and exits non-zero",
                f"exit {rc}, rank 0: `{'Connection reset by peer' if 'reset' in rec['error'] else 'Connection closed by peer'}`")
    figures["dead_peer"] = {"detect_s": round(rec["t_error"] - t_fault, 3), "exit_s": round(exit_s, 1),
                            "error": rec["error"]}


@slow
def test_stalled_peer_fails_the_survivor_after_dist_timeout(peer_faults, figures):
    rc, out, exit_s, t_fault = peer_faults["stalled"]
    rec = failure_record(out)
    assert rc == 3 and rec["rank"] == 0, out[-3000:]
    # dist.timeout_minutes=0.1 holds on megatron's data-parallel group (its own default would be 30 minutes)
    assert "Timed out waiting 6000ms" in rec["error"], rec
    record_case("training", "a peer stopped with SIGSTOP (hung), dist.timeout_minutes=0.1",
                "the survivor fails after the configured timeout, on megatron's groups too",
                f"exit {rc}, rank 0: collective `Timed out waiting 6000ms`")
    figures["stalled_peer"] = {"detect_s": round(rec["t_error"] - t_fault, 3), "exit_s": round(exit_s, 1),
                               "timeout_minutes": 0.1, "error": rec["error"]}


@slow
def test_sigkill_of_a_rank_ends_the_job_and_a_restart_resumes_exactly(tmp_path, data, reference, figures):
    run, log = tmp_path / "run", tmp_path / "killed.log"
    config = fault_config(tmp_path / "cfg.yaml", data, run)
    launcher = start_launcher(config, log)
    try:
        wait_for(lambda: metric_lines(run) >= 3 or launcher.poll() is not None, "step 3 of the run")
        assert launcher.poll() is None, log.read_text()[-6000:]
        ranks = rank_processes(launcher)
        assert sorted(ranks) == [0, 1], ranks
        t_kill = time.monotonic()
        ranks[1].send_signal(signal.SIGKILL)
        ranks[0].wait(timeout=HANG_GUARD_S)  # the survivor ends by itself (its SIGTERM handler only sets a flag)
        survivor_exit_s = time.monotonic() - t_kill
        rc = launcher.wait(timeout=HANG_GUARD_S)  # the hang guard: a hung job fails here
        job_exit_s = time.monotonic() - t_kill
    finally:
        if launcher.poll() is None:
            launcher.kill()
    out = log.read_text()
    assert rc != 0, out[-6000:]
    assert not ranks[0].is_running(), "the surviving rank outlived the launcher"
    assert "[prealign] rank 0: training failed: RuntimeError:" in out and "a collective operation failed" in out
    logged, tag = metric_lines(run), (run / "checkpoints/latest").read_text()
    assert logged < STEPS and tag in TAG.values()

    rc, out, secs = launch(config)
    assert rc == 0, out[-6000:]
    step = int(tag.split("step")[1])
    assert f"resuming from {run / 'checkpoints' / tag} (phase lm, step {step})" in out
    assert read_metrics(run) == read_metrics(reference)  # bitwise: every loss, lr and token count
    assert checkpoint_differences(run / "checkpoints" / TAG[STEPS], reference / "checkpoints" / TAG[STEPS]) == []
    tokens_lost = read_metrics(reference)[-1]["tokens"] - read_metrics(run)[-1]["tokens"]
    record_case("training", "rank 1 SIGKILLed mid-run (after step 3), deepspeed launcher; then the same command",
                "the job ends non-zero; the restart resumes from the last checkpoint, bitwise the reference",
                f"job exit {rc if rc else 'non-zero'}; resumed from {tag}; metrics.jsonl bitwise the reference's: True; "
                f"tokens lost: {tokens_lost}", loses_data=tokens_lost != 0)
    figures["sigkill"] = {"survivor_exit_s": round(survivor_exit_s, 1), "job_exit_s": round(job_exit_s, 1),
                          "steps_logged_before_kill": logged,
                          "resumed_from_step": step, "steps_redone": logged - step,
                          "tokens_lost": read_metrics(reference)[-1]["tokens"] - read_metrics(run)[-1]["tokens"],
                          "restart_s": round(secs, 1)}


# ------------------------------------------------------------------------ 2. a damaged latest checkpoint
@slow
@pytest.mark.parametrize("kind", ["truncated_file", "missing_marker", "flipped_byte"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(kind, reference, tmp_path, capsys, figures):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    root = run / "checkpoints"
    why = damage(root / TAG[8], kind)
    mgr = CheckpointManager(run, keep_last=4)
    t0 = time.perf_counter()
    info = mgr.resume_point()
    detect_s = time.perf_counter() - t0
    assert info == CheckpointInfo(TAG[6], "lm", 6, STEPS)
    assert mgr.fallbacks == [(TAG[8], why, TAG[6])]
    assert (f"[prealign] WARNING: checkpoint {TAG[8]} is damaged ({why}); falling back to the previous checkpoint "
            f"{TAG[6]}") in capsys.readouterr().err
    assert (root / "latest").read_text() == TAG[6]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [TAG[2], TAG[4], TAG[6], TAG[8] + ".damaged"]
    record_case("checkpoints", f"latest checkpoint damaged: {kind.replace('_', ' ')}",
                "found at start; the previous tag is used with a warning naming both; the damaged one set aside",
                f"fell back {TAG[8]} -> {info.tag}; reason `{why}`; set aside as {TAG[8]}.damaged")
    figures.setdefault("damaged_checkpoint", {})[kind] = {"detect_s": round(detect_s, 4), "reason": why}


@slow
def test_resume_passes_over_damaged_checkpoints_with_the_reference_losses(reference, data, tmp_path, figures):
    """lm-8 has a flipped byte, lm-6 no marker, lm-4 a truncated file: the run resumes from lm-2."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    root = run / "checkpoints"
    why = {8: damage(root / TAG[8], "flipped_byte"), 6: damage(root / TAG[6], "missing_marker"),
           4: damage(root / TAG[4], "truncated_file")}
    rc, out, secs = launch(fault_config(tmp_path / "cfg.yaml", data, run))
    assert rc == 0, out[-6000:]
    for step, previous in ((8, 6), (6, 4), (4, 2)):
        assert (f"checkpoint {TAG[step]} is damaged ({why[step]}); falling back to the previous checkpoint "
                f"{TAG[previous]}") in out
    assert f"resuming from {root / TAG[2]} (phase lm, step 2)" in out
    assert read_metrics(run) == read_metrics(reference)
    for step in (4, 6, 8):  # trained again: the reference's weights, optimizer states, loader positions, RNG
        assert checkpoint_differences(root / TAG[step], reference / "checkpoints" / TAG[step]) == []
        assert (root / (TAG[step] + ".damaged")).is_dir()
    tokens_lost = read_metrics(reference)[-1]["tokens"] - read_metrics(run)[-1]["tokens"]
    record_case("checkpoints", "lm-step8 a flipped byte, lm-step6 no marker, lm-step4 truncated; real resume",
                "three warnings; resumes from lm-step2 with bitwise the reference's losses and checkpoints",
                f"exit {rc}; resumed from {TAG[2]}; metrics.jsonl bitwise the reference's: True; tokens lost: "
                f"{tokens_lost}", loses_data=tokens_lost != 0)
    figures["damaged_checkpoint_run"] = {"fallbacks": 3, "resumed_from_step": 2,
                                         "tokens_lost": read_metrics(reference)[-1]["tokens"]
                                         - read_metrics(run)[-1]["tokens"],
                                         "run_s": round(secs, 1)}


# ---------------------------------------------------------------------------------- 3. a truncated shard
@pytest.fixture(scope="module")
def bad_shard(data, tmp_path_factory):
    """A copy of the shards where rank 1's first shard is cut inside its 4th sample (3 samples readable)."""
    shards = tmp_path_factory.mktemp("bad_shards") / "shards"
    shutil.copytree(data["shards"], shards)
    manifest = load_manifest(shards)
    order = epoch_shard_order(len(manifest.shards), seed=1234, epoch=0)  # run.seed of the tiny config
    path = shards / manifest.shards[order[1::2][0]]["name"]  # rank 1, one reader (num_workers=0)
    last_good = truncate_shard_inside_sample(path, 3)
    return {**data, "shards": shards}, path, last_good, int(manifest.shards[0]["samples"])


@slow
def test_truncated_shard_stops_the_job_naming_shard_and_sample(bad_shard, tmp_path, figures):
    data, path, last_good, per_shard = bad_shard
    rc, out, secs = launch(fault_config(tmp_path / "cfg.yaml", data, tmp_path / "run"), "data.verify_sha256=false")
    assert rc != 0
    assert (f"{path}: only 3 of {per_shard} samples could be read; the shard is truncated or corrupt after "
            f"sample key {last_good}") in out, out[-6000:]
    assert "[prealign] rank 1: training failed: ShardCorruptError:" in out and "data.skip_corrupt=true" in out
    assert metric_lines(tmp_path / "run") == 0
    record_case("training", "a shard truncated inside its 4th sample, data.verify_sha256=false",
                "the job stops non-zero at its first read, naming shard and sample; nothing trained",
                f"exit non-zero ({rc}); `{first_line(out[out.index(str(path) + ': only'):])}`; steps logged: 0")
    figures["corrupt_shard_error"] = {"launch_to_exit_s": round(secs, 1), "failed_at_step": 1}


@slow
def test_truncated_shard_is_skipped_and_counted_with_the_switch(bad_shard, tmp_path, figures):
    data, path, _, per_shard = bad_shard
    run = tmp_path / "run"
    rc, out, secs = launch(fault_config(tmp_path / "cfg.yaml", data, run, steps=4), "data.skip_corrupt=true",
                           "data.verify_sha256=false")
    assert rc == 0, out[-6000:]
    recs = read_metrics(run)
    # rank 1 reads 4 samples per step (2 micro-batches of 2), from sample 0 of the cut shard; 3 are readable
    per_step = [sum(1 for i in range(4 * s, 4 * s + 4) if 3 <= i < per_shard) for s in range(4)]
    assert [r["skipped_samples"] for r in recs] == per_step and sum(per_step) > 0
    assert [r["skipped_samples_total"] for r in recs] == [sum(per_step[: s + 1]) for s in range(4)]
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in recs)
    assert f"{path}: only 3 of {per_shard} samples could be read" in out
    record_case("training", "the same truncated shard with data.skip_corrupt=true",
                "the run trains on; each unreadable sample a padding row, counted in metrics.jsonl",
                f"exit {rc}; unreadable samples: {per_shard - 3}, counted skipped_samples_total: "
                f"{recs[-1]['skipped_samples_total']} (of the steps run); readable samples lost: 0")
    figures["corrupt_shard_skip"] = {"unreadable_samples": per_shard - 3, "skipped_counted": sum(per_step),
                                     "readable_samples_lost": 0, "run_s": round(secs, 1)}


@slow
def test_flipped_id_byte_stops_the_job_naming_the_shard(data, tmp_path_factory, tmp_path, figures):
    """A byte of an input id changed, the id still inside the vocabulary: only the checksum can tell."""
    shards = tmp_path_factory.mktemp("flipped_shards") / "shards"
    shutil.copytree(data["shards"], shards)
    manifest = load_manifest(shards)
    order = epoch_shard_order(len(manifest.shards), seed=1234, epoch=0)
    path = shards / manifest.shards[order[1::2][0]]["name"]  # rank 1's first shard
    with tarfile.open(path) as tf:
        ids = next(m for m in tf.getmembers() if m.name.endswith("input_ids.bin"))
    with open(path, "r+b") as f:  # the low byte of the first id of the first sample
        f.seek(ids.offset_data)
        low = f.read(1)[0]
        f.seek(ids.offset_data)
        f.write(bytes([low ^ 0x01]))
    rc, out, secs = launch(fault_config(tmp_path / "cfg.yaml", {**data, "shards": shards}, tmp_path / "run"))
    assert rc != 0
    assert f"{path}: sha256 " in out and "differs from the manifest's" in out, out[-6000:]
    assert "[prealign] rank 1: training failed: ShardCorruptError:" in out
    assert metric_lines(tmp_path / "run") == 0
    record_case("training", "one byte of an input id flipped in a shard (the id stays in the vocabulary)",
                "the shard's sha256 check at its first read stops the job naming the shard; nothing trained",
                f"exit non-zero ({rc}); `{first_line(out[out.index(str(path) + ': sha256'):])}`; steps logged: 0")
    figures["flipped_shard_byte"] = {"launch_to_exit_s": round(secs, 1), "failed_at_step": 1}


# -------------------------------------------------------------------------------------------- 4. a full disk
@slow
def test_full_disk_keeps_the_previous_checkpoint(reference, data, tmp_path, figures):
    tag_bytes = sum(f.stat().st_size for f in (reference / "checkpoints" / TAG[2]).iterdir())
    size_kib = tag_bytes * 3 // 2 // 1024  # room for one checkpoint and a half: the second write fails
    disk = tmp_path / "disk"
    mount_tmpfs(disk, size_kib)
    try:
        run = disk / "run"
        rc, out, secs = launch(fault_config(tmp_path / "cfg.yaml", data, run))
        root = run / "checkpoints"
        assert rc != 0, out[-6000:]
        lines = [x for x in out.splitlines() if "could not be written" in x]
        assert len(lines) == 1, out[-6000:]  # one line, from rank 0
        assert lines[0].startswith(f"[prealign] checkpoint {TAG[4]} could not be written: No space left on "
                                   f"device (ENOSPC)"), lines[0]
        assert f", while writing {root}/" in lines[0]
        assert f"The partial folder {root / TAG[4]} was removed; {root / 'latest'} still names {TAG[2]}" in lines[0]
        assert "Traceback" not in out
        assert (root / "latest").read_text() == TAG[2]
        assert sorted(p.name for p in root.iterdir()) == sorted([TAG[2], "latest", "zero_to_fp32.py",
                                                                 "zero_to_torch.py"])
        mgr = CheckpointManager(run, keep_last=4)
        assert mgr.verify(TAG[2]) is None and mgr.resume_point() == CheckpointInfo(TAG[2], "lm", 2, STEPS)
        # loadable, and the reference's lm-step2 (which the damaged-checkpoint run resumes from)
        assert checkpoint_differences(root / TAG[2], reference / "checkpoints" / TAG[2]) == []
        assert read_metrics(run) == read_metrics(reference)[:4]
    finally:
        unmount(disk)
    record_case("checkpoints", "disk full while writing checkpoint lm-step4 (a size-limited tmpfs)",
                "one line saying ENOSPC and where; exit non-zero; latest still names the previous tag, intact",
                f"exit {rc}; `{lines[0][:lines[0].index(' (')]}`; latest: {TAG[2]}, verified; partial tag removed")
    figures["disk_full"] = {"tmpfs_kib": size_kib, "launch_to_exit_s": round(secs, 1), "failed_tag": TAG[4],
                            "kept_tag": TAG[2], "samples_lost": 0}
