"""The phase-2 shard reader: partition over ranks and workers, epoch order, exact fields, exact resume, errors."""

from __future__ import annotations

import functools
import json
import operator
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from prealign_scale.data.packed_masks import (
    attention_mask_from_segments,
    causal_mask,
    position_ids_from_segments,
)
from prealign_scale.data.shard_format import (
    IGNORE_INDEX,
    Sample,
    encode_sample,
    file_sha256,
    sample_key,
    shard_name,
)
from prealign_scale.data.shard_order import epoch_shard_order
from prealign_scale.data.shard_reader import ShardCorruptError, ShardLoader

SEQ = 8
LANGS = ["clone", "en"]  # sorted, as the manifest stores them
EOS = 2


def make_sample(shard: int, i: int) -> Sample:
    """A sample whose every field is a known function of (shard, i): two documents, 3 + 5 tokens."""
    base = 1000 * shard + 10 * i
    ids = np.arange(base, base + SEQ, dtype=np.uint32)
    # targets deliberately NOT input_ids shifted by one: a reader that shifts them again is caught
    tgt = (np.arange(SEQ, dtype=np.int32) * 3 + base).astype(np.int32)
    tgt[2] = IGNORE_INDEX
    seg = np.array([0, 0, 0, 1, 1, 1, 1, 1], dtype=np.uint16)
    langs = ["en", "clone"] if i % 2 == 0 else ["clone", "clone"]
    return Sample(ids, tgt, seg, langs, [f"{shard}-{i}-a", f"{shard}-{i}-b"], switched_words=i)


