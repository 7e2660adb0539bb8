"""Rebuild the English-Spanish development pair from Debian's Bible packages (run once by a maintainer; the
output is committed).

Needs `apt-get install bible-kjv bible-kjv-text diatheke sword-text-sparv` at build time only: the English
verses come from the `bible` program (the same text as data/embedded/, checked chapter by chapter), the
Spanish Reina-Valera 1909 verses from the SWORD module `spaRV1909eb` read with `diatheke -f plain`. Both use
the KJV versification, so verse (book, chapter, verse) is aligned across the two.

Writes into the output folder (default: this file's folder):
- verses.en-es.tsv.gz   every verse present in both texts: "id<TAB>english<TAB>spanish" (id "Genesis 1:1"); the
                        input of make_dictionary.py (dictionary induction, never training text)
- en_train.jsonl.gz     English training chapters (a subset of data/embedded/kjv_train.jsonl.gz)
- es_train.jsonl.gz     Spanish training chapters (the other training chapters)
- es_heldout.jsonl.gz   the held-out chapters in Spanish (the same ids as data/embedded/kjv_heldout.jsonl.gz)
One JSON document per chapter, the embedded corpus's schema {"id", "book", "testament", "genre", "text"}; ids
and book names are the KJV's in both languages, so that chapters can be compared across the two.

The split: the held-out chapters are the embedded corpus's (every 25th chapter). The training chapters, in
canonical order, go to Spanish when their position is 3 mod 4 (a quarter of them, spread over every book with
4 or more chapters), to English otherwise; so no chapter is trained in both languages and no held-out chapter
is trained at all. Usage: python data/real/en-es/make_en_es.py [OUT_DIR]
"""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EMBEDDED = ROOT / "data" / "embedded"
SPANISH_MODULE = "spaRV1909eb"
ES_EVERY = 4  # training chapter j goes to Spanish when j % ES_EVERY == ES_EVERY - 1

# diatheke's English book names -> the `bible` program's (the ids of the embedded corpus)
_ROMAN = {"I ": "1 ", "II ": "2 ", "III ": "3 "}


def read_gz_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_gz(path: Path, lines: list[str]) -> None:
    """Byte-reproducible gzip (mtime 0)."""
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        for line in lines:
            f.write((line + "\n").encode("utf-8"))


