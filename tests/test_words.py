"""One word normaliser for table, switcher, coverage and probes (issue 10 items 1-4), on every tokenizer family.

Tokenizers are trained here with the `tokenizers` library (no downloads): SentencePiece Unigram and BPE
(Metaspace ``▁``), byte-level BPE (``Ġ``), plus a Llama-style folder whose template adds ``<s>``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tokenizers import (
    ByteLevelBPETokenizer,
    SentencePieceBPETokenizer,
    SentencePieceUnigramTokenizer,
    Tokenizer,
    decoders,
    normalizers,
    processors,
)
from transformers import PreTrainedTokenizerFast

from prealign_scale.alignment.build_table import build_alignment_table
from prealign_scale.alignment.codeswitch import DictionarySwitcher, switch_document, word_uniforms
from prealign_scale.alignment.coverage import coverage_report
from prealign_scale.alignment.dictionaries import RawEntry, read_dictionary
from prealign_scale.alignment.probe import probe_set_from_table
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.alignment.words import normalize_word, split_affixes
from prealign_scale.data.word_encoder import RustWordEncoder
from prealign_scale.text.tokenizer import load_tokenizer, mid_sentence_forms

WORDS = ("house home bank river people built near were and the of is a an by red blue green maison Haus Heim "
         "Bank Ufer Licht light Gott God dog Hund cat Katze tree Baum")
TEXT = [f'The house, the home. "House" is a bank; the bank of the river. {WORDS} {WORDS.upper()} {WORDS.title()}',
        "Houses and banks and homes were built near the river bank, by the people (house) [Haus]!"] * 40


def _wrap(tk: Tokenizer, **specials) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tk, **specials)


def _trained(kind: str) -> PreTrainedTokenizerFast:
    if kind == "unigram":
        t = SentencePieceUnigramTokenizer()
        t.train_from_iterator(TEXT, vocab_size=200, show_progress=False, unk_token="<unk>",
                              special_tokens=["<unk>"])
    elif kind == "sp-bpe":
        t = SentencePieceBPETokenizer()
        t.train_from_iterator(TEXT, vocab_size=300, show_progress=False)
    else:
        t = ByteLevelBPETokenizer()
        t.train_from_iterator(TEXT, vocab_size=400, show_progress=False)
    return _wrap(t._tokenizer)


KINDS = ("unigram", "sp-bpe", "byte-level")


@pytest.fixture(scope="module", params=KINDS)
def tok(request):
    return _trained(request.param)


def table_of(tok, pairs, split=ALIGN, extra=()):
    raw = [RawEntry(tuple(p), ("en",) + ("de",) * (len(p) - 1)) for p in pairs] + list(extra)
    table = build_alignment_table(raw, tok, heldout_fraction=0.0, source_lang="en", tokenizer_sha256="t",
                                  dictionary_sha256="d")
    if split != ALIGN:
        table.entries = [Entry(e.id, e.words, e.langs, e.tokens, split) for e in table.entries]
    return table


def switch(tok, text, table, p=1.0, seed=0, doc_id="en/0"):
    e = RustWordEncoder(tok.backend_tokenizer).encode(text)
    sw = DictionarySwitcher(table, tok.backend_tokenizer, "en")
    return switch_document(e.ids, e.word_ids, e.word, sw, p, seed, doc_id)


# ---------------------------------------------------------------------------------------- 1. leak-free splits


def test_split_is_leak_free_for_every_seed_and_fraction(tmp_path):
    tok = _trained("byte-level")
    d = tmp_path / "en-de.tsv"
    fillers = [f"w{i}\tv{i}" for i in range(40)]
    d.write_text("\n".join(["house\tHaus", "home\tHaus", "bank\tBank", "bank\tUfer", "House,\tHeim", *fillers,
                            "cat\tKatze", "Katze\tmieze"]) + "\n", encoding="utf-8")
    raw = read_dictionary(d, src_lang="en", tgt_lang="de").entries
    for seed, frac in itertools.product(range(20), (0.1, 0.2, 0.3, 0.4, 0.5)):
        table = build_alignment_table(raw, tok, heldout_fraction=frac, seed=seed, source_lang="en",
                                      tokenizer_sha256="t", dictionary_sha256="d")
        trained = {(lang, normalize_word(w)) for e in table.part(ALIGN) for w, lang in zip(e.words, e.langs)}
        held = {(lang, normalize_word(w)) for e in table.part(HELDOUT) for w, lang in zip(e.words, e.langs)}
        assert not trained & held, (seed, frac, trained & held)
        n, counts = len(table.entries), table.meta["counts"]
        # house/Haus, home/Haus, House,/Heim are one group of 3; bank/Bank/Ufer one entry; the rest groups of 1
        assert counts["groups"] == n - 2
        assert abs(counts["heldout"] - round(frac * n)) <= 1  # groups of 1 let the target be met within 1
        assert "group" in table.meta["split_rule"]


# ---------------------------------------------------------------------------------------- 2. one normaliser


def test_normaliser_and_affixes():
    assert [normalize_word(w) for w in (" House,", "Ġhouse", "▁Haus", '"House', "«Wort»", "o'clock", "Straße")] == [
        "house", "house", "haus", "house", "wort", "o'clock", "strasse"]
    assert split_affixes('▁"House,') == ('"', "House", ",")
    assert split_affixes("--") == ("--", "", "")


def test_punctuated_and_cased_words_switch_and_coverage_agrees(tok):
    table = table_of(tok, [("house", "Haus"), ("bank", "Bank")])
    text = 'The house, the "House" and HOUSE. A bank; the river (house) bank.'
    d = switch(tok, text, table)
    out = tok.decode(d.input_ids.tolist())
    # every house/bank occurrence switched, punctuation kept, targets as the dictionary spells them
    assert d.n_switched == 6
    for piece in ("Haus,", '"Haus"', "Haus.", "Bank;", "(Haus)", "Bank."):
        assert piece in out, (piece, out)
    assert "house" not in out.lower().replace("haus", "") and " bank" not in out
    report = coverage_report(table, tok, [text], "en")
    assert report["covered_words"] == d.n_switched  # what coverage counts is what the switcher switches
    assert report["by_lang"]["de"]["covered_words"] == d.n_switched


def test_case_variant_is_a_switch_target(tok):
    # bank -> Bank differs only in case: it is a translation (today's code never chose it)
    d = switch(tok, "the bank of the river", table_of(tok, [("bank", "Bank")]))
    assert d.n_switched == 1 and "Bank" in tok.decode(d.input_ids.tolist())


def test_capitalised_source_keeps_the_dictionary_spelling(tok):
    # Casing rule (docs/dictionaries.md): a capitalised source word is switched to the target exactly as the
    # dictionary gives it; "House" -> "maison", not "Maison".
    d = switch(tok, "the red House is", table_of(tok, [("house", "maison")]))
    out = tok.decode(d.input_ids.tolist())
    assert d.n_switched == 1 and "maison" in out and "Maison" not in out


def test_table_tokens_are_the_in_sentence_tokens(tok):
    table = table_of(tok, [("house", "Haus"), ("river", "Ufer")])
    for e in table.entries:
        for w, toks in zip(e.words, e.tokens):
            inside = tok.backend_tokenizer.encode(f"the {w} is", add_special_tokens=False)
            start = inside.word_ids.index(1)
            end = len(inside.word_ids) - inside.word_ids[::-1].index(1)
            assert toks == tuple(inside.ids[start:end]), (w, toks)


def _llama_folder(tmp_path, normaliser_style: bool):
    """A Llama-style HF folder: SentencePiece BPE whose post-processor template adds <s> (BOS)."""
    t = SentencePieceBPETokenizer()
    t.train_from_iterator(TEXT, vocab_size=300, show_progress=False, special_tokens=["<unk>", "<s>", "</s>"])
    tk = t._tokenizer
    if normaliser_style:  # Llama 2: a "▁" normaliser and no pre-tokenizer
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tk.pre_tokenizer = None
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    folder = tmp_path / ("llama2" if normaliser_style else "llama")
    _wrap(tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(str(folder))
    return load_tokenizer(folder), bos


@pytest.mark.parametrize("normaliser_style", [False, True])
def test_bos_adding_tokenizer_gives_words_without_bos(tmp_path, normaliser_style):
    tok, bos = _llama_folder(tmp_path, normaliser_style)
    assert tok("house")["input_ids"][0] == bos  # the folder adds BOS by default
    table = table_of(tok, [("house", "Haus"), ("river", "Ufer")])
    for e in table.entries:
        for w, toks in zip(e.words, e.tokens):
            assert bos not in toks
            inside = tok("the " + w + " is", add_special_tokens=False)["input_ids"]
            assert toks == mid_sentence_forms(tok, [w])[w]
            assert any(inside[i:i + len(toks)] == list(toks) for i in range(len(inside)))  # the in-sentence form
    if not normaliser_style:  # a Metaspace pre-tokenizer gives words: the switcher works, without BOS
        d = switch(tok, "the house, is near the river", table)
        assert d.n_switched == 2 and bos not in d.input_ids.tolist()
        assert "Haus," in tok.decode(d.input_ids.tolist())


# ---------------------------------------------------------------------------------------- 3. determinism


def test_editing_the_end_of_a_document_changes_nothing_before_it():
    tok = _trained("byte-level")
    table = table_of(tok, [("house", "Haus", "Heim", "maison"), ("the", "der", "die")])
    base = " ".join(["the house"] * 300)
    ref = switch(tok, base, table, p=0.3)
    for tail in (" and the end of the house", " red", ", the house is blue"):
        d = switch(tok, base + tail, table, p=0.3)
        n = ref.input_ids.size
        assert np.array_equal(d.input_ids[:n], ref.input_ids) and np.array_equal(d.labels[:n], ref.labels)
    edited = switch(tok, " ".join(["the house"] * 299) + " the dog", table, p=0.3)
    cut = int(np.searchsorted(ref.switch_starts, ref.input_ids.size - 4))
    assert np.array_equal(edited.switch_starts[:cut], ref.switch_starts[:cut])


def test_word_uniforms_are_a_pure_function_and_binomial():
    k = np.arange(20000)
    u, c = word_uniforms(3, "en/7", k)
    u2, c2 = word_uniforms(3, "en/7", k[::-1])
    assert np.array_equal(u[::-1], u2) and np.array_equal(c[::-1], c2)  # order and length do not matter
    assert np.array_equal(word_uniforms(3, "en/7", np.array([123]))[0], u[[123]])
    assert not np.array_equal(word_uniforms(4, "en/7", k)[0], u)
    assert not np.array_equal(word_uniforms(3, "en/8", k)[0], u)
    for p in (0.05, 0.3):
        sd = np.sqrt(p * (1 - p) / k.size)
        assert abs((u < p).mean() - p) < 4 * sd
    assert abs((c < 0.5).mean() - 0.5) < 4 * np.sqrt(0.25 / k.size)
    assert abs(np.corrcoef(u, c)[0, 1]) < 0.05  # the choice is independent of the decision


def test_switch_rate_is_binomial_in_documents():
    tok = _trained("byte-level")
    table = table_of(tok, [("house", "Haus")])
    n, p = 3000, 0.1
    d = switch(tok, " ".join(["house"] * n), table, p=p, doc_id="en/42")
    assert abs(d.n_switched - n * p) < 4 * np.sqrt(n * p * (1 - p))


# ---------------------------------------------------------------------------------------- 4. coverage split / probe


def test_coverage_reports_switchable_and_heldout_per_language(tok):
    entries = [
        Entry(0, ("house", "Haus", "maison"), ("en", "de", "fr"), ((1,), (2,), (3,)), ALIGN),
        Entry(1, ("river", "Ufer"), ("en", "de"), ((4,), (5,)), HELDOUT),
        Entry(2, ("bank", "banque"), ("en", "fr"), ((6,), (7,)), ALIGN),
    ]
    table = AlignmentTable(entries, {"source_lang": "en"})
    text = "the house, the river and the bank of the river"
    r = coverage_report(table, tok, [text], "en")
    assert r["words"] == 10
    assert (r["covered_words"], r["heldout_words"]) == (2, 2)  # held-out words are never switched
    assert r["word_coverage"] == 0.2 and r["heldout_word_coverage"] == 0.2
    assert (r["by_lang"]["de"]["covered_words"], r["by_lang"]["de"]["heldout_words"]) == (1, 2)
    assert (r["by_lang"]["fr"]["covered_words"], r["by_lang"]["fr"]["heldout_words"]) == (2, 0)
    assert r["distinct_covered"] == 2 and r["distinct_heldout"] == 1
    assert ["river", 2] not in r["top_uncovered"]


def test_unseen_probe_holds_only_heldout_words():
    # A table split per entry (before the leak-free split): home/Haus held out while house/Haus is trained.
    entries = [Entry(0, ("house", "Haus"), ("en", "de"), ((1,), (2,)), ALIGN),
               Entry(1, ("home", "Haus"), ("en", "de"), ((3,), (2,)), HELDOUT),
               Entry(2, ("Bank", "banc"), ("en", "de"), ((5,), (6,)), HELDOUT),
               Entry(3, ("bank", "Ufer"), ("en", "de"), ((7,), (8,)), ALIGN),
               Entry(4, ("tree", "Baum"), ("en", "de"), ((9,), (10,)), HELDOUT)]
    ps = probe_set_from_table(AlignmentTable(entries, {"source_lang": "en", "kind": "dictionary"}))
    assert [(p.src_word, p.tgt_word) for p in ps.groups["unseen"]] == [("tree", "Baum")]
    assert [(p.src_word, p.tgt_word) for p in ps.groups["seen"]] == [("house", "Haus"), ("bank", "Ufer")]
