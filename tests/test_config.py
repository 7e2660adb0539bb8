"""Typed run config: YAML + dotted overrides, resolution from the data, and one clear message per bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from reliability_cases import exit_line, record_case

from prealign_scale.config import Config, ConfigError, parse_config, save_config
from prealign_scale.engine.resolve_config import load_config

ROOT = Path(__file__).resolve().parents[1]
DS = str(ROOT / "ds_configs/cpu_zero3.json")


TABLE_ENTRIES = 8192  # one phase-1 step of every shipped config (align.global_entries)


def touch_shards(folder: Path, n: int) -> None:
    """The (empty) shard files a manifest lists: validation checks that they exist, not their content."""
    for i in range(n):
        (folder / f"shard-{i:06d}.tar").touch()


@pytest.fixture()
def data(tmp_path):
    """Minimal files the validation reads: a manifest and its shard files, a table, a tokenizer.json."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "seq_len": 64, "vocab_size": 800, "languages": ["clone", "en"], "eos_id": 1,
         "shards": [{"name": f"shard-{i:06d}.tar", "samples": 8, "sha256": "0" * 64} for i in range(4)]}))
    touch_shards(shards, 4)
    table = tmp_path / "table"
    table.mkdir()
    (table / "entries.jsonl").write_text("".join(
        json.dumps({"id": i, "words": [f"a{i}", f"b{i}"], "langs": ["en", "clone"], "tokens": [[5], [405]]}) + "\n"
        for i in range(TABLE_ENTRIES)))
    (table / "meta.json").write_text(json.dumps({"vocab_size": 800}))
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    return {"shards": shards, "table": table, "tok": tok}


def write_cfg(tmp_path, files, **sections) -> Path:
    body = {
        "model": {"preset": "tiny"},
        "data": {"shard_dir": str(files["shards"]), "table_dir": str(files["table"]), "tokenizer_dir": str(files["tok"])},
        "align": {"steps": 4, "entries_per_rank": 8},
        "lm": {"steps": 4, "micro_batch_size": 2},
        "run": {"out_dir": str(tmp_path / "run"), "ds_config": DS},
    }
    for sec, kv in sections.items():
        body.setdefault(sec, {}).update(kv)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def error_of(*args, **kw) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(*args, **kw)
    return str(exc.value)


def refused(case: str, *args, **kw) -> str:
    """error_of, recorded as a case of docs/reliability.md (the launcher prints it as one line, exit 2)."""
    msg = error_of(*args, **kw)
    record_case("config", case, "refused before start-up: one line naming the key", f"ConfigError: `{msg}`")
    return msg


def test_defaults_resolve_from_the_data(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data), world_size=2)
    assert cfg.model.vocab_size == 800 and cfg.model.seq_len == 64
    assert cfg.align.grad_accum == 1 and cfg.lm.grad_accum == 1
    assert cfg.phases() == ["align", "lm"]


def test_overrides_types_and_phase(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data), ["lm.steps=20", "align.lr=5e-4", "lm.doc_attention=false",
                                                  "run.phase=lm", "model.vocab_size=1024"])
    assert cfg.lm.steps == 20 and cfg.align.lr == 5e-4 and cfg.lm.doc_attention is False
    assert cfg.phases() == ["lm"] and cfg.model.vocab_size == 1024


def test_global_batch_derives_grad_accum(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data, lm={"global_batch_size": 16}), world_size=2)
    assert cfg.lm.grad_accum == 4  # 16 = 2 per rank x 2 ranks x 4


def test_unknown_key_suggests_the_close_name(tmp_path, data):
    path = write_cfg(tmp_path, data, lm={"stepz": 3})
    msg = refused("a misspelt key in the YAML file", path)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "stepz" in t)
    assert msg == f"{path}:{line}: lm.stepz: unknown key; did you mean lm.steps?"
    assert refused("a misspelt key on the command line", write_cfg(tmp_path, data), ["lm.micro_batch=2"]).startswith(
        "command line 'lm.micro_batch=2': lm.micro_batch: unknown key; did you mean lm.micro_batch_size")
    assert "lmm: unknown section; did you mean lm?" in refused("a misspelt section", write_cfg(tmp_path, data), ["lmm.steps=1"])


