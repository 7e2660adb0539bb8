"""Progress bars of the evaluator: one tqdm bar per section (perplexity, probe, retrieval, knowledge, transfer).

:func:`start_section` opens the bar of a section (closing the previous one; :func:`end_section` closes it) (on stderr, with the count of sequences run so far and the rate);
the evaluators call :func:`tick` with the number of sequences each forward batch ran, which moves the open
bar (and does nothing when none is open, e.g. in the tests or during training). Off a terminal the bar is
redrawn at most every 30 s, so a log file gets a line now and then rather than a flood.
"""

from __future__ import annotations

import sys

_bar = None  # the open section's tqdm bar


def start_section(name: str, enabled: bool = True, total: int | None = None) -> None:
    """Close the open bar, if any, and open the bar of section `name` (none when `enabled` is False)."""
    global _bar
    end_section()
    if not enabled:
        return
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    _bar = tqdm(desc=name, total=total, unit="seq", file=sys.stderr, dynamic_ncols=tty,
                mininterval=0.5 if tty else 30, leave=True)


def end_section() -> None:
    """Close the open bar (its last line stays: the section's count, time and rate)."""
    global _bar
    if _bar is not None:
        _bar.close()
        _bar = None


def tick(n: int = 1) -> None:
    """Count `n` sequences on the open section's bar."""
    if _bar is not None:
        _bar.update(n)



def count_forwards(view):
    """`view` (a `prealign_scale.model.view.ModelView`) with its forward methods wrapped, on this one
    object, to tick the open bar with the rows of every batch they run; it stays the same object (and class)."""

    def counted(method, rows):
        def run(*args):
            tick(rows(*args))
            return method(*args)

        return run

    view.logits = counted(view.logits, lambda ids: ids.shape[0])
    view.layer_states = counted(view.layer_states, lambda ids: ids.shape[0])
    if hasattr(view, "prefix_cache"):
        view.prefix_cache = counted(view.prefix_cache, lambda prefix: prefix.shape[0])
        view.logits_on_prefix = counted(view.logits_on_prefix, lambda cache, rows, conts: conts.shape[0])
    return view
