"""The phase-1 reader: batches of dictionary entries for the alignment initialisation (METHOD.md §2).

Order (a pure function of the table part, ``seed``, ``entries_per_rank`` and ``dp_world_size``):
epoch ``e`` permutes the entries of the part with a generator seeded by ``(seed, e)``; global step ``k``
takes entries ``perm[k*G : (k+1)*G]`` with ``G = entries_per_rank * dp_world_size``, and rank ``r`` takes
its contiguous slice ``[r*entries_per_rank : (r+1)*entries_per_rank]`` of them. An epoch ends when fewer
than ``G`` entries remain (those are dropped for that epoch). Iteration is infinite over epochs.

Each word is one row: its mid-sentence tokens, right-padded with ``pad_id`` to the longest row of this
rank's batch, position ids 0.. for every row (independent of the batch), and next-token targets inside the
row (the LM loss of phase 1). Without ``bos_id`` a row is the word alone, so a word's first token has no
loss (a one-token word none at all); with ``bos_id`` (``align.word_bos``) the row is ``[bos, w1 .. wn]``
(BOS at position 0, the word at 1..n) and every word token is a target: n LM loss tokens per word.
``word_mask`` marks the word's own tokens (never the BOS): the word vectors pool over it. Entries have 2 words (pairs) or more (multi-entries), so the number of
rows differs between ranks and steps: the engine pads word vectors before its all_gather.

A change of data-parallel size (elastic resume, :meth:`DictionaryLoader.load_remapped_state`): the position is
a count of global entries (``step * G``) in the epoch's permutation, so it carries over to any ``G'`` that
divides it; with the same ``G`` (``entries_per_rank`` scaled inversely to the rank count) every later step
takes exactly the entries of the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from prealign_scale.alignment.table import ALIGN, AlignmentTable, Entry
from prealign_scale.data.shard_format import IGNORE_INDEX


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Entry order of one epoch: a pure function of (seed, epoch) for the pinned numpy."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def collate_words(entries: list[Entry], pad_id: int, bos_id: int | None = None) -> dict:
    """Entries -> one row per word (the batch layout documented in the module docstring); `bos_id`: put it
    before every word."""
    words = [(e.id, lang, toks) for e in entries for lang, toks in zip(e.langs, e.tokens)]
    lead = 0 if bos_id is None else 1  # positions before the word's first token
    lengths = torch.tensor([lead + len(t) for _, _, t in words], dtype=torch.long)
    n, max_len = len(words), int(lengths.max()) if words else 0
    input_ids = torch.full((n, max_len), pad_id, dtype=torch.long)
    targets = torch.full((n, max_len), IGNORE_INDEX, dtype=torch.long)
    for i, (_, _, toks) in enumerate(words):
        row = torch.tensor(([bos_id] if lead else []) + list(toks), dtype=torch.long)
        input_ids[i, : len(row)] = row
        targets[i, : len(row) - 1] = row[1:]  # next token within the row; none after its last token
    positions = torch.arange(max_len)[None, :]
    return {
        "input_ids": input_ids,
        "attention_mask": positions < lengths[:, None],
        "word_mask": (positions >= lead) & (positions < lengths[:, None]),
        "position_ids": torch.arange(max_len, dtype=torch.long).expand(n, max_len),
        "targets": targets,
        "entry_ids": torch.tensor([eid for eid, _, _ in words], dtype=torch.long),
        "word_langs": [lang for _, lang, _ in words],
        "lengths": lengths,
    }


class DictionaryLoader:
    """Infinite, exactly resumable iterator of dictionary batches for one data-parallel rank.

    Yields dicts: ``input_ids`` LongTensor [n_words, max_len] right-padded with ``pad_id``,
    ``attention_mask`` BoolTensor (True = real token, the BOS included), ``word_mask`` BoolTensor (True = a
    token of the word itself: what the word vectors pool), ``position_ids`` (0..max_len-1 on every row),
    ``targets`` (next token inside the word, -100 on padding and on each word's last token),
    ``entry_ids`` LongTensor [n_words] (global entry ids: positives match across ranks), ``word_langs``
    list[str], ``lengths`` LongTensor [n_words]. ``n_words`` and ``max_len`` vary between ranks and steps.

    ``max_word_tokens``: entries with a row (the BOS included) longer than this are left out of the part
    (counted in ``dropped_entries``) rather than truncated, so that a word vector always covers the whole word.
    ``bos_id``: put this id before every word (``align.word_bos``); None: words alone.
    """

    def __init__(
        self,
        table: AlignmentTable,
        entries_per_rank: int,
        *,
        dp_rank: int,
        dp_world_size: int,
        seed: int,
        pad_id: int,
        split: str = ALIGN,
        max_word_tokens: int | None = None,
        bos_id: int | None = None,
    ):
        if entries_per_rank < 1:
            raise ValueError(f"entries_per_rank must be >= 1, got {entries_per_rank}")
        if not (dp_world_size >= 1 and 0 <= dp_rank < dp_world_size):
            raise ValueError(
                f"need 0 <= dp_rank < dp_world_size, got dp_rank={dp_rank}, dp_world_size={dp_world_size}"
            )
        if max_word_tokens is not None and max_word_tokens < 1:
            raise ValueError(f"max_word_tokens must be >= 1 or None, got {max_word_tokens}")
        part = table.part(split)
        if max_word_tokens is not None:
            limit = max_word_tokens - (0 if bos_id is None else 1)
            kept = [e for e in part if max(len(t) for t in e.tokens) <= limit]
        else:
            kept = part
        self.dropped_entries = len(part) - len(kept)
        self.entries = kept
        self.entries_per_rank, self.dp_rank, self.dp_world_size = entries_per_rank, dp_rank, dp_world_size
        self.seed, self.pad_id, self.split, self.bos_id = seed, pad_id, split, bos_id
        self.global_entries = entries_per_rank * dp_world_size
        self.steps_per_epoch = len(kept) // self.global_entries
        if self.steps_per_epoch < 1:
            dropped = (
                f" ({self.dropped_entries} left out by max_word_tokens={max_word_tokens})"
                if max_word_tokens
                else ""
            )
            raise ValueError(
                f"alignment table part {split!r} has {len(kept)} entries{dropped}, fewer than one global step of "
                f"entries_per_rank={entries_per_rank} x dp_world_size={dp_world_size} = {self.global_entries}"
            )
        self.epoch, self.step = 0, 0

    def batch_at(self, epoch: int, step: int) -> dict:
        """This rank's batch of global step ``step`` of epoch ``epoch`` (pure; no state change)."""
        return self._take(epoch_permutation(len(self.entries), self.seed, epoch), step)

    def _take(self, perm: np.ndarray, step: int) -> dict:
        start = step * self.global_entries + self.dp_rank * self.entries_per_rank
        return collate_words(
            [self.entries[i] for i in perm[start : start + self.entries_per_rank]], self.pad_id, self.bos_id
        )

    def _fingerprint(self) -> dict:
        return {
            "seed": self.seed,
            "dp_world_size": self.dp_world_size,
            "entries_per_rank": self.entries_per_rank,
            "entries": len(self.entries),
            "split": self.split,
            "bos_id": self.bos_id,
        }

    def state_dict(self) -> dict:
        """The position (epoch, global steps consumed in it), plus the configuration it belongs to."""
        return {"epoch": self.epoch, "step": self.step, "config": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine, theirs = self._fingerprint(), state.get("config", {})
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(
                f"DictionaryLoader state was saved with another configuration: {{key: (saved, now)}} {diff}"
            )
        if not 0 <= int(state["step"]) < self.steps_per_epoch:
            raise ValueError(
                f"DictionaryLoader state: step={state['step']} outside [0, {self.steps_per_epoch})"
            )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def load_remapped_state(self, state: dict) -> None:
        """Continue from the state of a run with another data-parallel size or ``entries_per_rank`` (module
        docstring); refuses when the entries consumed in the epoch are not a whole number of new global steps."""
        mine, theirs = self._fingerprint(), state.get("config", {})
        diff = {k: (theirs.get(k), mine[k]) for k in ("seed", "entries", "split") if theirs.get(k) != mine[k]}
        if diff:
            raise ValueError(f"DictionaryLoader state cannot be remapped to another rank count: it was saved with "
                             f"another data configuration: {{key: (saved, now)}} {diff}")
        consumed = int(state["step"]) * int(theirs["entries_per_rank"]) * int(theirs["dp_world_size"])
        if consumed % self.global_entries:
            raise ValueError(f"DictionaryLoader state: {consumed} entries of epoch {state['epoch']} were read, not a "
                             f"whole number of global steps of {self.global_entries} entries (entries_per_rank="
                             f"{self.entries_per_rank} x dp_world_size={self.dp_world_size}); keep "
                             "entries_per_rank x dp_world_size as it was")
        self.epoch, self.step = int(state["epoch"]), consumed // self.global_entries
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0

    def __iter__(self) -> Iterator[dict]:
        perm_epoch, perm = None, None
        while True:
            if perm_epoch != self.epoch:  # one permutation per epoch, not per step
                perm_epoch, perm = self.epoch, epoch_permutation(len(self.entries), self.seed, self.epoch)
            batch = self._take(perm, self.step)
            self.step += 1
            if self.step == self.steps_per_epoch:
                self.epoch, self.step = self.epoch + 1, 0
            yield batch