def test_wrong_type_names_the_key(tmp_path, data):
    assert refused("a string for an int key", write_cfg(tmp_path, data), ["lm.steps=abc"]) == \
        "command line 'lm.steps=abc': lm.steps: expected int, got 'abc' (str)"
    msg = refused("a string for a bool key", write_cfg(tmp_path, data, lm={"doc_attention": "yes please"}))
    assert msg.endswith("lm.doc_attention: expected bool, got 'yes please' (str)")
    assert refused("a float for an int key", write_cfg(tmp_path, data), ["lm.steps=2.5"]).endswith("lm.steps: expected int, got 2.5 (float)")


def test_missing_files_name_the_key(tmp_path, data):
    msg = refused("data.shard_dir: a missing folder", write_cfg(tmp_path, data, data={"shard_dir": str(tmp_path / "nope")}))
    assert msg == f"data.shard_dir: {tmp_path / 'nope' / 'manifest.json'}: no such file"
    msg = refused("data.table_dir: a folder without a table", write_cfg(tmp_path, data, data={"table_dir": str(tmp_path / "nope")}))
    assert msg == f"data.table_dir: {tmp_path / 'nope'}: no alignment table here (no entries.jsonl)"
    assert refused("run.ds_config: a missing file", write_cfg(tmp_path, data, run={"ds_config": "missing.json"})) == \
        "run.ds_config: missing.json: no such file"
    assert refused("--config: a missing file", tmp_path / "absent.yaml") == f"--config: {tmp_path / 'absent.yaml'}: no such file"
    msg = refused("data.tokenizer_dir: null", write_cfg(tmp_path, data, data={"tokenizer_dir": None}))
    assert msg.startswith("data.tokenizer_dir: None: no tokenizer.json")


def test_batch_not_divisible(tmp_path, data):
    msg = refused("a global batch not divisible by micro batch x ranks", write_cfg(tmp_path, data, lm={"global_batch_size": 10}), world_size=4)
    assert msg == ("lm.global_batch_size: 10 is not divisible by lm.micro_batch_size x data-parallel size = "
                   "2 x 4 = 8")
    msg = refused("grad_accum contradicting the global batch", write_cfg(tmp_path, data, lm={"global_batch_size": 16, "grad_accum": 2}), world_size=2)
    assert msg.startswith("lm.grad_accum: 2 disagrees with lm.global_batch_size=16")
    assert refused("model.tp not dividing the world size", write_cfg(tmp_path, data, model={"tp": 2}), world_size=3) == \
        "model.tp: 2 does not divide the world size 3"
    msg = refused("shards not divisible by the data-parallel size", write_cfg(tmp_path, data), world_size=3)  # 4 shards over 3 ranks
    assert msg.startswith("data.shard_dir: 4 shards are not divisible by the data-parallel size 3")
    msg = refused("reader workers not dividing the shards", write_cfg(tmp_path, data, data={"num_workers": 3}), world_size=2)
    assert msg.startswith("data.num_workers: 3 workers x 2 data-parallel ranks = 6 readers do not divide the 4 shards")


def test_values_and_choices(tmp_path, data):
    assert refused("an unknown model preset", write_cfg(tmp_path, data), ["model.preset=tinyy"]).startswith(
        "model.preset: must be one of")
    assert "(did you mean 'tiny'?)" in error_of(write_cfg(tmp_path, data), ["model.preset=tinyy"])
    assert refused("lm.lr=0", write_cfg(tmp_path, data), ["lm.lr=0"]) == "lm.lr: must be > 0, got 0.0"
    # inf and nan parse as floats and pass every range check (nan < 0 is False): refused by name
    assert refused("lm.lr=.inf (before: NaN loss, NaN export, exit 0)", write_cfg(tmp_path, data), ["lm.lr=.inf"]) == "lm.lr: must be a finite number, got inf"
    assert refused("lm.lr=.nan (before: a traceback after 18 s)", write_cfg(tmp_path, data), ["lm.lr=.nan"]) == "lm.lr: must be a finite number, got nan"
    assert refused("align.lr=-.inf", write_cfg(tmp_path, data), ["align.lr=-.inf"]) == "align.lr: must be a finite number, got -inf"
    assert refused("a fraction above 1", write_cfg(tmp_path, data), ["align.warmup_frac=1.5"]) == \
        "align.warmup_frac: must be between 0 and 1, got 1.5"
    assert refused("model.seq_len other than the shards'", write_cfg(tmp_path, data), ["model.seq_len=128"]).startswith(
        "model.seq_len: 128 differs from the shards' seq_len 64")
    assert refused("model.vocab_size smaller than the shards'", write_cfg(tmp_path, data), ["model.vocab_size=100"]).startswith(
        "model.vocab_size: 100 is smaller than the vocab_size 800")
    assert refused("no step in any phase", write_cfg(tmp_path, data), ["align.steps=0", "lm.steps=0"]).startswith(
        "run.phase: nothing to train")
    assert refused("an unknown attention kind", write_cfg(tmp_path, data), ["model.attention=flash"]).startswith(
        "model.attention: must be one of")


