"""docs/reliability.md's case table cannot drift from the tests: it is the rendering of the committed records
(docs/reliability_cases.jsonl, written by the tests through tests/reliability_cases.py), every record names a
test function that exists, and no case loses or silently corrupts data (issue 9, "Done when")."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

from reliability_cases import AREAS, ENV, exit_line, record_case

ROOT = Path(__file__).resolve().parents[1]


def table_script():
    spec = importlib.util.spec_from_file_location("reliability_table", ROOT / "scripts/reliability_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_records() -> list[dict]:
    return table_script().read_records(ROOT / "docs/reliability_cases.jsonl")


def test_the_committed_table_is_the_rendering_of_the_records():
    script = table_script()
    doc = (ROOT / "docs/reliability.md").read_text(encoding="utf-8")
    assert script.render_doc(doc, committed_records()) == doc, "run scripts/reliability_table.py"
    assert script.main(["--check"]) == 0
    assert script.AREAS == AREAS


def test_every_case_names_a_test_that_exists():
    records = committed_records()
    assert len(records) >= 60  # issue 9: at least 60 cases across data tools, config, training, checkpoints, export
    assert {r["area"] for r in records} == set(AREAS)
    functions: dict[str, set[str]] = {}
    for r in records:
        path, _, name = r["test"].partition("::")
        if path not in functions:
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            functions[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name.split("[")[0] in functions[path], f"{r['test']}: no such test (the record is stale)"
    keys = [(r["test"], r["case"]) for r in records]
    assert len(keys) == len(set(keys)), "a case is recorded twice"


def test_no_case_loses_or_silently_corrupts_data():
    lost = [f"{r['test']}: {r['case']}" for r in committed_records() if r["loses_data"]]
    assert lost == []


def test_record_case_writes_only_when_asked(tmp_path, monkeypatch):
    out = tmp_path / "cases.jsonl"
    monkeypatch.delenv(ENV, raising=False)
    record_case("config", "a case", "refused", "refused")
    assert not out.exists()
    monkeypatch.setenv(ENV, str(out))
    record_case("data tools", f"{tmp_path}/x given", "exit 2", exit_line(2, f"error: {tmp_path}/x: bad\n"))
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record == {"area": "data tools", "case": "<tmp>/x given", "expected": "exit 2",
                      "observed": "exit 2, 1 line: `error: <tmp>/x: bad`", "loses_data": False,
                      "test": "tests/test_reliability_table.py::test_record_case_writes_only_when_asked"}


def test_merge_replaces_the_records_of_the_files_run():
    merge = table_script().merge
    old = [{"area": "config", "case": "a", "test": "tests/test_a.py::t"},
           {"area": "config", "case": "b", "test": "tests/test_b.py::t"}]
    new = [{"area": "export", "case": "c", "test": "tests/test_b.py::u"}]
    assert merge(old, new) == [old[0], new[0]]  # test_b.py was run again: its old record is gone
