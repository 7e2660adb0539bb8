"""Read bilingual / multilingual dictionaries into raw entries of mutually aligned words.

Four input formats (see docs/dictionaries.md for examples):

- TSV ``source<TAB>target`` (MUSE style). A line without a tab is split on whitespace (MUSE's own
  space-separated files) and must then have exactly two fields. ``#`` comments and blank lines are skipped.
- JSONL pairs ``{"src_text": "house", "tgt_text": "Haus"}`` (optional ``src_lang`` / ``tgt_lang``).
- JSONL multi-entries ``{"words": ["bank", "Bank", "banque"], "id": 17, "langs": ["en", "de", "fr"]}``
  (``langs`` optional: without it the first word is the source language, the others the target language).
  Pairs and multi-entries may be mixed in one file; each line is recognised by its keys.
- FreeDict / dictd: ``X.index`` + ``X.dict`` or ``X.dict.dz`` (dictzip, which gzip reads). Single-word
  translations are extracted from each entry's text (see :func:`parse_dictd_entry`).

Pairs that share a source word are grouped into ONE entry ``[source, target1, target2, ...]`` (in order of
first appearance, repeated targets dropped), because all translations of a word are aligned with it.

A bad line (wrong number of fields, an empty side, invalid UTF-8, invalid JSON, a missing key, a bad dictd
index line) becomes a :class:`Problem` ``(path, lineno, message)``; reading continues and the problems are
returned. With ``strict=True`` the first problem raises :class:`DictionaryError` ("path:line: message"). A
file that yields no entry at all is always an error; its message names the first bad lines.

Word length is bounded: a word of more than :data:`MAX_WORD_CHARS` characters is a bad line (a broken file,
not a word: without the bound a 10 MB line became a 10-million-token word). The table builder bounds the
tokens of each word too (``MAX_WORD_TOKENS`` in alignment/build_table.py), naming the word's ``path:line``,
which every :class:`RawEntry` read from a file carries (``where``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("tsv", "jsonl", "dictd")
MAX_WORD_CHARS = 100  # longest dictionary word (characters) accepted; a longer one makes its line a bad line
SHOWN_BAD_LINES = 3  # bad lines quoted in the error of a file without any valid entry
_EXTENSIONS = {".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".index": "dictd", ".dict": "dictd", ".dz": "dictd"}


class DictionaryError(ValueError):
    """A dictionary file cannot be used (missing, empty, or a bad line under strict mode)."""


@dataclass(frozen=True)
class RawEntry:
    """Words that translate each other (``words[0]`` is usually the source word), with their languages."""

    words: tuple[str, ...]
    langs: tuple[str, ...]
    # "path:line" each word was read from (parallel to words; empty for entries made in code)
    where: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        if len(self.words) != len(self.langs):
            raise ValueError(f"RawEntry: {len(self.words)} words but {len(self.langs)} langs: {self.words}")
        if self.where and len(self.where) != len(self.words):
            raise ValueError(f"RawEntry: {len(self.words)} words but {len(self.where)} origins: {self.words}")


@dataclass(frozen=True)
class Problem:
    """A bad input line: where it is and what is wrong with it."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}"


@dataclass
class DictionaryReadResult:
    entries: list[RawEntry]
    problems: list[Problem]
    sha256: str  # of the file bytes; for dictd of the .index bytes followed by the .dict(.dz) bytes
    paths: list[str] = field(default_factory=list)
    skipped: int = 0  # well-formed records that gave no usable entry (dictd: no single-word headword/translation)


# ----------------------------------------------------------------------------------------------------------
# Shared plumbing: problem collection, line reading, grouping of pairs by source word.


class _Problems:
    """Collects problems of one file; raises at the first one under strict mode."""

    def __init__(self, path: Path, strict: bool):
        self.path, self.strict, self.items = str(path), strict, []

    def where(self, lineno: int) -> str:
        return f"{self.path}:{lineno}"

    def too_long(self, lineno: int, words: list[str]) -> bool:
        """Report (and return True) when a word of the line is longer than MAX_WORD_CHARS characters."""
        for word in words:
            if len(word) > MAX_WORD_CHARS:
                self.add(lineno, f"word of {len(word)} characters ({word[:20]!r}...), longer than the limit "
                                 f"MAX_WORD_CHARS={MAX_WORD_CHARS}")
                return True
        return False

    def add(self, lineno: int, message: str) -> None:
        problem = Problem(self.path, lineno, message)
        if self.strict:
            raise DictionaryError(f"{problem} (strict mode: fix the line or drop --strict to skip it)")
        self.items.append(problem)


