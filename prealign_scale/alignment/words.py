"""Words: the one normaliser that decides when two spellings are "the same word", and the mid-sentence form.

Everything that matches text against the dictionary uses :func:`normalize_word`: the table build (which
words tie entries together, so the align / held-out split has no leak), the code-switcher (which corpus
words it may switch), the coverage report (which corpus words count as covered) and the probes (which
held-out words are unseen). The rule, for any language and tokenizer:

1. surrounding whitespace and the tokenizer's word-start markers are removed (byte-level BPE ``Ġ``,
   SentencePiece / Metaspace ``▁``);
2. leading and trailing characters that are not letters or digits are removed (``house,`` / ``"House`` /
   ``«Wort»`` -> ``house`` / ``House`` / ``Wort``); inner ones stay (``o'clock``, ``House-Musik``);
3. the rest is case-folded (``str.casefold``: ``House`` -> ``house``, ``Straße`` -> ``strasse``).

:func:`split_affixes` cuts a word as written into (leading punctuation, core, trailing punctuation), so
the switcher can replace the core and keep the punctuation glued to it.

The *mid-sentence form* of a word's tokens (METHOD.md §1) is tokenisation, so it lives below, in
:func:`prealign_scale.text.tokenizer.mid_sentence_forms`.
"""

from __future__ import annotations

from collections.abc import Iterable

WORD_START_MARKERS = "Ġ▁"  # byte-level BPE's space symbol, SentencePiece's / Metaspace's word start


def _core_bounds(text: str) -> tuple[int, int]:
    """(start, end) of `text` without leading/trailing characters that are not letters or digits."""
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return start, end


def strip_marker(text: str) -> str:
    """`text` without surrounding whitespace and leading word-start markers (``Ġ``, ``▁``)."""
    return text.strip().lstrip(WORD_START_MARKERS).strip()


def split_affixes(text: str) -> tuple[str, str, str]:
    """(leading punctuation, core, trailing punctuation) of a word as written (marker and spaces removed).

    ``'"House,'`` -> ``('"', 'House', ',')``. A word without a letter or digit is all prefix: ``('--', '', '')``.
    """
    text = strip_marker(text)
    start, end = _core_bounds(text)
    return text[:start], text[start:end], text[end:]


def normalize_word(text: str) -> str:
    """The matching form of a word (see the module doc): marker, spaces and surrounding punctuation
    stripped, case-folded."""
    return split_affixes(text)[1].casefold()


def word_key(lang: str, word: str) -> tuple[str, str]:
    """What identifies a word across entries: its language and its normalised form."""
    return lang, normalize_word(word)


def translation_index(entries: Iterable, source_lang: str) -> dict[str, list[tuple[str, str, tuple[int, ...]]]]:
    """Normalised source word -> its switch targets ``(word, lang, tokens)``, in table order, no repeats.

    A target is every word of another language in an entry that holds the source word. A target spelled
    exactly like the source word is left out (switching it would change nothing); a target that differs only
    in case (``bank`` -> ``Bank``) is a valid target. Source words without any target are left out.
    Entries may be table ``Entry`` objects (tokens used) or raw entries (tokens ``()``).
    """
    index: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {}
    for e in entries:
        tokens = getattr(e, "tokens", None) or ((),) * len(e.words)
        for w, lang in zip(e.words, e.langs):
            if lang != source_lang:
                continue
            key = normalize_word(w)
            if not key:
                continue
            outs = index.setdefault(key, [])
            for w2, lang2, toks2 in zip(e.words, e.langs, tokens):
                if lang2 != source_lang and w2 != w and (w2, lang2, toks2) not in outs:
                    outs.append((w2, lang2, toks2))
    return {k: v for k, v in index.items() if v}
