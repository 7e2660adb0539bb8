"""Convert between the megatron-core GPTModel state dict (builder.py) and HF `LlamaForCausalLM`.

Layouts (megatron, TP-merged, i.e. a tensor-parallel size 1 state dict):
- ``decoder.layers.i.self_attention.linear_qkv.weight`` [ng * (r + 2) * d, h]: for each of the ng query
  groups, its r = heads / ng query heads, then its key head, then its value head (d rows each). HF keeps
  ``q_proj`` [heads * d, h], ``k_proj`` / ``v_proj`` [ng * d, h], heads in the same order.
- ``decoder.layers.i.mlp.linear_fc1.weight`` [2 * ffn, h] = [gate; up] (megatron's GLU: silu(first half) *
  second half) -> HF ``gate_proj``, ``up_proj``; ``linear_fc2`` -> ``down_proj``; ``linear_proj`` ->
  ``o_proj``.
- norms: ``input_layernorm`` -> ``input_layernorm``, ``pre_mlp_layernorm`` -> ``post_attention_layernorm``,
  ``decoder.final_layernorm`` -> ``model.norm``; embeddings: ``embedding.word_embeddings`` ->
  ``model.embed_tokens``, ``output_layer`` -> ``lm_head`` (untied).
- Transformer Engine's spec fuses the norms into the next linear (``linear_qkv.layer_norm_weight``,
  ``linear_fc1.layer_norm_weight``): accepted on export, produced on import with ``te_layout=True``.

RoPE: megatron's non-interleaved rotary (``_rotate_half``: halves [x1, x2] -> [-x2, x1], frequencies
``cat(freqs, freqs)``, inv_freq = theta^(-2i/d)) is HF Llama's ``rotate_half`` convention exactly, so no
permutation of q/k rows is needed (unlike Meta's original interleaved checkpoints). RMSNorm: both compute
``w * x / sqrt(mean(x^2) + eps)``; eps and theta are written into config.json from the preset.

Tensor parallelism: a run with TP > 1 yields one state dict per TP rank; `merge_tp_shards` makes the TP-1
dict (fc1 is stored per rank as [gate_r; up_r], megatron's stride-2 split) and `split_tp_shards` inverts it.

Starting a run from an HF folder (``model.init_hf``): `check_hf_folder` compares its config.json with a preset
without reading weights (config validation); `HFCheckpointReader` gives the megatron tensors by parameter
name, reading and converting one block at a time (engine/hf_init.py copies them into the partitioned model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from prealign_scale.model.presets import PRESETS, ModelPreset

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SIDECAR_NAME = "prealign_model.json"
_LAYER = "decoder.layers.{i}."
_LOCAL_NORMS = ("input_layernorm.weight", "pre_mlp_layernorm.weight")
_TE_NORMS = ("self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight")


def _get(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"state dict has no {key!r} (is it a TP-merged megatron GPTModel state dict of the right "
                       f"preset? first keys: {list(sd)[:4]})")
    return sd[key]


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not match the preset, expected {shape}")


def megatron_to_hf_state_dict(sd: dict, preset: ModelPreset, vocab_size: int) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM state dict from a TP-merged megatron GPTModel state dict (local or TE layout).

    ``_extra_state`` entries are ignored. Tensors keep their dtype; they are new (contiguous) tensors, so the
    result can be saved with safetensors.
    """
    h, d, nh, ng, ffn = (preset.hidden_size, preset.head_dim, preset.num_attention_heads,
                         preset.num_query_groups, preset.ffn_hidden_size)
    r = nh // ng
    te = _LAYER.format(i=0) + _TE_NORMS[0] in sd
    norm_keys = _TE_NORMS if te else _LOCAL_NORMS
    out: dict[str, torch.Tensor] = {}

    emb = _get(sd, "embedding.word_embeddings.weight")
    _check_shape("embedding.word_embeddings.weight", emb, (vocab_size, h))
    out["model.embed_tokens.weight"] = emb.detach().clone()
    for i in range(preset.num_layers):
        pre, hf = _LAYER.format(i=i), f"model.layers.{i}."
        qkv = _get(sd, pre + "self_attention.linear_qkv.weight")
        _check_shape(pre + "self_attention.linear_qkv.weight", qkv, (ng * (r + 2) * d, h))
        groups = qkv.detach().reshape(ng, r + 2, d, h)
        out[hf + "self_attn.q_proj.weight"] = groups[:, :r].reshape(nh * d, h).clone()
        out[hf + "self_attn.k_proj.weight"] = groups[:, r].reshape(ng * d, h).clone()
        out[hf + "self_attn.v_proj.weight"] = groups[:, r + 1].reshape(ng * d, h).clone()
        proj = _get(sd, pre + "self_attention.linear_proj.weight")
        _check_shape(pre + "self_attention.linear_proj.weight", proj, (h, nh * d))
        out[hf + "self_attn.o_proj.weight"] = proj.detach().clone()
        fc1 = _get(sd, pre + "mlp.linear_fc1.weight")
        _check_shape(pre + "mlp.linear_fc1.weight", fc1, (2 * ffn, h))
        out[hf + "mlp.gate_proj.weight"] = fc1.detach()[:ffn].clone()
        out[hf + "mlp.up_proj.weight"] = fc1.detach()[ffn:].clone()
        fc2 = _get(sd, pre + "mlp.linear_fc2.weight")
        _check_shape(pre + "mlp.linear_fc2.weight", fc2, (h, ffn))
        out[hf + "mlp.down_proj.weight"] = fc2.detach().clone()
        out[hf + "input_layernorm.weight"] = _get(sd, pre + norm_keys[0]).detach().clone()
        out[hf + "post_attention_layernorm.weight"] = _get(sd, pre + norm_keys[1]).detach().clone()
    out["model.norm.weight"] = _get(sd, "decoder.final_layernorm.weight").detach().clone()
    head = _get(sd, "output_layer.weight")
    _check_shape("output_layer.weight", head, (vocab_size, h))
    out["lm_head.weight"] = head.detach().clone()
    return out


