"""The phase-1 dictionary loader: rank partition, determinism, exact resume, exact padding/mask/targets."""

from __future__ import annotations

import pytest
import torch

from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.data.dict_loader import DictionaryLoader, collate_words, epoch_permutation

PAD = 0


def make_table(n: int, heldout_every: int = 0) -> AlignmentTable:
    """Entry i: word lengths 1 + i % 3 and 2 + i % 2; every fifth entry has a third word."""
    entries = []
    for i in range(n):
        langs, tokens = (
            ["en", "xx"],
            [
                tuple(range(100 * i + 1, 100 * i + 2 + i % 3)),
                tuple(range(100 * i + 50, 100 * i + 52 + i % 2)),
            ],
        )
        if i % 5 == 0:
            langs.append("yy")
            tokens.append((100 * i + 90,))
        split = HELDOUT if heldout_every and i % heldout_every == 0 else ALIGN
        entries.append(
            Entry(
                id=1000 + i,
                words=tuple(f"w{i}{l}" for l in langs),
                langs=tuple(langs),
                tokens=tuple(tokens),
                split=split,
            )
        )
    return AlignmentTable(entries, {"vocab_size": 10**5})


def take(loader, n):
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def entries_of(batch) -> list[int]:
    return list(dict.fromkeys(batch["entry_ids"].tolist()))  # in order, without repeats


def same(a: dict, b: dict) -> bool:
    return (
        all(
            torch.equal(a[k], b[k])
            for k in ("input_ids", "attention_mask", "position_ids", "targets", "entry_ids", "lengths")
        )
        and a["word_langs"] == b["word_langs"]
    )


def test_collate_words_exact():
    e1 = Entry(id=7, words=("a", "b"), langs=("en", "xx"), tokens=((11, 12, 13), (21,)))
    e2 = Entry(id=9, words=("c", "d", "e"), langs=("en", "xx", "yy"), tokens=((31, 32), (41,), (51, 52)))
    b = collate_words([e1, e2], pad_id=PAD)
    assert b["input_ids"].tolist() == [[11, 12, 13], [21, 0, 0], [31, 32, 0], [41, 0, 0], [51, 52, 0]]
    assert b["attention_mask"].tolist() == [
        [True] * 3,
        [True, False, False],
        [True, True, False],
        [True, False, False],
        [True, True, False],
    ]
    assert b["position_ids"].tolist() == [[0, 1, 2]] * 5
    assert b["targets"].tolist() == [
        [12, 13, -100],
        [-100] * 3,
        [32, -100, -100],
        [-100] * 3,
        [52, -100, -100],
    ]
    assert b["entry_ids"].tolist() == [7, 7, 9, 9, 9]
    assert b["lengths"].tolist() == [3, 1, 2, 1, 2]
    assert b["word_langs"] == ["en", "xx", "en", "xx", "yy"]
    assert b["input_ids"].dtype == torch.long and b["attention_mask"].dtype == torch.bool


def test_position_ids_do_not_depend_on_the_batch():
    e = Entry(id=1, words=("a", "b"), langs=("en", "xx"), tokens=((5, 6), (7, 8)))
    long = Entry(id=2, words=("c", "d"), langs=("en", "xx"), tokens=((1, 2, 3, 4), (9,)))
    alone, mixed = collate_words([e], PAD), collate_words([long, e], PAD)
    assert alone["position_ids"][0, :2].tolist() == mixed["position_ids"][2, :2].tolist() == [0, 1]
    assert mixed["input_ids"][2].tolist() == [
        5,
        6,
        PAD,
        PAD,
    ]  # right padding: real tokens keep positions 0, 1


def test_ranks_partition_each_global_step_and_epoch():
    table = make_table(23)
    loaders = [DictionaryLoader(table, 3, dp_rank=r, dp_world_size=2, seed=4, pad_id=PAD) for r in range(2)]
    assert loaders[0].steps_per_epoch == 3  # 23 // 6; 5 entries dropped per epoch
    batches = [take(ld, 6) for ld in loaders]
    for epoch in range(2):
        perm = epoch_permutation(23, seed=4, epoch=epoch)
        ids = [1000 + int(i) for i in perm]
        seen = []
        for step in range(3):
            r0, r1 = (entries_of(batches[r][3 * epoch + step]) for r in range(2))
            assert r0 == ids[6 * step : 6 * step + 3] and r1 == ids[6 * step + 3 : 6 * step + 6]
            seen += r0 + r1
        assert len(set(seen)) == 18
    assert entries_of(batches[0][0]) != entries_of(batches[0][3])  # epochs differ


def test_rows_carry_every_word_of_their_entries():
    table = make_table(10)
    by_id = {e.id: e for e in table.entries}
    (b,) = take(DictionaryLoader(table, 4, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD), 1)
    row = 0
    for eid in entries_of(b):
        for lang, toks in zip(by_id[eid].langs, by_id[eid].tokens):
            assert b["word_langs"][row] == lang and b["lengths"][row] == len(toks)
            assert b["input_ids"][row, : len(toks)].tolist() == list(toks)
            row += 1
    assert row == b["input_ids"].shape[0]


