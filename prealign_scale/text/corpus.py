"""Reading (and writing) text corpora: plain text or JSONL, optionally gzip or zstandard compressed.

One reader for every tool that consumes corpora (the shard builder, the tokenizer tool, English-Clone).

Formats (``fmt``):

- ``"lines"``: plain text, one document per line (the line terminator is removed, nothing else).
- ``"paragraphs"``: plain text, documents separated by one or more blank (whitespace-only) lines; the lines
  of a document are joined with ``"\\n"``.
- ``"jsonl"``: one JSON object per line with a string text field (default ``"text"``); blank lines are
  allowed.

Without ``fmt`` the format comes from the file name: ``.jsonl``/``.json`` → jsonl, ``.txt`` → lines, each
optionally followed by ``.gz`` (gzip) or ``.zst`` (zstandard). Documents whose text is empty or
whitespace-only are skipped; :attr:`Document.index` counts only kept documents (0, 1, 2, ... within one file).

Bad input raises :class:`CorpusError` naming ``path:line`` (invalid UTF-8, invalid JSON, a line that is not
an object, a missing or non-string text field, a corrupt compressed stream) or the file itself (missing,
unreadable, a directory, an unknown extension).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

FORMATS = ("lines", "paragraphs", "jsonl")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_EXT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "lines"}


class CorpusError(ValueError):
    """A corpus file cannot be read as asked; the message names the file (and line where there is one)."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    index: position among the kept (non-empty) documents of its file, from 0.
    text: the document text.
    source: the file it came from (as given).
    lineno: 1-based line of the file where the document starts.
    fields: the other fields of a JSONL record (everything except the text field); ``{}`` for plain text.
    """

    index: int
    text: str
    source: str
    lineno: int
    fields: dict = field(default_factory=dict)


def compression_of(path: str | Path) -> str | None:
    """``"gzip"``, ``"zstd"`` or None, from the last suffix of the file name."""
    return COMPRESSIONS.get(Path(path).suffix.lower())


def detect_format(path: str | Path) -> str:
    """The corpus format implied by the file name (compression suffix ignored); CorpusError if unknown."""
    p = Path(path)
    if compression_of(p) is not None:
        p = p.with_suffix("")
    fmt = _EXT_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise CorpusError(
            f"{path}: cannot tell the corpus format from the file name (known endings: "
            f"{', '.join(_EXT_FORMATS)}, optionally + .gz or .zst); pass the format explicitly "
            f"(one of {', '.join(FORMATS)})"
        )
    return fmt


def _open_binary(path: Path) -> IO[bytes]:
    """Open a corpus file for reading bytes, decompressing on the fly; CorpusError naming the file if not."""
    if not path.exists():
        raise CorpusError(f"{path}: corpus file not found")
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory, expected a corpus file")
    try:
        raw = open(path, "rb")  # noqa: SIM115 (returned to the caller, closed there)
    except OSError as exc:
        raise CorpusError(f"{path}: cannot open corpus file: {exc.strerror or exc}") from exc
    kind = compression_of(path)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type]
    return raw


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its terminator); CorpusError on bad bytes or streams."""
    import zstandard

    f = _open_binary(path)
    lineno = 0
    try:
        with f:
            while True:
                try:
                    raw = f.readline()
                except (OSError, EOFError, zstandard.ZstdError) as exc:
                    raise CorpusError(
                        f"{path}:{lineno + 1}: corrupt or truncated compressed data: {exc}"
                    ) from exc
                if not raw:
                    return
                lineno += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"{path}:{lineno}: invalid UTF-8 at byte {exc.start} of the line: "
                        f"{raw[exc.start : exc.start + 4]!r}"
                    ) from exc
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]  # a UTF-8 byte-order mark is not part of the text
                yield lineno, line.rstrip("\r\n")
    except OSError as exc:  # e.g. reading the underlying file fails
        raise CorpusError(f"{path}:{lineno + 1}: read error: {exc}") from exc


