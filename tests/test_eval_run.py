"""The whole suite: `evaluate` over a run folder, the launcher, and the shipped evaluation sets."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from eval_tiny import V, ids, make_model, make_tokenizer, save

from prealign_scale.alignment.clone import mark_clone, unmark_clone
from prealign_scale.alignment.probe import probe_set_from_table, run_probe
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.data.facts import read_facts, read_templates, render_fact_documents
from prealign_scale.eval.eval_sets import GENRES, corpus_words, passages, read_corpus, write_eval_sets
from prealign_scale.eval.retrieval import read_parallel
from prealign_scale.eval.run_eval import EVAL_DATA, EvalConfig, evaluate, with_shipped_sets
from prealign_scale.eval.transfer import read_labelled
from prealign_scale.model.view import HFModelView, load_hf_model

REPO = Path(__file__).resolve().parents[1]
WORDS = ["red", "blue", "green", "black", "white", "cat", "dog", "bird", "fish", "big", "small", "old", "new"]


def jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as the engine leaves it: config.yaml naming the Clone table, hf/ with the tokenizer."""
    root = tmp_path_factory.mktemp("run")
    tok_dir = root / "tok"
    make_tokenizer(tok_dir)
    entries = [Entry(k, (w, "§" + w), ("en", "clone"), (tuple(ids(w)), tuple(i + V for i in ids(w))),
                     HELDOUT if k % 3 == 0 else ALIGN) for k, w in enumerate(WORDS)]
    AlignmentTable(entries, {"kind": "clone", "vocab_offset": V, "vocab_size": 2 * V, "source_lang": "en"}).save(
        root / "table")
    (root / "config.yaml").write_text(yaml.safe_dump({"data": {"table_dir": str(root / "table")}}))
    save(make_model(2 * V, seed=21), tok_dir, root / "hf")
    return root


def inputs(folder: Path) -> dict:
    folder.mkdir(exist_ok=True)
    (folder / "en.txt").write_text("the red cat .\nthe big dog is old\n")
    (folder / "pairs.tsv").write_text("cat\t§cat\ndog\t§dog\nfish\t§fish\n")
    jsonl(folder / "facts.jsonl", [{"subject": s, "relation": "keeps", "object": o}
                                   for s, o in (("Zab", "sheep"), ("Kor", "goats"), ("Mil", "sheep"))])
    (folder / "templates.json").write_text(json.dumps({"en": {"keeps": ["{subject} keeps {object} ."]}}))
    train = [{"text": f"the {w} {w} .", "label": "animal" if w in ("cat", "dog", "bird", "fish") else "colour"}
             for w in WORDS[:9]]
    return {
        "lm_texts": {"en": str(folder / "en.txt")},
        "probe_pairs": [{"path": str(folder / "pairs.tsv"), "src_lang": "en", "tgt_lang": "clone", "name": "few"}],
        "retrieval": [{"path": jsonl(folder / "par.jsonl", [{"src": "the red cat", "tgt": "§the §red §cat"},
                                                          {"src": "a big dog", "tgt": "§a §big §dog"}]),
                       "src_lang": "en", "tgt_lang": "clone"}],
        "facts": str(folder / "facts.jsonl"), "templates": str(folder / "templates.json"),
        "transfer_train": jsonl(folder / "train.jsonl", train),
        "transfer_tests": {"en": jsonl(folder / "test.jsonl", train[:4]),
                           "clone": jsonl(folder / "test.clone.jsonl", [{**r, "text": "§" + r["text"].replace(" ", " §")}
                                                                        for r in train[:4]])},
        "finetune_epochs": 1,
    }


def test_evaluate_runs_every_section_on_a_run_folder(run_dir, tmp_path):
    res = evaluate(run_dir, inputs(tmp_path))
    assert res["clone_offset"] == V and res["model"] == str(run_dir / "hf")  # offset from the table's meta
    assert set(res) >= {"lm", "probe", "retrieval", "knowledge", "transfer", "seconds", "config"}
    assert res["lm"]["text"]["en"]["docs"] == 2 and res["lm"]["text"]["en"]["tokens"] == 4 + 5
    assert sorted(res["probe"]["groups"]) == ["seen", "tsv:few", "unseen"]
    assert res["probe"]["table"] == str(run_dir / "table")
    # the table groups are exactly what the probe gives on its own
    view = HFModelView(load_hf_model(run_dir / "hf"))
    direct = run_probe(view, probe_set_from_table(AlignmentTable.load(run_dir / "table"), 2000, 0))
    assert res["probe"]["groups"]["seen"] == direct["groups"]["seen"]
    assert res["probe"]["groups"]["tsv:few"]["pairs"] == 3
    assert res["retrieval"]["par"]["pairs"] == 2
    assert sorted(res["knowledge"]) == ["clone", "en"]  # the templates' language + Clone for a Clone model
    assert res["knowledge"]["en"]["queries"] == 3
    assert res["transfer"]["labels"] == ["animal", "colour"] and set(res["transfer"]["finetune"]["target"]) == {"clone"}