def _put_linear(out: dict, key: str, weight: torch.Tensor, te_layout: bool) -> None:
    out[key + ".weight"] = weight
    if not te_layout:  # megatron's local linears report an (empty) extra state in state_dict()
        out[key + "._extra_state"] = None


def _hf_layer_to_megatron(hf_sd, preset: ModelPreset, i: int, *, te_layout: bool) -> dict:
    """The megatron entries of block `i` (keys ``decoder.layers.i.*``) from an HF state dict (or a lazy view)."""
    h, d, nh, ng, ffn = (preset.hidden_size, preset.head_dim, preset.num_attention_heads,
                         preset.num_query_groups, preset.ffn_hidden_size)
    r = nh // ng
    out: dict = {}
    pre, hf = _LAYER.format(i=i), f"model.layers.{i}."
    norms = (_get(hf_sd, hf + "input_layernorm.weight"), _get(hf_sd, hf + "post_attention_layernorm.weight"))
    q = _get(hf_sd, hf + "self_attn.q_proj.weight")
    k = _get(hf_sd, hf + "self_attn.k_proj.weight")
    v = _get(hf_sd, hf + "self_attn.v_proj.weight")
    _check_shape(hf + "self_attn.q_proj.weight", q, (nh * d, h))
    _check_shape(hf + "self_attn.k_proj.weight", k, (ng * d, h))
    _check_shape(hf + "self_attn.v_proj.weight", v, (ng * d, h))
    qkv = torch.cat([q.detach().reshape(ng, r, d, h), k.detach().reshape(ng, 1, d, h),
                     v.detach().reshape(ng, 1, d, h)], dim=1).reshape(ng * (r + 2) * d, h)
    gate, up = _get(hf_sd, hf + "mlp.gate_proj.weight"), _get(hf_sd, hf + "mlp.up_proj.weight")
    _check_shape(hf + "mlp.gate_proj.weight", gate, (ffn, h))
    _check_shape(hf + "mlp.up_proj.weight", up, (ffn, h))
    down = _get(hf_sd, hf + "mlp.down_proj.weight")
    _check_shape(hf + "mlp.down_proj.weight", down, (h, ffn))
    o = _get(hf_sd, hf + "self_attn.o_proj.weight")
    _check_shape(hf + "self_attn.o_proj.weight", o, (h, nh * d))
    # Insertion order follows megatron's own state_dict order (norms, attention, norm, mlp).
    out[pre + (_TE_NORMS if te_layout else _LOCAL_NORMS)[0]] = norms[0].detach().clone()
    _put_linear(out, pre + "self_attention.linear_proj", o.detach().clone(), te_layout)
    _put_linear(out, pre + "self_attention.linear_qkv", qkv, te_layout)
    out[pre + (_TE_NORMS if te_layout else _LOCAL_NORMS)[1]] = norms[1].detach().clone()
    _put_linear(out, pre + "mlp.linear_fc1", torch.cat([gate.detach(), up.detach()], dim=0), te_layout)
    _put_linear(out, pre + "mlp.linear_fc2", down.detach().clone(), te_layout)
    return out


