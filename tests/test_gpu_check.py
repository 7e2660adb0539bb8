"""benchmarks/gpu_check.py: the dry mode (CPU, toy sizes, Triton interpreter, one gloo rank) runs every
section end to end; the runner records a failing section and still runs the rest; the deadline skips."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_gpu_check():
    """benchmarks/gpu_check.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()

CORRECTNESS = ("align_loss", "lm_head", "zero_init", "engine_steps")


def test_dry_mode_runs_every_section(tmp_path):
    out = tmp_path / "dry"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.with_suffix(".json").read_text())
    secs = res["sections"]
    assert res["mode"] == "dry"
    assert list(secs) == [name for name, _, _ in gpu_check.sections(dry=True)]
    env_info = secs["env"]["result"]
    assert env_info["torch"] and env_info["deepspeed"] and env_info["megatron_core"] and env_info["triton"]
    assert env_info["peak_bf16_flops"] is None  # CPU: no peak, so no MFU
    for name in CORRECTNESS:
        assert secs[name]["status"] == "ok", (name, secs[name])
        assert secs[name]["result"]["ok"] is True
    # Triton (interpreted) vs chunked, both dtypes, within the stated tolerances
    al = secs["align_loss"]["result"]
    for dtype in ("float32", "bfloat16"):
        assert al[dtype]["loss_rel_err"] <= gpu_check.TOL[dtype]["loss"]
        assert al[dtype]["grad_rel_err"] <= gpu_check.TOL[dtype]["grad"]
    # TE is not installed here: skipped with the reason, not failed
    te = secs["te_layer"]
    assert te["status"] in ("skipped", "ok") and (te["status"] == "ok" or "Transformer Engine" in te["reason"])
    zi = secs["zero_init"]["result"]
    assert zi["dtypes"] == ["torch.bfloat16"] and len(zi["stats"]) == 3
    assert set(secs["engine_steps"]["result"]) >= {"align", "lm"}
    # performance: measured CPU numbers, MFU null
    tr = secs["train_tiny"]["result"]
    assert tr["tokens_per_s"] > 0 and tr["align_entries_per_s"] > 0 and tr["mfu"] is None
    # flex document block mask vs the dense mask: errors within the stated tolerances (no-grad output: the
    # eager flex kernel on CPU); document masking off / dense / flex each measured, masked losses agree
    fl = secs["flex_attention"]
    assert fl["status"] == "ok", fl
    for dtype in ("float32", "bfloat16"):
        assert all(fl["result"][dtype][e] <= fl["result"][dtype]["tolerance"]
                   for e in ("out", "out_no_grad", "dq", "dk", "dv"))
    dm = secs["doc_mask_tiny"]
    assert dm["status"] == "ok", dm
    assert all(dm["result"][v]["tokens_per_s"] > 0 for v in ("causal", "dense_mask", "flex"))
    assert dm["result"]["flex"]["mfu"] is None
    k = secs["kernels"]["result"]
    assert k["align_loss_triton"]["seconds"] > 0 and k["align_loss_triton"]["share_of_peak"] is None
    md = out.with_suffix(".md").read_text()
    assert md.index("| card |") < md.index("| deepspeed |") < md.index("| section |")
    assert "| train_tiny | ok |" in md


def test_a_failing_section_is_recorded_and_the_rest_runs(monkeypatch):
    def boom(ctx):
        raise RuntimeError("kernel exploded")

    def skip(ctx):
        raise gpu_check.Skip("no such package")

    fake = [("env", 5, lambda ctx: {"card": "x"}), ("a", 5, boom), ("b", 5, skip),
            ("c", 5, lambda ctx: {"ok": False}), ("d", 5, lambda ctx: {"value": 1})]
    monkeypatch.setattr(gpu_check, "sections", lambda dry: fake)
    res = gpu_check.run_check(True, deadline_s=60)
    s = res["sections"]
    assert s["a"]["status"] == "error" and "kernel exploded" in s["a"]["error"] and "Traceback" in s["a"]["traceback"]
    assert s["b"] == {**s["b"], "status": "skipped", "reason": "no such package"}
    assert s["c"]["status"] == "FAILED" and s["d"]["status"] == "ok" and s["d"]["result"] == {"value": 1}
    assert "| a | error |" in gpu_check.markdown(res)


def test_the_global_deadline_skips_what_no_longer_fits(monkeypatch):
    fake = [("env", 5, lambda ctx: {}), ("late", 30, lambda ctx: {"ok": True})]
    monkeypatch.setattr(gpu_check, "sections", lambda dry: fake)
    res = gpu_check.run_check(True, deadline_s=10)
    assert res["sections"]["env"]["status"] == "ok"
    assert res["sections"]["late"]["status"] == "skipped" and "deadline" in res["sections"]["late"]["reason"]
