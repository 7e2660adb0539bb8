"""Reading small user input files (JSONL records, JSON documents, TSV rows), with errors that name ``file:line``.

The evaluators (through `prealign_scale.eval.io`, which re-exports these helpers) and the fact files of
`prealign_scale.data.facts` read user files through these helpers, so a bad line is reported the same way
everywhere: :class:`InputFileError` with ``path:line: what is wrong``. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InputFileError(ValueError):
    """A bad input file; the message starts with ``path:line`` (or ``path`` for whole-file faults)."""


def _read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such file")
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError) as exc:
        raise InputFileError(f"{p}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputFileError(f"{p}:{line}: invalid UTF-8 ({exc.reason})") from exc


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its terminator) of a text file; blank lines are skipped."""
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            yield lineno, line


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}


def _type_name(types: type | tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in (types if isinstance(types, tuple) else (types,)))


def read_jsonl(path: str | Path, fields: dict[str, type | tuple[type, ...]]) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line of a JSONL file.

    Each line must be a JSON object holding every key of `fields` with a value of the given type (a ``str``
    field must also be non-empty). Extra keys are kept. Raises :class:`InputFileError` at the first bad line.
    """
    out = []
    for lineno, line in iter_lines(path):
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(rec, dict):
            raise InputFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for key, types in fields.items():
            if key not in rec:
                raise InputFileError(f"{where}: missing field {key!r} (need {sorted(fields)})")
            value = rec[key]
            if not isinstance(value, types) or isinstance(value, bool):
                raise InputFileError(f"{where}: field {key!r} must be {_type_name(types)}, got {value!r}")
            if isinstance(value, str) and not value.strip():
                raise InputFileError(f"{where}: field {key!r} is empty")
        out.append((lineno, rec))
    if not out:
        raise InputFileError(f"{path}: no records (the file is empty)")
    return out


def read_json(path: str | Path) -> tuple[Any, str]:
    """(parsed JSON value, the file's text); invalid JSON raises with ``path:line``."""
    text = _read_text(path)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from exc


def line_of(text: str, *keys: str) -> int:
    """Best-effort line of a value in a JSON text: the first line holding the JSON literal of ``keys[-1]``
    after the lines holding the literals of the earlier keys (in order); 1 when not found."""
    lines = text.splitlines()
    start = 0
    for key in keys:
        lit = json.dumps(key, ensure_ascii=False)
        lit_ascii = json.dumps(key)
        for i in range(start, len(lines)):
            if lit in lines[i] or lit_ascii in lines[i]:
                start = i
                break
        else:
            return start + 1
    return start + 1


def read_tsv(path: str | Path, columns: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a TSV file with exactly `columns` non-empty tab-separated fields per line."""
    out = []
    for lineno, line in iter_lines(path):
        parts = line.split("\t")
        if len(parts) != columns:
            raise InputFileError(f"{path}:{lineno}: expected {columns} tab-separated columns, got {len(parts)}")
        if any(not p.strip() for p in parts):
            raise InputFileError(f"{path}:{lineno}: empty column in {line!r}")
        out.append((lineno, [p.strip() for p in parts]))
    if not out:
        raise InputFileError(f"{path}: no records (the file is empty)")
    return out