def hf_to_megatron_state_dict(hf_sd: dict, preset: ModelPreset, *, te_layout: bool = False) -> dict:
    """megatron GPTModel state dict (TP-merged) from an HF LlamaForCausalLM state dict.

    Local layout (default): the exact key set of ``build_gpt_model(...).state_dict()`` including the
    ``_extra_state`` entries (None) of megatron's linears, so ``model.load_state_dict(sd)`` is strict-clean.
    TE layout: norms fused into the linears' ``layer_norm_weight``, no ``_extra_state`` (load with
    `load_megatron_state_dict`). A tied HF checkpoint (no ``lm_head.weight``) gets a copy of the embedding.
    """
    h = preset.hidden_size
    out: dict = {}
    out["embedding.word_embeddings.weight"] = _get(hf_sd, "model.embed_tokens.weight").detach().clone()
    vocab = out["embedding.word_embeddings.weight"].shape[0]
    _check_shape("model.embed_tokens.weight", out["embedding.word_embeddings.weight"], (vocab, h))
    for i in range(preset.num_layers):
        out.update(_hf_layer_to_megatron(hf_sd, preset, i, te_layout=te_layout))
    out["decoder.final_layernorm.weight"] = _get(hf_sd, "model.norm.weight").detach().clone()
    head = hf_sd.get("lm_head.weight", hf_sd["model.embed_tokens.weight"])
    _check_shape("lm_head.weight", head, (vocab, h))
    _put_linear(out, "output_layer", head.detach().clone(), te_layout)
    return out


def load_megatron_state_dict(model: torch.nn.Module, sd: dict) -> None:
    """``model.load_state_dict(sd)`` that tolerates only missing ``_extra_state`` entries (TE layout)."""
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("._extra_state")]
    if missing or result.unexpected_keys:
        raise KeyError(f"load_megatron_state_dict: missing keys {missing[:8]}, unexpected keys "
                       f"{result.unexpected_keys[:8]} (was the state dict made for another preset or layout?)")


# ---------------------------------------------------------------- tensor-parallel shards

def _tp_dim(key: str) -> int | None:
    """The dimension megatron splits `key` along under TP (None: replicated)."""
    if key.endswith("_extra_state") or "layernorm" in key or "layer_norm" in key:
        return None
    if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return 0
    if key.endswith(("linear_qkv.weight", "linear_fc1.weight")):
        return 0
    if key.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1
    raise KeyError(f"no tensor-parallel rule for {key!r}")