def test_transformer_engine_attention_refuses_the_document_mask(tmp_path, data):
    """TE's core attention is built causal and ignores an explicit mask: 'te' with doc_attention is refused."""
    assert refused("TE attention with the document mask", write_cfg(tmp_path, data), ["model.attention=te"]).startswith(
        "model.attention: 'te' runs megatron's TE core attention with a causal mask type, which ignores the "
        "per-document mask; set lm.doc_attention=false")
    from prealign_scale.model.builder import transformer_engine_available

    if not transformer_engine_available():
        assert error_of(write_cfg(tmp_path, data), ["model.attention=te", "lm.doc_attention=false"]).startswith(
            "model.attention: 'te' needs Transformer Engine")


def test_flex_attention_needs_the_document_mask(tmp_path, data):
    """'flex' exists to build the document block mask: with lm.doc_attention=false it is refused by key."""
    assert load_config(write_cfg(tmp_path, data), ["model.attention=flex"]).model.attention == "flex"
    assert error_of(write_cfg(tmp_path, data), ["model.attention=flex", "lm.doc_attention=false"]).startswith(
        "model.attention: 'flex' builds the per-document block mask, but lm.doc_attention=false")
    # an alignment-only run has no packed documents: nothing to refuse
    cfg = load_config(write_cfg(tmp_path, data), ["model.attention=flex", "lm.doc_attention=false", "lm.steps=0"])
    assert cfg.model.attention == "flex"


def test_tp_defaults_to_the_preset(tmp_path, data):
    """model.tp: null (the default) takes the preset's default_tp; an explicit value wins."""
    assert Config().model.tp is None
    assert load_config(write_cfg(tmp_path, data), world_size=2).model.tp == 1  # tiny: default_tp 1
    cfg = load_config(write_cfg(tmp_path, data, model={"preset": "13b"}), world_size=8)
    assert cfg.model.tp == 2 and cfg.lm.grad_accum == 1  # 8 ranks = TP 2 x DP 4 (4 shards, one per DP rank)
    assert load_config(write_cfg(tmp_path, data, model={"preset": "13b", "tp": 1}), world_size=4).model.tp == 1
    assert error_of(write_cfg(tmp_path, data, model={"preset": "70b"}), world_size=4) == (
        "model.tp: 8 (the default_tp of preset '70b'; set model.tp to choose another) does not divide the world "
        "size 4")
    save_config(cfg, tmp_path / "out" / "config.yaml")  # the saved config records the resolved value
    assert parse_config(tmp_path / "out" / "config.yaml").model.tp == 2


def test_tp_that_cannot_split_the_preset(tmp_path, data):
    """Heads, query groups and FFN width must divide by model.tp: refused here, not in the model builder."""
    assert refused("model.tp that cannot split the preset's query groups", write_cfg(tmp_path, data, model={"tp": 4}), world_size=4) == (
        "model.tp: 4 cannot split preset 'tiny': num_query_groups=2 not divisible by 4 (tensor parallelism "
        "splits the heads, query groups and FFN width); use one of 1, 2")
    assert error_of(write_cfg(tmp_path, data, model={"tp": 3}), world_size=3) == (
        "model.tp: 3 cannot split preset 'tiny': num_attention_heads=4, num_query_groups=2, ffn_hidden_size=176 "
        "not divisible by 3 (tensor parallelism splits the heads, query groups and FFN width); use one of 1, 2")
    assert error_of(write_cfg(tmp_path, data, model={"preset": "70b", "tp": 16}), world_size=16).startswith(
        "model.tp: 16 cannot split preset '70b': num_query_groups=8 not divisible by 16 (tensor parallelism "
        "splits the heads, query groups and FFN width); use one of 1, 2, 4, 8")


