"""Alignment probe: known answers on tiny models with hand-set embeddings, brute force, table groups, bad TSV."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_tiny import V, ids, load, make_model, make_tokenizer, save

from prealign_scale.alignment.probe import (
    ProbePair,
    ProbeSet,
    probe_metrics,
    probe_set_from_table,
    retrieval_credit,
    run_probe,
)
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.alignment.word_vectors import layer_names
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.probe import composed_pairs, mid_sentence_words, read_pairs_tsv
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView

EN_WORDS = ["red", "blue", "green", "cat", "dog", "bird"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    return folder, make_tokenizer(folder)


def clone_pairs(words=EN_WORDS) -> list[ProbePair]:
    return [ProbePair(tuple(ids(w)), tuple(i + V for i in ids(w)), w, "§" + w) for w in words]


def test_layer_names():
    assert layer_names(3) == ["embedding", "block1", "block2", "final_norm", "unembedding"]


def test_retrieval_credit_exact_with_ties_and_several_translations():
    sims = torch.tensor([[0.9, 0.1, 0.9], [0.2, 0.8, 0.1], [0.5, 0.5, 0.5], [0.0, 0.3, 0.1]])
    gold = [{0}, {1}, {0, 2}, {0}]
    # row 0: tie of 0 and 2, gold 0 -> 1/2; row 1 -> 1; row 2: 3-way tie, 2 gold -> 2/3; row 3 -> 0
    assert retrieval_credit(sims, gold).tolist() == pytest.approx([0.5, 1.0, 2 / 3, 0.0], abs=1e-12)


def test_equal_embeddings_of_translations_give_perfect_retrieval(tok, tmp_path):
    """Clone rows = English rows (input and output): every layer represents a word and its Clone the same."""
    model = make_model(2 * V, seed=1)
    with torch.no_grad():
        model.model.embed_tokens.weight[V:] = model.model.embed_tokens.weight[:V]
        model.lm_head.weight[V:] = model.lm_head.weight[:V]
    view = load(save(model, tok[0], tmp_path / "hf"))
    res = run_probe(view, ProbeSet({"seen": clone_pairs()}))
    g = res["groups"]["seen"]
    assert res["layers"] == layer_names(2)
    assert g["pairs"] == 6 and g["candidates"] == 6 and g["chance"] == pytest.approx(1 / 6)
    assert g["acc"] == [1.0] * 4 and g["acc_src2tgt"] == [1.0] * 4 and g["acc_tgt2src"] == [1.0] * 4
    assert g["cos_true"] == pytest.approx([1.0] * 4, abs=1e-6)
    assert all(c < 0.999 for c in g["cos_random"])


def test_orthogonal_embeddings_score_exactly_chance(tok, tmp_path):
    """One-hot, mutually orthogonal rows for all 12 words: every cosine at the embedding and unembedding
    layers is exactly 0, so each query is a 6-way tie (credit 1/6) and both mean cosines are 0."""
    model = make_model(2 * V, seed=2)
    words = [i for w in EN_WORDS for i in ids(w)] + [i + V for w in EN_WORDS for i in ids(w)]
    with torch.no_grad():
        for k, i in enumerate(words):
            for w in (model.model.embed_tokens.weight, model.lm_head.weight):
                w[i] = F.one_hot(torch.tensor(k), 16).float() * (k + 1)
    view = load(save(model, tok[0], tmp_path / "hf"))
    g = run_probe(view, ProbeSet({"unseen": clone_pairs()}))["groups"]["unseen"]
    for layer in (0, 3):
        assert g["acc"][layer] == pytest.approx(1 / 6, abs=1e-12)
        assert g["cos_true"][layer] == 0.0 and g["cos_random"][layer] == 0.0


def test_run_probe_equals_brute_force_with_multi_token_words(tok, tmp_path):
    """Words of 1-3 tokens, batched with right padding: every per-layer number equals a one-word-at-a-time
    computation with plain cosines and argmax."""
    model = make_model(V, seed=3)
    view = HFModelView(model)
    pairs = [ProbePair(tuple(ids(*a.split())), tuple(ids(*b.split())), a, b) for a, b in [
        ("red cat", "blue"), ("dog", "green bird fish"), ("big old dog", "small"), ("walk", "run eat"),
        ("new", "white cat")]]
    res = run_probe(view, ProbeSet({"g": pairs}), batch_size=2)["groups"]["g"]

    def vecs(seq):
        x = torch.tensor([seq])
        with torch.no_grad():
            hs = model(input_ids=x, output_hidden_states=True).hidden_states
            out = [h[0].mean(0) for h in hs] + [model.lm_head.weight[x[0]].mean(0)]
        return torch.stack(out).double()

    assert 0 < sum(res["acc"]) < 4  # neither all right nor all wrong: the comparison means something
    src = torch.stack([vecs(p.src) for p in pairs], 1)  # [L, 5, h]
    tgt = torch.stack([vecs(p.tgt) for p in pairs], 1)
    for layer in range(4):
        cos = F.normalize(src[layer], dim=-1) @ F.normalize(tgt[layer], dim=-1).T
        s2t = (cos.argmax(1) == torch.arange(5)).double().mean()
        t2s = (cos.argmax(0) == torch.arange(5)).double().mean()
        assert res["acc_src2tgt"][layer] == pytest.approx(float(s2t))
        assert res["acc_tgt2src"][layer] == pytest.approx(float(t2s))
        assert res["cos_true"][layer] == pytest.approx(float(cos.diag().mean()), abs=1e-5)
        off = cos[~torch.eye(5, dtype=torch.bool)]
        assert res["cos_random"][layer] == pytest.approx(float(off.mean()), abs=1e-5)


def test_probe_set_from_table_groups_and_subsample():
    entries = [Entry(i, (f"w{i}", f"§w{i}"), ("en", "clone"), ((i,), (i + 100,)), HELDOUT if i % 4 == 0 else ALIGN)
               for i in range(1, 21)]
    table = AlignmentTable(entries, {"source_lang": "en"})
    ps = probe_set_from_table(table)
    assert sorted(ps.groups) == ["seen", "unseen"]
    assert [p.src for p in ps.groups["unseen"]] == [(4,), (8,), (12,), (16,), (20,)]
    assert ps.groups["seen"][0] == ProbePair((1,), (101,), "w1", "§w1")
    small = probe_set_from_table(table, max_pairs=3, seed=7)
    assert len(small.groups["seen"]) == 3 and len(small.groups["unseen"]) == 3
    assert small.groups == probe_set_from_table(table, max_pairs=3, seed=7).groups  # deterministic
    assert [p.src[0] for p in small.groups["seen"]] == sorted(p.src[0] for p in small.groups["seen"])


def test_multi_language_entries_give_a_group_per_target_language():
    entries = [Entry(1, ("bank", "Bank", "banque"), ("en", "de", "fr"), ((1,), (2,), (3,))),
               Entry(2, ("Haus", "house"), ("de", "en"), ((4,), (5,)), HELDOUT)]
    ps = probe_set_from_table(AlignmentTable(entries, {"source_lang": "en"}))
    assert ps.groups == {"seen:de": [ProbePair((1,), (2,), "bank", "Bank")],
                         "seen:fr": [ProbePair((1,), (3,), "bank", "banque")],
                         "unseen:de": [ProbePair((5,), (4,), "house", "Haus")]}


def test_pairs_tsv_mid_sentence_and_clone_forms(tok, tmp_path):
    enc = TextEncoder(tok[1], clone_offset=V)
    p = tmp_path / "pairs.tsv"
    p.write_text("red\t§red\ndog\tdog\n\nbig\t§big\n")
    pairs = read_pairs_tsv(p, enc, "en", "clone")
    assert [(q.src, q.tgt) for q in pairs] == [((ids("red")[0],), (ids("red")[0] + V,)),
                                               ((ids("dog")[0],), (ids("dog")[0] + V,)),
                                               ((ids("big")[0],), (ids("big")[0] + V,))]


@pytest.mark.parametrize("text,line,what", [
    ("red\t§red\ndog\n", 2, "expected 2 tab-separated columns"),
    ("red\t§red\nblue\t§blue\ncat\t \n", 3, "empty column"),
    ("red\t§red\tx\n", 1, "expected 2 tab-separated columns"),
])
def test_bad_tsv_names_file_and_line(tok, tmp_path, text, line, what):
    p = tmp_path / "bad.tsv"
    p.write_text(text)
    with pytest.raises(EvalInputError, match=rf"bad\.tsv:{line}: {what}"):
        read_pairs_tsv(p, TextEncoder(tok[1], V), "en", "clone")


def test_clone_language_needs_a_clone_model(tok, tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("red\tred\n")
    with pytest.raises(ValueError, match="needs an English-Clone model"):
        read_pairs_tsv(p, TextEncoder(tok[1], 0), "en", "clone")


def test_probe_metrics_are_flat_per_layer_lists():
    res = {"layers": ["embedding", "unembedding"], "groups": {
        "seen": {"acc": [1.0, 0.5], "cos_true": [0.9, 0.1234567], "cos_random": [0.0, None]},
        "unseen:de": {"acc": [0.0, 0.25], "cos_true": [0.5, 0.5], "cos_random": [0.1, 0.2]}}}
    assert probe_metrics(res) == {
        "probe_seen_acc": [1.0, 0.5], "probe_seen_cos_true": [0.9, 0.123457], "probe_seen_cos_random": [0.0, None],
        "probe_unseen_de_acc": [0.0, 0.25], "probe_unseen_de_cos_true": [0.5, 0.5],
        "probe_unseen_de_cos_random": [0.1, 0.2]}


# ------------------------------------------------------------------------------- unseen-composed group

BPE_MERGES = [("Ġ", "c"), ("a", "t"), ("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("Ġ", "s"), ("Ġs", "at")]


def make_bpe_tokenizer(folder):
    """A hand-made byte-level BPE (the project's tokenizer kind): the 256 byte symbols plus `BPE_MERGES`, so
    " cat" -> [Ġc, at], " cats" -> [Ġc, at, s], " dog" -> [Ġdog], " sat" -> [Ġsat], " the" -> [Ġ, t, h, e]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = ["<unk>", "<eos>", "<pad>", *sorted(pre_tokenizers.ByteLevel.alphabet()), *(a + b for a, b in BPE_MERGES)]
    tok = Tokenizer(models.BPE({s: i for i, s in enumerate(symbols)}, BPE_MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def composed_table(tok) -> AlignmentTable:
    """A Clone table: single-token entries (seen: Ġc at s Ġdog Ġsat Ġ t h e; held out: A) and one
    multi-token held-out entry "cat" = [Ġc, at] (a word trained or probed as a whole)."""
    n = len(tok)
    seen = ["Ġc", "at", "s", "Ġdog", "Ġsat", "Ġ", "t", "h", "e"]
    entries = []
    for k, sym in enumerate(seen + ["A"]):
        t = tok.convert_tokens_to_ids(sym)
        entries.append(Entry(k, (sym, "§" + sym), ("en", "clone"), ((t,), (t + n,)), ALIGN if sym != "A" else HELDOUT))
    cat = tuple(tok.convert_tokens_to_ids(["Ġc", "at"]))
    entries.append(Entry(10, ("cat", "§cat"), ("en", "clone"), (cat, tuple(t + n for t in cat)), HELDOUT))
    return AlignmentTable(entries, {"kind": "clone", "source_lang": "en", "vocab_offset": n, "vocab_size": 2 * n})


COMPOSED_TEXT = ["the cat sat. A cats dog\ncat, dogs sat 12 x the cat", "Dogs, cats and the dogs"]


def test_mid_sentence_words_byte_level_and_whitespace_pre_tokenizers(tok, tmp_path):
    bpe = make_bpe_tokenizer(tmp_path / "bpe")
    # byte-level: the space is part of the piece; "the" (text start), "cat" (after a newline), "Dogs" (text
    # start), "and" is new; "12", ".", "," are not letters
    assert mid_sentence_words(COMPOSED_TEXT, bpe) == ["cat", "sat", "A", "cats", "dog", "dogs", "x", "the", "and"]
    # word-level (Whitespace pre-tokenizer, the space is dropped): the character before the piece decides
    assert mid_sentence_words(["the red cat .\nblue dog ,big"], tok[1]) == ["red", "cat", "dog"]


def test_composed_pairs_are_multi_token_words_of_seen_tokens_only(tmp_path):
    bpe = make_bpe_tokenizer(tmp_path / "bpe")
    n = len(bpe)
    enc = TextEncoder(bpe, clone_offset=n)
    pairs = composed_pairs(composed_table(bpe), enc, COMPOSED_TEXT)
    # cat: a table entry as a whole; sat, dog: one token; A, x: a held-out / unknown token after Ġ;
    # and: "a", "n", "d" are not in the table
    assert [p.src_word for p in pairs] == ["cats", "dogs", "the"]
    ids_of = bpe.convert_tokens_to_ids
    assert pairs[0] == ProbePair(tuple(ids_of(["Ġc", "at", "s"])), tuple(i + n for i in ids_of(["Ġc", "at", "s"])),
                                 "cats", "§cats")
    assert pairs[1].src == tuple(ids_of(["Ġdog", "s"])) and pairs[2].src == tuple(ids_of(["Ġ", "t", "h", "e"]))
    with pytest.raises(ValueError, match="needs an English-Clone model"):
        composed_pairs(composed_table(bpe), TextEncoder(bpe, 0), COMPOSED_TEXT)


def test_evaluate_adds_the_composed_group_with_known_answers(tmp_path):
    """Clone rows = English rows: a word and its Clone run through the model identically, so composed words
    are retrieved perfectly at every layer; the seen / unseen groups are what they are without the text."""
    from prealign_scale.eval.run_eval import evaluate

    bpe = make_bpe_tokenizer(tmp_path / "bpe")
    n = len(bpe)
    composed_table(bpe).save(tmp_path / "table")
    model = make_model(2 * n, seed=5)
    with torch.no_grad():
        model.model.embed_tokens.weight[n:] = model.model.embed_tokens.weight[:n]
        model.lm_head.weight[n:] = model.lm_head.weight[:n]
    save(model, tmp_path / "bpe", tmp_path / "hf")
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(COMPOSED_TEXT) + "\n")
    cfg = {"probe_table": str(tmp_path / "table"), "probe_composed_text": str(text)}
    groups = evaluate(tmp_path / "hf", cfg)["probe"]["groups"]
    assert sorted(groups) == ["seen", "unseen", "unseen-composed"]
    g = groups["unseen-composed"]
    assert g["pairs"] == 3 and g["candidates"] == 3 and g["acc"] == [1.0] * 4
    without = evaluate(tmp_path / "hf", {"probe_table": str(tmp_path / "table")})["probe"]["groups"]
    assert without == {k: v for k, v in groups.items() if k != "unseen-composed"}
    with pytest.raises(ValueError, match="probe_composed_text needs the alignment table"):
        evaluate(tmp_path / "hf", {"probe_table": "", "probe_composed_text": str(text)})


def test_token_disjoint_groups_keep_pairs_sharing_no_token():
    from prealign_scale.alignment.probe import ProbePair
    from prealign_scale.eval.probe import token_disjoint_groups

    same, shares, apart = ProbePair((5, 6), (5, 6)), ProbePair((5, 7), (9, 7)), ProbePair((1,), (2, 3))
    assert token_disjoint_groups({"seen": [same, shares, apart], "unseen": [same]}) == {"seen-disjoint": [apart]}