def merge_tp_shards(shards: list[dict]) -> dict:
    """One TP-1 state dict from the per-TP-rank state dicts of a TP > 1 model (rank order).

    Splits: vocab rows (embedding, output layer), QKV rows (each rank holds whole query groups), fc1 rows
    per rank as [gate_r; up_r], proj / fc2 columns. Norms are replicated (taken from rank 0).
    """
    if not shards:
        raise ValueError("merge_tp_shards: no shards")
    merged: dict = {}
    for key, first in shards[0].items():
        dim = _tp_dim(key)
        if dim is None or len(shards) == 1:
            merged[key] = first
        elif key.endswith("linear_fc1.weight"):
            halves = [s[key].chunk(2, dim=0) for s in shards]
            merged[key] = torch.cat([g for g, _ in halves] + [u for _, u in halves], dim=0)
        else:
            merged[key] = torch.cat([s[key] for s in shards], dim=dim)
    return merged


def split_tp_shards(sd: dict, tp: int) -> list[dict]:
    """The inverse of `merge_tp_shards`: the state dict of each of `tp` ranks."""
    shards: list[dict] = [{} for _ in range(tp)]
    for key, value in sd.items():
        dim = _tp_dim(key)
        if dim is None or tp == 1:
            parts = [value] * tp
        elif key.endswith("linear_fc1.weight"):
            gate, up = value.chunk(2, dim=0)
            parts = [torch.cat([g, u], dim=0) for g, u in zip(gate.chunk(tp, 0), up.chunk(tp, 0))]
        else:
            if value.shape[dim] % tp:
                raise ValueError(f"split_tp_shards: {key} dim {dim} ({value.shape[dim]}) not divisible by tp={tp}")
            parts = list(value.chunk(tp, dim=dim))
        for rank in range(tp):
            shards[rank][key] = parts[rank].clone() if isinstance(parts[rank], torch.Tensor) else parts[rank]
    return shards


# ---------------------------------------------------------------- HF folders

