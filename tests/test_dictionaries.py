"""Dictionary readers: TSV/MUSE, JSONL pairs and multi-entries, FreeDict/dictd; bad-input reporting."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from reliability_cases import raised, record_case

from prealign_scale.alignment.dictionaries import (
    DictionaryError,
    Problem,
    RawEntry,
    decode_dictd_number,
    encode_dictd_number,
    parse_dictd_entry,
    read_dictionaries,
    read_dictionary,
)


def E(*words, langs=None):
    """A RawEntry with the default languages: first word "src", the others "tgt"."""
    return RawEntry(tuple(words), tuple(langs or ["src"] + ["tgt"] * (len(words) - 1)))


def where(problems):
    return [(p.lineno, p.message) for p in problems]


def record_bad_lines(kind: str, result) -> None:
    """One case of docs/reliability.md per bad line of a dictionary the reader went through."""
    for p in result.problems:
        record_case("data tools", f"a {kind} dictionary line: {p.message.split(':')[0]}",
                    "the line skipped and reported as file:line: reason; the valid lines kept",
                    f"bad line `{p}`; {len(result.entries)} valid entries kept")


def record_refused(case: str, err) -> None:
    record_case("data tools", case, "refused with one line naming the file", raised(err.value))


# ---------------------------------------------------------------------------------------------- TSV


def test_tsv_groups_targets_of_one_source(tmp_path):
    path = tmp_path / "en-de.tsv"
    path.write_text(
        "# MUSE-style dictionary\n"
        "\n"
        "house\tHaus\n"
        "bank\tBank\n"
        "house\tGebäude\n"
        "bank Ufer\n"  # MUSE's space-separated form
        "house\tHaus\n"  # a repeated pair adds nothing
        "  light \t Licht  \n",
        encoding="utf-8",
    )
    result = read_dictionary(path)
    assert result.entries == [E("house", "Haus", "Gebäude"), E("bank", "Bank", "Ufer"), E("light", "Licht")]
    assert result.problems == []
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.paths == [str(path)]


def test_tsv_languages_are_applied(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("house\tHaus\n", encoding="utf-8")
    result = read_dictionary(path, src_lang="en", tgt_lang="de")
    assert result.entries == [RawEntry(("house", "Haus"), ("en", "de"))]


def test_tsv_bad_lines_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(
        b"house\tHaus\n"
        b"a\tb\tc\n"  # 2: three fields
        b"lonely\n"  # 3: one field
        b"tree\t\n"  # 4: empty target
        b"\tBaum\n"  # 5: empty source
        b"caf\xe9\tCaf\xc3\xa9\n"  # 6: Latin-1, not UTF-8
        b"one two three\n"  # 7: three whitespace-separated fields
        b"light\tLicht\n"
    )
    result = read_dictionary(path)
    assert result.entries == [E("house", "Haus"), E("light", "Licht")]
    assert where(result.problems) == [
        (2, "expected 2 fields (source<TAB>target), got 3 (tab-separated)"),
        (3, "expected 2 fields (source<TAB>target), got 1 (whitespace-separated)"),
        (4, "empty target word"),
        (5, "empty source word"),
        (6, "invalid UTF-8 at byte 3 of the line"),
        (7, "expected 2 fields (source<TAB>target), got 3 (whitespace-separated)"),
    ]
    assert all(p.path == str(path) for p in result.problems)
    assert str(result.problems[0]) == f"{path}:2: expected 2 fields (source<TAB>target), got 3 (tab-separated)"
    record_bad_lines("TSV", result)


def test_strict_raises_at_the_first_problem(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("house\tHaus\ntree\t\nx\ty\tz\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=rf"^{path}:2: empty target word") as err:
        read_dictionary(path, strict=True)
    record_refused("a bad dictionary line under --strict", err)


def test_no_valid_entry_is_an_error_naming_the_file(tmp_path):
    only_comments = tmp_path / "empty.tsv"
    only_comments.write_text("# nothing here\n\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=rf"^{only_comments}: no valid dictionary entry \(0 bad lines") as err:
        read_dictionary(only_comments)
    record_refused("a dictionary of comments and blank lines only", err)
    only_bad = tmp_path / "allbad.tsv"
    only_bad.write_text("a\tb\tc\n\tx\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=rf"^{only_bad}: no valid dictionary entry \(2 bad lines"):
        read_dictionary(only_bad)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DictionaryError, match="nope.tsv: dictionary file not found") as err:
        read_dictionary(tmp_path / "nope.tsv")
    record_refused("a missing dictionary file", err)
    odd = tmp_path / "words.csv"
    odd.write_text("house\tHaus\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match="words.csv: cannot tell the dictionary format") as err:
        read_dictionary(odd)
    record_refused("a dictionary file of unknown extension", err)
    assert read_dictionary(odd, fmt="tsv").entries == [E("house", "Haus")]
    with pytest.raises(DictionaryError, match="unknown dictionary format 'csv'") as err:
        read_dictionary(odd, fmt="csv")
    record_refused("an unknown dictionary format named", err)


# ---------------------------------------------------------------------------------------------- JSONL


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")


def test_jsonl_pairs_are_grouped(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [
        {"src_text": "house", "tgt_text": "Haus"},
        {"src_text": "bank", "tgt_text": "Bank"},
        "",
        {"src_text": "house", "tgt_text": "Gebäude"},
        {"src_text": "bank", "tgt_text": "banque", "tgt_lang": "fr"},
    ])
    result = read_dictionary(path, src_lang="en", tgt_lang="de")
    assert result.entries == [
        RawEntry(("house", "Haus", "Gebäude"), ("en", "de", "de")),
        RawEntry(("bank", "Bank", "banque"), ("en", "de", "fr")),
    ]
    assert result.problems == []


def test_jsonl_multi_entries_with_and_without_langs(tmp_path):
    path = tmp_path / "multi.jsonl"
    write_jsonl(path, [
        {"words": ["bank", "Bank", "banque"], "id": 17, "langs": ["en", "de", "fr"]},
        {"words": ["house", " Haus "], "id": 18},
        {"src_text": "light", "tgt_text": "Licht"},  # pairs and multi-entries may be mixed
    ])
    result = read_dictionary(path, src_lang="en", tgt_lang="de")
    assert result.entries == [
        RawEntry(("bank", "Bank", "banque"), ("en", "de", "fr")),
        RawEntry(("house", "Haus"), ("en", "de")),
        RawEntry(("light", "Licht"), ("en", "de")),
    ]


def test_jsonl_bad_lines_are_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [
        {"src_text": "house", "tgt_text": "Haus"},
        '{"src_text": "tree", "tgt_text": ',  # 2: truncated JSON
        {"src_text": "tree"},  # 3: missing key
        ["house", "Haus"],  # 4: not an object
        {"src_text": "", "tgt_text": "Baum"},  # 5: empty side
        {"words": ["only"]},  # 6: fewer than 2 words
        {"words": ["a", "  "]},  # 7: empty word
        {"words": ["a", "b"], "langs": ["en"]},  # 8: langs do not match words
        {"src_text": 3, "tgt_text": "drei"},  # 9: not a string
        {"words": ["light", "Licht"]},
    ])
    with open(path, "ab") as f:
        f.write(b'{"src_text": "caf\xe9", "tgt_text": "x"}\n')  # 11: invalid UTF-8
    result = read_dictionary(path)
    assert result.entries == [E("house", "Haus"), E("light", "Licht")]
    assert where(result.problems) == [
        (2, "invalid JSON: Expecting value (column 34)"),
        (3, "missing key 'tgt_text' (expected src_text + tgt_text, or words)"),
        (4, "expected a JSON object, got list"),
        (5, "empty src_text"),
        (6, "field 'words' must be a list of at least 2 strings"),
        (7, "field 'words': item 2 is empty"),
        (8, "field 'langs' must be a list of 2 non-empty strings (one per word)"),
        (9, "fields 'src_text' and 'tgt_text' must be strings"),
        (11, "invalid UTF-8 at byte 17 of the line"),
    ]
    record_bad_lines("JSONL", result)
    with pytest.raises(DictionaryError, match=rf"^{path}:2: invalid JSON"):
        read_dictionary(path, strict=True)


# ---------------------------------------------------------------------------------------------- dictd


def b64_number(value: int) -> str:
    """dictd's base64 number encoding, written independently of the library's encoder."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = []
    while True:
        value, rest = divmod(value, 64)
        digits.append(alphabet[rest])
        if value == 0:
            return "".join(reversed(digits))


