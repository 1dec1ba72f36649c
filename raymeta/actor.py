"""``TaskActor``: a thin Ray shell around one task's data, model replica and algorithm.

The class is plain Python (testable without Ray); :func:`remote_actor_class` wraps it
with ``ray.remote``. It owns exactly one task: the data is loaded here, never on the
driver. Its encoder parameters are views into one flat buffer, so taking the driver's
published parameters is a single ``copy_`` and its gradient leaves as one contiguous
float32 array.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from typing import Any

import numpy as np
import torch

from .algorithms import task_gradient
from .config import ExperimentConfig
from .model import MetaModel, ParamLayout, load_tokenizer
from .tasks import load_task

__all__ = ["TaskActor", "bind_flat", "head_seed", "step_seed", "build_task_model"]

log = logging.getLogger(__name__)


def head_seed(seed: int, task: str) -> int:
    return zlib.crc32(f"head:{seed}:{task}".encode())


def step_seed(seed: int, task: str, step: int) -> int:
    """Dropout RNG of (seed, task, step): any process, any restart, the same masks."""
    return zlib.crc32(f"step:{seed}:{task}:{step}".encode())


def bind_flat(named: dict[str, torch.nn.Parameter]) -> tuple[ParamLayout, torch.Tensor]:
    """Make every parameter a view into one flat buffer (same values). Returns (layout, buffer)."""
    layout = ParamLayout.from_named(named)
    ref = next(iter(named.values()))
    flat = torch.empty(layout.numel, dtype=torch.float32, device=ref.device)
    for p, view in zip(named.values(), layout.unflatten(flat).values()):
        view.copy_(p.detach())
        p.data = view
    return layout, flat


def build_task_model(cfg: ExperimentConfig, task_name: str, task_type: str, num_labels: int, vocab_size: int) -> MetaModel:
    """The replica an actor (or a single-process reference) computes with."""
    # Second-order MAML differentiates through attention; SDPA kernels have no double backward.
    attn = "eager" if cfg.meta.algorithm == "maml" else None
    model = MetaModel.from_config(cfg.model, [], vocab_size=vocab_size, attn_implementation=attn)
    torch.manual_seed(head_seed(cfg.seed, task_name))  # head init depends on nothing but (seed, task)
    model.add_head(task_name, task_type, num_labels)
    return model.train()


class TaskActor:
    """Owns one task. ``compute`` returns its gradient for the published shared parameters."""

    def __init__(self, cfg_json: str, task_name: str, num_threads: int | None = None, device: str = "cpu"):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per actor is noise in the job log
        torch.set_num_threads(num_threads or max(1, len(os.sched_getaffinity(0))))
        self.cfg = ExperimentConfig.model_validate_json(cfg_json)
        self.device = torch.device(device)
        spec = self.cfg.task(task_name)
        tok = load_tokenizer(self.cfg.model)
        self.task = load_task(spec, tok, self.cfg.data_dir, self.cfg.cache_dir)
        self.model = build_task_model(self.cfg, spec.name, spec.type, self.task.num_labels, len(tok)).to(self.device)
        self.layout, self.flat = bind_flat(self.model.shared_named_parameters())
        self.grad_buf = torch.empty_like(self.flat)
        self.head = self.model.head_named_parameters(spec.name)
        o = self.cfg.optim
        self.head_opt = torch.optim.AdamW(list(self.head.values()), lr=o.head_lr, weight_decay=o.weight_decay, betas=o.betas)
        self.autocast = self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    # -- identity -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the driver checks before the first step: same shared layout as its own."""
        return {
            "task": self.task.name, "type": self.task.config.type, "numel": self.layout.numel,
            "names": list(self.layout.names), "shapes": [list(s) for s in self.layout.shapes],
            "pid": os.getpid(), "node": _node_ip(), "threads": torch.get_num_threads(),
            "train_rows": len(self.task.features["train"]),
        }

    # -- the step ---------------------------------------------------------------------------

    def compute(self, shared: np.ndarray, step: int) -> dict[str, Any]:
        """Gradient of this task's (outer) loss w.r.t. the published shared parameters.

        The returned ``grad`` is a view of a buffer reused by the next call: Ray copies it into
        the object store on return; a caller outside Ray must copy it before calling again."""
        t0 = time.perf_counter()
        if self.flat.device.type == "cpu":  # numpy copy: no torch view of the read-only object-store buffer
            np.copyto(self.flat.numpy(), shared)
        else:
            self.flat.copy_(torch.from_numpy(np.array(shared)), non_blocking=True)
        t_in = time.perf_counter()
        meta = self.cfg.meta
        episode = self.task.episode(meta.episode, self.cfg.seed, step)
        episode.support = {k: v.to(self.device) for k, v in episode.support.items()}
        episode.query = {k: v.to(self.device) for k, v in episode.query.items()}
        torch.manual_seed(step_seed(self.cfg.seed, self.task.name, step))
        params = {**self.model.shared_named_parameters(), **self.head}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            result = task_gradient(meta.algorithm, self.model, self.task.name, self.task.config.type, episode, params,
                                   inner_steps=meta.inner_steps, inner_lr=meta.inner_lr)
        # Reused buffer: Ray copies the returned array into the object store before the next call.
        grad = self.layout.flatten({n: result.grads.get(n) for n in self.layout.names}, out=self.grad_buf)
        finite = bool(np.isfinite(result.loss)) and bool(torch.isfinite(grad).all())
        head_grads = {k: result.grads[k] for k in self.head if k in result.grads}
        if finite and head_grads and all(bool(torch.isfinite(g).all()) for g in head_grads.values()):
            # The task's own head follows its gradient locally; it never travels.
            for k, p in self.head.items():
                p.grad = head_grads.get(k)
            self.head_opt.step()
            self.head_opt.zero_grad(set_to_none=True)
        return {
            "task": self.task.name, "step": step, "grad": grad.detach().cpu().numpy(),
            "loss": float(result.loss), "metrics": result.metrics, "n_examples": result.n_examples,
            "finite": finite, "compute_s": time.perf_counter() - t_in, "load_s": t_in - t0,
        }

    # -- checkpoint state -----------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Head parameters and head-optimizer state as plain arrays (saved with safetensors)."""
        tensors = {f"head.{k}": p.detach().cpu().numpy() for k, p in self.head.items()}
        opt = self.head_opt.state_dict()
        for idx, st in opt["state"].items():
            for key, val in st.items():
                tensors[f"head_optim.{idx}.{key}"] = torch.as_tensor(val).detach().cpu().numpy()
        return {"tensors": tensors, "param_groups": opt["param_groups"]}

    def set_state(self, state: dict[str, Any]) -> None:
        t = state["tensors"]
        with torch.no_grad():
            for k, p in self.head.items():
                p.copy_(torch.from_numpy(np.asarray(t[f"head.{k}"])))
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in t.items():
            if key.startswith("head_optim."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = torch.from_numpy(np.array(val))
        self.head_opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})

    def pid(self) -> int:
        return os.getpid()


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (unit use)
        return "local"