@pytest.fixture()
def hf_dir(tmp_path):
    """An HF Llama folder of the tiny preset's shape, vocab 800 (config.json; the weights file is never read)."""
    from transformers import LlamaConfig

    folder = tmp_path / "hf"
    LlamaConfig(vocab_size=800, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_init_hf_is_checked_against_the_preset_and_the_vocab(tmp_path, data, hf_dir):
    path = write_cfg(tmp_path, data, model={"init_hf": str(hf_dir)})
    cfg = load_config(path, world_size=2)
    assert cfg.model.init_hf == str(hf_dir) and cfg.model.vocab_size == 800
    nope = tmp_path / "nope"
    assert refused("model.init_hf: a missing folder", path, [f"model.init_hf={nope}"]) == f"model.init_hf: {nope}: no such folder"
    assert refused("model.init_hf: not an HF model folder", path, [f"model.init_hf={data['tok']}"]) == (
        f"model.init_hf: {data['tok']} has no config.json (not an HF model folder)")
    assert refused("model.init_hf of another shape than the preset", path, ["model.preset=synth-3m"]) == (
        f"model.init_hf: {hf_dir}/config.json: num_hidden_layers=2 but preset 'synth-3m' has num_layers=12 (set "
        "model.preset to the checkpoint's shape)")
    assert refused("model.init_hf of another vocab size", path, ["model.vocab_size=1024"]) == (
        f"model.init_hf: {hf_dir}/config.json: vocab_size=800 differs from the model's 1024 embedding rows "
        "(model.vocab_size=1024); set model.vocab_size=null to take the checkpoint's")
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "vocab_size": 700}))
    assert error_of(path) == (f"model.vocab_size: 700 (the vocab_size of model.init_hf={hf_dir}) is smaller than "
                              "the vocab_size 800 of data.shard_dir (manifest.json)")
    (hf_dir / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    assert error_of(path).startswith(f"model.init_hf: {hf_dir}/config.json: rms_norm_eps=1e-06 but preset 'tiny' "
                                     "has norm_eps=1e-05")
    (hf_dir / "config.json").write_text(json.dumps(config))
    (hf_dir / "model.safetensors").unlink()
    assert refused("model.init_hf without safetensors weights", path) == (f"model.init_hf: {hf_dir} has neither model.safetensors nor "
                              "model.safetensors.index.json (only safetensors checkpoints are read)")


# the per-scale configs and the cluster size each is meant for (comments in the files)
SCALE_CONFIGS = {"150m": 8, "400m": 8, "1.3b": 8, "7b": 32, "13b": 64, "70b": 128}


@pytest.mark.parametrize("name", list(SCALE_CONFIGS))
def test_scale_configs_validate_at_their_cluster_size(tmp_path, data, monkeypatch, name):
    """configs/<scale>.yaml with real data paths given on the command line: valid at its world size, the
    preset's TP, a GPU ds_config, and the batch arithmetic exact (global batch = micro x accum x DP)."""
    from prealign_scale.model.presets import PRESETS

    preset, world = PRESETS[name], SCALE_CONFIGS[name]
    (data["shards"] / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "seq_len": preset.default_seq_len, "vocab_size": 50304, "languages": ["de", "en"], "eos_id": 1,
         "shards": [{"name": f"shard-{i:06d}.tar", "samples": 100, "sha256": "0" * 64} for i in range(128)]}))
    touch_shards(data["shards"], 128)
    monkeypatch.chdir(ROOT)  # the config's ds_config path is relative to the repository root
    overrides = [f"data.shard_dir={data['shards']}", f"data.table_dir={data['table']}",
                 f"data.tokenizer_dir={data['tok']}", f"run.out_dir={tmp_path / 'run'}"]
    cfg = load_config(ROOT / f"configs/{name}.yaml", overrides, world_size=world)
    dp = world // cfg.model.tp
    assert cfg.model.preset == name and cfg.model.tp == preset.default_tp
    assert cfg.model.seq_len == preset.default_seq_len and cfg.model.vocab_size == 50304
    assert cfg.run.ds_config.startswith("ds_configs/gpu_zero3_bf16")
    assert cfg.lm.micro_batch_size * cfg.lm.grad_accum * dp == cfg.lm.global_batch_size
    assert cfg.align.entries_per_rank * cfg.align.grad_accum * dp == cfg.align.global_entries == 8192


