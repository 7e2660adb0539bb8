"""Named model sizes: the shape of a Llama-style megatron-core `GPTModel`, its parameter count and FLOPs.

Every preset describes the model that `prealign_scale.model.builder.build_gpt_model` builds: RMSNorm
(pre-norm, plus a final norm), SwiGLU MLP (fc1 holds gate and up, 2 * ffn_hidden_size rows), RoPE, no biases
anywhere, grouped-query attention with `num_query_groups` key/value heads, and untied input and output
embeddings. `num_params` is the exact parameter count of that model (checked by a test against the built
model) and `flops_per_token` the training FLOPs used for MFU.

Sizes:
- ``tiny``: a test model (< 1M parameters at vocab 1024), with GQA so every code path is exercised.
- ``synth-3m``, ``synth-12m``, ``synth-36m``: the paper's synthetic English-Clone sizes (about 3M, 12M, 36M
  parameters at the English-Clone vocabulary 2 x 8192 = 16384).
- ``150m``, ``400m``, ``1.3b``: the paper's real-language sizes, GPT-like shapes (counts quoted at a 50k
  vocabulary; the exact count depends on the tokenizer).
- ``7b``, ``13b``, ``70b``: Llama-2 shapes (exact Llama-2 counts at vocabulary 32000), for clusters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPreset:
    """The shape of one model. Vocabulary size is not part of a preset (it comes from the tokenizer).

    Attributes:
        name: the preset's key in `PRESETS`.
        num_layers: transformer blocks.
        hidden_size: model width h.
        num_attention_heads: query heads; head dim = hidden_size // num_attention_heads.
        num_query_groups: key/value heads (GQA); equal to num_attention_heads for plain multi-head attention.
        ffn_hidden_size: SwiGLU inner width (fc1 has 2 * ffn_hidden_size outputs: gate, then up).
        default_tp: tensor-parallel size the preset is meant to run with.
        default_seq_len: the training sequence length the preset is meant for.
        rotary_base: RoPE theta.
        norm_eps: RMSNorm epsilon.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    default_tp: int = 1
    default_seq_len: int = 1024
    rotary_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for field_name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                           "ffn_hidden_size", "default_tp", "default_seq_len"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelPreset {self.name!r}: {field_name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ModelPreset {self.name!r}: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"ModelPreset {self.name!r}: num_attention_heads={self.num_attention_heads} is not "
                             f"divisible by num_query_groups={self.num_query_groups}")
        if self.head_dim % 2:
            raise ValueError(f"ModelPreset {self.name!r}: head dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_matmul_params(self) -> int:
        """Weights of the matrix multiplies of one transformer block (QKV, attention output, fc1, fc2)."""
        h, d = self.hidden_size, self.head_dim
        qkv = h * d * (self.num_attention_heads + 2 * self.num_query_groups)
        proj = self.num_attention_heads * d * h
        fc1 = h * 2 * self.ffn_hidden_size
        fc2 = self.ffn_hidden_size * h
        return qkv + proj + fc1 + fc2

    def num_params(self, vocab_size: int) -> int:
        """Exact parameter count of the built model: input embedding + blocks + final norm + output layer.

        Per block: two RMSNorm weights (h each) and `layer_matmul_params()`; no biases. The input embedding
        and the output layer are separate V x h matrices (untied).
        """
        _check_vocab(vocab_size)
        h = self.hidden_size
        per_layer = 2 * h + self.layer_matmul_params()
        return vocab_size * h + self.num_layers * per_layer + h + vocab_size * h

    def matmul_params(self, vocab_size: int) -> int:
        """Parameters that take part in a matrix multiply per token: all block linears and the output layer.

        The input embedding (a lookup) and the norm weights (elementwise) are excluded.
        """
        _check_vocab(vocab_size)
        return self.num_layers * self.layer_matmul_params() + vocab_size * self.hidden_size

    def flops_per_token(self, vocab_size: int, seq_len: int) -> float:
        """Training FLOPs per token, PaLM-style (Chowdhery et al. 2022, appendix B):

            F = 6 * N_matmul + 12 * L * (n_heads * head_dim) * S

        N_matmul = `matmul_params(vocab_size)` (block linears + output layer; not the input embedding or the
        norms); 6 = 2 (multiply-add) x 3 (forward + backward for activations and weights). The attention
        term is QK^T and attention x V: 2 matmuls x 2 FLOPs x (n_heads * head_dim) x S per layer forward,
        times 3 for the backward. No discount for the causal mask (PaLM's convention, also Megatron-LM's
        and nanoGPT's), so MFU figures are comparable with theirs. Activation recomputation is not counted.
        """
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"flops_per_token: seq_len must be a positive int, got {seq_len!r}")
        attn_width = self.num_attention_heads * self.head_dim
        return float(6 * self.matmul_params(vocab_size) + 12 * self.num_layers * attn_width * seq_len)


def _check_vocab(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")


def _preset(name: str, layers: int, hidden: int, heads: int, groups: int, ffn: int, *, tp: int = 1,
            seq: int = 1024) -> ModelPreset:
    return ModelPreset(name=name, num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       num_query_groups=groups, ffn_hidden_size=ffn, default_tp=tp, default_seq_len=seq)


# Counts in the comments: num_params at the vocabulary named.
PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        _preset("tiny", 2, 64, 4, 2, 176, seq=128),  # 223,552 at V=1024
        _preset("synth-3m", 12, 64, 4, 4, 256, seq=512),  # 2,885,184 at V=16384
        _preset("synth-12m", 12, 192, 6, 6, 576, seq=512),  # 12,047,040 at V=16384
        _preset("synth-36m", 12, 384, 6, 6, 1152, seq=512),  # 35,595,648 at V=16384
        _preset("150m", 12, 768, 12, 12, 2048),  # 162,220,800 at V=50304
        _preset("400m", 24, 1024, 16, 16, 2816),  # 411,354,112 at V=50304
        _preset("1.3b", 24, 2048, 16, 16, 5632),  # 1,439,270,912 at V=50304
        _preset("7b", 32, 4096, 32, 32, 11008, seq=4096),  # 6,738,415,616 at V=32000 (Llama-2 7B)
        _preset("13b", 40, 5120, 40, 40, 13824, tp=2, seq=4096),  # 13,015,864,320 at V=32000
        _preset("70b", 80, 8192, 64, 8, 28672, tp=8, seq=4096),  # 68,976,648,192 at V=32000
    )
}


def get_preset(name: str) -> ModelPreset:
    """The preset called `name`; a KeyError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
