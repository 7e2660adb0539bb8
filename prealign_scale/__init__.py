"""prealign-scale: PreAlign (Li et al., EMNLP 2024) on DeepSpeed ZeRO-3 and megatron-core."""

__version__ = "0.1.0"