def test_dictd_number_decoding():
    assert [decode_dictd_number(s) for s in ("A", "B", "/", "BA", "FVrr", "c")] == [0, 1, 63, 64, 1399531, 28]
    for value in (0, 1, 63, 64, 4095, 4096, 1399531, 2**30 + 7):
        assert encode_dictd_number(value) == b64_number(value)
        assert decode_dictd_number(b64_number(value)) == value
    with pytest.raises(ValueError, match="'!' is not a dictd base64 digit"):
        decode_dictd_number("A!")


# Entries in the shape of Debian's dict-freedict-eng-deu / -fra-eng (2022) packages.
DICTD_TEXTS = {
    "info": "00-database-info\nThis file was converted from the original database on ...\n",
    "short": "English-German FreeDict Dictionary ver. 2022\n",
    "bank_v": "bank /bˈaŋk/ <v>\nauf die Bank bringen [Geld] , einzahlen <v, trans>\n see: {banking}, {banked}\n\n",
    "bank_n": "bank /bˈaŋk/\nBank <fem>, Gruppe <fem>\n",
    "house": ('house /hˈaʊs/\nHaus <neut>\n      "build a house"  - ein Haus bauen\n'
              " see: {houses}, {open house}\n\n"),
    "run": ("run /ɹˈʌn/ (ran /ɹˈan/ <>, run /ɹˈʌn/ <>) <v>\nlaufen <v, intr>\n"
            '      "he/she runs"  - er/sie läuft\n see: {running}, {I/he/she ran}\n\n'),
    "ladder": "run /ɹˈʌn/\n [Am.] Laufmasche <fem>, Fallmasche <fem> [textil.]\n   Synonym: {ladder}\n\n",
    "senses": "abaissement /abɛsəmɑ̃/ <n, masc>\n1. abasement\n2. decrease, lowering\n",
    "phrase": "boîte aux lettres /bwatolɛtʀ/ <n, fem>\nletterbox, mailbox\n",
    "noted": "Berlin /bɜːlˈɪn/\nBerlin [geogr.]\n         Note: Hauptstadt von Deutschland\n see: {East Berlin}\n",
}
# (headword in the index, entry) in index order; "went" points at the same entry as "run" (an alias).
DICTD_INDEX = [
    ("00-database-info", "info"), ("00databaseshort", "short"), ("abaissement", "senses"), ("bank", "bank_v"),
    ("bank", "bank_n"), ("berlin", "noted"), ("boîte aux lettres", "phrase"), ("house", "house"),
    ("run", "run"), ("run", "ladder"), ("went", "run"),
]
DICTD_ENTRIES = [
    E("abaissement", "abasement", "decrease", "lowering"),
    E("bank", "einzahlen", "Bank", "Gruppe"),
    E("Berlin", "Berlin"),
    E("house", "Haus"),
    E("run", "laufen", "Laufmasche", "Fallmasche"),
]


