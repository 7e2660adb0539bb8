"""Input-only code-switching: exact input ids and labels on hand-made documents (METHOD.md §3)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from prealign_scale.alignment.codeswitch import (
    CloneSwitcher,
    DictionarySwitcher,
    switch_document,
)
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.data.shard_format import IGNORE_INDEX
from prealign_scale.data.word_encoder import RustWordEncoder
from prealign_scale.text.tokenizer import mid_sentence_ids, train_bpe

ROOT = Path(__file__).resolve().parents[1]
IGN = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    with gzip.open(ROOT / "data/embedded/kjv_train.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(300), f)]
    return train_bpe(texts, tmp_path_factory.mktemp("tok"), vocab_size=600)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def make_table(tok, pairs, split=ALIGN):
    entries = [
        Entry(i, (s, t), ("en", "de"), (tuple(mid_sentence_ids(tok, s)), tuple(mid_sentence_ids(tok, t))), split)
        for i, (s, t) in enumerate(pairs)
    ]
    return AlignmentTable(entries, {"kind": "dictionary", "source_lang": "en"})


def run(tok, text, switcher, p=1.0, seed=0, doc_id="en/0"):
    e = RustWordEncoder(tok.backend_tokenizer).encode(text)
    return switch_document(e.ids, e.word_ids, e.word, switcher, p, seed, doc_id)


def test_one_token_word_switched_to_multi_token_target(tok):
    # " house" is one token; its translation " Haus" is three: the labels keep the ORIGINAL first token and
    # ignore the rest of the switched word, so the model never learns to emit switched tokens.
    sw = DictionarySwitcher(make_table(tok, [("house", "Haus")]), tok.backend_tokenizer, "en")
    d = run(tok, "the house is red", sw)
    the, house, haus, is_, red = (enc(tok, x) for x in ("the", " house", " Haus", " is", " red"))
    assert len(house) == 1 and len(haus) == 3
    assert d.input_ids.tolist() == the + haus + is_ + red
    assert d.labels.tolist() == the + [house[0], IGN, IGN] + is_ + red
    assert d.switch_starts.tolist() == [len(the)]


def test_multi_token_word_switched_to_one_token_target(tok):
    # " Hausboot" (6 tokens) -> " king" (1 token): the next word is predicted from the switched context.
    sw = DictionarySwitcher(make_table(tok, [("Hausboot", "king")]), tok.backend_tokenizer, "en")
    d = run(tok, "the Hausboot is red", sw)
    boot, king = enc(tok, " Hausboot"), enc(tok, " king")
    assert len(boot) == 6 and len(king) == 1
    assert d.input_ids.tolist() == enc(tok, "the") + king + enc(tok, " is red")
    assert d.labels.tolist() == enc(tok, "the") + [boot[0]] + enc(tok, " is red")


def test_punctuation_glued_and_upper_case(tok):
    # "House," matches the dictionary word "house" (segmentation from the pre-tokenizer, lower-cased match);
    # the target is written as the dictionary gives it ("Haus"), the punctuation stays.
    sw = DictionarySwitcher(make_table(tok, [("house", "Haus")]), tok.backend_tokenizer, "en")
    d = run(tok, "of the House, of", sw)
    house_cap = enc(tok, " House")
    assert d.input_ids.tolist() == enc(tok, "of the") + enc(tok, " Haus") + enc(tok, ", of")
    assert d.labels.tolist() == enc(tok, "of the") + [house_cap[0], IGN, IGN] + enc(tok, ", of")


def test_word_at_document_start_uses_the_no_space_form(tok):
    sw = DictionarySwitcher(make_table(tok, [("God", "Gott")]), tok.backend_tokenizer, "en")
    d = run(tok, "God is", sw)
    assert d.input_ids.tolist() == enc(tok, "Gott") + enc(tok, " is")
    assert d.labels.tolist() == [enc(tok, "God")[0]] + [IGN] * (len(enc(tok, "Gott")) - 1) + enc(tok, " is")


def test_translation_choice_is_uniform_and_pure(tok):
    table = AlignmentTable([Entry(0, ("king", "roi", "Gott"), ("en", "fr", "de"),
                                  tuple(tuple(mid_sentence_ids(tok, w)) for w in ("king", "roi", "Gott")))],
                           {"source_lang": "en"})
    sw = DictionarySwitcher(table, tok.backend_tokenizer, "en")
    text = " ".join(["the king"] * 400)
    d = run(tok, text, sw, p=1.0)
    roi, gott = enc(tok, " roi")[0], enc(tok, " Gott")[0]
    firsts = d.input_ids[d.switch_starts]
    assert d.n_switched == 400 and set(firsts.tolist()) == {roi, gott}
    assert 150 < int((firsts == roi).sum()) < 250  # uniform between the two translations
    again = run(tok, text, sw, p=1.0)
    assert np.array_equal(again.input_ids, d.input_ids)  # same (seed, doc id) -> same document


def test_decisions_depend_only_on_seed_doc_and_word_index(tok):
    sw = DictionarySwitcher(make_table(tok, [("the", "Haus")]), tok.backend_tokenizer, "en")
    text = " ".join(["the house"] * 200)
    a = run(tok, text, sw, p=0.3)
    longer = run(tok, text + " and the end of the house", sw, p=0.3)
    n = a.input_ids.size
    assert 20 < a.n_switched < 100
    assert np.array_equal(longer.input_ids[:n], a.input_ids)  # appending words changes nothing before them
    other_doc = run(tok, text, sw, p=0.3, doc_id="en/1")
    other_seed = run(tok, text, sw, p=0.3, seed=1)
    assert not np.array_equal(other_doc.switch_starts, a.switch_starts)
    assert not np.array_equal(other_seed.switch_starts, a.switch_starts)


def test_no_switch_cases(tok):
    sw = DictionarySwitcher(make_table(tok, [("house", "Haus")]), tok.backend_tokenizer, "en")
    ids = enc(tok, "the house is red")
    for d in (run(tok, "the house is red", sw, p=0.0), run(tok, "the house is red", None)):
        assert d.input_ids.tolist() == ids and d.labels.tolist() == ids and d.n_switched == 0
    held = DictionarySwitcher(make_table(tok, [("house", "Haus")], split=HELDOUT), tok.backend_tokenizer, "en")
    assert run(tok, "the house", held).n_switched == 0  # held-out words stay unseen
    held_in = DictionarySwitcher(make_table(tok, [("house", "Haus")], split=HELDOUT), tok.backend_tokenizer, "en",
                                 include_heldout=True)
    assert run(tok, "the house", held_in).n_switched == 1


def test_clone_switcher_shifts_covered_words(tok):
    V = len(tok)
    covered = enc(tok, " house") + enc(tok, "the")
    table = AlignmentTable([Entry(i, (f"w{i}", f"§w{i}"), ("en", "clone"), ((t,), (t + V,)))
                            for i, t in enumerate(covered)], {"kind": "clone", "vocab_offset": V})
    d = run(tok, "the house is red", CloneSwitcher(table), p=1.0)
    the, house, rest = enc(tok, "the"), enc(tok, " house"), enc(tok, " is red")
    # "the" (2 tokens, both covered) and "house" switch; " is", " red" are not in the id set
    assert d.input_ids.tolist() == [t + V for t in the] + [house[0] + V] + rest
    assert d.labels.tolist() == [the[0], IGN, house[0]] + rest
