"""English-Clone: the two-language tokenizer view, the disjoint split, the identity dictionary, the tool."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from prealign_scale.alignment.clone import (
    CLONE_MARK,
    CloneTokenizer,
    build_english_clone,
    candidate_ids,
    make_clone_table,
    split_corpus,
    token_frequencies,
)
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry, split_of
from prealign_scale.text.corpus import Document, iter_documents
from prealign_scale.text.tokenizer import tokenizer_sha256, train_bpe

ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / "data" / "embedded" / "kjv_train.jsonl.gz"


def kjv_records(n: int) -> list[dict]:
    out = []
    with gzip.open(KJV, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clonetok")
    train_bpe([r["text"] for r in kjv_records(40)], d, vocab_size=400)
    return d


@pytest.fixture(scope="module")
def base(tok_dir):
    from prealign_scale.text.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def ct(base) -> CloneTokenizer:
    return CloneTokenizer(base)


# ---------------------------------------------------------------------------------------------- tokenizer
def test_sizes_and_specials(ct, base):
    assert len(base) == 400
    assert (ct.offset, ct.vocab_size, len(ct)) == (400, 800, 800)
    assert ct.special_ids == frozenset({0, 1, 2, 3})


def test_encode_clone_is_shifted_english_with_specials_unshifted(ct, base):
    text = "In the beginning<|eos|> God created the heaven."
    en = ct.encode(text, "en")
    assert en == base.encode(text, add_special_tokens=False)
    assert 1 in en  # <|eos|> is in the text
    cl = ct.encode(text, "clone")
    assert cl == [i if i in (0, 1, 2, 3) else i + 400 for i in en]
    assert cl[en.index(1)] == 1
    assert [ct.is_clone(i) for i in cl] == [i != 1 for i in en]
    with pytest.raises(ValueError, match="lang must be 'en' or 'clone'"):
        ct.encode(text, "de")


def test_decode_round_trip_and_marker(ct):
    text = "And God said, Let there be light: and there was light."
    assert ct.decode(ct.encode(text, "en")) == text
    assert ct.decode(ct.encode(text, "clone"), mark=False) == text
    assert ct.decode(ct.encode(" the house", "clone")) == " §the §house"
    mixed = ct.encode("In the", "en") + ct.encode(" house", "clone") + ct.encode(" of God", "en")
    assert ct.decode(mixed) == "In the §house of God"
    # specials between Clone words are shown as they are and break the Clone run
    ids = ct.encode(" light", "clone") + [1] + ct.encode(" light", "clone")
    assert ct.decode(ids) == " §light<|eos|> §light"
    assert CLONE_MARK == "§"


def test_to_clone_to_english(ct):
    ids = [0, 5, 399, 1, 123, 405, 3]
    assert ct.to_clone(ids) == [0, 405, 799, 1, 523, 405, 3]  # specials stay; Clone ids stay Clone
    assert ct.to_english([0, 405, 799, 1, 523, 5, 3]) == [0, 5, 399, 1, 123, 5, 3]
    assert ct.to_english(ct.to_clone(range(400))) == list(range(400))
    assert ct.clone_map.tolist() == ct.to_clone(range(400))
    assert (ct.is_clone(399), ct.is_clone(400), ct.is_clone(799)) == (False, True, True)
    for bad in (-1, 800):
        with pytest.raises(
            ValueError, match=rf"token id {bad} is outside the English-Clone vocabulary \[0, 800\)"
        ):
            ct.to_clone([bad])
        with pytest.raises(ValueError, match="outside"):
            ct.decode([bad])


# ---------------------------------------------------------------------------------------------- corpus split
def make_docs(n: int) -> list[Document]:
    rng = np.random.default_rng(7)
    return [
        Document(index=i, text="x" * int(rng.integers(10, 200)), source="mem", lineno=i + 1) for i in range(n)
    ]


def test_split_disjoint_deterministic_near_fraction():
    docs = make_docs(300)
    en, cl = split_corpus(docs, 0.1, seed=3)
    assert {d.index for d in en}.isdisjoint({d.index for d in cl})
    assert sorted(d.index for d in en + cl) == list(range(300))
    assert [d.index for d in en] == sorted(d.index for d in en)  # input order kept
    total = sum(len(d.text) for d in docs)
    clone_chars = sum(len(d.text) for d in cl)
    assert abs(clone_chars - 0.1 * total) <= max(len(d.text) for d in docs) / 2
    _, cl2 = split_corpus(docs, 0.1, seed=3)
    assert [d.index for d in cl2] == [d.index for d in cl]
    _, cl_other = split_corpus(docs, 0.1, seed=4)
    assert [d.index for d in cl_other] != [d.index for d in cl]


def test_split_depends_on_doc_index_not_position():
    docs = make_docs(100)
    _, cl = split_corpus(docs, 0.2, seed=0)
    _, cl_rev = split_corpus(list(reversed(docs)), 0.2, seed=0)
    assert sorted(d.index for d in cl_rev) == [d.index for d in cl]


def test_split_edges_and_errors():
    docs = make_docs(20)
    assert split_corpus(docs, 0.0, 0) == (docs, [])
    assert split_corpus(docs, 1.0, 0) == ([], docs)
    en, cl = split_corpus(["aaaa", "bb", "cccccc"], 0.5, 1)  # plain strings: index = position
    assert sorted(en + cl) == ["aaaa", "bb", "cccccc"]
    with pytest.raises(ValueError, match=r"clone_fraction must be in \[0, 1\]"):
        split_corpus(docs, 1.5, 0)
    dup = [Document(0, "a", "f1", 1), Document(0, "b", "f2", 1)]
    with pytest.raises(ValueError, match="document indices are not unique"):
        split_corpus(dup, 0.5, 0)


def test_split_real_corpus_fraction():
    docs = [Document(i, r["text"], "kjv", i + 1) for i, r in enumerate(kjv_records(400))]
    _, cl = split_corpus(docs, 0.1, seed=0)
    share = sum(len(d.text) for d in cl) / sum(len(d.text) for d in docs)
    assert abs(share - 0.1) < 0.005


# ---------------------------------------------------------------------------------------------- dictionary
def test_token_frequencies_match_counter(base, ct):
    texts = [r["text"] for r in kjv_records(5)] + ["", "<|eos|>"]
    ref = Counter(i for t in texts for i in base.encode(t, add_special_tokens=False))
    freqs = token_frequencies(base, texts, batch_size=3)
    assert freqs.shape == (400,) and freqs.dtype == np.int64
    assert freqs.tolist() == [ref.get(i, 0) for i in range(400)]
    assert token_frequencies(ct, texts).tolist() == freqs.tolist()


def test_candidates_are_word_like_non_special(base):
    cands = dict(candidate_ids(base))
    assert not set(cands) & {0, 1, 2, 3}
    the = base.encode(" the", add_special_tokens=False)
    assert len(the) == 1 and cands[the[0]] == "the"
    comma = base.encode(",", add_special_tokens=False)[0]
    space = base.encode(" ", add_special_tokens=False)[0]
    assert comma not in cands and space not in cands
    assert all(any(c.isalpha() for c in w) and w == w.strip() for w in cands.values())


def test_top_n_table_exact(base, ct):
    w = {word: base.encode(word, add_special_tokens=False) for word in (" the", " God", " and", " unto")}
    assert all(len(v) == 1 for v in w.values())
    t_the, t_god, t_and, t_unto = (w[k][0] for k in (" the", " God", " and", " unto"))
    comma = base.encode(",", add_special_tokens=False)[0]
    freqs = np.zeros(400, dtype=np.int64)
    freqs[[1, comma, t_the, t_god, t_and, t_unto]] = [10**6, 10**5, 50, 40, 40, 3]  # eos and "," excluded
    table = make_clone_table(ct, freqs=freqs, top_n=3, heldout_fraction=0.5, seed=9, tokenizer_sha256="abc")
    chosen = sorted([t_the, t_god, t_and])  # ties (40) broken by lower id; only 3 of them
    words = {t_the: "the", t_god: "God", t_and: "and"}
    assert table.entries == [
        Entry(
            id=i,
            words=(words[t], "§" + words[t]),
            langs=("en", "clone"),
            tokens=((t,), (t + 400,)),
            split=split_of(str(t), 9, 0.5),
        )
        for i, t in enumerate(chosen)
    ]
    import hashlib

    assert table.meta == {
        "kind": "clone",
        "vocab_size": 800,
        "vocab_offset": 400,
        "source_lang": "en",
        "selection": {"by": "top_n", "value": 3},
        "candidates": len(candidate_ids(base)),
        "tokenizer_sha256": "abc",
        "dictionary_sha256": hashlib.sha256(",".join(map(str, chosen)).encode()).hexdigest(),
        "seed": 9,
        "heldout_fraction": 0.5,
        "coverage": None,
        "problems": 0,
    }
    assert table.vocab_offset == 400
    # a tie at the cut-off: top_n=2 takes the lower id of " God"/" and"
    two = make_clone_table(ct, freqs=freqs, top_n=2)
    assert [e.tokens[0][0] for e in two.entries] == sorted([t_the, min(t_god, t_and)])


def test_top_n_larger_than_candidates_takes_all(base):
    n = len(candidate_ids(base))
    table = make_clone_table(base, freqs=np.zeros(400, dtype=np.int64), top_n=10_000)
    assert [e.tokens[0][0] for e in table.entries] == [t for t, _ in candidate_ids(base)]
    assert len(table.entries) == n


def test_fraction_table_deterministic_by_seed(base):
    cands = dict(candidate_ids(base))
    a = make_clone_table(base, fraction=0.25, seed=1)
    b = make_clone_table(base, fraction=0.25, seed=1)
    c = make_clone_table(base, fraction=0.25, seed=2)
    ids_a = [e.tokens[0][0] for e in a.entries]
    assert a.entries == b.entries and a.meta == b.meta
    assert ids_a != [e.tokens[0][0] for e in c.entries]
    assert len(ids_a) == round(0.25 * len(cands)) and ids_a == sorted(ids_a)
    assert set(ids_a) <= set(cands)
    assert all(e.words == (cands[e.tokens[0][0]], "§" + cands[e.tokens[0][0]]) for e in a.entries)
    assert all(e.tokens[1] == (e.tokens[0][0] + 400,) for e in a.entries)
    assert a.meta["selection"] == {"by": "fraction", "value": 0.25}


def test_heldout_split_deterministic(base):
    full = make_clone_table(base, fraction=1.0, seed=5, heldout_fraction=0.3)
    assert [e.split for e in full.entries] == [split_of(str(e.tokens[0][0]), 5, 0.3) for e in full.entries]
    n_held = len(full.part(HELDOUT))
    assert 0.2 * len(full.entries) < n_held < 0.4 * len(full.entries)
    # the split of an id depends only on (id, seed, fraction), not on which other ids were selected
    sub = make_clone_table(base, fraction=0.5, seed=5, heldout_fraction=0.3)
    split_full = {e.tokens[0][0]: e.split for e in full.entries}
    assert all(split_full[e.tokens[0][0]] == e.split for e in sub.entries)
    other_seed = make_clone_table(base, fraction=1.0, seed=6, heldout_fraction=0.3)
    assert [e.split for e in other_seed.entries] != [e.split for e in full.entries]
    none_held = make_clone_table(base, fraction=1.0, seed=5, heldout_fraction=0.0)
    assert {e.split for e in none_held.entries} == {ALIGN}


def test_table_errors_and_round_trip(base, tmp_path):
    with pytest.raises(ValueError, match="exactly one of top_n or fraction"):
        make_clone_table(base)
    with pytest.raises(ValueError, match="exactly one of top_n or fraction"):
        make_clone_table(base, freqs=np.zeros(400), top_n=3, fraction=0.5)
    with pytest.raises(ValueError, match="top_n needs token frequencies"):
        make_clone_table(base, top_n=3)
    with pytest.raises(ValueError, match=r"freqs must have shape \(400,\)"):
        make_clone_table(base, freqs=np.zeros(800), top_n=3)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        make_clone_table(base, fraction=0.0)
    with pytest.raises(ValueError, match="chose no token ids"):
        make_clone_table(base, fraction=1e-6)
    t = make_clone_table(base, fraction=0.3, seed=4)
    t.save(tmp_path / "table")
    back = AlignmentTable.load(tmp_path / "table")
    assert back.entries == t.entries and back.meta == t.meta


# ---------------------------------------------------------------------------------------------- the tool
def test_make_english_clone_tool(tok_dir, tmp_path):
    corpus = tmp_path / "c.jsonl.gz"
    recs = kjv_records(60)
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    tool = ROOT / "data_tools" / "make_english_clone.py"
    r = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--corpus",
            str(corpus),
            "--tokenizer",
            str(tok_dir),
            "--out",
            str(out),
            "--clone-fraction",
            "0.2",
            "--top-n",
            "50",
            "--seed",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    en = [(d.text, d.fields) for d in iter_documents(out / "en.jsonl.gz")]
    cl = [(d.text, d.fields) for d in iter_documents(out / "clone.jsonl.gz")]
    by_text = {r["text"]: {k: v for k, v in r.items() if k != "text"} for r in recs}
    assert sorted(t for t, _ in en + cl) == sorted(by_text)  # disjoint, together the whole corpus
    assert all(fields == by_text[t] for t, fields in en + cl)  # original fields kept
    share = sum(len(t) for t, _ in cl) / sum(len(t) for t, _ in en + cl)
    assert abs(share - 0.2) < 0.02
    table = AlignmentTable.load(out / "table")
    assert len(table.entries) == 50 and table.meta["vocab_offset"] == 400
    assert table.meta["tokenizer_sha256"] == tokenizer_sha256(tok_dir)
    # top-50 by frequency counted on the English part
    freqs = token_frequencies(_load(tok_dir), [t for t, _ in en])
    expect = make_clone_table(
        _load(tok_dir), freqs=freqs, top_n=50, seed=1, tokenizer_sha256=tokenizer_sha256(tok_dir)
    )
    assert table.entries == expect.entries
    assert f"clone.jsonl.gz  {len(cl):7d} docs" in r.stdout
    assert "table/: 50 entries" in r.stdout
    # the same call again, in-process: byte-identical files
    s = build_english_clone(corpus, tok_dir, tmp_path / "again", clone_fraction=0.2, top_n=50, seed=1)
    for name in ("en.jsonl.gz", "clone.jsonl.gz", "table/entries.jsonl", "table/meta.json"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert s["docs"] == {"en": len(en), "clone": len(cl)}
    assert s["table_entries"] == 50


def _load(tok_dir):
    from prealign_scale.text.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)


def test_make_english_clone_bad_input(tok_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b c"}\n{"text": 1}\n')
    tool = ROOT / "data_tools" / "make_english_clone.py"
    r = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--corpus",
            str(bad),
            "--tokenizer",
            str(tok_dir),
            "--out",
            str(tmp_path / "o"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and f"{bad}:2: text field 'text' must be a string" in r.stderr
    with pytest.raises(FileNotFoundError, match="not a tokenizer folder"):
        build_english_clone(bad, tmp_path, tmp_path / "o2", fraction=0.5)
    one = tmp_path / "one.txt"
    one.write_text("just one document\n")
    with pytest.raises(ValueError, match="give an empty English part"):
        build_english_clone(one, tok_dir, tmp_path / "o3", clone_fraction=0.9, fraction=0.5)
