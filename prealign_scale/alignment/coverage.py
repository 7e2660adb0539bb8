"""How much of a corpus a dictionary covers: share of word occurrences and of tokens, switchable and held out.

Word segmentation is the tokenizer's own pre-tokenizer (``backend_tokenizer.pre_tokenizer``), the same split
the BPE model works on, so "a word" and "its tokens" agree exactly. A piece is a word when it contains a
letter; it is matched with the one word normaliser (:func:`prealign_scale.alignment.words.normalize_word`:
word-start marker and surrounding punctuation stripped, case-folded) against the dictionary's source words,
exactly as the code-switcher matches it (:func:`~prealign_scale.alignment.words.translation_index`), so a
word counted as covered is a word the switcher can switch. The piece's tokens are what the BPE model makes
of that piece, so the token counts add up to the corpus's token count (without special tokens).

A word is *switchable* when a source word of the table's ``align`` part with a translation matches it (the
top-level ``covered_*`` / ``*_coverage`` keys), and *held out* when only ``heldout`` entries hold it (the
``heldout_*`` keys: never switched, probed as unseen). ``by_lang`` gives the same shares per target
language (a word is switchable into ``de`` when one of its align translations is German).

Corpus samples are read with :func:`prealign_scale.text.corpus.iter_corpus_texts` (the one corpus reader).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prealign_scale.alignment.table import HELDOUT
from prealign_scale.alignment.words import normalize_word, translation_index

__all__ = ["TOP_UNCOVERED", "coverage_report", "normalize_word", "source_words"]

TOP_UNCOVERED = 20


def source_words(table_or_entries, source_lang: str) -> set[str]:
    """Normalised source-language words of an AlignmentTable or a list of Entry / RawEntry."""
    entries = getattr(table_or_entries, "entries", table_or_entries)
    return {normalize_word(w) for e in entries for w, lang in zip(e.words, e.langs) if lang == source_lang}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _shares(stats: Counter, words: int, tokens: int) -> dict:
    """Switchable and held-out counts of `stats` with their shares of all `words` / `tokens`."""
    return {
        "covered_words": stats["covered_words"], "word_coverage": _ratio(stats["covered_words"], words),
        "covered_tokens": stats["covered_tokens"], "token_coverage": _ratio(stats["covered_tokens"], tokens),
        "heldout_words": stats["heldout_words"], "heldout_word_coverage": _ratio(stats["heldout_words"], words),
        "heldout_tokens": stats["heldout_tokens"],
        "heldout_token_coverage": _ratio(stats["heldout_tokens"], tokens),
    }


def coverage_report(table_or_entries, tokenizer, texts: Iterable[str], source_lang: str,
                    top_n: int = TOP_UNCOVERED) -> dict:
    """Coverage of `texts` by the dictionary's `source_lang` words (see the module doc).

    Returns ``{"docs", "words", "covered_words", "word_coverage", "tokens", "covered_tokens",
    "token_coverage", "heldout_words", "heldout_word_coverage", "heldout_tokens", "heldout_token_coverage",
    "distinct_words", "distinct_covered", "distinct_heldout", "by_lang": {lang: {"covered_words",
    "word_coverage", "covered_tokens", "token_coverage", "heldout_words", "heldout_word_coverage",
    "heldout_tokens", "heldout_token_coverage"}}, "top_uncovered": [[word, count], ...]}``.
    ``covered`` = switchable (align part); ``heldout`` = matched by held-out entries only. ``word_coverage``
    = switchable word occurrences / word occurrences; ``token_coverage`` = tokens of switchable words / all
    tokens (punctuation and whitespace tokens included). A list of raw entries (no split) counts as align.
    Ratios are 0.0 on an empty sample.
    """
    entries = getattr(table_or_entries, "entries", table_or_entries)
    align = translation_index([e for e in entries if getattr(e, "split", None) != HELDOUT], source_lang)
    heldout = translation_index([e for e in entries if getattr(e, "split", None) == HELDOUT], source_lang)
    heldout = {w: outs for w, outs in heldout.items() if w not in align}
    align_langs = {w: {lang for _, lang, _ in outs} for w, outs in align.items()}
    heldout_langs = {w: {lang for _, lang, _ in outs} for w, outs in heldout.items()}
    target_langs = sorted({lang for langs in (*align_langs.values(), *heldout_langs.values()) for lang in langs})
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
    stats: Counter = Counter()
    per_lang: dict[str, Counter] = {lang: Counter() for lang in target_langs}
    for piece, n in piece_counts.items():
        n_tokens = len(backend.model.tokenize(piece)) * n
        stats["tokens"] += n_tokens
        original = piece_text[piece]
        if not any(ch.isalpha() for ch in original):
            continue
        word = normalize_word(original)
        word_counts[word] += n
        stats["words"] += n
        for prefix, langs in (("covered_", align_langs.get(word)), ("heldout_", heldout_langs.get(word))):
            if langs:
                stats[prefix + "words"] += n
                stats[prefix + "tokens"] += n_tokens
                for lang in langs:
                    per_lang[lang][prefix + "words"] += n
                    per_lang[lang][prefix + "tokens"] += n_tokens
    words, tokens = stats["words"], stats["tokens"]
    uncovered = sorted(((w, c) for w, c in word_counts.items() if w not in align and w not in heldout),
                       key=lambda wc: (-wc[1], wc[0]))
    return {
        "docs": docs,
        "words": words,
        "tokens": tokens,
        **_shares(stats, words, tokens),
        "distinct_words": len(word_counts),
        "distinct_covered": sum(1 for w in word_counts if w in align),
        "distinct_heldout": sum(1 for w in word_counts if w in heldout),
        "by_lang": {lang: _shares(c, words, tokens) for lang, c in per_lang.items()},
        "top_uncovered": [[w, c] for w, c in uncovered[:top_n]],
    }
