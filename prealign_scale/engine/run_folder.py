"""The run folder (``run.out_dir``): its layout and the completion marker the run writes last.

    config.yaml        the resolved config of the latest start (run.py)
    metrics.jsonl      one line per logged step (callbacks.py)
    tensorboard/       event files (when tensorboard is installed)
    checkpoints/       DeepSpeed checkpoints + `latest` pointer (checkpoint.py)
    hf/                the exported LlamaForCausalLM folder, when the last phase has finished (export.py)
    DONE               written last, when every phase is trained and exported (`mark_finished`)
    eval/              the evaluator's results (launchers/evaluate.py), when evaluated

The engine owns this layout and writes ``DONE``; the launch layer (prealign_scale/launch/: sweeps, SLURM
tasks) only reads it through `run_is_finished` to skip finished runs. A run folder without ``DONE`` is new,
partial or pre-empted (a re-run resumes it from its latest checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

DONE_MARKER = "DONE"


def done_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DONE_MARKER


def run_is_finished(run_dir: str | Path) -> bool:
    """True when the engine marked the run folder finished (every phase trained, export written)."""
    return done_path(run_dir).is_file()


def mark_finished(run_dir: str | Path, info: dict | None = None) -> Path:
    """Write the completion marker (the engine calls this on rank 0 as its very last step)."""
    path = done_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info or {}, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
