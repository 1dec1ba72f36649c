"""``TaskActor``: a thin Ray shell around one task's data, model replica and algorithm.

The class is plain Python (testable without Ray); the trainer wraps it with ``ray.remote``
when it starts its actors (:class:`raymeta.train.trainer.MetaTrainer`). It owns exactly one task: the data
is loaded here, never on the driver. Its encoder parameters are views into one flat buffer, so taking the driver's
published parameters is a single ``copy_`` and its gradient leaves as one contiguous
float32 array.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig, TaskConfig
from ..core.algorithms import algorithm_options, task_gradient
from ..core.combine import as_tensor, non_finite_policy
from ..core.model import MetaModel, ParamLayout, load_tokenizer
from ..core.optim import optimizer_from_tensors, optimizer_tensors, outer_optimizer, outer_step
from ..core.trainable import frozen_fingerprint
from ..core.weighting import alignment_cosines, mean_target
from ..errors import RaymetaError
from ..eval.scoring import EpisodicProtocol, choose_rows, embed_for_scoring, protocol, score_embedded
from ..tasks import load_task
from .collective import GradientBuckets, agree_on_finite, allreduce_weighted, destroy_group, free_port, init_group

__all__ = ["TaskActor", "bind_flat", "from_wire", "head_seed", "step_seed", "replica_key", "build_task_model"]

log = logging.getLogger(__name__)


def head_seed(seed: int, task: str) -> int:
    return zlib.crc32(f"head:{seed}:{task}".encode())


def replica_key(task: str, replica: int) -> str:
    """The key of replica ``replica`` of ``task``: ``<task>`` for the first (0), ``<task>#<r>`` for r = 1, 2, ... It
    names the replica's actor and is the stream it draws its episodes and dropout from (:func:`step_seed`)."""
    return task if replica == 0 else f"{task}#{replica}"


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


def from_wire(grad: np.ndarray) -> np.ndarray | torch.Tensor:
    """A gradient as an actor returned it, ready to reduce: ``meta.transfer_dtype: bfloat16`` sends the
    bfloat16 bit pattern as uint16 (numpy has no bfloat16); a zero-copy view either way."""
    return as_tensor(grad).view(torch.bfloat16) if grad.dtype == np.uint16 else grad


def build_task_model(cfg: ExperimentConfig, task_name: str, task_type: str, num_labels: int, vocab_size: int) -> MetaModel:
    """The replica an actor (or a single-process reference) computes with."""
    # Second-order MAML differentiates through attention; SDPA kernels have no double backward.
    attn = "eager" if cfg.meta.algorithm == "maml" else None
    # The same seed as the driver's encoder: a from_config model's (and LoRA's) random init must match
    # there, since under model.trainable lora / top_layers the frozen weights never travel.
    torch.manual_seed(cfg.seed)
    model = MetaModel.from_config(cfg.model, [], vocab_size=vocab_size, attn_implementation=attn)
    torch.manual_seed(head_seed(cfg.seed, task_name))  # head init depends on nothing but (seed, task)
    m = cfg.meta
    learned = m.algorithm == "metaopt" and m.metaopt.learn_scale and task_type == "sequence_classification"
    model.add_head(task_name, task_type, num_labels, log_scale=math.log(m.metaopt.scale) if learned else None)
    return model.train()


