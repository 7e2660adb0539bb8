"""Where this rank's batches go: its GPU, or the CPU."""

from __future__ import annotations

import torch


def compute_device() -> torch.device:
    """This rank's GPU, or the CPU (parameters may live elsewhere under offload)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