def write_dictd(folder, name="freedict-eng-deu", compress=True, extra_index_lines=()):
    """Write X.index + X.dict(.dz) with entries stored in reverse order (offsets not in index order)."""
    data, where_at = b"", {}
    for key in reversed(list(DICTD_TEXTS)):
        raw = DICTD_TEXTS[key].encode("utf-8")
        where_at[key] = (len(data), len(raw))
        data += raw
    lines = [f"{head}\t{b64_number(where_at[k][0])}\t{b64_number(where_at[k][1])}" for head, k in DICTD_INDEX]
    index = folder / f"{name}.index"
    index.write_text("\n".join(lines + list(extra_index_lines)) + "\n", encoding="utf-8")
    data_path = folder / (f"{name}.dict.dz" if compress else f"{name}.dict")
    data_path.write_bytes(gzip.compress(data) if compress else data)
    return index, data_path, len(data)


@pytest.mark.parametrize("compress", [True, False], ids=["dict.dz", "dict"])
def test_dictd_entries(tmp_path, compress):
    index, data_path, _ = write_dictd(tmp_path, compress=compress)
    result = read_dictionary(index)
    assert result.entries == DICTD_ENTRIES
    assert result.problems == []
    assert result.skipped == 1  # the multi-word headword "boîte aux lettres"
    assert result.sha256 == hashlib.sha256(index.read_bytes() + data_path.read_bytes()).hexdigest()
    assert result.paths == [str(index), str(data_path)]
    # The data file or the bare name work as well, and fmt="dictd" overrides the extension.
    assert read_dictionary(data_path).entries == DICTD_ENTRIES
    assert read_dictionary(tmp_path / "freedict-eng-deu", fmt="dictd").entries == DICTD_ENTRIES


def test_parse_dictd_entry():
    assert parse_dictd_entry(DICTD_TEXTS["run"]) == ("run", ["laufen"])
    assert parse_dictd_entry(DICTD_TEXTS["ladder"]) == ("run", ["Laufmasche", "Fallmasche"])
    assert parse_dictd_entry(DICTD_TEXTS["phrase"]) == ("boîte aux lettres", ["letterbox", "mailbox"])
    assert parse_dictd_entry("o'clock\nUhr; House-Musik, etw. tun, 3D, (sich) waschen\n") == (
        "o'clock", ["Uhr", "House-Musik", "waschen"])
    assert parse_dictd_entry("\n\n") == ("", [])


