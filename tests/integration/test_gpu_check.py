"""``benchmarks/gpu_check.py --cpu-smoke``: every step of the GPU check runs on CPU, so the script cannot rot
while no GPU is around. One subprocess; its meta-steps run on this test process's Ray instance (``$RAY_ADDRESS``,
as under ``ray job submit``), which saves starting one. The structure and sanity of what it writes are checked,
never its speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from ..conftest import REPO, TINY_BERT

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
ALGORITHMS = {"multitask", "fomaml", "maml", "anil", "protonet", "reptile"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # none but the one a test gives
    return {**env, "CUDA_VISIBLE_DEVICES": ""}  # CPU smoke mode even on a machine with a GPU


@pytest.fixture(scope="module")
def smoke(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = _env() | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc.stdout


def test_without_cuda_and_without_smoke_it_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x")], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: no CUDA device is visible"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_device_step(smoke):
    r, md, stdout = smoke
    assert r["schema"] == 1 and r["mode"] == "cpu-smoke" and r["status"] == "ok" and r["problems"] == []
    d = r["device"]
    assert d["device"] == "cpu" and d["cuda_available"] is False and d["note"] == "no CUDA; CPU smoke mode"
    assert d["torch"] and d["transformers"] and d["python"]
    assert "no CUDA; CPU smoke mode" in stdout


def test_gpu_tests_step_runs_and_its_cuda_cases_skip(smoke):
    t = smoke[0]["tests"]
    assert t["status"].startswith("passed"), t
    assert t["command"].startswith("python -m pytest -m gpu tests/gpu")
    # the CUDA variants of tests/gpu are collected and skip themselves; nothing fails or errors
    assert t["tests"] >= 3 and t["skipped"] == t["tests"] and t["failures"] == t["errors"] == 0
    assert t["skip_reasons"] == ["no CUDA device on this machine"]


def test_compute_rows_for_every_algorithm_and_precision(smoke):
    c = smoke[0]["compute"]
    assert c["import_mode"] == "normal"
    assert c["episode"] == {"ways": 2, "shots": 2, "queries": 2, "seq_len": 16, "tokens": 2 * 4 * 16}
    assert c["peak_tflops"] is None and "CPU" in c["peak_source"] and "FlopCounterMode" in c["flops_method"]
    rows = c["rows"]
    assert {(r["algorithm"], r["precision"]) for r in rows} == {(a, p) for a in ALGORITHMS for p in ("fp32", "bf16")}
    assert len(rows) == 12 and {r["model"] for r in rows} == {"tiny"}
    tiny_params = None
    for r in rows:
        assert r["status"] == "ok", r
        assert r["attention"] == ("eager" if r["algorithm"] == "maml" else "sdpa")
        assert r["ms"] > 0 and len(r["ms_all"]) == 2 and all(x > 0 for x in r["ms_all"])
        assert r["tokens_per_s"] == pytest.approx(c["episode"]["tokens"] / (r["ms"] / 1e3))
        assert r["flops"] > 0 and r["tflops_per_s"] == pytest.approx(r["flops"] / (r["ms"] / 1e3) / 1e12)
        assert r["mfu"] is None and r["peak_mem_mb"] is None  # CPU: no MFU, no GPU memory
        assert math.isfinite(r["loss"])
        tiny_params = tiny_params or r["params_m"]
        assert r["params_m"] == tiny_params
    # the tiny model is the test suite's (embedding 30522 x 32 dominates its parameters)
    assert tiny_params == pytest.approx(TINY_BERT["vocab_size"] * TINY_BERT["hidden_size"] / 1e6, rel=0.2)
    flops = {(r["algorithm"], r["precision"]): r["flops"] for r in rows}
    # second order through the inner loop costs more than first order, which costs more than one gradient
    assert flops[("maml", "fp32")] > flops[("fomaml", "fp32")] > flops[("multitask", "fp32")]
    assert flops[("multitask", "fp32")] == flops[("multitask", "bf16")]  # the same ops, counted the same


def test_meta_step_breakdown_and_collective_skipped(smoke):
    m = smoke[0]["meta_step"]
    assert m["status"] == "ran" and m["tasks"] == 2 and m["model"] == "tiny"
    d = m["driver"]
    assert d["steps"] == 2
    for key in ("step_ms", "compute_ms", "publish_ms", "load_ms", "transfer_ms", "reduce_ms", "outer_ms",
                "step_over_compute", "overhead_ms", "bytes_ratio"):
        assert key in d and math.isfinite(d[key]), key
    assert d["step_ms"] > 0 and d["compute_ms"] > 0 and d["bytes_ratio"] == pytest.approx(2.0)
    assert m["collective"]["status"] == "skipped: needs ≥2 GPUs (NCCL puts one rank per GPU; this machine has 0)"
    assert m["table"].startswith("| model | N | trainable | reduce | step ms | compute ms")


def test_markdown_summary(smoke):
    r, md, _ = smoke
    assert md.startswith("# GPU check (cpu-smoke)")
    for section in ("## 1. Device", "## 2. GPU tests", "## 3. One task gradient per algorithm",
                    "## 4. Meta-step with task actors sharing the device"):
        assert section in md
    table = [line for line in md.splitlines() if line.startswith("| tiny | ")]
    assert len(table) == 12 + 1  # 12 compute rows and the meta-step row
    assert "MFU: not reported" in md and "reduce: collective: skipped: needs ≥2 GPUs" in md
