"""The training engine: one loop for both phases on a DeepSpeed ZeRO-3 megatron-core model (docs/training.md).

run.py (phase 1 then phase 2, resume, export) · loop.py (the training loop) · align_phase.py / lm_phase.py
(batches and loss of each phase; the alignment objective itself is prealign_scale/alignment/objective.py) ·
deepspeed_setup.py (the one place an engine is created) · checkpoint.py · schedule.py · callbacks.py ·
export.py
"""
