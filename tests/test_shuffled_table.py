"""The shuffled-dictionary control (issue 10, item 11): the same words as the real table, paired at random.

Asserted: the source sides and the target sides are the same multisets as the original's; no align entry keeps
its own target side; held-out entries are untouched; the pairing is a pure function of the seed; the CLI writes
a loadable table and refuses bad input with one line and exit 2."""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

import pytest
from reliability_cases import exit_line, record_case

from prealign_scale.alignment.shuffled import shuffle_pairs
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry

REPO = Path(__file__).resolve().parents[1]


def make_table(n_align: int = 12, n_heldout: int = 3) -> AlignmentTable:
    entries = []
    for i in range(n_align + n_heldout):
        # some entries have two target words (many-to-one merged entries), some two source words
        words, langs, tokens = [f"en{i}"], ["en"], [(10 + i,)]
        if i % 4 == 1:
            words, langs, tokens = words + [f"en{i}b"], langs + ["en"], tokens + [(200 + i,)]
        words, langs, tokens = words + [f"es{i}"], langs + ["es"], tokens + [(500 + i, 900)]
        if i % 3 == 2:
            words, langs, tokens = words + [f"es{i}b"], langs + ["es"], tokens + [(700 + i,)]
        entries.append(Entry(i, tuple(words), tuple(langs), tuple(tokens),
                             HELDOUT if i >= n_align else ALIGN))
    return AlignmentTable(entries, {"source_lang": "en", "kind": "dictionary", "coverage": {"x": 1}})


def sides(entry: Entry, lang_is_source: bool):
    return tuple((w, t) for w, lang, t in zip(entry.words, entry.langs, entry.tokens)
                 if (lang == "en") == lang_is_source)


def test_same_words_paired_at_random():
    table = make_table()
    out = shuffle_pairs(table, seed=3)
    a, b = table.part(ALIGN), out.part(ALIGN)
    assert [e.id for e in a] == [e.id for e in b]
    assert [sides(e, True) for e in a] == [sides(e, True) for e in b]  # each entry keeps its source words
    assert Counter(sides(e, False) for e in a) == Counter(sides(e, False) for e in b)  # same target sides
    assert all(sides(x, False) != sides(y, False) for x, y in zip(a, b))  # no entry keeps its own pair
    assert out.part(HELDOUT) == table.part(HELDOUT)
    assert out.meta["shuffled"]["from_entries_sha256"] == table.sha256()
    assert out.meta["shuffled"]["entries_repaired"] == len(a) and out.meta["coverage"] is None
    assert table.meta["coverage"] == {"x": 1}  # the input is not modified


def test_pure_function_of_the_seed():
    table = make_table(n_align=40)
    assert shuffle_pairs(table, 5).entries == shuffle_pairs(table, 5).entries
    assert shuffle_pairs(table, 5).entries != shuffle_pairs(table, 6).entries


def test_two_entries_swap_and_one_is_refused():
    two = shuffle_pairs(make_table(n_align=2, n_heldout=0), 0).entries
    assert sides(two[0], False) == (("es1", (501, 900)),) and sides(two[1], False)[0][0] == "es0"
    with pytest.raises(ValueError, match="at least 2"):
        shuffle_pairs(make_table(n_align=1, n_heldout=2), 0)
    with pytest.raises(ValueError, match="source_lang"):
        shuffle_pairs(AlignmentTable(make_table().entries, {}), 0)


def test_cli_writes_a_table_and_refuses_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    main = importlib.import_module("data_tools.shuffle_table").main
    make_table().save(tmp_path / "table")
    assert main(["--table", str(tmp_path / "table"), "--out", str(tmp_path / "shuf"), "--seed", "1"]) == 0
    assert AlignmentTable.load(tmp_path / "shuf").entries == shuffle_pairs(make_table(), 1).entries
    capsys.readouterr()
    for args, expected, case in [
        (["--table", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "no alignment table here",
         "shuffle_table.py on a folder with no table"),
        (["--table", str(tmp_path / "table"), "--out", str(tmp_path / "table")], "is the input table",
         "shuffle_table.py --out the input table"),
    ]:
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
        record_case("data tools", case, "exit 2, one line naming the folder", exit_line(rc, err.strip()))
