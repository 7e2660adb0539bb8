"""The recording side of docs/reliability.md's case table: a fault or bad-input test declares each case it
exercises with `record_case`, after its assertions, with `observed` computed from what the test saw (an exit
status and the first line of stderr, an exception's message, whether a checkpoint survived).

Records are written only when $PREALIGN_RELIABILITY_OUT names a file (JSON lines, appended); a normal test
run writes nothing. scripts/reliability_table.py merges such a file into docs/reliability_cases.jsonl and
renders the table; tests/test_reliability_table.py keeps the committed table, the records and the tests in step.
"""

from __future__ import annotations

import json
import os
import re
import socket

ENV = "PREALIGN_RELIABILITY_OUT"
AREAS = ("data tools", "config", "training", "checkpoints", "export")  # the table's sections, in this order

# pytest's temporary folders differ on every run: /tmp/pytest-of-root/pytest-12/test_x0/... -> <tmp>/...
TMP = re.compile(r"(/[^\s'\"]*)?/pytest-\d+/[^/\s'\"]+")
HEX = re.compile(r"\b[0-9a-f]{12,64}\b")  # digests: another value on every build
PID = re.compile(r"\b(pid|process) \d+")


def stable(text: str) -> str:
    """`text` without the parts that change from run to run (temporary paths, digests, pids, this host)."""
    text = PID.sub(r"\1 N", HEX.sub("<sha256>", TMP.sub("<tmp>", text)))
    return re.sub(rf"\bhost {re.escape(socket.gethostname())}\b", "host <this host>", text)


def first_line(text: str) -> str:
    lines = [t for t in text.strip().splitlines() if t.strip()]
    return lines[0].strip() if lines else ""


def exit_line(rc: int, stderr: str) -> str:
    """What a command-line tool did: its exit status, how many lines, the first one; a traceback is said."""
    lines = [t for t in stderr.strip().splitlines() if t.strip()]
    shape = "a traceback" if "Traceback" in stderr else f"{len(lines)} line{'s' if len(lines) != 1 else ''}"
    return f"exit {rc}, {shape}: `{first_line(stderr)}`" if lines else f"exit {rc}, nothing on stderr"


def raised(exc: BaseException) -> str:
    """What a library call did: the exception type and the first line of its message."""
    return f"{type(exc).__name__}: `{first_line(str(exc))}`"


def current_test() -> str:
    """tests/test_x.py::test_name[param] of the running test (pytest sets PYTEST_CURRENT_TEST)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    assert current, "record_case is called from a running pytest test"
    test = current.rsplit(" (", 1)[0]
    return test if test.startswith("tests/") else f"tests/{test}"


def record_case(area: str, case: str, expected: str, observed: str, *, loses_data: bool = False) -> None:
    """Declare one case of the running test. `loses_data`: the test saw data lost or silently corrupted."""
    assert area in AREAS, f"area {area!r} is not one of {AREAS}"
    assert case and expected and observed, "a case names what was done, what should happen and what happened"
    path = os.environ.get(ENV)
    if not path:
        return
    record = {"area": area, "case": stable(case), "expected": stable(expected), "observed": stable(observed),
              "loses_data": bool(loses_data), "test": current_test()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
