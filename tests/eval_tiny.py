"""Tiny models and tokenizers with known answers for the evaluation-suite tests (tests/test_eval_*.py).

A word-level tokenizer (one id per word or punctuation mark, ids in the order of `WORDS` after the
specials) and a tiny HF `LlamaForCausalLM` whose weights a test can set by hand.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<unk>", "<eos>", "<pad>"]
WORDS = [
    ".", ",", "the", "a", "of", "in", "is", "son", "lives", "keeps", "dwelt", "house", "father",
    "Bethel", "Hebron", "Jericho", "Abraham", "Isaac", "sheep", "goats",
    "Zab", "Kor", "Mil", "red", "blue", "green", "black", "white", "cat", "dog", "bird", "fish",
    "run", "walk", "eat", "sleep", "big", "small", "old", "new",
]
VOCAB = SPECIALS + WORDS
V = len(VOCAB)


def make_tokenizer(folder: Path):
    """A word-level PreTrainedTokenizerFast over `VOCAB` (whitespace + punctuation split), saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def ids(*words: str) -> list[int]:
    return [VOCAB.index(w) for w in words]


def make_model(vocab_size: int, seed: int = 0, hidden: int = 16, layers: int = 2):
    """A random tiny Llama (untied embeddings), eval mode, fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=hidden // 2, max_position_embeddings=128, tie_word_embeddings=False,
                      initializer_range=0.5, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def save(model, tokenizer_src: Path, folder: Path) -> Path:
    """Save `model` and the tokenizer files of `tokenizer_src` into `folder` (an HF export)."""
    model.save_pretrained(str(folder))
    for f in tokenizer_src.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def load(folder: Path):
    from prealign_scale.model.view import HFModelView, load_hf_model

    return HFModelView(load_hf_model(folder))
