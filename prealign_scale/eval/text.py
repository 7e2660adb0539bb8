"""Text -> token ids per language, English-Clone included (the one tokenising entry point of the evaluators).

Languages are free-form tags ("en", "de", ...) tokenised with the model's tokenizer as they are, except
``"clone"`` (METHOD.md §4): Clone text is English text whose ids are shifted by V into the upper half of a
2V vocabulary. A Clone text may be written plain ("the house") or in the marked display form that
:meth:`CloneTokenizer.decode` produces ("§the §house"): the ``§`` that starts a whitespace-separated piece is
removed before tokenising, so both forms give the same ids.

Tokenisation never adds BOS/EOS. A *word* is tokenised in its mid-sentence form (leading space), as the
alignment table does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prealign_scale.alignment.clone import CLONE, CloneTokenizer, unmark_clone


class TextEncoder:
    """Tokenises text of a language for a model: the base tokenizer, plus the Clone shift when
    ``clone_offset`` is V (a model over 2V ids); ``clone_offset=0`` means no Clone language."""

    def __init__(self, tokenizer: Any, clone_offset: int = 0):
        self.tokenizer = tokenizer
        self.clone_offset = int(clone_offset)
        self.clone: CloneTokenizer | None = None
        if self.clone_offset:
            self.clone = CloneTokenizer(tokenizer)
            if self.clone.offset != self.clone_offset:
                raise ValueError(f"clone_offset={self.clone_offset} but the tokenizer has {self.clone.offset} ids "
                                 f"(English-Clone needs clone_offset = len(tokenizer))")

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if i is not None:
                return int(i)
        return 0

    def check_lang(self, lang: str) -> None:
        if lang == CLONE and self.clone is None:
            raise ValueError("language 'clone' needs an English-Clone model (clone_offset = V); this model has "
                             "none (set clone_offset, or check the run's table / manifest)")

    def encode(self, text: str, lang: str) -> list[int]:
        """Token ids of `text` in `lang`, without BOS/EOS."""
        self.check_lang(lang)
        if lang == CLONE:
            assert self.clone is not None
            return self.clone.encode(unmark_clone(text), CLONE)
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

    def encode_word(self, word: str, lang: str) -> list[int]:
        """Token ids of `word` in its mid-sentence form (leading space), as the alignment table stores words."""
        return self.encode(" " + word.strip(), lang)


def load_encoder(tokenizer_dir: str | Path, clone_offset: int = 0) -> TextEncoder:
    from prealign_scale.text.tokenizer import load_tokenizer

    return TextEncoder(load_tokenizer(tokenizer_dir), clone_offset)
