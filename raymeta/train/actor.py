"""``TaskActor``: a thin Ray shell around one task's data, model replica and algorithm.

The class is plain Python (testable without Ray); the pool wraps it with ``ray.remote`` when it
starts the actors (:class:`~raymeta.train.pool.ActorPool`). It owns exactly one task: the data is
loaded here, never on the driver. Its encoder parameters are views into one flat buffer, so
taking the driver's published parameters is a single ``copy_`` and its gradient leaves as one
contiguous float32 array. The gradient itself is :func:`raymeta.core.algorithms.task_gradient`'s.

What else an actor does lives beside the code that asks for it: the collective step and group
membership with the collective reducer (:class:`~raymeta.train.collective.CollectiveMember`), the
target gradient with the target actors (:class:`~raymeta.train.targets.TargetGradient`), and
validation scoring with the shared scorer (:class:`~raymeta.eval.scoring.ValidationScorer`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch

from ..cluster.memory import trim_heap
from ..config import ExperimentConfig, TaskConfig
from ..config.resolve import replica_key
from ..core.algorithms import algorithm_options, task_gradient
from ..core.combine import as_tensor
from ..core.model import MetaModel, ParamLayout, load_tokenizer
from ..core.optim import optimizer_from_tensors, optimizer_tensors
from ..core.seeds import head_seed, step_seed
from ..core.trainable import frozen_fingerprint
from ..errors import RaymetaError
from ..eval.scoring import EpisodicProtocol, ValidationScorer, protocol
from ..storage import local_model_path
from ..tasks import load_task
from .collective import CollectiveMember, destroy_group
from .targets import TargetGradient

__all__ = ["TaskActor", "bind_flat", "from_wire", "build_task_model"]

log = logging.getLogger(__name__)


def bind_flat(named: dict[str, torch.nn.Parameter]) -> tuple[ParamLayout, torch.Tensor]:
    """Make every parameter a view into one flat buffer (same values). Returns (layout, buffer)."""
    layout = ParamLayout.from_named(named)
    ref = next(iter(named.values()))
    flat = torch.empty(layout.numel, dtype=torch.float32, device=ref.device)
    for p, view in zip(named.values(), layout.unflatten(flat).values()):
        view.copy_(p.detach())
        p.data = view
    return layout, flat


def from_wire(grad: np.ndarray) -> np.ndarray | torch.Tensor:
    """A gradient as an actor returned it, ready to reduce: ``meta.transfer_dtype: bfloat16`` sends
    the bfloat16 bit pattern as uint16 (numpy has no bfloat16); a zero-copy view either way."""
    return as_tensor(grad).view(torch.bfloat16) if grad.dtype == np.uint16 else grad


def build_task_model(cfg: ExperimentConfig, task_name: str, task_type: str, num_labels: int,
                     vocab_size: int) -> MetaModel:
    """The replica an actor (or a single-process reference) computes with."""
    # Second-order MAML differentiates through attention; SDPA kernels have no double backward.
    attn = "eager" if cfg.meta.algorithm == "maml" else None
    # The same seed as the driver's encoder: a from_config model's (and LoRA's) random init must
    # match there, since under model.trainable lora / top_layers the frozen weights never travel.
    torch.manual_seed(cfg.seed)
    model = MetaModel.from_config(cfg.model, [], vocab_size=vocab_size, attn_implementation=attn,
                                  fetch=local_model_path)
    add_task_head(model, cfg, task_name, task_type, num_labels)
    return model.train()


def add_task_head(model: MetaModel, cfg: ExperimentConfig, task_name: str, task_type: str,
                  num_labels: int) -> None:
    """The task's head on ``model``, initialised from (seed, task) alone: the same head whether the
    task has a process of its own or shares one with other tasks (``resources.workers``)."""
    torch.manual_seed(head_seed(cfg.seed, task_name))
    m = cfg.meta
    learned = m.algorithm == "metaopt" and m.metaopt.learn_scale \
        and task_type == "sequence_classification"
    model.add_head(task_name, task_type, num_labels,
                   log_scale=math.log(m.metaopt.scale) if learned else None)


class TaskActor(CollectiveMember, TargetGradient):
    """Owns one task. ``compute`` returns its gradient for the published shared parameters."""

    def __init__(self, cfg_json: str, task_name: str, num_threads: int | None = None,
                 device: str = "cpu", replica: int = 0, share: TaskActor | None = None):
        # A user error here (bad data, bad model) is kept and raised by the first call instead:
        # a failed actor constructor reaches the driver only as text, a failed call as the error
        # itself.
        self._init_error: RaymetaError | None = None
        self._threads, self._device_name = num_threads, device  # what reset() keeps
        # Replica r of a task draws its own episodes and dropout: stream "<task>#r" (r > 0).
        self.key = replica_key(task_name, replica)
        try:
            if share is None:
                self._setup(cfg_json, task_name, num_threads, device)
            else:
                self._share(share, task_name)
        except RaymetaError as e:
            self._init_error = e

    def _setup(self, cfg_json: str, task_name: str, num_threads: int | None, device: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from transformers.utils import logging as hf_logging

        # a "Loading weights" bar per actor is noise in the job log
        hf_logging.disable_progress_bar()
        torch.set_num_threads(num_threads or max(1, len(os.sched_getaffinity(0))))
        self.cfg = ExperimentConfig.model_validate_json(cfg_json)
        self.device = torch.device(device)
        spec = self.cfg.task(task_name)
        self.tokenizer = tok = load_tokenizer(self.cfg.model, fetch=local_model_path)
        self.task = load_task(spec, tok, self.cfg.data_dir, self.cfg.cache_dir)
        self.scorer = ValidationScorer(self.cfg, tok)  # meta-validation tasks, loaded once
        self.model = build_task_model(self.cfg, spec.name, spec.type, self.task.num_labels,
                                      len(tok)).to(self.device)
        self.layout, self.flat = bind_flat(self.model.shared_named_parameters())
        self.grad_buf = torch.empty_like(self.flat)
        self._shared = list(self.model.shared_named_parameters().values())
        self._bound: torch.Tensor = self.flat  # the buffer the shared parameters are views of
        # the published object they view (zero-copy), kept alive
        self._pinned: np.ndarray | None = None
        # meta.transfer_dtype: bfloat16 halves the bytes each gradient returns with (reduce: driver
        # only)
        self._wire = torch.empty(self.layout.numel, dtype=torch.bfloat16) \
            if self.cfg.meta.transfer_dtype == "bfloat16" else None
        self.autocast = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self._task_state(spec)

    def _share(self, other: TaskActor, task_name: str) -> None:
        """Set up beside ``other`` in its process (:class:`~raymeta.train.worker.TaskWorker`): this
        task's data, head and head optimizer of its own; the tokenizer, the validation tasks, the
        encoder, its flat parameter buffer and the gradient buffer shared. A call returns before the
        next begins (Ray copies a returned gradient out first), so one buffer of each serves every
        task of the process."""
        other.check_ready()
        self.cfg, self.device, self.tokenizer = other.cfg, other.device, other.tokenizer
        spec = self.cfg.task(task_name)
        self.task = load_task(spec, self.tokenizer, self.cfg.data_dir, self.cfg.cache_dir)
        self.scorer, self.model = other.scorer, other.model
        add_task_head(self.model, self.cfg, spec.name, spec.type, self.task.num_labels)
        self.model.to(self.device)
        self.layout, self.flat, self.grad_buf = other.layout, other.flat, other.grad_buf
        self._shared, self._bound, self._pinned = other._shared, other._bound, None
        self._wire, self.autocast = other._wire, other.autocast
        self._task_state(spec)

    def _task_state(self, spec: TaskConfig) -> None:
        self.head = self.model.head_named_parameters(spec.name)
        o = self.cfg.optim
        self.head_opt = torch.optim.AdamW(list(self.head.values()), lr=o.head_lr,
                                          weight_decay=o.weight_decay, betas=o.betas)
        # Replicas keep identical heads: the driver averages their head gradients and hands the
        # average back with the next call, instead of each replica stepping on its own.
        self.replicated = spec.replicas > 1
        self.head_layout = ParamLayout.from_named(self.head)

    def reset(self, cfg_json: str, task_name: str, replica: int = 0) -> None:
        """Start over in this process with another config or task (its threads and device stay): a
        fresh task, model, head and optimizer, as if newly constructed. Process start-up (importing
        torch and transformers, several seconds) is paid once, so test suites and benchmark sweeps
        that run many short configurations reuse actors through ``MetaTrainer(cfg, actors=...)``."""
        destroy_group()  # a process group of the previous configuration, if any
        self.__init__(cfg_json, task_name, self._threads, self._device_name, replica)

    # -- identity -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the driver checks before the first step: same shared layout as its own."""
        self.check_ready()
        return {
            "task": self.key, "type": self.task.config.type, "numel": self.layout.numel,
            "names": list(self.layout.names), "shapes": [list(s) for s in self.layout.shapes],
            "frozen": frozen_fingerprint(self.model.encoder),
            "pid": os.getpid(), "node": self.node_ip(), "threads": torch.get_num_threads(),
                "device": self.device.type,
            "train_rows": len(self.task.features["train"]),
        }

    # -- the step ---------------------------------------------------------------------------

    def compute(self, shared: np.ndarray, step: int,
                head_grad: np.ndarray | None = None) -> dict[str, Any]:
        """Gradient of this task's (outer) loss w.r.t. the published shared parameters.

        The returned ``grad`` is a view of a buffer reused by the next call: Ray copies it into
        the object store on return; a caller outside Ray must copy it before calling again.
        ``head_grad``: replicas only, the replicas' averaged head gradient of the previous step."""
        out = self.gradient_at(shared, step, head_grad)
        if self._wire is None:
            out["grad"] = self.grad_buf.detach().cpu().numpy()
        else:  # numpy has no bfloat16: the bits travel as uint16 (see from_wire)
            out["grad"] = self._wire.copy_(self.grad_buf).cpu().view(torch.uint16).numpy()
        trim_heap()  # the step's activations back to the system, not kept in glibc's arenas
        return out

    def gradient_at(self, shared: np.ndarray, step: int,
                    head_grad: np.ndarray | None = None) -> dict[str, Any]:
        """The pending head update applied, the published parameters bound (zero-copy), and this
        task's gradient into ``self.grad_buf``: the part of :meth:`compute` a worker owning several
        tasks shares (:meth:`~raymeta.train.worker.TaskWorker.compute_sum`). The record's
        ``load_s`` is the time before the episode began."""
        t0 = time.perf_counter()
        self.apply_head(head_grad)
        self.load_shared(shared, zero_copy=True)
        out = self.gradient(step)
        out["load_s"] = out.pop("t_start") - t0
        return out

    def load_shared(self, shared: np.ndarray, zero_copy: bool = False) -> None:
        if self.flat.device.type != "cpu":
            self.flat.copy_(torch.from_numpy(np.array(shared)), non_blocking=True)
        elif zero_copy:
            # The parameters become views of the published object-store buffer, which stays pinned
            # until the next call: no copy per step (90 MB for MiniLM). The buffer is read-only, and
            # a task gradient only reads the shared parameters; the head, which steps here, has its
            # own storage.
            self._pinned = shared
            self._bind(as_tensor(shared))
            if self.flat.numel():
                # nothing views the actor's own buffer now: 4 bytes per trainable parameter freed
                # (91 MB for MiniLM), allocated again if a copy is ever asked for
                self.flat = self.flat.new_empty(0)
        # reduce: collective: this actor's own outer step writes its parameters, so they own their
        # buffer
        else:
            if self.flat.numel() != self.layout.numel:
                self.flat = torch.empty(self.layout.numel, dtype=torch.float32)
            np.copyto(self.flat.numpy(), shared)
            self._bind(self.flat)
            self._pinned = None

    def _bind(self, flat: torch.Tensor) -> None:
        if flat is not self._bound:
            for p, view in zip(self._shared, self.layout.unflatten(flat).values()):
                p.data = view
            self._bound = flat

    def gradient(self, step: int, on_grad: Any = None) -> dict[str, Any]:
        """This task's gradient into ``self.grad_buf``; the head takes its own step here.
        ``on_grad``: see
        :func:`~raymeta.core.algorithms.task_gradient` (the overlapped all-reduce's hook)."""
        t_in = time.perf_counter()
        meta = self.cfg.meta
        episode = self.on_device(self.task.episode(meta.episode, self.cfg.seed, step,
                                                   stream=self.key,
                                                    label_template=meta.proto.prior_template))
        torch.manual_seed(step_seed(self.cfg.seed, self.key, step))
        params = {**self.model.shared_named_parameters(), **self.head}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            result = task_gradient(meta.algorithm, self.model, self.task.name,
                                   self.task.config.type, episode, params,
                                   **algorithm_options(meta), on_grad=on_grad)
        grad = self.layout.flatten({n: result.grads.get(n) for n in self.layout.names},
                                   out=self.grad_buf)
        # debugging/testing only (off by default): a real non-finite gradient
        fault = meta.fault_injection
        if fault is not None and fault.task == self.key and step in fault.steps:
            grad[0] = float(fault.value)
        # sum, not an elementwise mask: NaN/Inf anywhere makes the sum non-finite, at a fraction of
        # the cost
        finite = bool(np.isfinite(result.loss)) and bool(torch.isfinite(grad.sum()))
        head_grads = {k: result.grads[k] for k in self.head if k in result.grads}
        head_ok = finite and bool(head_grads) and all(bool(torch.isfinite(g.sum()))
                                                      for g in head_grads.values())
        out: dict[str, Any] = {"task": self.key, "step": step, "loss": float(result.loss),
                               "metrics": result.metrics,
                               "n_examples": result.n_examples, "finite": finite, "t_start": t_in}
        # the driver averages it over the replicas (None: nothing to contribute)
        if self.replicated:
            out["head_grad"] = None
            if head_ok:
                flat = self.head_layout.flatten({k: head_grads.get(k) for k in self.head})
                out["head_grad"] = flat.detach().cpu().numpy()
        elif head_ok:  # the task's own head follows its gradient locally; it never travels
            self._head_step(head_grads)
        out["compute_s"] = time.perf_counter() - t_in
        return out

    def on_device(self, episode: Any) -> Any:
        episode.support = {k: v.to(self.device) for k, v in episode.support.items()}
        episode.query = {k: v.to(self.device) for k, v in episode.query.items()}
        if episode.names is not None:
            episode.names = {k: v.to(self.device) for k, v in episode.names.items()}
        return episode

    def _head_step(self, grads: dict[str, torch.Tensor]) -> None:
        for k, p in self.head.items():
            p.grad = grads.get(k)
        self.head_opt.step()
        self.head_opt.zero_grad(set_to_none=True)

    def apply_head(self, head_grad: np.ndarray | None) -> None:
        """Replicas: one head step with the averaged head gradient (a no-op for None)."""
        if head_grad is not None:
            g = torch.from_numpy(np.array(head_grad)).to(self.flat.device)
            self._head_step(self.head_layout.unflatten(g))

    # -- meta-validation --------------------------------------------------------------------

    def validate(self, shared: np.ndarray | None, specs_json: list[str],
                 protocols_json: list[str] | None = None
                 ) -> dict[str, list[float]] | list[dict[str, list[float]]]:
        """Meta-validation (:mod:`raymeta.train.validation`, scored by
        :class:`~raymeta.eval.scoring.ValidationScorer`, the scorer ``raymeta tune`` uses too):
        per-episode accuracy on each given task, with this replica at the published parameters
        (reduce: driver) or its own, current ones (``shared`` None: reduce: collective).
        ``protocols_json``: the episodic settings to score (``eval.validation.settings``), giving
        one ``{task: values}`` per setting, in order; None: the one protocol of
        ``eval.validation``, giving ``{task: values}``."""
        self.check_ready()
        if shared is not None:
            self.load_shared(shared, zero_copy=True)
        ps = [protocol(self.cfg, "validation")] if protocols_json is None else \
            [EpisodicProtocol.model_validate_json(js) for js in protocols_json]
        specs = [TaskConfig.model_validate_json(js) for js in specs_json]
        out = self.scorer.score(self.model, specs, ps)
        trim_heap()
        return out[0] if protocols_json is None else out

    def check_ready(self) -> None:
        """A user error of the constructor (bad data, bad model), raised by the first call."""
        if self._init_error is not None:
            raise self._init_error

    def node_ip(self) -> str:
        try:
            import ray

            return ray.util.get_node_ip_address()
        except Exception:  # outside Ray (unit use)
            return "local"

    # -- checkpoint state -----------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Head parameters and head-optimizer state as plain arrays (saved with safetensors)."""
        tensors = {f"head.{k}": p.detach().cpu().numpy() for k, p in self.head.items()}
        opt, groups = optimizer_tensors(self.head_opt, prefix="head_optim.")
        tensors.update({k: v.cpu().numpy() for k, v in opt.items()})
        return {"tensors": tensors, "param_groups": groups}

    def set_state(self, state: dict[str, Any]) -> None:
        t = state["tensors"]
        with torch.no_grad():
            for k, p in self.head.items():
                p.copy_(torch.from_numpy(np.array(t[f"head.{k}"])))
        optimizer_from_tensors(self.head_opt, {k: torch.from_numpy(np.array(v)) for k,
                                               v in t.items()},
                               state["param_groups"], prefix="head_optim.")

    def pid(self) -> int:
        return os.getpid()