def write_shards(folder: Path, n_shards: int, per_shard: int, sample=make_sample) -> Path:
    """A shard folder as build_shards writes it: tar shards (mtime=0) plus a minimal manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for s in range(n_shards):
        with wds.TarWriter(str(folder / shard_name(s)), mtime=0) as w:
            for i in range(per_shard):
                item = sample(s, i)  # a Sample, or an already encoded (possibly broken) dict
                w.write(item if isinstance(item, dict) else encode_sample(sample_key(s, i), item))
        records.append(
            {
                "name": shard_name(s),
                "samples": per_shard,
                "tokens": per_shard * SEQ,
                "loss_tokens": 0,
                "switched_words": 0,
                "sha256": file_sha256(folder / shard_name(s)),
            }
        )
    manifest = {
        "format_version": 1,
        "seq_len": SEQ,
        "vocab_size": 100000,
        "languages": LANGS,
        "eos_id": EOS,
        "shards": records,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def take(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"] and x["doc_ids"] == y["doc_ids"] and x["skipped"] == y["skipped"]
        for k in ("input_ids", "targets", "segments", "token_lang", "position_ids"):
            assert torch.equal(x[k], y[k]), k


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


# ------------------------------------------------------------------------------------------ pure parts


def test_epoch_shard_order_is_a_pure_function_of_seed_and_epoch():
    orders = [epoch_shard_order(16, seed=5, epoch=e) for e in range(3)]
    assert all(sorted(o) == list(range(16)) for o in orders)
    assert orders[0] != orders[1] and orders[1] != orders[2]
    assert orders[1] == epoch_shard_order(16, seed=5, epoch=1)
    assert orders[1] != epoch_shard_order(16, seed=6, epoch=1)
    assert epoch_shard_order(5, seed=5, epoch=3, shuffle=False) == [0, 1, 2, 3, 4]


def test_position_ids_restart_at_each_document():
    seg = np.array([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    assert position_ids_from_segments(seg).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]


def test_attention_mask_from_segments_exact():
    seg = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])
    m = attention_mask_from_segments(seg)
    assert m.shape == (2, 1, 4, 4) and m.dtype == torch.bool
    # True = blocked: future positions and other documents
    assert m[0, 0].int().tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1], [1, 1, 0, 0]]
    assert m[1, 0].int().tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    c = causal_mask(3, 4)
    assert c.shape == (3, 1, 4, 4) and torch.equal(c[2, 0], m[1, 0])


# ------------------------------------------------------------------------------------ reading, 1 process


def test_fields_exact_on_a_hand_made_sample(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=1, per_shard=2)
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0)
    (b,) = take(loader, 1)
    assert b["keys"] == ["000000-000000", "000000-000001"]
    for row, i in enumerate((0, 1)):
        ref = make_sample(0, i)
        assert b["input_ids"][row].tolist() == ref.input_ids.astype(int).tolist()
        assert b["targets"][row].tolist() == ref.targets.astype(int).tolist()  # as stored: never shifted
        assert b["segments"][row].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
        assert b["position_ids"][row].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
        assert b["doc_ids"][row] == ref.doc_ids
    # sample 0: docs (en, clone) -> (1, 0); sample 1: (clone, clone) -> (0, 0); LANGS = ["clone", "en"]
    assert b["token_lang"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [0] * 8]
    assert all(
        b[k].dtype == torch.long for k in ("input_ids", "targets", "segments", "token_lang", "position_ids")
    )
    assert b["skipped"] == 0 and loader.skipped_samples == 0


def test_epochs_visit_every_sample_once_in_a_seeded_shard_order(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=4, per_shard=3)
    loader = ShardLoader(d, 3, dp_rank=0, dp_world_size=1, seed=7, num_workers=0)
    assert loader.batches_per_epoch == 4
    batches = take(loader, 12)
    epochs = [keys_of(batches[4 * e : 4 * e + 4]) for e in range(3)]
    for e, keys in enumerate(epochs):
        assert sorted(keys) == sorted(sample_key(s, i) for s in range(4) for i in range(3))
        shards = [int(k[:6]) for k in keys[::3]]
        assert shards == epoch_shard_order(4, seed=7, epoch=e)
    assert len({tuple(k) for k in epochs}) == 3  # the order differs per epoch
    assert keys_of(
        take(ShardLoader(d, 3, dp_rank=0, dp_world_size=1, seed=7, num_workers=0), 12)
    ) == functools.reduce(operator.iadd, epochs, [])
    assert loader.state_dict()["epoch"] == 3 and loader.state_dict()["batches"] == 0


def test_incomplete_last_batch_of_a_reader_is_dropped(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=3)
    loader = ShardLoader(d, 4, dp_rank=0, dp_world_size=1, seed=1, num_workers=0)
    assert loader.batches_per_epoch == 1  # 6 samples -> one batch of 4, 2 dropped
    b0, b1 = take(loader, 2)
    order = epoch_shard_order(2, seed=1, epoch=0)
    assert b0["keys"] == [sample_key(order[0], i) for i in range(3)] + [sample_key(order[1], 0)]
    order = epoch_shard_order(2, seed=1, epoch=1)
    assert b1["keys"] == [sample_key(order[0], i) for i in range(3)] + [sample_key(order[1], 0)]


@pytest.mark.parametrize("k", [1, 3, 5, 6, 8])  # mid-shard, shard boundary, end of epoch, across the boundary
def test_resume_is_exact_without_workers(tmp_path, k):
    d = write_shards(tmp_path / "s", n_shards=4, per_shard=3)
    kw = {"dp_rank": 1, "dp_world_size": 2, "seed": 3, "num_workers": 0}
    ref = take(ShardLoader(d, 2, **kw), 10)  # 3 batches per epoch on this rank
    a = ShardLoader(d, 2, **kw)
    take(a, k)
    b = ShardLoader(d, 2, **kw)
    b.load_state_dict(a.state_dict())
    assert_same_batches(take(b, 10 - k), ref[k:])


def test_state_of_another_configuration_is_refused(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=4, per_shard=3)
    a = ShardLoader(d, 2, dp_rank=0, dp_world_size=2, seed=3, num_workers=0)
    b = ShardLoader(d, 2, dp_rank=0, dp_world_size=2, seed=4, num_workers=0)
    with pytest.raises(ValueError, match="seed"):
        b.load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------------------- bad input


def test_missing_manifest_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no manifest\.json"):
        ShardLoader(tmp_path / "empty", 2, dp_rank=0, dp_world_size=1, seed=0)


def test_shard_count_not_divisible_says_how_many_are_needed(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=6, per_shard=2)
    with pytest.raises(ValueError, match=r"6 shards .* multiple of 4 \(e\.g\. 8\)"):
        ShardLoader(d, 2, dp_rank=0, dp_world_size=2, seed=0, num_workers=2)
    ShardLoader(d, 2, dp_rank=0, dp_world_size=2, seed=0, num_workers=0)  # 2 ranks x 1 reader: 6 shards fit


def truncate_inside_sample(path: Path, index: int) -> None:
    """Cut the tar in the middle of the data of sample ``index``'s second member."""
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    m = members[4 * index + 1]
    with open(path, "r+b") as f:
        f.truncate(m.offset_data + m.size // 2)


def test_truncated_shard_raises_naming_shard_and_key(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    truncate_inside_sample(d / shard_name(1), 2)
    # the per-sample checks behind the checksum (which, on by default, would stop at the shard first)
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False,
                         verify_sha256=False)
    with pytest.raises(ShardCorruptError, match=r"shard-000001\.tar: sample 000001-000002: missing member"):
        take(loader, 4)


def test_truncated_shard_is_skipped_and_counted(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    truncate_inside_sample(d / shard_name(1), 2)
    loader = ShardLoader(
        d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False, skip_corrupt=True,
        verify_sha256=False,  # the per-sample checks behind the checksum
    )
    batches = take(loader, 6)  # 1.5 epochs
    assert [b["skipped"] for b in batches] == [0, 0, 0, 2, 0, 0]
    assert loader.skipped_samples == 2  # sample 2 (partial) and sample 3 (missing) of shard 1
    assert batches[2]["keys"] == ["000001-000000", "000001-000001"]
    pad = batches[3]
    assert pad["keys"] == [None, None] and pad["doc_ids"] == [[], []]
    assert (pad["input_ids"] == EOS).all() and (pad["targets"] == IGNORE_INDEX).all()
    assert pad["input_ids"].shape == (2, SEQ)


def flip_high_byte(shard: int, i: int, member: str) -> dict:
    """Sample (shard, i) encoded, with the high byte of token 5 of `member` set to 0xFF (a flipped byte)."""
    d = encode_sample(sample_key(shard, i), make_sample(shard, i))
    raw = bytearray(d[member])
    raw[5 * 4 + 3] = 0xFF
    d[member] = bytes(raw)
    return d


@pytest.mark.parametrize("member,message", [
    ("input_ids.bin", r"sample 000001-000002: input id 4278191105 >= the manifest's vocab_size 100000"),
    ("targets.bin", r"sample 000001-000002: target id -16776181 outside \[0, 100000\) \(and not -100\)"),
])
def test_out_of_vocabulary_ids_stop_the_reader_naming_the_sample(tmp_path, member, message):
    sample = lambda s, i: flip_high_byte(s, i, member) if (s, i) == (1, 2) else make_sample(s, i)
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4, sample=sample)
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False)
    with pytest.raises(ShardCorruptError, match=r"shard-000001\.tar: " + message):
        take(loader, 4)
    skipping = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False,
                           skip_corrupt=True)
    batches = take(skipping, 4)
    assert [b["skipped"] for b in batches] == [0, 0, 0, 1] and batches[3]["keys"] == [None, "000001-000003"]


