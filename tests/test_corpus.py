"""prealign_scale.text.corpus: every format gives exact documents; every bad input names path:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from prealign_scale.text.corpus import (
    CorpusError,
    Document,
    check_corpus,
    decompressed_size,
    detect_format,
    iter_corpus_texts,
    iter_documents,
    write_jsonl,
)


def docs_of(path, **kw) -> list[tuple[int, str, int, dict]]:
    return [(d.index, d.text, d.lineno, d.fields) for d in iter_documents(path, **kw)]


LINES_BYTES = "first doc\n\nsecond  doc\r\n   \n third, with é\n".encode()
LINES_DOCS = [(0, "first doc", 1, {}), (1, "second  doc", 3, {}), (2, " third, with é", 5, {})]

JSONL_RECORDS = [
    {"id": "a", "text": "Alpha text."},
    {"id": "b", "text": ""},  # empty: skipped, does not take an index
    {"id": "c", "text": "Gamma\ntext.", "n": 3},
]
JSONL_BYTES = (
    json.dumps(JSONL_RECORDS[0])
    + "\n\n"
    + json.dumps(JSONL_RECORDS[1])
    + "\n"
    + json.dumps(JSONL_RECORDS[2])
    + "\n"
).encode()
JSONL_DOCS = [(0, "Alpha text.", 1, {"id": "a"}), (1, "Gamma\ntext.", 4, {"id": "c", "n": 3})]


def test_lines_plain(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(LINES_BYTES)
    assert docs_of(p) == LINES_DOCS
    d = next(iter_documents(p))
    assert d == Document(index=0, text="first doc", source=str(p), lineno=1, fields={})


def test_paragraphs(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"p1 line1\np1 line2\n\n\n  \np2 only\n\np3 a\r\np3 b")
    assert docs_of(p, fmt="paragraphs") == [
        (0, "p1 line1\np1 line2", 1, {}),
        (1, "p2 only", 6, {}),
        (2, "p3 a\np3 b", 8, {}),
    ]


def test_jsonl_and_text_field(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(JSONL_BYTES)
    assert docs_of(p) == JSONL_DOCS
    q = tmp_path / "d.json"
    q.write_text('{"body": "x y", "text": 5}\n')
    assert docs_of(q, text_field="body") == [(0, "x y", 1, {"text": 5})]


def test_gzip_and_zstd(tmp_path):
    g = tmp_path / "c.jsonl.gz"
    g.write_bytes(gzip.compress(JSONL_BYTES))
    assert docs_of(g) == JSONL_DOCS
    z = tmp_path / "c.txt.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress(LINES_BYTES))
    assert docs_of(z) == LINES_DOCS
    # two concatenated zstd frames read as one stream
    z2 = tmp_path / "two.txt.zst"
    c = zstandard.ZstdCompressor()
    z2.write_bytes(c.compress(b"one\n") + c.compress(b"two\n"))
    assert docs_of(z2) == [(0, "one", 1, {}), (1, "two", 2, {})]


def test_utf8_bom_is_dropped(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"\xef\xbb\xbfhello\n")
    assert docs_of(p) == [(0, "hello", 1, {})]


def test_detect_format(tmp_path):
    assert detect_format("a.jsonl") == "jsonl"
    assert detect_format("a.JSON.gz") == "jsonl"
    assert detect_format("a.txt.zst") == "lines"
    assert detect_format(Path("x/y.txt")) == "lines"
    with pytest.raises(CorpusError, match=r"a\.md: cannot tell the corpus format"):
        detect_format("a.md")
    p = tmp_path / "c.md"
    p.write_text("x\ny\n")
    assert docs_of(p, fmt="lines") == [(0, "x", 1, {}), (1, "y", 2, {})]
    with pytest.raises(CorpusError, match="unknown corpus format 'csv'"):
        list(iter_documents(p, fmt="csv"))


@pytest.mark.parametrize(
    "name, content, line, message",
    [
        ("bad.jsonl", b'{"text": "ok"}\n\n{"text": "x"\n', 3, "invalid JSON"),
        ("bad.jsonl", b'{"text": "ok"}\n[1, 2]\n', 2, "expected a JSON object, got list"),
        ("bad.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', 2, "missing text field 'text'"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": ["x"]}\n', 2, "must be a string, got list"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n', 2, "invalid UTF-8"),
        ("bad.txt", b"fine\n\xc3\x28 broken\n", 2, "invalid UTF-8"),
    ],
)
def test_bad_input_names_path_and_line(tmp_path, name, content, line, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(CorpusError) as exc:
        list(iter_documents(p))
    assert f"{p}:{line}: " in str(exc.value)
    assert message in str(exc.value)


def test_bad_compressed_streams(tmp_path):
    g = tmp_path / "bad.txt.gz"
    g.write_bytes(gzip.compress(b"a\nb\n" * 1000)[:-30])  # truncated
    with pytest.raises(CorpusError, match=rf"{g}:\d+: corrupt or truncated"):
        list(iter_documents(g))
    u = tmp_path / "utf.txt.gz"
    u.write_bytes(gzip.compress(b"ok\nok\n\xff\n"))
    with pytest.raises(CorpusError, match=rf"{u}:3: invalid UTF-8"):
        list(iter_documents(u))
    z = tmp_path / "bad.jsonl.zst"
    z.write_bytes(b"this is not zstd data\n")
    with pytest.raises(CorpusError, match=rf"{z}:1: corrupt or truncated"):
        list(iter_documents(z))


def test_missing_and_directory_and_empty(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(CorpusError, match=rf"{missing}: corpus file not found"):
        check_corpus(missing)
    d = tmp_path / "dir.txt"
    d.mkdir()
    with pytest.raises(CorpusError, match=rf"{d}: is a directory"):
        list(iter_documents(d))
    e = tmp_path / "empty.jsonl"
    e.write_text('\n{"text": "  "}\n')
    with pytest.raises(CorpusError, match=rf"{e}: the corpus has no \(non-empty\) documents"):
        check_corpus(e)


def test_check_corpus_reads_only_to_first_document(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'\n{"text": "first", "k": 1}\nnot json at all\n')
    first = check_corpus(p)
    assert (first.index, first.text, first.lineno, first.fields) == (0, "first", 2, {"k": 1})
    with pytest.raises(CorpusError, match=rf"{p}:3: invalid JSON"):
        list(iter_documents(p))


def test_iter_corpus_texts_max_docs(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a1\na2\n")
    b.write_text("b1\n\nb2\n")
    assert list(iter_corpus_texts([a, b])) == ["a1", "a2", "b1", "b2"]
    assert list(iter_corpus_texts([a, b], max_docs=3)) == ["a1", "a2", "b1"]
    with pytest.raises(ValueError, match="max_docs must be positive"):
        list(iter_corpus_texts([a], max_docs=0))


def test_write_jsonl_reproducible_gzip(tmp_path):
    recs = [{"text": "héllo", "id": 1}, {"text": "world", "id": 2}]
    p1, p2 = tmp_path / "x" / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert write_jsonl(p1, recs) == 2
    write_jsonl(p2, recs)
    assert p1.read_bytes() == p2.read_bytes()
    assert p1.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip header MTIME
    assert (
        gzip.decompress(p1.read_bytes()).decode()
        == '{"text": "héllo", "id": 1}\n{"text": "world", "id": 2}\n'
    )
    assert docs_of(p1) == [(0, "héllo", 1, {"id": 1}), (1, "world", 2, {"id": 2})]
    z = tmp_path / "c.jsonl.zst"
    write_jsonl(z, recs)
    assert docs_of(z) == docs_of(p1)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_decompressed_size_counts_every_member_and_can_stop_early(tmp_path):
    """Content bytes, not the gzip trailer's ISIZE (size mod 2**32 of the LAST member only)."""
    a, b = b'{"text": "first"}\n' * 1000, b'{"text": "second"}\n' * 10
    two = tmp_path / "two.jsonl.gz"
    two.write_bytes(gzip.compress(a) + gzip.compress(b))  # two members, as `cat x.gz y.gz` makes
    assert int.from_bytes(two.read_bytes()[-4:], "little") == len(b)  # what ISIZE would claim
    assert decompressed_size(two) == len(a) + len(b) == 18190
    z = tmp_path / "c.jsonl.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b))  # 2 frames
    assert decompressed_size(z) == 18190
    plain = tmp_path / "p.jsonl"
    plain.write_bytes(a)
    assert decompressed_size(plain) == decompressed_size(plain, stop_after=5) == 18000
    # stop_after: decompression stops once that many bytes are counted (reads are 1 MiB blocks)
    big = tmp_path / "big.txt.gz"
    big.write_bytes(gzip.compress(b"x" * (3 << 20)))
    assert decompressed_size(big, stop_after=1) == 1 << 20
    assert decompressed_size(big) == 3 << 20
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(a)[:-12])
    with pytest.raises(CorpusError, match=rf"{cut}: corrupt or truncated compressed data after "):
        decompressed_size(cut)