def test_probe_runs_words_after_bos_as_a_word_bos_run_trained_them(run_dir, tmp_path):
    """A run trained with align.word_bos is probed the way phase 1 ran its words: after its BOS id (the
    vectors pool the word only); probe_word_bos overrides the run's setting; a word_bos run whose config
    records no bos_id is refused with one message."""
    from prealign_scale.eval.io import EvalInputError
    from prealign_scale.eval.run_eval import probe_bos_id

    table = AlignmentTable.load(run_dir / "table")
    view = HFModelView(load_hf_model(run_dir / "hf"))
    cfg = {"progress": False, "probe_max_pairs": 2000}
    plain = evaluate(run_dir, cfg)["probe"]  # this run's config has no align section: the words alone
    assert plain["bos_id"] is None
    bos_run = tmp_path / "bos_run"
    bos_run.mkdir()
    (bos_run / "hf").symlink_to(run_dir / "hf")
    (bos_run / "config.yaml").write_text(yaml.safe_dump({"data": {"table_dir": str(run_dir / "table")},
                                                         "align": {"word_bos": True, "bos_id": 0}}))
    with_bos = evaluate(bos_run, cfg)["probe"]
    direct = run_probe(view, probe_set_from_table(table, 2000, 0), bos_id=0)
    assert with_bos["bos_id"] == 0
    assert with_bos["groups"]["seen"] == direct["groups"]["seen"]
    assert with_bos["groups"]["unseen"] == direct["groups"]["unseen"]
    assert evaluate(bos_run, {**cfg, "probe_word_bos": False})["probe"]["groups"]["seen"] == plain["groups"]["seen"]
    assert probe_bos_id(EvalConfig(), {"align": {"word_bos": True, "bos_id": 0}}) == 0
    assert probe_bos_id(EvalConfig(), {"align": {"word_bos": False, "bos_id": 0}}) is None
    assert probe_bos_id(EvalConfig(probe_word_bos=True), {"align": {"bos_id": 3}}) == 3
    with pytest.raises(EvalInputError, match="records no align.bos_id"):
        probe_bos_id(EvalConfig(), {"align": {"word_bos": True}})
    assert direct["groups"]["seen"] != plain["groups"]["seen"]  # the BOS changes what the words' vectors see


def test_token_disjoint_probe_groups(run_dir):
    """probe_token_disjoint adds `<group>-disjoint` per table group; a Clone table's pairs never share a token
    id (the Clone ids are offset by V), so there each equals its full group."""
    res = evaluate(run_dir, {"progress": False, "probe_token_disjoint": True})["probe"]["groups"]
    assert sorted(res) == ["seen", "seen-disjoint", "unseen", "unseen-disjoint"]
    assert res["seen-disjoint"] == res["seen"] and res["unseen-disjoint"] == res["unseen"]
    assert "seen-disjoint" not in evaluate(run_dir, {"progress": False})["probe"]["groups"]


def test_progress_bar_per_section_that_ran_with_counts(run_dir, tmp_path, capsys):
    """Progress on: stderr shows one bar per section that ran, each with the count of sequences it ran and a
    rate (``N seq/s``, or ``s/seq`` when slower than one a second); a section that did not run has no bar,
    and progress off prints no bar."""
    cfg = {**inputs(tmp_path), "retrieval": [], "knowledge_langs": ["en"], "progress": True}
    evaluate(run_dir, cfg)
    err = capsys.readouterr().err
    counts = {name: [int(n) for n in re.findall(rf"{name}: (\d+)seq \[[^\]]*(?:seq/s|s/seq)\]", err)]
              for name in ("perplexity", "probe", "retrieval", "knowledge", "transfer")}
    for name in ("perplexity", "probe", "knowledge", "transfer"):
        assert counts[name] and counts[name][-1] > 0, (name, err)
    assert counts["retrieval"] == [] and "retrieval" not in err
    assert counts["perplexity"][-1] == 2  # the two documents of en.txt, one forward row each
    # 3 queries x 2 candidates, each sentence run at least once (in full or as a continuation of its prompt)
    assert counts["knowledge"][-1] >= 3 * 2
    evaluate(run_dir, {**cfg, "progress": False})
    assert not re.search(r"\d+seq \[", capsys.readouterr().err)


def test_clone_offset_from_the_model_when_the_folder_is_a_bare_export(run_dir):
    res = evaluate(run_dir / "hf", {"probe_pairs": [], "lm_texts": {}})
    assert res["clone_offset"] == V and "probe" not in res and "lm" not in res


def test_eval_config_errors():
    with pytest.raises(ValueError, match="unknown key 'probe_tabel'; did you mean 'probe_table'"):
        EvalConfig.from_dict({"probe_tabel": "x"})
    with pytest.raises(ValueError, match=r"retrieval\[0\] misses \['tgt_lang'\]"):
        EvalConfig.from_dict({"retrieval": [{"path": "p", "src_lang": "en"}]})
    with pytest.raises(FileNotFoundError, match="neither an HF model folder"):
        evaluate("/nonexistent/run", {})


