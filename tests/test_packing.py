"""Packing documents into samples: exact inputs/targets/segments across sample boundaries, mixture quotas."""

import numpy as np
import pytest

from prealign_scale.data import packing
from prealign_scale.data.shard_format import IGNORE_INDEX as IGN

EOS = 1


class FakeChunks:
    def __init__(self, arrays):
        self.arrays = arrays

    def get(self, name):
        return self.arrays[name]


def stream_plan(docs, seq_len, samples_per_shard, n_shards):
    """docs: [(ids, labels, switch positions)] all in one chunk, in stream order."""
    ids = np.concatenate([np.array(d[0] + [EOS]) for d in docs]).astype(np.uint32)
    lab = np.concatenate([np.array(d[1] + [EOS]) for d in docs]).astype(np.int32)
    lens = np.array([len(d[0]) + 1 for d in docs])
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    sw = np.concatenate([np.array(d[2], dtype=np.int64) + s for d, s in zip(docs, starts)])
    plan = packing.Plan(chunk_names=["c"], doc_chunk=np.zeros(len(docs), np.int32), doc_start=starts,
                        doc_len=lens, doc_lang=np.array([0, 1, 0], np.int32)[: len(docs)],
                        doc_ids=[f"d{i}" for i in range(len(docs))], languages=["en", "xx"], seq_len=seq_len,
                        n_shards=n_shards, samples_per_shard=samples_per_shard)
    return plan, FakeChunks({"c": {"ids": ids, "labels": lab, "switch_pos": sw}})


# Labels as the builder stores them: a document's first label is IGN (no prediction across documents).
# doc0: word at positions 1-2 switched (100, 101 replace original first token 7);
# doc1: switched word at its very first position (200 replaces 9); doc2: nothing switched.
DOCS = [
    ([5, 100, 101, 6], [IGN, 7, IGN, 6], [1]),
    ([200, 8], [IGN, 8], [0]),
    ([10, 11, 12], [IGN, 11, 12], []),
]


def test_switch_at_sample_end_and_start():
    plan, chunks = stream_plan(DOCS, seq_len=5, samples_per_shard=1, n_shards=2)
    s0 = packing.shard_samples(plan, 0, chunks)[0]
    s1 = packing.shard_samples(plan, 1, chunks)[0]
    # sample 0 ends with doc0's EOS, whose target is IGN: the next document (starting sample 1 with a
    # switched word) is not predicted across the boundary.
    assert s0.input_ids.tolist() == [5, 100, 101, 6, EOS]
    assert s0.targets.tolist() == [7, IGN, 6, EOS, IGN]
    assert s0.segments.tolist() == [0, 0, 0, 0, 0] and s0.doc_ids == ["d0"] and s0.langs == ["en"]
    assert s0.switched_words == 1
    assert s1.input_ids.tolist() == [200, 8, EOS, 10, 11]
    assert s1.targets.tolist() == [8, EOS, IGN, 11, 12]
    assert s1.segments.tolist() == [0, 0, 0, 1, 1]
    assert s1.doc_ids == ["d1", "d2"] and s1.langs == ["xx", "en"] and s1.switched_words == 1


def test_switched_word_split_across_samples():
    # seq_len 2: sample 0 = [5, 100] (the switched word starts at its end), sample 1 = [101, 6] (its tail)
    plan, chunks = stream_plan(DOCS, seq_len=2, samples_per_shard=5, n_shards=1)
    samples = packing.shard_samples(plan, 0, chunks)
    assert [s.input_ids.tolist() for s in samples[:2]] == [[5, 100], [101, 6]]
    assert [s.targets.tolist() for s in samples[:2]] == [[7, IGN], [6, EOS]]
    assert [s.switched_words for s in samples] == [1, 0, 1, 0, 0]


def test_switch_at_sample_start_mid_document():
    # seq_len 2 on doc [5, 6, 100, 101, 7] with the word at positions 2-3 switched (original first token 9):
    # sample 1 starts with the switched word; sample 0's last target is the original token, nothing is lost.
    docs = [([5, 6, 100, 101, 7], [IGN, 6, 9, IGN, 7], [2])]
    plan, chunks = stream_plan(docs, seq_len=2, samples_per_shard=2, n_shards=1)
    s0, s1 = packing.shard_samples(plan, 0, chunks)
    assert (s0.input_ids.tolist(), s0.targets.tolist(), s0.switched_words) == ([5, 6], [6, 9], 0)
    assert (s1.input_ids.tolist(), s1.targets.tolist(), s1.switched_words) == ([100, 101], [IGN, 7], 1)


def test_shard_layout_equal_shards_multiple():
    assert packing.shard_layout(1003, 100, 4) == (8, 125, 3)
    assert packing.shard_layout(10, 100, 4) == (4, 2, 2)
    with pytest.raises(packing.MixtureError, match="shard_multiple=8"):
        packing.shard_layout(5, 100, 8)


def lang_docs(lang, lens):
    lens = np.array(lens)
    return packing.LangDocs(lang, ["c"] * lens.size, np.concatenate(([0], np.cumsum(lens)[:-1])), lens,
                            [f"{lang}/{i}" for i in range(lens.size)])


def test_mixture_quotas():
    langs = {"en": lang_docs("en", [100] * 50), "de": lang_docs("de", [100] * 3)}  # 5000 vs 300 tokens
    r = packing.mixture_quotas(langs, {"en": 0.9, "de": 0.1}, None)
    # de limits the mixture: T = 300 / 0.1 = 3000 -> en gets 2700 tokens = 27 docs, de all 3
    assert (r["en"]["docs"], r["en"]["tokens"], r["de"]["docs"], r["de"]["tokens"]) == (27, 2700, 3, 300)
    r = packing.mixture_quotas(langs, {"en": 0.9, "de": 0.1}, 2000)
    assert (r["en"]["docs"], r["de"]["docs"]) == (18, 2)
    with pytest.raises(packing.MixtureError, match="de: needs 400, has 300"):
        packing.mixture_quotas(langs, {"en": 0.9, "de": 0.1}, 4000)
