"""Rebuild the embedded corpus from Debian's `bible-kjv` + `bible-kjv-text` packages.

Run once by a maintainer (the output is committed); needs `apt-get install bible-kjv bible-kjv-text`.
One JSON document per chapter: {"id", "book", "testament", "genre", "text"}; every 25th chapter goes to the
held-out file. Usage: python data/embedded/make_kjv.py data/embedded
"""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

# Book -> genre (the conventional division of the canon); used for the shipped classification task.
GENRES = {
    "law": "Genesis Exodus Leviticus Numbers Deuteronomy",
    "history": "Joshua Judges Ruth 1Samuel 2Samuel 1Kings 2Kings 1Chronicles 2Chronicles Ezra Nehemiah Esther Acts",
    "poetry": "Job Psalms Proverbs Ecclesiastes Song",
    "prophets": "Isaiah Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk "
    "Zephaniah Haggai Zechariah Malachi Revelation",
    "gospels": "Matthew Mark Luke John",
    "epistles": "Romans 1Corinthians 2Corinthians Galatians Ephesians Philippians Colossians 1Thessalonians "
    "2Thessalonians 1Timothy 2Timothy Titus Philemon Hebrews James 1Peter 2Peter 1John 2John 3John Jude",
}
BOOK_GENRE = {b: g for g, books in GENRES.items() for b in books.split()}


def main(out_dir: str) -> None:
    raw = subprocess.run(["bible", "-l0", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters, cur = [], None
    for line in raw.splitlines():
        head = re.fullmatch(r"(\S.*?) (\d+)", line.strip()) if line and not line.startswith(" ") else None
        if head:
            cur = {"book": head.group(1), "chapter": int(head.group(2)), "verses": []}
            chapters.append(cur)
        elif line.strip():
            m = re.match(r"\s*\d+ (.*)", line)
            if m:
                cur["verses"].append(m.group(1).strip())
            else:
                cur["verses"][-1] += " " + line.strip()
    ot = True
    train, held = [], []
    for i, ch in enumerate(chapters):
        if ch["book"] == "Matthew":
            ot = False
        key = ch["book"].replace(" ", "").split("of")[0]
        genre = BOOK_GENRE.get(key) or BOOK_GENRE.get(ch["book"].split()[0], "unknown")
        doc = {
            "id": f"{ch['book']} {ch['chapter']}",
            "book": ch["book"],
            "testament": "OT" if ot else "NT",
            "genre": genre,
            "text": " ".join(ch["verses"]),
        }
        (held if i % 25 == 24 else train).append(doc)
    out = Path(out_dir)
    for name, docs in (("kjv_train.jsonl.gz", train), ("kjv_heldout.jsonl.gz", held)):
        with gzip.GzipFile(out / name, "wb", mtime=0) as f:
            for d in docs:
                f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    print(f"{len(train)} train + {len(held)} held-out chapters -> {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