def test_dictd_bad_index_lines(tmp_path):
    bad = ["loose\tA", "tree\tA!\tB", "tree\tA\t////", "baum\tA\tB\tbaum\textra"]
    index, data_path, size = write_dictd(tmp_path, compress=False, extra_index_lines=bad)
    with open(data_path, "ab") as f:
        f.write(b"caf\xe9\nx\n")
    with open(index, "a", encoding="utf-8") as f:
        f.write(f"cafe\t{b64_number(size)}\t{b64_number(7)}\n")
    result = read_dictionary(index)
    assert result.entries == DICTD_ENTRIES
    n = len(DICTD_INDEX)
    assert where(result.problems) == [
        (n + 1, "expected 3 tab-separated fields (headword, offset, length), got 2"),
        (n + 2, "bad dictd offset/length 'A!'/'B': '!' is not a dictd base64 digit"),
        (n + 3, f"entry at offset 0 length 16777215 is past the end of freedict-eng-deu.dict ({size + 7} bytes)"),
        (n + 4, "expected 3 tab-separated fields (headword, offset, length), got 5"),
        (n + 5, "entry text is not valid UTF-8 (byte 3 of the entry)"),
    ]
    assert all(p.path == str(index) for p in result.problems)
    record_bad_lines("dictd index", result)
    with pytest.raises(DictionaryError, match=rf"^{index}:{n + 1}: expected 3 tab-separated"):
        read_dictionary(index, strict=True)


def test_dictd_missing_or_broken_data_file(tmp_path):
    index, data_path, _ = write_dictd(tmp_path)
    data_path.write_bytes(b"not gzip at all")
    with pytest.raises(DictionaryError, match="freedict-eng-deu.dict.dz: not a valid dictzip/gzip file") as err:
        read_dictionary(index)
    record_refused("a dictd data file that is not gzip", err)
    data_path.unlink()
    with pytest.raises(DictionaryError, match="no freedict-eng-deu.dict.dz or freedict-eng-deu.dict next to it") as err:
        read_dictionary(index)
    record_refused("a dictd index without its data file", err)
    with pytest.raises(DictionaryError, match="other.index: dictd index file not found"):
        read_dictionary(tmp_path / "other.index")


# ---------------------------------------------------------------------------------------------- several files


def test_read_dictionaries_concatenates(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.jsonl"
    a.write_text("house\tHaus\nx\n", encoding="utf-8")
    write_jsonl(b, [{"words": ["bank", "Bank"]}, "{"])
    result = read_dictionaries([a, b])
    assert result.entries == [E("house", "Haus"), E("bank", "Bank")]
    assert result.problems == [
        Problem(str(a), 2, "expected 2 fields (source<TAB>target), got 1 (whitespace-separated)"),
        Problem(str(b), 2, "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert result.sha256 == hashlib.sha256("\n".join(shas).encode()).hexdigest()
    assert read_dictionaries([a]).sha256 == shas[0]
    with pytest.raises(DictionaryError, match="no dictionary file given"):
        read_dictionaries([])


def test_no_valid_entry_names_the_first_bad_lines(tmp_path):
    """Issue 9, item 6: the error names the file and its first bad lines (file:line: reason), not only a count."""
    only_bad = tmp_path / "allbad.tsv"
    only_bad.write_text("a\tb\tc\n\tx\n", encoding="utf-8")
    with pytest.raises(DictionaryError) as err:
        read_dictionary(only_bad)
    assert str(err.value) == (f"{only_bad}: no valid dictionary entry (2 bad lines, format tsv); first bad lines: "
                              f"{only_bad}:1: expected 2 fields (source<TAB>target), got 3 (tab-separated); "
                              f"{only_bad}:2: empty source word")
    record_refused("a dictionary without one valid line (before: only a count)", err)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_a_huge_word_is_a_bad_line_not_a_word(tmp_path, fmt):
    """Issue 9, item 9: a 10 MB line is a bad line (file:line, the character limit), not a 10-million-token word."""
    from prealign_scale.alignment.dictionaries import MAX_WORD_CHARS

    huge = "x" * 10_000_000
    path = tmp_path / f"d.{fmt}"
    if fmt == "tsv":
        path.write_text(f"house\tHaus\nbig\t{huge}\n", encoding="utf-8")
    else:
        write_jsonl(path, [{"src_text": "house", "tgt_text": "Haus"}, {"words": ["big", huge]}])
    result = read_dictionary(path)
    assert result.entries == [E("house", "Haus")]
    message = f"word of 10000000 characters ('{'x' * 20}'...), longer than the limit MAX_WORD_CHARS={MAX_WORD_CHARS}"
    assert where(result.problems) == [(2, message)]
    assert result.entries[0].where == (f"{path}:1", f"{path}:1")
    record_case("data tools", f"a 10 MB word in a {fmt} dictionary (before: a 10-million-token word, 26 s, 2 GB)",
                "a bad line naming the character limit; the valid lines kept",
                f"bad line `{result.problems[0]}`; {len(result.entries)} valid entries kept")
    with pytest.raises(DictionaryError, match=rf"^{path}:2: word of 10000000 characters"):
        read_dictionary(path, strict=True)