def _hf_config(preset: ModelPreset, vocab_size: int, max_seq_len: int, dtype: torch.dtype,
               bos_id: int | None, eos_id: int | None, pad_id: int | None):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.ffn_hidden_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_query_groups,
        head_dim=preset.head_dim,
        hidden_act="silu",
        max_position_embeddings=max_seq_len,
        rms_norm_eps=preset.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(preset.rotary_base)},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype=str(dtype).removeprefix("torch."),
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def export_hf(
    state_dict: dict,
    preset: ModelPreset,
    vocab_size: int,
    max_seq_len: int,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write a `LlamaForCausalLM` folder from a TP-merged megatron state dict; returns the folder.

    Contents: ``config.json`` (rope theta, rms_norm_eps, num_key_value_heads, untied embeddings, special
    token ids), safetensors weights (one ``model.safetensors``, or shards plus ``model.safetensors.index.json``
    above `max_shard_bytes`), ``prealign_model.json`` (the preset, for `import_hf`), and the files of
    `tokenizer_dir` when given. Loadable with ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``.
    """
    from safetensors.torch import save_file

    hf_sd = megatron_to_hf_state_dict(state_dict, preset, vocab_size)
    dtypes = {t.dtype for t in hf_sd.values()}
    if len(dtypes) != 1:
        raise ValueError(f"export_hf: state dict mixes dtypes {sorted(map(str, dtypes))}; cast it first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _hf_config(preset, vocab_size, max_seq_len, dtypes.pop(), bos_id, eos_id, pad_id).save_pretrained(out)

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in hf_sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += nbytes
    for stale in list(out.glob("model*.safetensors")) + [out / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for n, shard in enumerate(shards, start=1):
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            for key, t in shard.items():
                weight_map[key] = name
                total += t.numel() * t.element_size()
        (out / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=2))
    sidecar = {"preset": preset.__dict__, "vocab_size": vocab_size, "max_seq_len": max_seq_len}
    (out / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2))
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        if not (tok / "tokenizer.json").is_file():
            raise FileNotFoundError(f"export_hf: tokenizer_dir {tok} has no tokenizer.json")
        for f in tok.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
    return out


def _load_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / WEIGHTS_NAME).is_file():
        return load_file(str(folder / WEIGHTS_NAME))
    if (folder / INDEX_NAME).is_file():
        index = json.loads((folder / INDEX_NAME).read_text())
        sd: dict[str, torch.Tensor] = {}
        for name in sorted(set(index["weight_map"].values())):
            sd.update(load_file(str(folder / name)))
        return sd
    raise FileNotFoundError(f"import_hf: {folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME} (only safetensors "
                            f"checkpoints are read)")


# config.json field of each ModelPreset field (for messages)
HF_CONFIG_FIELDS = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
                    "num_attention_heads": "num_attention_heads", "num_query_groups": "num_key_value_heads",
                    "ffn_hidden_size": "intermediate_size", "rotary_base": "rope_theta", "norm_eps": "rms_norm_eps"}


def llama_shape(config) -> dict:
    """The ModelPreset fields of an HF Llama config (``num_layers``, ``hidden_size``, ...; see HF_CONFIG_FIELDS).

    Raises ValueError for what the megatron model cannot represent (biases, another activation, scaled RoPE).
    """
    for field, ok in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu")):
        if getattr(config, field, ok) != ok:
            raise ValueError(f"config.json {field}={getattr(config, field)!r}; only {ok!r} is supported")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"config.json rope_parameters.rope_type={rope.get('rope_type')!r}; only 'default' RoPE "
                         f"is supported")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise ValueError(f"config.json head_dim={head_dim} x heads={heads} != hidden_size={config.hidden_size}; "
                         f"not supported")
    return {
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": heads,
        "num_query_groups": config.num_key_value_heads or heads,
        "ffn_hidden_size": config.intermediate_size,
        "rotary_base": float(rope.get("rope_theta", 10000.0)),
        "norm_eps": float(config.rms_norm_eps),
    }


def preset_from_hf_config(config) -> ModelPreset:
    """The ModelPreset of an HF Llama config: a named preset when the shape matches one, else a custom one."""
    try:
        shape = llama_shape(config)
    except ValueError as exc:
        raise ValueError(f"import_hf: {exc}") from None
    for p in PRESETS.values():
        if all(getattr(p, k) == v for k, v in shape.items()):
            return p
    return ModelPreset(name=f"hf-{shape['num_layers']}l-{shape['hidden_size']}h", **shape)


def _read_llama_config(folder: Path, where: str):
    """The transformers config of an HF Llama folder (FileNotFoundError / ValueError prefixed with `where`)."""
    from transformers import AutoConfig

    if not folder.is_dir():
        raise FileNotFoundError(f"{where}{folder}: no such folder")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{where}{folder} has no config.json (not an HF model folder)")
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type != "llama":
        raise ValueError(f"{where}{folder}/config.json model_type={config.model_type!r}; only 'llama' is read")
    return config


def check_hf_folder(hf_dir: str | Path, preset: ModelPreset) -> int:
    """Check, without reading any weight, that an HF Llama folder can initialise the model of `preset`.

    The folder needs config.json (model_type llama, the preset's layers, widths, heads, key/value heads, FFN
    width, RoPE theta and RMSNorm eps) and safetensors weights. Returns config.json's vocab_size. Raises
    FileNotFoundError or ValueError naming the folder and the config.json field.
    """
    folder = Path(hf_dir)
    config = _read_llama_config(folder, "")
    shape = llama_shape(config)
    for attr, hf_field in HF_CONFIG_FIELDS.items():
        if shape[attr] != getattr(preset, attr):
            raise ValueError(f"{folder}/config.json: {hf_field}={shape[attr]!r} but preset {preset.name!r} has "
                             f"{attr}={getattr(preset, attr)!r} (set model.preset to the checkpoint's shape)")
    if not ((folder / WEIGHTS_NAME).is_file() or (folder / INDEX_NAME).is_file()):
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME} (only safetensors "
                                f"checkpoints are read)")
    return int(config.vocab_size)


class _SafetensorsFolder:
    """Read-on-demand view of a folder's safetensors weights: a tensor is read when it is asked for."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        if (folder / WEIGHTS_NAME).is_file():
            files = [folder / WEIGHTS_NAME]
        elif (folder / INDEX_NAME).is_file():
            index = json.loads((folder / INDEX_NAME).read_text())
            files = [folder / name for name in sorted(set(index["weight_map"].values()))]
        else:
            raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")
        self._where: dict = {}
        for f in files:
            handle = safe_open(str(f), framework="pt", device="cpu")
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                self._where[key] = handle

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def keys(self) -> list[str]:
        return list(self._where)


class HFCheckpointReader:
    """The TP-merged megatron tensors of an HF Llama folder by parameter name, converted one block at a time.

    For loading a large checkpoint into a partitioned model parameter by parameter (model.init_hf): only the
    current block's converted tensors and the HF tensors they come from are in memory. Ask for the names in
    the model's ``named_parameters()`` order (each block is converted once).
    """

    def __init__(self, hf_dir: str | Path, preset: ModelPreset, *, te_layout: bool = False):
        self.folder = Path(hf_dir)
        self.preset = preset
        self.te_layout = te_layout
        self._hf = _SafetensorsFolder(self.folder)
        self._block: tuple[int, dict] | None = None  # (block index, its converted entries)

    def tensor(self, name: str) -> torch.Tensor:
        """The megatron tensor called `name` (e.g. ``decoder.layers.3.mlp.linear_fc1.weight``)."""
        if name.startswith("decoder.layers."):
            i = int(name.split(".")[2])
            if self._block is None or self._block[0] != i:
                self._block = (i, _hf_layer_to_megatron(self._hf, self.preset, i, te_layout=self.te_layout))
            value = self._block[1].get(name)
        elif name == "embedding.word_embeddings.weight":
            value = _get(self._hf, "model.embed_tokens.weight")
        elif name == "decoder.final_layernorm.weight":
            value = _get(self._hf, "model.norm.weight")
        elif name == "output_layer.weight":  # a tied checkpoint has no lm_head: the embedding is the head
            value = _get(self._hf, "lm_head.weight" if "lm_head.weight" in self._hf else "model.embed_tokens.weight")
        else:
            value = None
        if value is None:
            raise KeyError(f"{self.folder}: no weight for the model parameter {name!r} (preset {self.preset.name!r}, "
                           f"{'TE' if self.te_layout else 'local'} layout)")
        return value


def import_hf(hf_dir: str | Path, *, te_layout: bool = False) -> tuple[dict, ModelPreset, int]:
    """Read an HF Llama folder (ours or any safetensors Llama checkpoint): (megatron state dict, preset, vocab).

    The preset is the one recorded by `export_hf` when present (same name and default TP / sequence length),
    otherwise derived from config.json.
    """
    folder = Path(hf_dir)
    config = _read_llama_config(folder, "import_hf: ")
    preset = preset_from_hf_config(config)
    sidecar = folder / SIDECAR_NAME
    if sidecar.is_file():
        recorded = ModelPreset(**json.loads(sidecar.read_text())["preset"])
        same = all(getattr(recorded, k) == getattr(preset, k) for k in preset.__dict__
                   if k not in ("name", "default_tp", "default_seq_len"))
        if not same:
            raise ValueError(f"import_hf: {sidecar} records preset {recorded} but config.json describes {preset}")
        preset = recorded
    hf_sd = _load_hf_weights(folder)
    sd = hf_to_megatron_state_dict(hf_sd, preset, te_layout=te_layout)
    vocab = sd["embedding.word_embeddings.weight"].shape[0]
    if vocab != config.vocab_size:
        raise ValueError(f"import_hf: embed_tokens has {vocab} rows but config.json vocab_size={config.vocab_size}")
    return sd, preset, vocab