def _iter_lines(path: Path, problems: _Problems) -> Iterator[tuple[int, str]]:
    """Yield (lineno, text) for every line that decodes as UTF-8 (without its line ending)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(lineno, f"invalid UTF-8 at byte {exc.start} of the line")
                continue
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            yield lineno, text


class _Grouper:
    """Builds entries in order of first appearance; pairs with the same source word share one entry."""

    def __init__(self):
        self._slots: list[tuple[list[str], list[str], list[str]]] = []  # words, langs, where
        self._by_source: dict[tuple[str, str], int] = {}

    def add_pair(self, src: str, tgt: str, src_lang: str, tgt_lang: str, where: str) -> None:
        key = (src_lang, src)
        if key not in self._by_source:
            self._by_source[key] = len(self._slots)
            self._slots.append(([src], [src_lang], [where]))
        words, langs, origins = self._slots[self._by_source[key]]
        if not any(w == tgt and l == tgt_lang for w, l in zip(words[1:], langs[1:])):
            words.append(tgt)
            langs.append(tgt_lang)
            origins.append(where)

    def add_entry(self, words: list[str], langs: list[str], where: str) -> None:
        self._slots.append((list(words), list(langs), [where] * len(words)))

    def entries(self) -> list[RawEntry]:
        return [RawEntry(tuple(w), tuple(l), tuple(o)) for w, l, o in self._slots if len(w) >= 2]


# ----------------------------------------------------------------------------------------------------------
# TSV and JSONL.


def _read_tsv(path: Path, problems: _Problems, src_lang: str, tgt_lang: str) -> tuple[list[RawEntry], int]:
    group = _Grouper()
    for lineno, line in _iter_lines(path, problems):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            sep = "tab" if "\t" in line else "whitespace"
            problems.add(lineno, f"expected 2 fields (source<TAB>target), got {len(fields)} ({sep}-separated)")
            continue
        src, tgt = fields[0].strip(), fields[1].strip()
        if not src or not tgt:
            problems.add(lineno, f"empty {'source' if not src else 'target'} word")
            continue
        if problems.too_long(lineno, [src, tgt]):
            continue
        group.add_pair(src, tgt, src_lang, tgt_lang, problems.where(lineno))
    return group.entries(), 0


def _json_words(obj: dict, lineno: int, problems: _Problems, src_lang: str, tgt_lang: str):
    """Validate a multi-entry object; returns (words, langs) or None after reporting the problem."""
    words = obj["words"]
    if not isinstance(words, list) or len(words) < 2 or not all(isinstance(w, str) for w in words):
        problems.add(lineno, "field 'words' must be a list of at least 2 strings")
        return None
    words = [w.strip() for w in words]
    if not all(words):
        problems.add(lineno, f"field 'words': item {words.index('') + 1} is empty")
        return None
    if problems.too_long(lineno, words):
        return None
    langs = obj.get("langs")
    if langs is None:
        langs = [src_lang] + [tgt_lang] * (len(words) - 1)
    elif not isinstance(langs, list) or len(langs) != len(words) or not all(
        isinstance(x, str) and x.strip() for x in langs
    ):
        problems.add(lineno, f"field 'langs' must be a list of {len(words)} non-empty strings (one per word)")
        return None
    return words, [x.strip() for x in langs]


def _read_jsonl(path: Path, problems: _Problems, src_lang: str, tgt_lang: str) -> tuple[list[RawEntry], int]:
    group = _Grouper()
    for lineno, line in _iter_lines(path, problems):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            problems.add(lineno, f"expected a JSON object, got {type(obj).__name__}")
            continue
        if "words" in obj:
            checked = _json_words(obj, lineno, problems, src_lang, tgt_lang)
            if checked is not None:
                group.add_entry(*checked, problems.where(lineno))
            continue
        missing = [k for k in ("src_text", "tgt_text") if k not in obj]
        if missing:
            problems.add(lineno, f"missing key {missing[0]!r} (expected src_text + tgt_text, or words)")
            continue
        src, tgt = obj["src_text"], obj["tgt_text"]
        if not isinstance(src, str) or not isinstance(tgt, str):
            problems.add(lineno, "fields 'src_text' and 'tgt_text' must be strings")
            continue
        if not src.strip() or not tgt.strip():
            problems.add(lineno, f"empty {'src_text' if not src.strip() else 'tgt_text'}")
            continue
        if problems.too_long(lineno, [src.strip(), tgt.strip()]):
            continue
        group.add_pair(src.strip(), tgt.strip(), str(obj.get("src_lang", src_lang)), str(obj.get("tgt_lang", tgt_lang)),
                       problems.where(lineno))
    return group.entries(), 0


# ----------------------------------------------------------------------------------------------------------
# FreeDict / dictd.

_DICTD_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def decode_dictd_number(text: str) -> int:
    """Decode a dictd index number: base64 digits A-Za-z0-9+/, most significant digit first."""
    if not text:
        raise ValueError("empty number")
    value = 0
    for ch in text:
        if ch not in _DICTD_B64:
            raise ValueError(f"{ch!r} is not a dictd base64 digit")
        value = value * 64 + _DICTD_B64[ch]
    return value


def encode_dictd_number(value: int) -> str:
    """Inverse of :func:`decode_dictd_number` (used by tests and tools that write dictd files)."""
    if value < 0:
        raise ValueError(f"dictd numbers are non-negative, got {value}")
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = digits[value % 64]
    while value >= 64:
        value //= 64
        out = digits[value % 64] + out
    return out


_BRACKETED = [re.compile(p) for p in (r"<[^<>]*>", r"\([^()]*\)", r"\[[^\[\]]*\]", r"\{[^{}]*\}")]
_PRONUNCIATION = re.compile(r"/[^/\n]*/")
_SENSE_NUMBER = re.compile(r"^\s*\d+[.)]\s*")
_WORD = re.compile(r"^[^\W\d_]+(?:['’-][^\W\d_]+)*$")
# A line starting with one of these ends the translations: examples, notes, cross-references.
_STOP_PREFIXES = ('"', "“", "„", "«", "note:", "see:", "see also", "synonym", "antonym", "example", "e.g.")


def _strip_bracketed(text: str) -> str:
    """Remove grammar notes <...>, parentheses, brackets and braces (innermost first, so nesting works)."""
    changed = True
    while changed:
        changed = False
        for pattern in _BRACKETED:
            text, n = pattern.subn(" ", text)
            changed = changed or n > 0
    return " ".join(text.split())


def is_single_word(text: str) -> bool:
    """Letters only, with inner apostrophes or hyphens ("o'clock", "House-Musik")."""
    return bool(_WORD.match(text))


def parse_dictd_entry(text: str) -> tuple[str, list[str]]:
    """Return (headword, single-word translations) of one FreeDict/dictd entry text.

    The first non-blank line is the headword line (``bank /bˈaŋk/ <v>``): pronunciation and notes are
    stripped. The following lines are translation lines (``Bank <fem>, Gruppe <fem> [fin.]``, or numbered
    senses ``1. abasement``) until the first example, note or cross-reference line (starting with a quote,
    ``Note:``, ``Synonyms:``, ``see:`` ...). Translations are split on ``,`` and ``;``; only single words
    survive. The headword is returned as written (it may be several words; the caller decides).
    """
    lines = [ln for ln in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return "", []
    headword = _strip_bracketed(_PRONUNCIATION.sub(" ", lines[0]))
    translations: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.lower().startswith(_STOP_PREFIXES):
            break
        stripped = _strip_bracketed(_SENSE_NUMBER.sub("", stripped))
        for item in re.split(r"[,;]", stripped):
            item = item.strip()
            if is_single_word(item) and item not in translations:
                translations.append(item)
    return headword, translations


def _dictd_paths(path: Path) -> tuple[Path, Path]:
    name = path.name
    for suffix in (".dict.dz", ".index", ".dict"):
        if name.endswith(suffix):
            base = path.with_name(name[: -len(suffix)])
            break
    else:
        base = path
    index = base.with_name(base.name + ".index")
    if not index.is_file():
        raise DictionaryError(f"{index}: dictd index file not found")
    for data in (base.with_name(base.name + ".dict.dz"), base.with_name(base.name + ".dict")):
        if data.is_file():
            return index, data
    raise DictionaryError(f"{index}: no {base.name}.dict.dz or {base.name}.dict next to it")


def _read_dictd_data(data_path: Path) -> bytes:
    raw = data_path.read_bytes()
    if not data_path.name.endswith(".dz"):
        return raw
    try:
        return gzip.decompress(raw)  # a dictzip file is a gzip file with an extra random-access header
    except (OSError, EOFError, zlib.error) as exc:
        raise DictionaryError(f"{data_path}: not a valid dictzip/gzip file: {exc}") from exc


def _read_dictd(index: Path, data_path: Path, problems: _Problems, src_lang: str, tgt_lang: str):
    data = _read_dictd_data(data_path)
    group, seen, skipped = _Grouper(), set(), 0
    for lineno, line in _iter_lines(index, problems):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (3, 4):  # dictfmt --index-keep-orig adds the original headword as a 4th field
            problems.add(lineno, f"expected 3 tab-separated fields (headword, offset, length), got {len(fields)}")
            continue
        head = fields[0]
        if head.startswith(("00-database-", "00database")):
            continue
        try:
            offset, length = decode_dictd_number(fields[1]), decode_dictd_number(fields[2])
        except ValueError as exc:
            problems.add(lineno, f"bad dictd offset/length {fields[1]!r}/{fields[2]!r}: {exc}")
            continue
        if offset + length > len(data):
            problems.add(lineno, f"entry at offset {offset} length {length} is past the end of "
                                 f"{data_path.name} ({len(data)} bytes)")
            continue
        if (offset, length) in seen:  # several index lines may point at one entry
            continue
        seen.add((offset, length))
        try:
            text = data[offset : offset + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(lineno, f"entry text is not valid UTF-8 (byte {exc.start} of the entry)")
            continue
        headword, translations = parse_dictd_entry(text)
        if not is_single_word(headword) or not translations:
            skipped += 1
            continue
        if problems.too_long(lineno, [headword, *translations]):
            continue
        for tgt in translations:
            group.add_pair(headword, tgt, src_lang, tgt_lang, problems.where(lineno))
    return group.entries(), skipped


# ----------------------------------------------------------------------------------------------------------
# Public entry points.


def detect_format(path: str | Path) -> str:
    """The format implied by a file name: .tsv/.txt -> tsv, .jsonl -> jsonl, .index/.dict/.dict.dz -> dictd."""
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DictionaryError(f"{path}: cannot tell the dictionary format from the extension "
                              f"(use .tsv, .txt, .jsonl or .index, or pass the format: one of {FORMATS})")
    return fmt


def read_dictionary(
    path: str | Path,
    fmt: str | None = None,
    strict: bool = False,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
) -> DictionaryReadResult:
    """Read one dictionary file (format from `fmt` or the extension) into grouped raw entries."""
    path = Path(path)
    fmt = detect_format(path) if fmt is None else fmt
    if fmt not in FORMATS:
        raise DictionaryError(f"{path}: unknown dictionary format {fmt!r}; expected one of {FORMATS}")
    if fmt == "dictd":
        index, data = _dictd_paths(path)
        problems = _Problems(index, strict)
        entries, skipped = _read_dictd(index, data, problems, src_lang, tgt_lang)
        files, shown = [index, data], index
    else:
        if not path.is_file():
            raise DictionaryError(f"{path}: dictionary file not found")
        problems = _Problems(path, strict)
        reader = _read_tsv if fmt == "tsv" else _read_jsonl
        entries, skipped = reader(path, problems, src_lang, tgt_lang)
        files, shown = [path], path
    if not entries:
        first = "; ".join(str(p) for p in problems.items[:SHOWN_BAD_LINES])
        raise DictionaryError(f"{shown}: no valid dictionary entry ({len(problems.items)} bad lines, "
                              f"format {fmt})" + (f"; first bad lines: {first}" if first else ""))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return DictionaryReadResult(entries, problems.items, digest.hexdigest(), [str(f) for f in files], skipped)


def read_dictionaries(
    paths: list[str | Path],
    fmt: str | None = None,
    strict: bool = False,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
) -> DictionaryReadResult:
    """Read several dictionaries and concatenate them; the hash covers all files (their hashes in order)."""
    if not paths:
        raise DictionaryError("no dictionary file given")
    results = [read_dictionary(p, fmt, strict, src_lang, tgt_lang) for p in paths]
    if len(results) == 1:
        return results[0]
    digest = hashlib.sha256("\n".join(r.sha256 for r in results).encode()).hexdigest()
    return DictionaryReadResult(
        entries=[e for r in results for e in r.entries],
        problems=[p for r in results for p in r.problems],
        sha256=digest,
        paths=[f for r in results for f in r.paths],
        skipped=sum(r.skipped for r in results),
    )
