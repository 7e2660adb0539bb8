"""Tokenise a document into (token ids, word index of every token, word strings) — the shard builder's hot path.

The word segmentation is the tokenizer's own pre-tokenizer (METHOD.md §3: segmentation comes from the text).
Two implementations give identical results:

- :class:`RustWordEncoder`: any `tokenizers.Tokenizer`: `encode` + `Encoding.word_ids`; word strings are
  decoded only for the few words a caller asks about.
- :class:`CachedByteLevelEncoder`: for byte-level BPE tokenizers with the GPT-2 split regex and no normaliser
  (what `data_tools/train_tokenizer.py` makes). It splits the text with the same regex in Python and encodes
  each distinct word once (a word -> ids cache): natural text repeats its words, so this is faster than
  encoding every document in full, and the word strings come for free. A document containing a special
  token's text falls back to the Rust path. `tests/test_word_encoder.py` checks the two agree on the
  embedded corpus.
"""

from __future__ import annotations

import json

import numpy as np

# The GPT-2 / tokenizers ByteLevel(use_regex=True) pre-tokenisation pattern.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class EncodedDoc:
    __slots__ = ("_tok", "_words", "ids", "word_ids")

    def __init__(self, ids: np.ndarray, word_ids: np.ndarray, words: list[str] | None, tok=None):
        self.ids, self.word_ids, self._words, self._tok = ids, word_ids, words, tok

    def word(self, k: int, a: int, b: int) -> str:
        """Word k (tokens a..b) as written, leading space included."""
        if self._words is not None:
            return self._words[k]
        return self._tok.decode([int(t) for t in self.ids[a:b]])


class RustWordEncoder:
    def __init__(self, tokenizer):
        self.tok = tokenizer  # tokenizers.Tokenizer

    def encode(self, text: str, with_words: bool = True) -> EncodedDoc:
        enc = self.tok.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        word_ids = np.asarray(enc.word_ids, dtype=np.int64) if with_words else None
        return EncodedDoc(ids, word_ids, None, self.tok)


class CachedByteLevelEncoder:
    """Regex split + per-word BPE cache; identical ids and word indices to `tokenizer.encode`."""

    def __init__(self, tokenizer, max_cache: int = 2_000_000):
        import regex

        self.tok = tokenizer
        self.split = regex.compile(GPT2_SPLIT).findall
        self.specials = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self.cache: dict[str, tuple[int, ...]] = {}
        self.max_cache = max_cache
        self.rust = RustWordEncoder(tokenizer)

    @staticmethod
    def supports(tokenizer) -> bool:
        """True for a byte-level BPE with the GPT-2 regex, no prefix space and no normaliser."""
        cfg = json.loads(tokenizer.to_str())
        pre = cfg.get("pre_tokenizer") or {}
        return (cfg.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                and not pre.get("add_prefix_space", False) and (cfg.get("model") or {}).get("type") == "BPE")

    def encode(self, text: str, with_words: bool = True) -> EncodedDoc:
        if any(s in text for s in self.specials):
            return self.rust.encode(text, with_words)
        words = self.split(text)
        cache = self.cache
        pieces = []
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = tuple(self.tok.encode(w, add_special_tokens=False).ids)
                if len(cache) >= self.max_cache:
                    cache.clear()
                cache[w] = ids
            pieces.append(ids)
        lens = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        flat = np.fromiter((t for p in pieces for t in p), dtype=np.int64, count=int(lens.sum()))
        word_ids = np.repeat(np.arange(len(words), dtype=np.int64), lens) if with_words else None
        return EncodedDoc(flat, word_ids, words, self.tok)


def word_encoder(tokenizer):
    """The fastest encoder that is exact for this tokenizer."""
    if CachedByteLevelEncoder.supports(tokenizer):
        return CachedByteLevelEncoder(tokenizer)
    return RustWordEncoder(tokenizer)
