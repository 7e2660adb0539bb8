"""Train, save and load the project's byte-level BPE tokenizers (HF `tokenizers` + `transformers` format).

A tokenizer folder is what ``transformers.PreTrainedTokenizerFast.from_pretrained(folder)`` loads
(``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``). Byte-level BPE without a
prefix space: a word in mid-sentence form carries its leading space (``" house"``), so dictionary words are
tokenised as ``" " + word``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

DEFAULT_SPECIALS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}


def train_bpe(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 8192,
    specials: dict[str, str] | None = None,
    min_frequency: int = 2,
):
    """Train a byte-level BPE on `texts` and save it to `out_dir`; returns the PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    if Path(out_dir).exists() and not Path(out_dir).is_dir():  # before training, not after it
        raise ValueError(f"{out_dir}: is a file, not a folder (the tokenizer is saved into a folder)")
    specials = dict(DEFAULT_SPECIALS if specials is None else specials)
    if len(set(specials.values())) != len(specials):
        raise ValueError(f"special tokens must be distinct, got {specials}")
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols + {len(specials)} specials")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(folder: str | Path):
    """Load a tokenizer folder as a transformers PreTrainedTokenizerFast, with a clear error if absent."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: not a tokenizer folder (no tokenizer.json); build one with "
                                "data_tools/train_tokenizer.py")
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def tokenizer_sha256(folder: str | Path) -> str:
    """Hash of tokenizer.json: what manifests and tables record to detect a tokenizer mismatch."""
    return hashlib.sha256((Path(folder) / "tokenizer.json").read_bytes()).hexdigest()


# The word in front of every dictionary word when it is tokenised in context (see mid_sentence_forms).
CONTEXT_ANCHOR = "a"


def _backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the tokenizer itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def encode_plain(tokenizer, text: str) -> tuple[int, ...]:
    """Token ids of `text` exactly as given, without special tokens (no BOS/EOS from any template)."""
    enc = _backend(tokenizer).encode(text, add_special_tokens=False)
    return tuple(enc.ids)


def mid_sentence_forms(tokenizer, words: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Mid-sentence token ids of each distinct word: the tokens of the word in ``"a <word>"`` (after
    :data:`CONTEXT_ANCHOR` and a space), without special tokens.

    The word's tokens are those whose character offsets start at or after the space. Encoding in context
    gives the form the word has inside a text for every tokenizer family: byte-level BPE (``Ġhouse``),
    Metaspace pre-tokenizers and Llama 2 style ``▁`` normalisers (``▁house``, where ``" house"`` alone would
    become ``▁▁house``). If the anchor's tokens are not a clean prefix (a merge across the space), the word
    falls back to ``encode(" " + word)``.
    """
    backend = _backend(tokenizer)
    unique = sorted({w.strip() for w in words})
    anchor_ids = backend.encode(CONTEXT_ANCHOR, add_special_tokens=False).ids
    n_anchor = len(anchor_ids)
    encs = backend.encode_batch([f"{CONTEXT_ANCHOR} {w}" for w in unique], add_special_tokens=False)
    out = {}
    for word, enc in zip(unique, encs):
        ids, offsets = enc.ids, enc.offsets
        clean = ids[:n_anchor] == anchor_ids and all(a >= len(CONTEXT_ANCHOR) for a, _ in offsets[n_anchor:])
        if clean:
            out[word] = tuple(ids[n_anchor:])
        else:
            out[word] = encode_plain(backend, " " + word)
    return out


def mid_sentence_ids(tokenizer, word: str) -> list[int]:
    """Token ids of one `word` in its mid-sentence form (:func:`mid_sentence_forms`), without BOS/EOS."""
    return list(mid_sentence_forms(tokenizer, [word])[word.strip()])


def iter_texts(docs: Iterable[dict]) -> Iterator[str]:
    for d in docs:
        yield d["text"]