def test_ds_config_batch_keys_refused(tmp_path, data):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_batch_size": 32}))
    msg = refused("a ds_config with its own batch sizes", write_cfg(tmp_path, data, run={"ds_config": str(ds)}))
    assert msg.startswith(f"run.ds_config: {ds}: train_batch_size=32: batch sizes come from")


def test_saved_config_round_trips(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data), ["lm.steps=7"], world_size=2)
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = parse_config(tmp_path / "out" / "config.yaml")
    assert again == cfg and isinstance(again, Config)


def test_shipped_configs_parse():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = parse_config(path)
        assert cfg.run.ds_config and (ROOT / cfg.run.ds_config).is_file(), path


@pytest.mark.slow
def test_bad_config_through_the_launcher_stops_before_the_process_group(tmp_path, data):
    """2 ranks under the real deepspeed launcher: exit 2, exactly one message, no process group started."""
    from prealign_scale.dist import free_port

    path = write_cfg(tmp_path, data, lm={"stepz": 3})
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               GLOO_SOCKET_IFNAME="lo")
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "launchers/pretrain.py", "--config", str(path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("config error:")]
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "stepz" in t)
    assert errors == [f"config error: {path}:{line}: lm.stepz: unknown key; did you mean lm.steps?"], out
    assert "init_distributed" not in out and "Initializing TorchBackend" not in out, out
    record_case("config", "a misspelt key, 2 ranks under the deepspeed launcher",
                "exit 2, one message for the job, no process group started",
                f"exit {proc.returncode}, {len(errors)} message(s): `{errors[0]}`; process group started: False")