def test_launcher_writes_results_and_table(run_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("evaluate_launcher", REPO / "launchers" / "evaluate.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)

    cfg = tmp_path / "eval.yaml"
    d = inputs(tmp_path / "in")
    d["transfer_finetune"] = False
    cfg.write_text(yaml.safe_dump(d))
    out = tmp_path / "out" / "results.json"
    assert launcher.main([str(run_dir), "--config", str(cfg), "--probe-table", "", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert sorted(res["probe"]["groups"]) == ["tsv:few"] and "finetune" not in res["transfer"]
    md = out.with_suffix(".md").read_text()
    assert md.startswith(f"# Evaluation of {run_dir}\n") and "| knowledge clone |" in md
    assert out.with_name("results.probe_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe_tabel: x\n")
    assert launcher.main([str(run_dir), "--config", str(bad)]) == 2
    assert "unknown key 'probe_tabel'" in capsys.readouterr().err


@pytest.mark.parametrize("text,line,what", [
    ("batch_size: 8\nprobe_pairs: [{path: a.tsv\nseed: 1\n", 3, "not valid YAML"),  # unclosed flow mapping
    ("batch_size: 8\n  seed: 1\n", 2, "not valid YAML: mapping values are not allowed here"),
    ("- 1\n- 2\n", None, "expected a mapping of eval config keys"),
])
def test_bad_eval_config_yaml_is_one_message_naming_file_line(run_dir, tmp_path, capsys, text, line, what):
    spec = importlib.util.spec_from_file_location("evaluate_launcher", REPO / "launchers" / "evaluate.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    where = f"{bad}:{line}: " if line else f"{bad}: "
    with pytest.raises(ValueError) as info:
        EvalConfig.load(bad)
    assert str(info.value).startswith(where + what)
    assert launcher.main([str(run_dir), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {where}{what}") and "Traceback" not in err and err.count("\n") == 1


def test_clone_marks_round_trip():
    text = "In the  beginning,\nGod said: §x"
    assert mark_clone(text) == "§In §the  §beginning,\n§God §said: §§x"
    assert unmark_clone(mark_clone(text)) == text


def test_fact_corpus_tool(tmp_path):
    spec = importlib.util.spec_from_file_location("make_eval_sets", REPO / "data_tools" / "make_eval_sets.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "facts.en.jsonl"
    assert tool.main(["--fact-corpus", str(out), "--repeats", "2", "--seed", "5"]) == 0
    docs = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    facts, temps = read_facts(EVAL_DATA / "facts.jsonl"), read_templates(EVAL_DATA / "fact_templates.json")
    assert docs == render_fact_documents(facts, temps, "en", 2, 5) and len(docs) == 1200
    assert f"{facts[0].subject} dwelt in {facts[0].object}." in docs  # fact 0, repeat 0: template 0


def test_passages_alternate_two_and_three_sentences():
    text = "One a. Two b. Three c? Four d! Five e. Six f. Seven g."
    assert passages(text) == ["One a. Two b.", "Three c? Four d! Five e.", "Six f. Seven g."]
    assert passages("Only one.") == []


def test_shipped_sets_are_what_the_tool_writes_and_parse(tmp_path):
    counts = write_eval_sets(tmp_path, REPO / "data/embedded/kjv_train.jsonl.gz",
                             REPO / "data/embedded/kjv_heldout.jsonl.gz")
    for name in counts:
        assert (tmp_path / name).read_bytes() == (EVAL_DATA / name).read_bytes(), name
    train = read_labelled(EVAL_DATA / "genre_train.en.jsonl")
    labels = sorted(set(train.labels))
    assert labels == sorted(GENRES) and all(train.labels.count(g) == 100 for g in GENRES)
    test = read_labelled(EVAL_DATA / "genre_test.en.jsonl", labels)
    clone = read_labelled(EVAL_DATA / "genre_test.clone.jsonl", labels)
    assert clone.labels == test.labels and len(set(test.labels)) == 6
    assert all(c.replace("§", "") == t for c, t in zip(clone.texts, test.texts))
    assert not set(train.texts) & set(test.texts)
    facts = read_facts(EVAL_DATA / "facts.jsonl")
    assert len(facts) == 600 and len({f.subject for f in facts}) == 200
    words = corpus_words(read_corpus(REPO / "data/embedded/kjv_train.jsonl.gz"))
    assert not {f.subject.lower() for f in facts} & words  # invented names never occur in the corpus
    assert {f.object.lower() for f in facts} <= words
    temps = read_templates(EVAL_DATA / "fact_templates.json")
    assert sorted(temps["en"]) == sorted({f.relation for f in facts})
    assert len(read_parallel(EVAL_DATA / "parallel.en-clone.jsonl")) == 300
    cfg = with_shipped_sets(EvalConfig(), clone=True)
    assert set(cfg.transfer_tests) == {"en", "clone"} and all(Path(p).is_file() for p in cfg.transfer_tests.values())
    assert Path(cfg.retrieval[0]["path"]).is_file() and Path(cfg.facts).is_file()
    assert with_shipped_sets(EvalConfig(), clone=False).retrieval == []
