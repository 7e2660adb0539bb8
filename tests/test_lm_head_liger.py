"""liger-kernel's fused linear cross-entropy (the LM head's ``impl="liger"``, used on CUDA) against the plain
reference, run under the Triton interpreter on CPU.

The interpreter must be switched on before Triton is imported, so the checks run in a subprocess (this file
run as a script with TRITON_INTERPRET=1). liger-kernel is installed by scripts/install.sh (``--no-deps``,
STACK.md); without it the test is skipped with the install command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _checks() -> None:
    from prealign_scale.kernels.lm_head_loss import IGNORE_INDEX, fused_linear_cross_entropy

    torch.manual_seed(0)
    T, H, V = 24, 16, 40  # a few Triton programs: the interpreter is slow
    hidden, weight = torch.randn(T, H), torch.randn(V, H)
    targets = torch.randint(0, V, (T,))
    targets[[3, 17]] = IGNORE_INDEX
    for reduction in ("sum", "mean"):
        grads = {}
        for impl in ("naive", "liger"):
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
            loss = fused_linear_cross_entropy(h, w, targets, reduction=reduction, impl=impl)
            loss.backward()
            grads[impl] = (loss.detach(), h.grad, w.grad)
        ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction=reduction)
        torch.testing.assert_close(grads["naive"][0], ref, rtol=1e-6, atol=1e-6)
        for got, want, what in zip(grads["liger"], grads["naive"], ("loss", "grad hidden", "grad weight")):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{reduction} {what}")
    print("LIGER_CHECKS_OK")


def test_liger_fused_linear_cross_entropy_matches_the_reference_under_the_interpreter():
    from prealign_scale.kernels.lm_head_loss import liger_available

    if not liger_available():
        pytest.skip("liger-kernel is not installed: pip install --no-deps liger-kernel==0.8.5 (scripts/install.sh)")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and "LIGER_CHECKS_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _checks()