def _iter_raw_docs(path: Path, fmt: str, text_field: str) -> Iterator[tuple[int, str, dict]]:
    """(start line, text, other fields) for every document, empty ones included."""
    if fmt == "lines":
        for lineno, line in _iter_lines(path):
            yield lineno, line, {}
    elif fmt == "paragraphs":
        start, buf = 0, []
        for lineno, line in _iter_lines(path):
            if line.strip():
                if not buf:
                    start = lineno
                buf.append(line)
            elif buf:
                yield start, "\n".join(buf), {}
                buf = []
        if buf:
            yield start, "\n".join(buf), {}
    elif fmt == "jsonl":
        for lineno, line in _iter_lines(path):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(rec, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            if text_field not in rec:
                raise CorpusError(
                    f"{path}:{lineno}: missing text field {text_field!r} "
                    f"(fields: {', '.join(map(str, rec)) or 'none'}); "
                    "choose the field with --text-field"
                )
            text = rec[text_field]
            if not isinstance(text, str):
                raise CorpusError(
                    f"{path}:{lineno}: text field {text_field!r} must be a string, got {type(text).__name__}"
                )
            yield lineno, text, {k: v for k, v in rec.items() if k != text_field}
    else:
        raise CorpusError(f"{path}: unknown corpus format {fmt!r}; expected one of {', '.join(FORMATS)}")


def iter_documents(path: str | Path, text_field: str = "text", fmt: str | None = None) -> Iterator[Document]:
    """Yield the non-empty documents of one corpus file, in file order (see the module docstring)."""
    p = Path(path)
    fmt = detect_format(p) if fmt is None else fmt
    if fmt not in FORMATS:
        raise CorpusError(f"{path}: unknown corpus format {fmt!r}; expected one of {', '.join(FORMATS)}")
    index = 0
    for lineno, text, fields in _iter_raw_docs(p, fmt, text_field):
        if not text.strip():
            continue
        yield Document(index=index, text=text, source=str(path), lineno=lineno, fields=fields)
        index += 1


def check_corpus(path: str | Path, text_field: str = "text", fmt: str | None = None) -> Document:
    """Fail early: the file exists, is readable in its format, and has a document. Returns the first one.

    Reads only up to the first document, so it is cheap on large files: errors later in the file (a bad line
    41) are found when the corpus is read in full, as the same CorpusError naming ``path:line``.
    """
    for doc in iter_documents(path, text_field=text_field, fmt=fmt):
        return doc
    raise CorpusError(f"{path}: the corpus has no (non-empty) documents")


def decompressed_size(path: str | Path, stop_after: int | None = None) -> int:
    """Bytes of the file's content: its size on disk for plain files; for .gz/.zst, counted by decompressing.

    The gzip trailer's size field is not used: it holds the size modulo 2**32 of the last member only.
    With `stop_after`, decompression stops as soon as that many bytes are counted (the result is then
    >= stop_after, not the full size): enough to show that a file is at least that large.
    """
    p = Path(path)
    if compression_of(p) is None:
        try:
            return p.stat().st_size
        except OSError as exc:
            raise CorpusError(f"{path}: cannot read corpus file: {exc.strerror or exc}") from exc
    import zstandard

    n = 0
    f = _open_binary(p)
    try:
        with f:
            while stop_after is None or n < stop_after:
                block = f.read(1 << 20)
                if not block:
                    break
                n += len(block)
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise CorpusError(f"{path}: corrupt or truncated compressed data after {n:,} bytes: {exc}") from exc
    return n


def iter_corpus_texts(
    paths: Sequence[str | Path],
    text_field: str = "text",
    fmt: str | None = None,
    max_docs: int | None = None,
) -> Iterator[str]:
    """The texts of several corpora one after another, at most `max_docs` in total (None: all)."""
    if max_docs is not None and max_docs <= 0:
        raise ValueError(f"max_docs must be positive, got {max_docs}")
    n = 0
    for path in paths:
        for doc in iter_documents(path, text_field=text_field, fmt=fmt):
            if max_docs is not None and n >= max_docs:
                return
            yield doc.text
            n += 1


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL (gzip if the name ends in .gz, with mtime=0 so bytes are reproducible;
    zstandard if .zst). Written to a temporary name, then renamed. Returns the number of records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    kind = compression_of(path)
    n = 0
    with open(tmp, "wb") as raw:
        out: Any  # a binary writer
        if kind == "gzip":  # no file name and mtime=0 in the header: the bytes depend only on the records
            out = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)
        elif kind == "zstd":
            import zstandard

            out = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        else:
            out = raw
        for rec in records:
            out.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            n += 1
        if out is not raw:
            out.close()
    tmp.replace(path)
    return n
