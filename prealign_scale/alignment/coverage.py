"""How much of a corpus a dictionary covers: share of word occurrences and of tokens.

Word segmentation is the tokenizer's own pre-tokenizer (``backend_tokenizer.pre_tokenizer``), the same split
the BPE model works on, so "a word" and "its tokens" agree exactly. A piece is a word when it contains a
letter; it is matched lower-cased, with the leading space (byte-level "Ġ" / SentencePiece "▁") and
surrounding punctuation stripped, against the lower-cased source-language words of the dictionary. The
piece's tokens are what the BPE model makes of that piece, so the token counts add up to the corpus's
token count (without special tokens).

Corpus samples are read with :func:`prealign_scale.text.corpus.iter_corpus_texts` (the one corpus reader).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

TOP_UNCOVERED = 20


def normalize_word(text: str) -> str:
    """Lower-case, strip whitespace / space markers and leading/trailing non-alphanumeric characters."""
    text = text.strip().lstrip("Ġ▁").strip()
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end].lower()


def source_words(table_or_entries, source_lang: str) -> set[str]:
    """Normalised source-language words of an AlignmentTable or a list of Entry / RawEntry."""
    entries = getattr(table_or_entries, "entries", table_or_entries)
    return {normalize_word(w) for e in entries for w, lang in zip(e.words, e.langs) if lang == source_lang}


def coverage_report(table_or_entries, tokenizer, texts: Iterable[str], source_lang: str,
                    top_n: int = TOP_UNCOVERED) -> dict:
    """Coverage of `texts` by the dictionary's `source_lang` words (see the module doc).

    Returns ``{"docs", "words", "covered_words", "word_coverage", "tokens", "covered_tokens",
    "token_coverage", "distinct_words", "distinct_covered", "top_uncovered": [[word, count], ...]}``.
    ``word_coverage`` = covered word occurrences / word occurrences; ``token_coverage`` = tokens of covered
    words / all tokens (punctuation and whitespace tokens included). Ratios are 0.0 on an empty sample.
    """
    vocab = source_words(table_or_entries, source_lang)
    backend = tokenizer.backend_tokenizer
    pre_tokenizer = backend.pre_tokenizer
    # Count pieces first (as the pre-tokenizer emits them), then tokenise each distinct piece once.
    piece_counts: Counter[str] = Counter()
    piece_text: dict[str, str] = {}
    docs = 0
    for text in texts:
        docs += 1
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = pre_tokenizer.pre_tokenize_str(text) if pre_tokenizer is not None else [(text, (0, len(text)))]
        for piece, (start, end) in pieces:
            piece_counts[piece] += 1
            piece_text.setdefault(piece, text[start:end])  # the original characters (byte-level maps them)
    word_counts: Counter[str] = Counter()
    stats = Counter()
    for piece, n in piece_counts.items():
        n_tokens = len(backend.model.tokenize(piece)) * n
        stats["tokens"] += n_tokens
        original = piece_text[piece]
        if not any(ch.isalpha() for ch in original):
            continue
        word = normalize_word(original)
        word_counts[word] += n
        stats["words"] += n
        if word in vocab:
            stats["covered_words"] += n
            stats["covered_tokens"] += n_tokens
    uncovered = sorted(((w, c) for w, c in word_counts.items() if w not in vocab), key=lambda wc: (-wc[1], wc[0]))
    return {
        "docs": docs,
        "words": stats["words"],
        "covered_words": stats["covered_words"],
        "word_coverage": stats["covered_words"] / stats["words"] if stats["words"] else 0.0,
        "tokens": stats["tokens"],
        "covered_tokens": stats["covered_tokens"],
        "token_coverage": stats["covered_tokens"] / stats["tokens"] if stats["tokens"] else 0.0,
        "distinct_words": len(word_counts),
        "distinct_covered": sum(1 for w in word_counts if w in vocab),
        "top_uncovered": [[w, c] for w, c in uncovered[:top_n]],
    }
