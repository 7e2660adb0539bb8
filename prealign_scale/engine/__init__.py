"""The training engine: one loop for both phases on a DeepSpeed ZeRO-3 megatron-core model (docs/training.md).

run.py (phase 1 then phase 2, resume, export) · loop.py (the training loop) · phase.py (what a phase supplies)
· phases.py (the registry of phase names and classes) · align_phase.py / lm_phase.py (batches, loss and config
section of each phase; the alignment objective itself is prealign_scale/alignment/objective.py) · callback.py
(the loop's hooks) · callbacks.py / probe_callback.py (metrics, TensorBoard, progress, throughput, signals, step
budget, checkpoint cadence, alignment probe) · deepspeed_setup.py (the one place an engine is created) ·
resolve_config.py (files and derived values of a run config) · run_folder.py (the DONE marker) · device.py ·
fused_lm_head.py · checkpoint.py · schedule.py · export.py
"""