class TaskActor:
    """Owns one task. ``compute`` returns its gradient for the published shared parameters."""

    def __init__(self, cfg_json: str, task_name: str, num_threads: int | None = None, device: str = "cpu",
                 replica: int = 0):
        # A user error here (bad data, bad model) is kept and raised by the first call instead:
        # a failed actor constructor reaches the driver only as text, a failed call as the error itself.
        self._init_error: RaymetaError | None = None
        self._threads, self._device_name = num_threads, device  # what reset() keeps
        # Replica r of a task draws its own episodes and dropout: stream "<task>#r" (r > 0).
        self.key = replica_key(task_name, replica)
        try:
            self._setup(cfg_json, task_name, num_threads, device)
        except RaymetaError as e:
            self._init_error = e

    def _setup(self, cfg_json: str, task_name: str, num_threads: int | None, device: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per actor is noise in the job log
        torch.set_num_threads(num_threads or max(1, len(os.sched_getaffinity(0))))
        self.cfg = ExperimentConfig.model_validate_json(cfg_json)
        self.device = torch.device(device)
        spec = self.cfg.task(task_name)
        self.tokenizer = tok = load_tokenizer(self.cfg.model)
        self.task = load_task(spec, tok, self.cfg.data_dir, self.cfg.cache_dir)
        self._validation: dict[str, tuple[Any, dict[str, list[int]]]] = {}  # meta-validation tasks, loaded once
        self.model = build_task_model(self.cfg, spec.name, spec.type, self.task.num_labels, len(tok)).to(self.device)
        self.layout, self.flat = bind_flat(self.model.shared_named_parameters())
        self.grad_buf = torch.empty_like(self.flat)
        self._shared = list(self.model.shared_named_parameters().values())
        self._bound: torch.Tensor = self.flat  # the buffer the shared parameters are views of
        self._pinned: np.ndarray | None = None  # the published object they view (zero-copy), kept alive
        # meta.transfer_dtype: bfloat16 halves the bytes each gradient returns with (reduce: driver only)
        self._wire = torch.empty(self.layout.numel, dtype=torch.bfloat16) \
            if self.cfg.meta.transfer_dtype == "bfloat16" else None
        self.head = self.model.head_named_parameters(spec.name)
        o = self.cfg.optim
        self.head_opt = torch.optim.AdamW(list(self.head.values()), lr=o.head_lr, weight_decay=o.weight_decay, betas=o.betas)
        self.autocast = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        # Replicas keep identical heads: the driver averages their head gradients and hands the
        # average back with the next call, instead of each replica stepping on its own.
        self.replicated = spec.replicas > 1
        self.head_layout = ParamLayout.from_named(self.head)

    def reset(self, cfg_json: str, task_name: str, replica: int = 0) -> None:
        """Start over in this process with another config or task (its threads and device stay): a fresh
        task, model, head and optimizer, as if newly constructed. Process start-up (importing torch and
        transformers, several seconds) is paid once, so test suites and benchmark sweeps that run many
        short configurations reuse actors through ``MetaTrainer(cfg, actors=...)``."""
        destroy_group()  # a process group of the previous configuration, if any
        self.__init__(cfg_json, task_name, self._threads, self._device_name, replica)

    # -- identity -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the driver checks before the first step: same shared layout as its own."""
        if self._init_error is not None:
            raise self._init_error
        return {
            "task": self.key, "type": self.task.config.type, "numel": self.layout.numel,
            "names": list(self.layout.names), "shapes": [list(s) for s in self.layout.shapes],
            "frozen": frozen_fingerprint(self.model.encoder),
            "pid": os.getpid(), "node": _node_ip(), "threads": torch.get_num_threads(), "device": self.device.type,
            "train_rows": len(self.task.features["train"]),
        }

    # -- the step ---------------------------------------------------------------------------

    def compute(self, shared: np.ndarray, step: int, head_grad: np.ndarray | None = None) -> dict[str, Any]:
        """Gradient of this task's (outer) loss w.r.t. the published shared parameters.

        The returned ``grad`` is a view of a buffer reused by the next call: Ray copies it into
        the object store on return; a caller outside Ray must copy it before calling again.
        ``head_grad``: replicas only, the replicas' averaged head gradient of the previous step."""
        t0 = time.perf_counter()
        self.apply_head(head_grad)
        self._load_shared(shared, zero_copy=True)
        out = self._gradient(step)
        out["load_s"] = out.pop("t_start") - t0
        if self._wire is None:
            out["grad"] = self.grad_buf.detach().cpu().numpy()
        else:  # numpy has no bfloat16: the bits travel as uint16 (see from_wire)
            out["grad"] = self._wire.copy_(self.grad_buf).cpu().view(torch.uint16).numpy()
        return out

    def _load_shared(self, shared: np.ndarray, zero_copy: bool = False) -> None:
        if self.flat.device.type != "cpu":
            self.flat.copy_(torch.from_numpy(np.array(shared)), non_blocking=True)
        elif zero_copy:
            # The parameters become views of the published object-store buffer, which stays pinned until the
            # next call: no copy per step (90 MB for MiniLM). The buffer is read-only, and a task gradient only
            # reads the shared parameters; the head, which steps here, has its own storage.
            self._pinned = shared
            self._bind(as_tensor(shared))
        else:  # reduce: collective: this actor's own outer step writes its parameters, so they own their buffer
            np.copyto(self.flat.numpy(), shared)
            self._bind(self.flat)
            self._pinned = None

    def _bind(self, flat: torch.Tensor) -> None:
        if flat is not self._bound:
            for p, view in zip(self._shared, self.layout.unflatten(flat).values()):
                p.data = view
            self._bound = flat

    def _gradient(self, step: int, on_grad: Any = None) -> dict[str, Any]:
        """This task's gradient into ``self.grad_buf``; the head takes its own step here. ``on_grad``: see
        :func:`~raymeta.core.algorithms.task_gradient` (the overlapped all-reduce's hook)."""
        t_in = time.perf_counter()
        meta = self.cfg.meta
        episode = self._on_device(self.task.episode(meta.episode, self.cfg.seed, step, stream=self.key,
                                                    label_template=meta.proto.prior_template))
        torch.manual_seed(step_seed(self.cfg.seed, self.key, step))
        params = {**self.model.shared_named_parameters(), **self.head}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            result = task_gradient(meta.algorithm, self.model, self.task.name, self.task.config.type, episode, params,
                                   **algorithm_options(meta), on_grad=on_grad)
        grad = self.layout.flatten({n: result.grads.get(n) for n in self.layout.names}, out=self.grad_buf)
        fault = meta.fault_injection  # debugging/testing only (off by default): a real non-finite gradient
        if fault is not None and fault.task == self.key and step in fault.steps:
            grad[0] = float(fault.value)
        # sum, not an elementwise mask: NaN/Inf anywhere makes the sum non-finite, at a fraction of the cost
        finite = bool(np.isfinite(result.loss)) and bool(torch.isfinite(grad.sum()))
        head_grads = {k: result.grads[k] for k in self.head if k in result.grads}
        head_ok = finite and bool(head_grads) and all(bool(torch.isfinite(g.sum())) for g in head_grads.values())
        out: dict[str, Any] = {"task": self.key, "step": step, "loss": float(result.loss), "metrics": result.metrics,
                               "n_examples": result.n_examples, "finite": finite, "t_start": t_in}
        if self.replicated:  # the driver averages it over the replicas (None: nothing to contribute)
            out["head_grad"] = self.head_layout.flatten({k: head_grads.get(k) for k in self.head}).detach().cpu().numpy() \
                if head_ok else None
        elif head_ok:  # the task's own head follows its gradient locally; it never travels
            self._head_step(head_grads)
        out["compute_s"] = time.perf_counter() - t_in
        return out

    def target_gradient(self, shared: np.ndarray | None, step: int, shots: list[int]) -> dict[str, Any]:
        """``meta.weighting.rule: alignment``, on a target task's actor: the gradient, at the published parameters
        (``shared``; None: this actor's current ones), of the adapted few-shot loss on this task's own seeded
        episodes, averaged over ``shots`` (``meta.weighting.shots``): ProtoNet's prototype loss, the MAML family's
        query loss after its inner loop, MetaOptNet's base learner's (multitask, which does not adapt, uses the
        prototype loss). It never enters the meta-gradient, and its head never steps."""
        if self._init_error is not None:
            raise self._init_error
        t0 = time.perf_counter()
        if shared is not None:
            self._load_shared(shared, zero_copy=True)
        meta = self.cfg.meta
        algorithm = "protonet" if meta.algorithm == "multitask" else meta.algorithm
        stream = f"target:{self.key}"
        grad = torch.zeros(self.layout.numel, dtype=torch.float32, device=self.flat.device)
        losses = []
        params = {**self.model.shared_named_parameters(), **self.head}
        for k in shots:
            episode = self._on_device(self.task.episode(meta.episode.model_copy(update={"shots": k}), self.cfg.seed, step,
                                                        stream=stream, label_template=meta.proto.prior_template))
            torch.manual_seed(step_seed(self.cfg.seed, f"{stream}:{k}", step))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                result = task_gradient(algorithm, self.model, self.task.name, self.task.config.type, episode, params,
                                       **algorithm_options(meta))
            grad.add_(self.layout.flatten({n: result.grads.get(n) for n in self.layout.names}), alpha=1.0 / len(shots))
            losses.append(float(result.loss))
        return {"task": self.key, "grad": grad.cpu().numpy(), "loss": float(np.mean(losses)),
                "compute_s": time.perf_counter() - t0}

    def _on_device(self, episode: Any) -> Any:
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

    # -- reduce: collective ------------------------------------------------------------------

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: the address and a free port for the process group."""
        addr = _node_ip()
        addr = "127.0.0.1" if addr == "local" else addr
        return addr, free_port(addr)

    def join_group(self, rank: int, tasks: list[str], weights: list[float], addr: str, port: int,
                   shared: np.ndarray, overlap: bool = True) -> None:
        """Join the process group and start from the driver's parameters with the driver's optimizer.
        ``overlap``: all-reduce during the backward pass (``meta.overlap``)."""
        init_group(rank, len(tasks), addr, port, self.device)
        self.rank, self.group_tasks, self.group_weights = rank, tasks, weights
        self._load_shared(shared)
        self.outer_opt, self.outer_sched = outer_optimizer(self.model.shared_named_parameters(), self.cfg)
        self.buckets = GradientBuckets(self.layout, self.cfg.meta.bucket_mb * 2**20, self.flat.device)
        self.overlap = overlap
        self.meta_buf = self.grad_buf  # the buffer that holds the last all-reduced meta-gradient

    def set_overlap(self, overlap: bool) -> None:
        """``meta.overlap`` from the next step (``raymeta speed`` times both on one process group)."""
        self.overlap = overlap

    def collective_step(self, step: int, head_grad: np.ndarray | None = None, targets: list[Any] | None = None,
                        weights: list[float] | None = None) -> dict[str, Any]:
        """Gradient, weighted all-reduce, then the same outer step on every rank.

        With ``meta.overlap`` the all-reduce runs bucket by bucket during the backward pass
        (:class:`~raymeta.train.collective.GradientBuckets`), each rank weighted by its share of the whole mixture,
        which is right when every rank's loss and gradient are finite (the usual case; every rank learns it after
        the backward pass). When one is not, that result is dropped and the all-reduce runs again on the kept local
        gradients with the weights renormalised over the finite ranks, exactly as without overlap.

        ``meta.weighting.rule: alignment``: ``weights``, this step's mixture (one per rank), and ``targets``, the
        target actors' results (``ObjectRef``s, read here once this rank's gradient is done): the rank returns
        cos(gᵢ, g_target) of its own gradient, which no other process holds."""
        self.apply_head(head_grad)
        if weights is not None:
            self.group_weights = list(weights)
        fault = self.cfg.meta.fault_injection
        # a step with an injected fault poisons the flat gradient after the backward pass: no overlap there
        # (every rank knows the fault's steps, so every rank takes the same path)
        overlap = self.overlap and not (fault is not None and step in fault.steps)
        if overlap:
            self.buckets.begin(self.group_weights[self.rank] / sum(self.group_weights))
        out = self._gradient(step, on_grad=self.buckets.add if overlap else None)
        t0 = time.perf_counter()
        if overlap:
            self.buckets.finish()
        if targets is not None:  # the local gradient, before any all-reduce writes into grad_buf
            import ray

            out["alignment"] = alignment_cosines({"g": self.grad_buf}, mean_target(ray.get(targets)))["g"]
        flags = agree_on_finite(out["finite"], self.rank, len(self.group_tasks), self.flat.device)
        # every rank decides alike; the driver logs the skipped tasks once (raymeta.train.reduce)
        bad = non_finite_policy({t: "loss or gradient" for t, f in zip(self.group_tasks, flags.tolist()) if f == 0},
                                len(self.group_tasks), step, self.cfg.meta.nan_policy, warn=False)
        total = sum(w for w, f in zip(self.group_weights, flags.tolist()) if f)
        weight = self.group_weights[self.rank] / total if out["finite"] else 0.0
        if overlap:
            self.meta_buf = self.buckets.wait()
        if not overlap or bad:
            self.meta_buf = allreduce_weighted(self.grad_buf, weight)
        t_red = time.perf_counter()
        norm, lr = outer_step(self.model.shared_named_parameters(), self.meta_buf, self.outer_opt, self.outer_sched,
                              self.cfg.optim.max_grad_norm)
        out.pop("t_start")
        return {**out, "skipped": bad, "grad_norm": norm, "lr": lr, "allreduce_s": t_red - t0,
                "outer_s": time.perf_counter() - t_red, "weight": weight}

    def validate(self, shared: np.ndarray | None, specs_json: list[str],
                 protocols_json: list[str] | None = None) -> dict[str, list[float]] | list[dict[str, list[float]]]:
        """Meta-validation (:mod:`raymeta.train.validation`, scored by :mod:`raymeta.eval.scoring`, the scorer
        ``raymeta tune`` uses too): per-episode accuracy on each given task, with this replica at the published
        parameters (reduce: driver) or its own, current ones (``shared`` None: reduce: collective).
        ``protocols_json``: the episodic settings to score (``eval.validation.settings``, as
        :class:`~raymeta.config.EpisodicProtocol` JSON), giving one ``{task: values}`` per setting, in order; None:
        the one protocol of ``eval.validation``, giving ``{task: values}``. A task's data is loaded once, and its rows
        once per setting (:func:`~raymeta.eval.scoring.choose_rows` checks them against that setting's sizes), on
        the first validation; the settings of a task embed its rows once per call (they share the rows)."""
        if self._init_error is not None:
            raise self._init_error
        if shared is not None:
            self._load_shared(shared, zero_copy=True)
        ps = [protocol(self.cfg, "validation")] if protocols_json is None else \
            [EpisodicProtocol.model_validate_json(js) for js in protocols_json]
        out: list[dict[str, list[float]]] = [{} for _ in ps]
        for js in specs_json:
            spec = TaskConfig.model_validate_json(js)
            embedded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}  # rows -> embeddings, this call
            for p, res in zip(ps, out):
                key = f"{spec.name}|{p.model_dump_json()}"  # rows per (task, setting)
                if key not in self._validation:
                    task = next((t for k, (t, _) in self._validation.items() if k.startswith(f"{spec.name}|")), None)
                    task = task or load_task(spec, self.tokenizer, self.cfg.data_dir, self.cfg.cache_dir)
                    self._validation[key] = (task, choose_rows(task, p))
                task, rows = self._validation[key]
                seen = repr(rows)
                if seen not in embedded:
                    embedded[seen] = embed_for_scoring(self.model, task, rows, p)
                res[spec.name] = score_embedded(*embedded[seen], p).values
        return out[0] if protocols_json is None else out

    def meta_gradient(self) -> np.ndarray:
        """reduce: collective: the last all-reduced meta-gradient Σ wᵢ gᵢ (clipped in place when
        ``optim.max_grad_norm`` is set), for checks against a single-process reference."""
        return self.meta_buf.detach().cpu().numpy().copy()

    def get_shared(self) -> np.ndarray:
        return self.flat.detach().cpu().numpy().copy()

    def get_outer_state(self) -> dict[str, Any]:
        tensors, groups = optimizer_tensors(self.outer_opt)
        return {"tensors": {k: v.cpu().numpy() for k, v in tensors.items()}, "param_groups": groups,
                "scheduler": self.outer_sched.state_dict()}

    def set_outer_state(self, shared: np.ndarray, state: dict[str, Any]) -> None:
        self._load_shared(shared)
        optimizer_from_tensors(self.outer_opt, {k: torch.from_numpy(np.array(v)) for k, v in state["tensors"].items()},
                               state["param_groups"])
        self.outer_sched.load_state_dict(state["scheduler"])

    def leave_group(self) -> None:
        destroy_group()

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
        optimizer_from_tensors(self.head_opt, {k: torch.from_numpy(np.array(v)) for k, v in t.items()},
                               state["param_groups"], prefix="head_optim.")

    def pid(self) -> int:
        return os.getpid()


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (unit use)
        return "local"