def test_shard_cut_inside_a_header_reports_the_last_good_key(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    path = d / shard_name(1)
    with tarfile.open(path) as tf:
        first_member_of_sample_2 = tf.getmembers()[8]
    with open(path, "r+b") as f:
        f.truncate(first_member_of_sample_2.offset + 100)  # tarfile just stops here, without an error
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False,
                         verify_sha256=False)  # the per-sample checks behind the checksum
    with pytest.raises(
        ShardCorruptError, match=r"shard-000001\.tar: only 2 of 4 samples .* after sample key 000001-000001"
    ):
        take(loader, 4)
    loader = ShardLoader(
        d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False, skip_corrupt=True,
        verify_sha256=False,
    )
    assert [b["skipped"] for b in take(loader, 4)] == [0, 0, 0, 2]


def test_undecodable_sample_is_named_or_skipped(tmp_path):
    def sample(shard: int, i: int) -> dict:
        d = encode_sample(sample_key(shard, i), make_sample(shard, i))
        if (shard, i) == (0, 1):
            d["targets.bin"] = d["targets.bin"][:-4]  # one target short
        return d

    d = write_shards(tmp_path / "s", n_shards=1, per_shard=4, sample=sample)
    with pytest.raises(
        ShardCorruptError, match=r"shard-000000\.tar: sample 000000-000001: member lengths differ"
    ):
        take(ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0), 1)
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, skip_corrupt=True)
    b0, b1 = take(loader, 2)
    assert b0["keys"] == ["000000-000000", None] and b1["keys"] == ["000000-000002", "000000-000003"]
    assert loader.skipped_samples == 1


# ------------------------------------------------------------------------------------- DataLoader workers


@pytest.mark.slow
def test_two_ranks_two_workers_read_every_sample_once_per_epoch(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=8, per_shard=3)
    per_rank = []
    for r in range(2):
        loader = ShardLoader(d, 2, dp_rank=r, dp_world_size=2, seed=11, num_workers=2)
        assert loader.batches_per_epoch == 6  # 2 shards per reader -> 6 samples -> 3 batches, x 2 readers
        batches = take(loader, 12)
        per_rank.append([keys_of(batches[:6]), keys_of(batches[6:])])
    everything = sorted(sample_key(s, i) for s in range(8) for i in range(3))
    for e in range(2):
        assert sorted(per_rank[0][e] + per_rank[1][e]) == everything
        order = epoch_shard_order(8, seed=11, epoch=e)
        for r in range(2):  # the rank's shards are order[r::2]
            assert {int(k[:6]) for k in per_rank[r][e]} == set(order[r::2])
    assert per_rank[0][0] != per_rank[0][1]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_resume_is_exact_with_workers(tmp_path, workers):
    d = write_shards(tmp_path / "s", n_shards=4, per_shard=3)
    kw = {"dp_rank": 0, "dp_world_size": 2, "seed": 3, "num_workers": workers}
    n = 9  # 2 workers: per reader 1 shard of 3 samples -> 3 batches of 1, 6 per epoch (1 worker: 6 too)
    ref = take(ShardLoader(d, 1, **kw), n)
    # 1: mid-shard on reader 0 (rotation); 4: mid-shard, even; 7: across the epoch boundary (6 per epoch)
    for k in (1, 4, 7):
        a = ShardLoader(d, 1, **kw)
        take(a, k)
        b = ShardLoader(d, 1, **kw)
        b.load_state_dict(a.state_dict())
        assert_same_batches(take(b, n - k), ref[k:])