def test_deterministic_and_seed_dependent():
    table = make_table(20)
    kw = {"dp_rank": 1, "dp_world_size": 2, "pad_id": PAD}
    a, b = (
        take(DictionaryLoader(table, 2, seed=1, **kw), 8),
        take(DictionaryLoader(table, 2, seed=1, **kw), 8),
    )
    assert all(same(x, y) for x, y in zip(a, b))
    c = take(DictionaryLoader(table, 2, seed=2, **kw), 8)
    assert not all(same(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("k", [1, 4, 5, 7])  # mid-epoch, end of epoch (5 steps), across the boundary
def test_resume_is_exact(k):
    table = make_table(20)
    kw = {"dp_rank": 1, "dp_world_size": 2, "seed": 9, "pad_id": PAD}
    ref = take(DictionaryLoader(table, 2, **kw), 11)
    a = DictionaryLoader(table, 2, **kw)
    take(a, k)
    assert a.state_dict()["epoch"] == k // 5 and a.state_dict()["step"] == k % 5
    b = DictionaryLoader(table, 2, **kw)
    b.load_state_dict(a.state_dict())
    assert all(same(x, y) for x, y in zip(take(b, 11 - k), ref[k:]))
    assert same(b.batch_at(0, 3), ref[3])


def test_state_of_another_configuration_is_refused():
    table = make_table(20)
    a = DictionaryLoader(table, 2, dp_rank=0, dp_world_size=2, seed=9, pad_id=PAD)
    b = DictionaryLoader(table, 2, dp_rank=0, dp_world_size=4, seed=9, pad_id=PAD)
    with pytest.raises(ValueError, match="dp_world_size"):
        b.load_state_dict(a.state_dict())


def test_split_and_max_word_tokens_select_entries():
    table = make_table(30, heldout_every=3)  # entries 0, 3, 6, ... are held out
    held = DictionaryLoader(table, 10, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD, split=HELDOUT)
    assert {e.id for e in held.entries} == {1000 + i for i in range(0, 30, 3)}
    short = DictionaryLoader(table, 2, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD, max_word_tokens=2)
    # words have 1 + i % 3 and 2 + i % 2 tokens: entries with i % 3 == 2 or i odd are too long
    assert {e.id for e in short.entries} == {1000 + i for i in range(30) if i % 3 in (1,) and i % 2 == 0}
    assert short.dropped_entries == 20 - len(short.entries)


def test_too_small_table_is_an_error():
    table = make_table(7)
    with pytest.raises(ValueError, match=r"'align' has 7 entries, fewer than one global step of .* = 8"):
        DictionaryLoader(table, 4, dp_rank=0, dp_world_size=2, seed=0, pad_id=PAD)


# --- align.word_bos: a BOS before every word ------------------------------------------------------------------
BOS = 3


def test_collate_words_with_bos_exact():
    """[bos, w1..wn] rows: positions 0..n, every word token a target, word_mask = the word's tokens only."""
    e1 = Entry(id=7, words=("a", "b"), langs=("en", "xx"), tokens=((11, 12, 13), (21,)))
    e2 = Entry(id=9, words=("c", "d"), langs=("en", "xx"), tokens=((31, 32), (41,)))
    b = collate_words([e1, e2], pad_id=PAD, bos_id=BOS)
    assert b["input_ids"].tolist() == [[3, 11, 12, 13], [3, 21, 0, 0], [3, 31, 32, 0], [3, 41, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3]] * 4
    assert b["targets"].tolist() == [
        [11, 12, 13, -100],
        [21, -100, -100, -100],
        [31, 32, -100, -100],
        [41, -100, -100, -100],
    ]
    assert b["attention_mask"].tolist() == [[True] * 4, [True, True, False, False], [True, True, True, False],
                                            [True, True, False, False]]
    assert b["word_mask"].tolist() == [[False, True, True, True], [False, True, False, False],
                                       [False, True, True, False], [False, True, False, False]]
    assert b["lengths"].tolist() == [4, 2, 3, 2]  # input tokens, the BOS included
    assert b["entry_ids"].tolist() == [7, 7, 9, 9]


def test_with_bos_every_word_token_is_an_lm_target_and_without_only_the_later_ones():
    loader = DictionaryLoader(make_table(40), 6, dp_rank=0, dp_world_size=1, seed=3, pad_id=PAD, bos_id=BOS)
    plain = DictionaryLoader(make_table(40), 6, dp_rank=0, dp_world_size=1, seed=3, pad_id=PAD)
    for b, p in zip(take(loader, 5), take(plain, 5)):
        word_tokens = int(p["lengths"].sum())
        assert int((b["targets"] != -100).sum()) == word_tokens == int(b["word_mask"].sum())
        assert int((p["targets"] != -100).sum()) == word_tokens - len(p["lengths"])  # no loss on a first token
        assert torch.equal(b["targets"][b["targets"] != -100], b["input_ids"][b["word_mask"]])  # the words' ids
        assert torch.equal(p["word_mask"], p["attention_mask"])  # without BOS: every real token is the word
        assert torch.equal(b["input_ids"][b["word_mask"]], p["input_ids"][p["word_mask"]])  # same words, same order


def test_bos_row_counts_against_max_word_tokens_and_is_in_the_state_fingerprint():
    table = make_table(30)  # words of up to 3 tokens
    plain = DictionaryLoader(table, 2, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD, max_word_tokens=3)
    bos = DictionaryLoader(table, 2, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD, max_word_tokens=3,
                           bos_id=BOS)
    assert plain.dropped_entries == 0
    assert bos.dropped_entries == sum(1 for e in table.entries if max(map(len, e.tokens)) == 3)
    with pytest.raises(ValueError, match="bos_id"):
        DictionaryLoader(table, 2, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD).load_state_dict(
            DictionaryLoader(table, 2, dp_rank=0, dp_world_size=1, seed=0, pad_id=PAD, bos_id=BOS).state_dict())
