"""What one meta-step reads and writes, as two explicit objects the loop hands around.

:class:`StepState` is the driver's side: its copy of the encoder, whose trainable parameters are
views into one flat float32 buffer (publishing is one zero-copy ``ray.put``, and the meta-gradient
unflattens into ``.grad`` views without copies), the meta-gradient's buffer, the outer optimiser
and its schedule, the parameter layout, the task mixture and the step counter.

:class:`Workers` is who computes the step: the task actors (an
:class:`~raymeta.train.pool.ActorPool`), the replicas' pending head updates (:class:`ReplicaHeads`)
and, under ``meta.weighting.rule: alignment``, the target actors.

The reducers (:mod:`raymeta.train.reduce`), meta-validation (:mod:`raymeta.train.validation`) and
the checkpoint state (:mod:`raymeta.train.checkpointing`) receive these two, never the trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cluster import get
from ..cluster.memory import actor_memory_bytes
from ..config import ExperimentConfig
from ..config.resolve import actor_keys
from ..core.jsonio import write_json_atomic
from ..core.model import ParamLayout, load_encoder, load_tokenizer
from ..core.optim import outer_optimizer
from ..core.task_sampling import sample_tasks
from ..core.trainable import trainable_summary
from ..storage import local_model_path
from .actor import bind_flat
from .mixture import Mixture
from .outputs import WORKERS_JSON
from .pool import ActorPool
from .targets import TargetActors

__all__ = ["StepState", "Workers", "ReplicaHeads", "build_state"]

log = logging.getLogger("raymeta.train")


@dataclass
class StepState:
    """The driver's state of the meta-step: θ (``flat``, which every parameter in ``named`` views),
    the meta-gradient's buffer, the outer optimiser and schedule, the layout, the mixture and the
    step (the number of steps taken)."""

    cfg: ExperimentConfig
    encoder: torch.nn.Module
    tokenizer: Any
    named: dict[str, torch.nn.Parameter]  # the trainable parameters, each a view into ``flat``
    layout: ParamLayout
    flat: torch.Tensor
    grad_buf: torch.Tensor  # the meta-gradient (reduce: driver); .grad of every parameter views it
    opt: torch.optim.Optimizer
    sched: Any
    mixture: Mixture
    step: int = 0

    @property
    def actor_weights(self) -> dict[str, float]:
        """Actor key -> its share of the mixture (a task's weight over its replicas)."""
        return self.mixture.actor_weights

    def step_batch(self, shares: list[list[str]] | None = None) -> dict[str, float]:
        """This step's actors and each one's weight in its meta-gradient: every actor with its share
        of the mixture, or with ``meta.task_batch`` the actors of the tasks drawn for this step
        (:func:`~raymeta.core.task_sampling.sample_tasks`, by seed and step), in task order.
        ``shares``: each worker's actor keys (``resources.workers``); the draw is then stratified
        by worker, a task counting on the worker of its first replica."""
        b = self.cfg.meta.task_batch
        if b is None or b >= len(self.mixture.weights):
            return self.actor_weights
        groups = None
        if shares is not None:
            first = {keys[0]: t for t, keys in self.mixture.replicas_of.items()}
            groups = [[first[k] for k in keys if k in first] for keys in shares]
        drawn = sample_tasks(self.mixture.weights, b, seed=self.cfg.seed, step=self.step,
                             groups=groups)
        return {key: w / len(self.mixture.replicas_of[t]) for t, w in drawn.items()
                for key in self.mixture.replicas_of[t]}

    def drawn(self, batch: dict[str, float]) -> list[str] | None:
        """The tasks of a meta-batch (:meth:`step_batch`) for the step's record; None when every
        task took part."""
        if batch is self.actor_weights:
            return None
        return [t for t, keys in self.mixture.replicas_of.items() if keys[0] in batch]

    def actor_memory(self, cfg: ExperimentConfig | None = None) -> dict[str, int] | None:
        """Actor key -> the bytes it declares to Ray (``resources.memory_per_actor``; None:
        nothing), for the actors of ``cfg`` (the run's by default; the target actors' own), from
        this encoder's size."""
        cfg = cfg or self.cfg
        c = getattr(self.encoder, "config", None)
        params = sum(p.numel() for p in self.encoder.parameters())
        per_task = actor_memory_bytes(cfg, params, self.layout.numel,
                                      hidden=getattr(c, "hidden_size", 768),
                                      layers=getattr(c, "num_hidden_layers", 12),
                                      heads=getattr(c, "num_attention_heads", 12))
        if per_task is None:
            return None
        return {key: per_task[t] for t, keys in actor_keys(cfg).items() for key in keys}


def build_state(cfg: ExperimentConfig, mixture: Mixture | None = None) -> StepState:
    """Step 0's state: the encoder as configured (from the seed when built from a config), its
    trainable parameters bound to one flat buffer, a fresh optimiser and schedule, and the
    configured mixture (learned weights start at z = 0)."""
    tokenizer = load_tokenizer(cfg.model, fetch=local_model_path)
    torch.manual_seed(cfg.seed)  # a from_config encoder starts from the seed
    encoder = load_encoder(cfg.model, len(tokenizer), fetch=local_model_path)
    named = {f"encoder.{n}": p for n, p in encoder.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in encoder.parameters())
    trained = sum(p.numel() for p in named.values())
    log.info("trainable (model.trainable): %s, %s of %s encoder parameters (%.2f%%)",
             trainable_summary(cfg.model), f"{trained:,}", f"{total:,}", 100.0 * trained / total)
    layout, flat = bind_flat(named)
    opt, sched = outer_optimizer(named, cfg)
    return StepState(cfg=cfg, encoder=encoder, tokenizer=tokenizer, named=named, layout=layout,
                     flat=flat, grad_buf=torch.zeros_like(flat), opt=opt, sched=sched,
                     mixture=mixture if mixture is not None else Mixture(cfg))


class ReplicaHeads:
    """Replicas of a task keep identical heads: each step their finite head gradients are averaged
    here and the average goes to every replica with its next call (or :meth:`flush`), instead of
    each replica stepping alone."""

    def __init__(self, replicas_of: dict[str, list[str]]):
        self.replicas_of = replicas_of
        self.pending: dict[str, np.ndarray] = {}

    def average(self, results: list[dict[str, Any]]) -> None:
        by_key = {r["task"]: r for r in results}
        # a task left out of this step's meta-batch keeps its update for its next call
        self.pending = {k: g for k, g in self.pending.items() if k not in by_key}
        for keys in self.replicas_of.values():
            if any(k not in by_key for k in keys):
                continue
            grads = [by_key[k]["head_grad"] for k in keys if by_key[k].get("head_grad") is not None]
            if len(keys) > 1 and grads:
                avg = np.mean(np.stack(grads), axis=0, dtype=np.float64).astype(np.float32)
                self.pending.update({k: avg for k in keys})

    def flush(self, actors: dict[str, Any]) -> None:
        """Apply the pending head updates now, so a checkpoint holds the heads of this step."""
        if self.pending:
            get([actors[k].apply_head.remote(g) for k, g in self.pending.items()])
            self.pending = {}


@dataclass
class Workers:
    """The processes that compute a step: the task actors, the replicas' head updates, and the
    target actors (``meta.weighting.rule: alignment``; None otherwise)."""

    heads: ReplicaHeads
    pool: ActorPool = field(default_factory=ActorPool)
    targets: TargetActors | None = None

    @property
    def actors(self) -> dict[str, Any]:
        """Actor key -> ``TaskActor`` handle, in task order."""
        return self.pool.actors

    def save_assignment(self, directory: Path) -> None:
        """``workers.json`` beside ``config.yaml``: each worker's tasks and the memory it declared
        to Ray (``resources.workers``; nothing when each task has its own process)."""
        shares = self.pool.shares()
        if shares is not None:
            memory = self.pool.declared if len(self.pool.declared) == len(shares) else []
            write_json_atomic(directory / WORKERS_JSON, {"workers": [
                {"worker": i, "tasks": keys, **({"memory_bytes": memory[i]} if memory else {})}
                for i, keys in enumerate(shares)]})

    def lost(self) -> list[str]:
        """The task actors, and target actors, that died."""
        return self.pool.lost() + (self.targets.lost() if self.targets is not None else [])

    def release(self, *, keep_actors: bool = False) -> None:
        """End the task actors this run started (unless ``keep_actors``) and the target actors."""
        if not keep_actors:
            self.pool.release()
        if self.targets is not None:
            self.targets.release()
            self.targets = None
