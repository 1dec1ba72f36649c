"""``benchmarks/gpu_check.py --cpu-smoke``: every step of the GPU check runs on CPU, so the script
cannot rot while no GPU is around. One subprocess; its meta-steps run on this test process's Ray
instance (``$RAY_ADDRESS``, as under ``ray job submit``), which saves starting one. The structure
and sanity of what it writes are checked, never its speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raymeta.config import ALGORITHMS

from ..conftest import REPO, TINY_BERT

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _env() -> dict[str, str]:
    # none but the one a test gives
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "CUDA_VISIBLE_DEVICES": ""}  # CPU smoke mode even on a machine with a GPU


@pytest.fixture(scope="module")
def smoke(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = _env() | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], cwd=REPO,
                          env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(),
            proc.stdout)


def test_without_cuda_and_without_smoke_it_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x")], cwd=REPO,
                          env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (len(lines) == 1
            and lines[0].startswith("gpu_check: error: no CUDA device is visible")), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow  # the smoke run (about 35 s) is one subprocess shared by these five
def test_device_step(smoke):
    r, md, stdout = smoke
    assert (r["schema"] == 1 and r["mode"] == "cpu-smoke" and r["status"] == "ok"
            and r["problems"] == [])
    d = r["device"]
    assert (d["device"] == "cpu" and d["cuda_available"] is False
            and d["note"] == "no CUDA; CPU smoke mode")
    assert d["torch"] and d["transformers"] and d["python"]
    assert "no CUDA; CPU smoke mode" in stdout


@pytest.mark.slow  # the smoke run (about 35 s) is one subprocess shared by these five
def test_gpu_tests_step_runs_and_its_cuda_cases_skip(smoke):
    t = smoke[0]["tests"]
    assert t["status"].startswith("passed"), t
    assert t["command"].startswith("python -m pytest -m gpu tests/gpu")
    # the CUDA variants of tests/gpu are collected and skip themselves; nothing fails or errors
    assert t["tests"] >= 3 and t["skipped"] == t["tests"] and t["failures"] == t["errors"] == 0
    assert t["skip_reasons"] == ["no CUDA device on this machine"]


@pytest.mark.slow  # the smoke run (about 35 s) is one subprocess shared by these five
def test_compute_rows_for_every_algorithm_and_precision(smoke):
    c = smoke[0]["compute"]
    assert c["import_mode"] == "normal"
    assert c["episode"] == {"ways": 2, "shots": 2, "queries": 2, "seq_len": 16,
                            "tokens": 2 * 4 * 16}
    assert (c["peak_tflops"] is None and "CPU" in c["peak_source"]
            and "FlopCounterMode" in c["flops_method"])
    rows = c["rows"]
    assert {(r["algorithm"], r["precision"]) for r in rows} == {(a, p) for a in ALGORITHMS
                                                                for p in ("fp32", "bf16")}
    assert len(rows) == 2 * len(ALGORITHMS) and {r["model"] for r in rows} == {"tiny"}
    tiny_params = None
    for r in rows:
        assert r["status"] == "ok", r
        assert r["attention"] == ("eager" if r["algorithm"] == "maml" else "sdpa")
        assert r["ms"] > 0 and len(r["ms_all"]) == 2 and all(x > 0 for x in r["ms_all"])
        assert r["tokens_per_s"] == pytest.approx(c["episode"]["tokens"] / (r["ms"] / 1e3))
        assert r["flops"] > 0 and r["tflops_per_s"] == pytest.approx(r["flops"] / (r["ms"] / 1e3)
                                                                      / 1e12)
        assert r["mfu"] is None and r["peak_mem_mb"] is None  # CPU: no MFU, no GPU memory
        assert math.isfinite(r["loss"])
        tiny_params = tiny_params or r["params_m"]
        assert r["params_m"] == tiny_params
    # the tiny model is the test suite's (embedding 30522 x 32 dominates its parameters)
    assert tiny_params == pytest.approx(TINY_BERT["vocab_size"] * TINY_BERT["hidden_size"] / 1e6,
                                        rel=0.2)
    flops = {(r["algorithm"], r["precision"]): r["flops"] for r in rows}
    # second order through the inner loop costs more than first order, which costs more than one
    # gradient
    assert flops[("maml", "fp32")] > flops[("fomaml", "fp32")] > flops[("multitask", "fp32")]
    # the same ops, counted the same
    assert flops[("multitask", "fp32")] == flops[("multitask", "bf16")]


@pytest.mark.slow  # the smoke run (about 35 s) is one subprocess shared by these five
def test_meta_step_breakdown_and_collective_skipped(smoke):
    m = smoke[0]["meta_step"]
    assert m["status"] == "ran" and m["tasks"] == 2 and m["model"] == "tiny"
    d = m["driver"]
    assert d["steps"] == 2
    for key in ("step_ms", "compute_ms", "publish_ms", "load_ms", "transfer_ms", "reduce_ms",
                "outer_ms",
                "step_over_compute", "overhead_ms", "bytes_ratio"):
        assert key in d and math.isfinite(d[key]), key
    assert d["step_ms"] > 0 and d["compute_ms"] > 0 and d["bytes_ratio"] == pytest.approx(2.0)
    assert m["collective"]["status"] == ("skipped: needs ≥2 GPUs (NCCL puts one rank per GPU; "
                                         "this machine has 0)")
    assert m["table"].startswith("| model | N | trainable | algorithm | reduce | step ms | compute "
                                 "ms")


@pytest.mark.slow  # the smoke run (about 35 s) is one subprocess shared by these five
def test_markdown_summary(smoke):
    r, md, _ = smoke
    assert md.startswith("# GPU check (cpu-smoke)")
    for section in ("## 1. Device", "## 2. GPU tests", "## 3. One task gradient per algorithm",
                    "## 4. Meta-step with task actors sharing the device"):
        assert section in md
    table = [line for line in md.splitlines() if line.startswith("| tiny | ")]
    # a compute row per algorithm and precision, and the meta-step row
    assert len(table) == 2 * len(ALGORITHMS) + 1
    assert "MFU: not reported" in md and "reduce: collective: skipped: needs ≥2 GPUs" in md


def test_each_phase_writes_its_json_and_the_report_names_a_phase_that_left_none(tmp_path):
    """run.sh's shape: one phase per process, each writing its JSON as it ends; the report phase
    merges them and names a phase its timeout killed (phases.tsv rc 124) and one that was ended
    after some rows."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--phase", "ceilings",
                           "--out", str(out)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ce = json.loads((out / "ceilings.json").read_text())
    assert (ce["status"] == "ok" and ce["matmul_bf16_tflops"] > 0 and ce["matmul_fp32_tflops"] > 0
            and ce["copy_gbps"] > 0)
    assert sorted(p.name for p in out.iterdir()) == ["ceilings.json"]  # nothing but its own JSON
    row = {"model": "tiny", "algorithm": "fomaml", "precision": "fp32", "status": "ok"}
    (out / "compute_x16.json").write_text(json.dumps({"status": "running", "episode_scale": 16,
                                                      "rows": [row]}))
    (out / "phases.tsv").write_text("phase\trc\tseconds\tlimit_s\nceilings\t0\t3\t45\n"
                                    "compute_x16\t137\t100\t100\ntests\t124\t20\t20\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--phase", "report", "--out",
                           str(out)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["status"] == "failed" and r["ceilings"]["status"] == "ok"
    assert r["tests"]["status"] == "failed: timed out after 20 s (rc 124); no JSON"
    assert r["compute_sweep"]["x16"]["status"] == "failed: ended after 1 rows (rc 137)"
    assert (r["compute"]["status"] == "skipped: not run"
            and r["meta_step"]["status"] == "skipped: not run")
    assert sorted(r["problems"]) == [f"compute_x16: {r['compute_sweep']['x16']['status']}",
                                     f"tests: {r['tests']['status']}"]
    md = (out / "gpu_check.md").read_text()
    assert ("## Measured ceilings" in md and "### Episode x16 (sweep x16)" in md
            and "timed out after 20 s" in md)


@pytest.mark.slow
def test_the_bundle_runs_on_a_node_like_python_with_the_network_off(tmp_path):
    """``make gpu-bundle-check`` as a test: build the bundle (PyPI), then benchmarks/gpu_bundle.py
    check (a cached Python 3.12 venv of the image's packages only; the first run downloads about 3.5
    GB of torch + CUDA wheels)."""
    bundle = tmp_path / "gpu"
    tool = REPO / "benchmarks" / "gpu_bundle.py"
    cache = ["--wheels-cache", str(Path.home() / ".cache" / "raymeta-gpu-wheels")]
    proc = subprocess.run([sys.executable, str(tool), "build", "--dest", str(bundle), *cache],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
    assert size <= 40, size
    proc = subprocess.run([sys.executable, str(tool), "check", "--bundle", str(bundle), "--keep",
                           str(tmp_path / "node")],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in ("smoke", "hang"):
        out = tmp_path / "node" / run / "out"
        assert ((out / "device.json").is_file() and (out / "ceilings.json").is_file()
                and (out / "compute_x1.json").is_file())
    assert not (tmp_path / "node" / "hang" / "out" / "tests.json").exists()
    # the phase after the hung one still ran
    assert (tmp_path / "node" / "hang" / "out" / "meta_step.json").is_file()