def english_verses() -> dict[str, list[tuple[int, str]]]:
    """{"Genesis 1": [(1, "In the beginning ..."), ...]} from the `bible` program, parsed as make_kjv.py does."""
    raw = subprocess.run(["bible", "-l0", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters: dict[str, list[tuple[int, str]]] = {}
    cur: list[tuple[int, str]] = []
    for line in raw.splitlines():
        head = re.fullmatch(r"(\S.*?) (\d+)", line.strip()) if line and not line.startswith(" ") else None
        if head:
            cur = chapters.setdefault(f"{head.group(1)} {head.group(2)}", [])
        elif line.strip():
            m = re.match(r"\s*(\d+) (.*)", line)
            if m:
                cur.append((int(m.group(1)), m.group(2).strip()))
            else:  # a continuation line of the previous verse
                n, text = cur[-1]
                cur[-1] = (n, text + " " + line.strip())
    return chapters


def clean_spanish(text: str) -> str:
    """diatheke's plain text minus leftover Strong's tags (<G5547>) and doubled spaces."""
    text = re.sub(r"<[GH]\d+[a-z]?>", "", text)
    return re.sub(r"\s+", " ", text).strip()


def uncapitalise_openings(chapters: dict[str, list[tuple[int, str]]]) -> None:
    """The module writes a chapter's first word or two in capitals ("EN el principio", "Y CONOCIÓ Adam",
    "JEHOVÁ"). Such a word becomes the form the rest of the text uses most ("En", "conoció", "Jehová"; the
    first word of the verse always starts with a capital). In place."""
    forms: dict[str, dict[str, int]] = {}
    for verses in chapters.values():
        for _, text in verses:
            for w in re.findall(r"\w+", text):
                forms.setdefault(w.lower(), {}).setdefault(w, 0)
                forms[w.lower()][w] += 1
    for verses in chapters.values():
        if not verses or verses[0][0] != 1:
            continue
        words = verses[0][1].split(" ")
        for i, w in enumerate(words[:2]):
            core = re.sub(r"\W", "", w)
            if len(core) < 2 or not core.isupper():
                continue
            seen = {f: n for f, n in forms.get(core.lower(), {}).items() if not f.isupper()}
            best = max(seen, key=seen.get) if seen else core.lower()
            if i == 0 or words[0][-1:] in ".:;!?":  # a sentence starts here
                best = best[0].upper() + best[1:]
            words[i] = w.replace(core, best)
        verses[0] = (1, " ".join(words))


def spanish_verses(book_order: list[str]) -> dict[str, list[tuple[int, str]]]:
    """{"Genesis 1": [(1, "En el principio ..."), ...]} with the KJV ids: diatheke's book names are mapped to the
    `bible` program's by their position in the canon (both list the 66 books in the same order)."""
    raw = subprocess.run(["diatheke", "-b", SPANISH_MODULE, "-f", "plain", "-k", "Genesis 1:1-Revelation 22:21"],
                         check=True, capture_output=True, text=True).stdout
    chapters: dict[str, list[tuple[int, str]]] = {}
    books: list[str] = []
    for line in raw.splitlines():
        m = re.match(r"(.+?) (\d+):(\d+): ?(.*)", line)
        if not m:
            continue  # the module's name line at the end
        book, ch, verse, text = m.group(1), int(m.group(2)), int(m.group(3)), clean_spanish(m.group(4))
        if not books or books[-1] != book:
            books.append(book)
        if text:
            chapters.setdefault(f"{book_order[len(books) - 1]} {ch}", []).append((verse, text))
    if len(books) != len(book_order):
        raise SystemExit(f"{SPANISH_MODULE}: {len(books)} books, the KJV has {len(book_order)}")
    uncapitalise_openings(chapters)
    return chapters


def main(out_dir: str) -> None:
    out = Path(out_dir)
    train = read_gz_jsonl(EMBEDDED / "kjv_train.jsonl.gz")
    held = read_gz_jsonl(EMBEDDED / "kjv_heldout.jsonl.gz")
    en = english_verses()
    # the parsed English verses must rebuild the embedded corpus exactly
    for doc in train + held:
        if " ".join(t for _, t in en[doc["id"]]) != doc["text"]:
            raise SystemExit(f"{doc['id']}: the bible program's text differs from the embedded corpus")
    book_order = list(dict.fromkeys(d["book"] for d in sorted(train + held, key=lambda d: list(en).index(d["id"]))))
    es = spanish_verses(book_order)

    # aligned verses (all chapters: dictionary induction only)
    verses, missing = [], 0
    for cid, en_vs in en.items():
        es_map = dict(es.get(cid, []))
        for n, text in en_vs:
            if n in es_map:
                verses.append(f"{cid}:{n}\t{text}\t{es_map[n]}")
            else:
                missing += 1
    write_gz(out / "verses.en-es.tsv.gz", verses)

    def spanish_doc(doc: dict) -> dict:
        return {**doc, "text": " ".join(t for _, t in es[doc["id"]])}

    en_train = [d for j, d in enumerate(train) if j % ES_EVERY != ES_EVERY - 1]
    es_train = [spanish_doc(d) for j, d in enumerate(train) if j % ES_EVERY == ES_EVERY - 1]
    es_held = [spanish_doc(d) for d in held]
    for name, docs in (("en_train.jsonl.gz", en_train), ("es_train.jsonl.gz", es_train),
                       ("es_heldout.jsonl.gz", es_held)):
        write_gz(out / name, [json.dumps(d, ensure_ascii=False) for d in docs])
    print(f"{len(verses)} aligned verses ({missing} English verses without a Spanish one); "
          f"{len(en_train)} en-train + {len(es_train)} es-train + {len(es_held)} es-heldout chapters -> {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
