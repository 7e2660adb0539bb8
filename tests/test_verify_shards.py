"""The shard verifier on damaged folders: every bad shard named with its reason, every other shard checked."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from kjv_sample import kjv_lines, train_tokenizer_on
from reliability_cases import raised, record_case

from prealign_scale.data.build_config import BuildConfig
from prealign_scale.data.build_shards import build_shards
from prealign_scale.data.shard_format import SampleFormatError, decode_sample
from prealign_scale.data.verify import iter_tar_samples, verify_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """4 shards of 2 languages (en, de: KJV chapters), seq_len 64."""
    d = tmp_path_factory.mktemp("verify")
    lines = kjv_lines(40)
    train_tokenizer_on(lines, d / "tok", 400)
    (d / "en.jsonl").write_text("".join(lines[:20]))
    (d / "de.jsonl").write_text("".join(lines[20:40]))
    cfg = BuildConfig(corpora={"en": [str(d / "en.jsonl")], "de": [str(d / "de.jsonl")]}, tokenizer=str(d / "tok"),
                      p=0.0, seq_len=64, samples_per_shard=200, shard_multiple=4)
    build_shards(cfg, d / "shards", progress=False)
    assert len(json.loads((d / "shards/manifest.json").read_text())["shards"]) == 4
    return d / "shards"


def edit_meta(shard: Path, sample: int, change) -> str:
    """Rewrite `shard` with change(meta) applied to the meta.json of its sample `sample`; returns that key."""
    samples = list(iter_tar_samples(shard))
    key = samples[sample]["__key__"]
    meta = json.loads(samples[sample]["meta.json"])
    change(meta)
    samples[sample]["meta.json"] = json.dumps(meta).encode()
    with tarfile.open(shard, "w") as tar:
        for s in samples:
            for member in ("input_ids.bin", "targets.bin", "segments.bin", "meta.json"):
                info = tarfile.TarInfo(f"{s['__key__']}.{member}")
                info.size = len(s[member])
                tar.addfile(info, io.BytesIO(s[member]))
    return key


def test_broken_meta_named_and_other_shards_still_checked(built, tmp_path):
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(built, bad, ignore=shutil.ignore_patterns(".work"))
    # shard 1: "langs" renamed (the verifier died on KeyError: 'langs' here); shard 3: a language the manifest
    # does not list, and a doc id too many; shards 0 and 2 stay good
    k1 = edit_meta(bad / "shard-000001.tar", 0, lambda m: m.update(languages=m.pop("langs")))
    k3 = edit_meta(bad / "shard-000003.tar", 5, lambda m: m.update(langs=["xx"] * len(m["langs"])))
    k3b = edit_meta(bad / "shard-000003.tar", 7, lambda m: m["doc_ids"].append("en/999"))
    report = verify_shards(bad)
    assert report.shards_checked == 4 and sorted(report.problems) == ["shard-000001.tar", "shard-000003.tar"]
    per_shard = json.loads((bad / "manifest.json").read_text())["shards"][0]["samples"]
    assert report.samples_checked == 3 * per_shard  # shards 0, 2 and 3 read to the end; shard 1 stopped
    assert report.problems["shard-000001.tar"] == [
        "sha256 differs from the manifest (corrupted or modified)",
        (f"{bad / 'shard-000001.tar'}: sample {k1}: meta.json field 'langs' must be a list of strings (missing) "
         "(checking of this shard stopped after 0 samples)"),
    ]
    p3 = report.problems["shard-000003.tar"]
    assert p3[0] == "sha256 differs from the manifest (corrupted or modified)"
    assert p3[1] == f"sample {k3}: meta.json langs ['xx'] are not in the manifest's languages ['de', 'en']"
    assert p3[2].startswith(f"sample {k3b}: ") and p3[2].endswith(" doc_ids (one of each per segment)")
    assert p3[3].startswith("lang_tokens: {") and "'xx'" in p3[3]
    assert len(p3) == 4

    out = subprocess.run([sys.executable, str(ROOT / "data_tools/verify_shards.py"), str(bad)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and out.stderr == ""
    assert out.stdout.splitlines()[0] == f"BAD: 2 of 4 shards in {bad} have problems:"
    assert f"  shard-000001.tar: {bad / 'shard-000001.tar'}: sample {k1}: meta.json field 'langs'" in out.stdout
    record_case("data tools", "verify_shards.py on a folder with 2 of 4 shards edited (a renamed meta field; "
                "a language not in the manifest, a doc id too many)",
                "exit 1, every bad shard named with each reason, the other shards checked to the end",
                f"exit {out.returncode}, `{out.stdout.splitlines()[0]}`; problems: "
                f"{', '.join(f'{k}: {len(v)}' for k, v in sorted(report.problems.items()))}; "
                f"shards checked: {report.shards_checked}")


def test_damaged_manifest_is_reported_not_raised(built, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(built, bad, ignore=shutil.ignore_patterns(".work"))
    m = json.loads((bad / "manifest.json").read_text())
    del m["shards"][2]["sha256"]
    (bad / "manifest.json").write_text(json.dumps(m))
    report = verify_shards(bad)
    assert report.problems == {"manifest.json": ["shards[2]: missing field(s) ['sha256']"]}
    record_case("data tools", "verify_shards on a manifest missing a shard's sha256", "reported, not raised",
                f"problem `manifest.json: {report.problems['manifest.json'][0]}`")


@pytest.mark.parametrize("meta, message", [
    ({"doc_ids": ["a"], "switched_words": 0}, "meta.json field 'langs' must be a list of strings (missing)"),
    ({"langs": "en", "doc_ids": ["a"], "switched_words": 0},
     """meta.json field 'langs' must be a list of strings (got "en")"""),
    ({"langs": ["en"], "doc_ids": [3], "switched_words": 0},
     "meta.json field 'doc_ids' must be a list of strings (got [3])"),
    ({"langs": ["en"], "doc_ids": ["a"], "switched_words": "2"},
     """meta.json field 'switched_words' must be an integer >= 0 (got "2")"""),
    ({"langs": ["en"], "doc_ids": ["a"]}, "meta.json field 'switched_words' must be an integer >= 0 (missing)"),
    (["en"], "meta.json must be a JSON object, got list"),
])
def test_decode_sample_names_bad_meta_fields(meta, message):
    raw = {"__url__": "s/shard-000007.tar", "__key__": "000007-000003", "input_ids.bin": b"\0" * 8,
           "targets.bin": b"\0" * 8, "segments.bin": b"\0" * 4, "meta.json": json.dumps(meta).encode()}
    with pytest.raises(SampleFormatError) as err:
        decode_sample(raw)
    assert str(err.value) == f"s/shard-000007.tar: sample 000007-000003: {message}"
    record_case("data tools", f"a shard sample whose meta.json is {json.dumps(meta)}",
                "SampleFormatError naming the shard, the sample and the field", raised(err.value))
