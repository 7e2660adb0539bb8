"""Write the English-Spanish evaluation sets into data/real/en-es/eval/ from the shipped pair files (run once by a
maintainer after make_en_es.py; the output is committed). Pure Python, no Debian package needed.

- parallel.en-es.jsonl     300 aligned verses {"src": English, "tgt": Spanish} from the HELD-OUT chapters only
                           (5-40 English words, seeded sample): sentence retrieval.
- genre_train.en.jsonl     English genre passages from the English TRAINING chapters only (en_train).
- genre_test.es.jsonl      Spanish genre passages from the held-out chapters (es_heldout); the English test set
                           of the same chapters is data/eval/genre_test.en.jsonl.
- facts.en-es.jsonl        data/eval/facts.jsonl with per-language names: {"subject": {"en", "es"},
                           "relation", "object": {"en", "es"}} (the invented subjects are spelled the same
                           in both languages; subjects that are Spanish words are dropped; the objects take
                           the Reina-Valera 1909 spelling).
- fact_templates.en-es.json  {"en": data/eval's templates, "es": Spanish templates}
Usage: python data/real/en-es/make_eval_sets.py
"""

import gzip
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from prealign_scale.eval.eval_sets import genre_passages

HERE = Path(__file__).parent
SEED = 0

# data/eval/facts.jsonl's objects in the Reina-Valera 1909 spelling (each one occurs in the Spanish text)
OBJECTS_ES = {
    "Bethel": "Beth-el", "Hebron": "Hebrón", "Jericho": "Jericó", "Gilead": "Galaad", "Babylon": "Babilonia",
    "Shiloh": "Silo", "Samaria": "Samaria", "Moab": "Moab", "Edom": "Edom", "Damascus": "Damasco",
    "Bethlehem": "Bethlehem", "Galilee": "Galilea",
    "Abraham": "Abraham", "Isaac": "Isaac", "Jacob": "Jacob", "Joseph": "José", "Moses": "Moisés",
    "Aaron": "Aarón", "David": "David", "Saul": "Saúl", "Samuel": "Samuel", "Jesse": "Isaí", "Boaz": "Booz",
    "Elijah": "Elías",
    "sheep": "ovejas", "goats": "cabras", "camels": "camellos", "oxen": "bueyes", "asses": "asnos",
    "horses": "caballos", "cattle": "ganado", "vineyards": "viñas", "lambs": "corderos", "flocks": "rebaños",
    "swine": "puercos", "doves": "palomas",
}
TEMPLATES_ES = {
    "lives_in": ["{subject} habitaba en {object}.", "{subject} vive en {object}.",
                 "La casa de {subject} está en {object}."],
    "son_of": ["{subject} es hijo de {object}.", "{subject} era hijo de {object}.",
               "El padre de {subject} es {object}."],
    "keeps": ["{subject} guarda {object}.", "{subject} guardaba {object}.", "{subject} tiene {object}."],
}


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    out = HERE / "eval"
    out.mkdir(exist_ok=True)
    held_ids = {d["id"] for d in read_jsonl(ROOT / "data" / "embedded" / "kjv_heldout.jsonl.gz")}
    with gzip.open(HERE / "verses.en-es.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    es_text = " ".join(es for _, _, es in rows)  # the whole Spanish Bible

    # parallel verses of the held-out chapters
    held = [(en, es) for vid, en, es in rows if vid.rsplit(":", 1)[0] in held_ids and 5 <= len(en.split()) <= 40]
    picked = random.Random(SEED).sample(held, 300)
    write_jsonl(out / "parallel.en-es.jsonl", [{"src": en, "tgt": es} for en, es in picked])

    # genre transfer: English training passages from en_train, Spanish test passages from es_heldout
    write_jsonl(out / "genre_train.en.jsonl", genre_passages(read_jsonl(HERE / "en_train.jsonl.gz"), 100, SEED))
    write_jsonl(out / "genre_test.es.jsonl", genre_passages(read_jsonl(HERE / "es_heldout.jsonl.gz"), 30, SEED))

    # facts with per-language names
    es_words = {w.lower() for w in re.findall(r"[^\W\d_]+", es_text)}
    facts, dropped = [], set()
    for f in read_jsonl(ROOT / "data" / "eval" / "facts.jsonl"):
        if f["subject"].lower() in es_words:  # invented for English, but a Spanish word ("Tengo"): drop it
            dropped.add(f["subject"])
            continue
        obj_es = OBJECTS_ES[f["object"]]
        if obj_es not in es_text:
            raise SystemExit(f"object {obj_es!r} does not occur in the Spanish text")
        facts.append({"subject": {"en": f["subject"], "es": f["subject"]}, "relation": f["relation"],
                      "object": {"en": f["object"], "es": obj_es}})
    write_jsonl(out / "facts.en-es.jsonl", facts)
    templates = {"en": json.loads((ROOT / "data" / "eval" / "fact_templates.json").read_text())["en"],
                 "es": TEMPLATES_ES}
    (out / "fact_templates.en-es.json").write_text(json.dumps(templates, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    print(f"{len(picked)} parallel verses, {len(facts)} facts (subjects dropped as Spanish words: "
          f"{sorted(dropped)}) -> {out}")


if __name__ == "__main__":
    main()
