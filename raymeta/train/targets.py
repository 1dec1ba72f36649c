"""``meta.weighting.rule: alignment``'s target actors: one per target task, started, sized and
ended like the task actors (an :class:`~raymeta.train.pool.ActorPool`), each computing at the
current parameters the gradient of the adapted few-shot loss on its own seeded episodes
(:meth:`TargetGradient.target_gradient`, which every ``TaskActor`` has). Their mean is g_target,
which the task weights follow (:mod:`raymeta.core.weighting`); it never enters the meta-gradient.

The driver's side (:class:`TargetActors`) and the actor's side (:class:`TargetGradient`) live
here together; the pool is handed in, so that the actor can take the mixin without a circle.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from ..cluster import get
from ..cluster.memory import trim_heap
from ..config import ExperimentConfig, TaskConfig
from ..core.algorithms import algorithm_options, task_gradient
from ..core.model import ParamLayout
from ..core.seeds import step_seed
from ..core.weighting import mean_target

__all__ = ["TargetActors", "TargetGradient"]


class TargetActors:
    """The target tasks' actors of one run (:class:`ActorPool` of a config whose tasks are the
    targets)."""

    def __init__(self, cfg: ExperimentConfig, specs: list[TaskConfig], pool: Any):
        """``pool``: an empty :class:`~raymeta.train.pool.ActorPool` to start them in."""
        tasks = [s.model_copy(update={"weight": 1.0, "replicas": 1}) for s in specs]
        meta = cfg.meta.model_copy(update={"fault_injection": None})
        self.cfg = cfg.model_copy(update={"tasks": tasks, "meta": meta})
        self.shots = list(cfg.meta.weighting.shots)
        self.pool = pool

    def __len__(self) -> int:
        return len(self.cfg.tasks)

    @property
    def actors(self) -> dict[str, Any]:
        return self.pool.actors

    def start(self, *, local: bool, others: int, layout: ParamLayout, frozen: float,
              memory: dict[str, int] | None = None, memory_others: Sequence[int] = ()) -> None:
        """Start them (sized with ``others`` task actors beside them, of ``memory_others`` bytes;
        ``memory``: actor key -> the bytes it declares) and check they compute for
        ``layout``."""
        self.pool.start(self.cfg, local=local, others=others, after=others, memory=memory,
                        memory_others=memory_others)
        self.pool.check(layout, frozen)

    def launch(self, shared: Any, step: int) -> list[Any]:
        """Their gradients at ``shared`` (the published parameters, or an ObjectRef to them),
        started now."""
        return [a.target_gradient.remote(shared, step,
                                         self.shots) for a in self.pool.actors.values()]

    def gradient(self, refs: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """g_target, the mean of the target tasks' gradients (in their configured order), and each
        one's loss."""
        results = get(refs)
        return mean_target(results), {r["task"]: r["loss"] for r in results}

    def lost(self) -> list[str]:
        return self.pool.lost()

    def release(self) -> None:
        self.pool.release()


class TargetGradient:
    """The actor's side (a mixin of ``TaskActor``, whose task, model, head and layout it reads)."""

    def target_gradient(self, shared: np.ndarray | None, step: int,
                        shots: list[int]) -> dict[str, Any]:
        """The gradient, at the published parameters (``shared``; None: this actor's current ones),
        of the adapted few-shot loss on this task's own seeded episodes, averaged over ``shots``
        (``meta.weighting.shots``): ProtoNet's prototype loss, the MAML family's query loss after
        its inner loop, MetaOptNet's base learner's (multitask, which does not adapt, uses the
        prototype loss). It never enters the meta-gradient, and its head never steps."""
        self.check_ready()
        t0 = time.perf_counter()
        if shared is not None:
            self.load_shared(shared, zero_copy=True)
        meta = self.cfg.meta
        algorithm = "protonet" if meta.algorithm == "multitask" else meta.algorithm
        stream = f"target:{self.key}"
        grad = torch.zeros(self.layout.numel, dtype=torch.float32, device=self.flat.device)
        losses = []
        params = {**self.model.shared_named_parameters(), **self.head}
        for k in shots:
            sizes = meta.episode.model_copy(update={"shots": k})
            episode = self.on_device(self.task.episode(sizes, self.cfg.seed, step, stream=stream,
                                                       label_template=meta.proto.prior_template))
            torch.manual_seed(step_seed(self.cfg.seed, f"{stream}:{k}", step))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                result = task_gradient(algorithm, self.model, self.task.name,
                                       self.task.config.type, episode, params,
                                       **algorithm_options(meta))
            g = self.layout.flatten({n: result.grads.get(n) for n in self.layout.names})
            grad.add_(g, alpha=1.0 / len(shots))
            losses.append(float(result.loss))
        trim_heap()
        return {"task": self.key, "grad": grad.cpu().numpy(), "loss": float(np.mean(losses)),
                "compute_s": time.perf_counter() - t0}