def test_launcher_parses_phase_and_overrides_and_exits_2(tmp_path, data, capsys, monkeypatch):
    """launchers/pretrain.py in-process: intermixed --phase and overrides; a bad key -> status 2, one line."""
    import importlib.util

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID")})
    spec = importlib.util.spec_from_file_location("pretrain_launcher", ROOT / "launchers/pretrain.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    path = write_cfg(tmp_path, data)
    rc = launcher.main(["--config", str(path), "lm.steps=3", "--phase", "lm", "lm.stepz=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == "config error: command line 'lm.stepz=1': lm.stepz: unknown key; did you mean lm.steps?\n"
    record_case("config", "launchers/pretrain.py: a misspelt override among --phase and other overrides",
                "exit 2, one line, no traceback", exit_line(rc, err))
    with pytest.raises(SystemExit):  # argparse: no prefix matching of flags (torchrun's trap, STACK.md)
        launcher.main(["--conf", str(path)])


# ------------------------------------------------ issue 9, items 4 and 8: found before start-up, not after it


def test_a_shard_listed_but_missing_is_named_before_start_up(tmp_path, data):
    (data["shards"] / "shard-000002.tar").unlink()
    msg = refused("a shard listed in the manifest but missing (before: a traceback 11-38 s after launch)", write_cfg(tmp_path, data), world_size=2)
    assert msg == (f"data.shard_dir: {data['shards'] / 'shard-000002.tar'}: listed in manifest.json (shards[2]) but "
                   "missing; copy the whole shard folder or rebuild it")


def test_a_table_smaller_than_one_phase1_step_names_the_keys(tmp_path, data):
    entries = data["table"] / "entries.jsonl"
    entries.write_text("".join(entries.read_text().splitlines(keepends=True)[:15]))  # 15 < 8 x 2 ranks
    msg = refused("a table with fewer align entries than one phase-1 step (before: a traceback after start-up)",
                  write_cfg(tmp_path, data), world_size=2)
    assert msg == (f"align.entries_per_rank: 8 x 2 data-parallel ranks = 16 entries a phase-1 step, but "
                   f"{data['table']} has 15 usable align entries; use a smaller align.entries_per_rank or a larger "
                   "table")
    load_config(write_cfg(tmp_path, data), world_size=1)  # 8 x 1 fits
    assert "align.entries_per_rank" in error_of(write_cfg(tmp_path, data, align={"entries_per_rank": 16}))


def test_table_and_tokenizer_must_be_the_shards_tokenizer(tmp_path, data):
    from prealign_scale.text.tokenizer import tokenizer_sha256

    tok_sha = tokenizer_sha256(data["tok"])
    manifest_path = data["shards"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "tokenizer_sha256": "a" * 64}))
    msg = refused("data.tokenizer_dir of another tokenizer than the shards' (before: hf/ shipped it)",
                  write_cfg(tmp_path, data), world_size=2)
    assert msg == (f"data.tokenizer_dir: {data['tok'] / 'tokenizer.json'} is another tokenizer (sha256 "
                   f"{tok_sha[:12]}...) than the one {manifest_path} records (sha256 aaaaaaaaaaaa...); use the files "
                   "built with one tokenizer")
    manifest_path.write_text(json.dumps({**manifest, "tokenizer_sha256": tok_sha}))
    meta_path = data["table"] / "meta.json"
    meta_path.write_text(json.dumps({"vocab_size": 800, "tokenizer_sha256": "b" * 64}))
    msg = refused("data.table_dir made with another tokenizer than the shards'", write_cfg(tmp_path, data),
                  world_size=2)
    assert msg == (f"data.table_dir: {meta_path} was made with another tokenizer (sha256 bbbbbbbbbbbb...) than the "
                   f"one {manifest_path} records (sha256 {tok_sha[:12]}...); use the files built with one tokenizer")
    meta_path.write_text(json.dumps({"vocab_size": 800, "tokenizer_sha256": tok_sha}))
    load_config(write_cfg(tmp_path, data), world_size=2)  # all three agree
    # phase 1 only (no shards read): the tokenizer folder is checked against the table
    meta_path.write_text(json.dumps({"vocab_size": 800, "tokenizer_sha256": "b" * 64}))
    msg = refused("phase 1 only: data.tokenizer_dir of another tokenizer than the table's",
                  write_cfg(tmp_path, data, lm={"steps": 0}), world_size=2)
    assert msg.startswith(f"data.tokenizer_dir: {data['tok'] / 'tokenizer.json'} is another tokenizer")
    assert f"than the one {meta_path} records" in msg


def test_verify_sha256_needs_checksums_in_the_manifest(tmp_path, data):
    manifest_path = data["shards"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["shards"][3]["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    assert refused("data.verify_sha256 on, a manifest without a shard's sha256", write_cfg(tmp_path, data),
                   world_size=2) == (
        f"data.verify_sha256: true, but {manifest_path} records no sha256 for shards[3]; rebuild the shards or set "
        "data.verify_sha256=false")
    assert load_config(write_cfg(tmp_path, data, data={"verify_sha256": False}), world_size=2).data.verify_sha256 is False


# --- phase 1: align.epochs, align.stop_at_seen_acc, align.word_bos ---------------------------------------------
def _table(folder: Path, n: int, long_every: int = 0) -> Path:
    folder.mkdir()
    rows = [{"id": i, "words": [f"a{i}", f"b{i}"], "langs": ["en", "clone"],
             "tokens": [[5] * (70 if long_every and i % long_every == 0 else 1), [405]]} for i in range(n)]
    rows.append({"id": n, "words": ["h", "H"], "langs": ["en", "clone"], "tokens": [[6], [406]], "split": "heldout"})
    (folder / "entries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "meta.json").write_text(json.dumps({"vocab_size": 800}))
    return folder


def test_align_epochs_derive_the_steps(tmp_path, data):
    data["table"] = _table(tmp_path / "t50", 50)  # 50 align entries (+1 held out, not counted)
    cfg = load_config(write_cfg(tmp_path, data, align={"steps": 0, "epochs": 2.0}), world_size=2)
    assert cfg.align.steps == 6 and cfg.align.epochs == 2.0  # 50 // (8 x 2) = 3 steps per pass
    assert cfg.phases() == ["align", "lm"]
    cfg = load_config(write_cfg(tmp_path, data, align={"steps": 0, "epochs": 2.0, "global_entries": 32}),
                      world_size=2)
    assert (cfg.align.grad_accum, cfg.align.steps) == (2, 3)  # 32 entries per step: 3 passes' worth = 6 / 2
    cfg = load_config(write_cfg(tmp_path, data, align={"steps": 0, "epochs": 0.5}), world_size=2)
    assert cfg.align.steps == 2  # ceil(1.5)
    # saved resolved (steps and epochs), the file loads again to the same steps
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml", world_size=2).align.steps == 2


def test_align_epochs_count_only_the_words_that_fit(tmp_path, data):
    data["table"] = _table(tmp_path / "t50", 50, long_every=2)  # 25 entries have a 70-token word > seq_len 64
    cfg = load_config(write_cfg(tmp_path, data, align={"steps": 0, "epochs": 1.0}), world_size=1)
    assert cfg.align.steps == 3  # 25 // 8


def test_align_epochs_errors_name_the_key(tmp_path, data):
    data["table"] = _table(tmp_path / "t50", 50)
    msg = error_of(write_cfg(tmp_path, data, align={"steps": 5, "epochs": 2.0}), world_size=2)
    assert msg.startswith("align.epochs: 2 passes over 50 entries at 16 entries per step = 6 steps, but "
                          "align.steps=5; set only one of align.steps and align.epochs")
    msg = error_of(write_cfg(tmp_path, data, align={"steps": 0, "epochs": 1.0, "global_entries": 64}), world_size=2)
    assert msg.startswith("align.epochs: the align part of") and "fewer than one optimizer step" in msg
    msg = error_of(write_cfg(tmp_path, data, align={"steps": 0, "epochs": -1.0}))
    assert msg.startswith("align.epochs: must be > 0")


def test_stop_at_seen_acc_needs_the_probe(tmp_path, data):
    msg = error_of(write_cfg(tmp_path, data, align={"stop_at_seen_acc": 0.95}))
    assert msg.startswith("align.stop_at_seen_acc: 0.95 needs the in-training probe (run.probe_every > 0")
    cfg = load_config(write_cfg(tmp_path, data, align={"stop_at_seen_acc": 0.95}, run={"probe_every": 5}))
    assert cfg.align.stop_at_seen_acc == 0.95 and cfg.align.warn_below_seen_acc == 0.9
    msg = error_of(write_cfg(tmp_path, data, align={"warn_below_seen_acc": 1.5}))
    assert msg == "align.warn_below_seen_acc: must be between 0 and 1, got 1.5"


def _word_level_tokenizer(folder: Path, bos: bool) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir()
    Tokenizer(WordLevel({"<unk>": 0, "<s>": 1, "a": 2}, unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    if bos:
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "unk_token": "<unk>"}))
    return folder


def test_word_bos_takes_the_tokenizers_bos_or_fails_naming_the_key(tmp_path, data):
    data["tok"] = _word_level_tokenizer(tmp_path / "tok_bos", bos=True)
    cfg = load_config(write_cfg(tmp_path, data, align={"word_bos": True}))
    assert cfg.align.word_bos is True and cfg.align.bos_id == 1
    assert load_config(write_cfg(tmp_path, data)).align.bos_id is None  # off: nothing resolved
    data["tok"] = _word_level_tokenizer(tmp_path / "tok_none", bos=False)
    msg = error_of(write_cfg(tmp_path, data, align={"word_bos": True}))
    assert msg.startswith("align.word_bos: true, but the tokenizer") and "has no BOS token" in msg
    cfg = load_config(write_cfg(tmp_path, data, align={"word_bos": True, "bos_id": 2}))  # a document-start id
    assert cfg.align.bos_id == 2
    msg = error_of(write_cfg(tmp_path, data, align={"word_bos": True, "bos_id": 900}))
    assert msg == "align.bos_id: 900 is not below model.vocab_size 800"