@pytest.mark.slow
def test_skipped_count_crosses_the_worker_boundary(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    truncate_inside_sample(d / shard_name(1), 2)
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=2, skip_corrupt=True,
                         verify_sha256=False)  # the per-sample count behind the checksum
    batches = take(loader, 4)  # one epoch: 2 readers x 2 batches
    assert sum(b["skipped"] for b in batches) == 2 and loader.skipped_samples == 2
    strict = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=2, verify_sha256=False)
    with pytest.raises(ShardCorruptError, match=r"shard-000001\.tar: sample 000001-000002"):
        take(strict, 4)


def test_loader_workers_ignore_preemption_signals():
    """A pre-emption signal sent to the whole process group must not kill the DataLoader workers."""
    import subprocess
    import sys

    code = ("import os, signal; from prealign_scale.data.shard_reader import _ignore_preemption_signals; "
            "_ignore_preemption_signals(0); os.kill(os.getpid(), signal.SIGTERM); "
            "os.kill(os.getpid(), signal.SIGUSR1); print('alive')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "alive"


# ------------------------------------------------------------------- shard integrity at read (issue 9, item 10)


def flip_byte_in_ids(path: Path, sample: int, token: int) -> int:
    """Change the low byte of input id `token` of sample `sample` in place (the id stays inside the
    vocabulary, so only the checksum can tell); returns the new id."""
    with tarfile.open(path) as tf:
        member = tf.getmembers()[4 * sample]  # input_ids.bin comes first
    assert member.name.endswith("input_ids.bin")
    with open(path, "r+b") as f:
        f.seek(member.offset_data + 4 * token)
        raw = bytearray(f.read(4))
        raw[0] ^= 0x01
        f.seek(member.offset_data + 4 * token)
        f.write(raw)
    return int.from_bytes(raw, "little")


def test_a_flipped_id_byte_stops_the_reader_naming_the_shard(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    new_id = flip_byte_in_ids(d / shard_name(1), sample=1, token=3)
    assert new_id < 100000  # inside the vocabulary: the per-sample checks cannot see it
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False)
    with pytest.raises(ShardCorruptError, match=rf"^{d / shard_name(1)}: sha256 [0-9a-f]{{16}}\.\.\. differs from the "
                                               r"manifest's [0-9a-f]{16}\.\.\.: the shard changed after it was built"):
        take(loader, 4)
    # with the check off the changed id is read as it is (what the check exists for)
    unchecked = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False,
                            verify_sha256=False)
    batches = take(unchecked, 4)
    assert int(batches[2]["input_ids"][1, 3]) == new_id != 1000 * 1 + 10 * 1 + 3


def test_a_flipped_id_byte_with_skip_corrupt_skips_the_whole_shard(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    flip_byte_in_ids(d / shard_name(1), sample=1, token=3)
    loader = ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, shuffle_shards=False,
                         skip_corrupt=True)
    batches = take(loader, 8)  # two epochs: the bad shard is skipped at every visit
    assert [b["skipped"] for b in batches] == [0, 0, 2, 2, 0, 0, 2, 2] and loader.skipped_samples == 8
    assert batches[2]["keys"] == [None, None] and batches[4]["keys"] == ["000000-000000", "000000-000001"]


def test_each_shard_is_hashed_once_per_reader_process(tmp_path, monkeypatch):
    import prealign_scale.data.shard_reader as reader

    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    hashed = []
    monkeypatch.setattr(reader, "file_sha256", lambda p: hashed.append(Path(p).name) or file_sha256(p))
    take(ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0), 12)  # three epochs
    assert sorted(hashed) == [shard_name(0), shard_name(1)]
    hashed.clear()
    take(ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, verify_sha256=False), 4)
    assert hashed == []


def test_a_manifest_without_checksums_needs_the_check_off(tmp_path):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=4)
    manifest = json.loads((d / "manifest.json").read_text())
    del manifest["shards"][1]["sha256"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"shards\[1\] records no sha256 .* data\.verify_sha256=false"):
        ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0)
    ShardLoader(d, 2, dp_rank=0, dp_world_size=1, seed=0, num_workers=0, verify_sha256=False)
