"""The evaluators' input-file readers: `prealign_scale.data.input_files`, under the evaluation suite's names.

The readers live in the data layer because the fact files (`prealign_scale.data.facts`) are read both when
shards are built and when the model is evaluated; :class:`EvalInputError` is the same class as
:class:`~prealign_scale.data.input_files.InputFileError`, so ``except EvalInputError`` catches both.
"""

from __future__ import annotations

from prealign_scale.data.input_files import InputFileError as EvalInputError
from prealign_scale.data.input_files import iter_lines, line_of, read_json, read_jsonl, read_tsv

__all__ = ["EvalInputError", "iter_lines", "line_of", "read_json", "read_jsonl", "read_tsv"]
