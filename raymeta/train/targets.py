"""``meta.weighting.rule: alignment``'s target actors: one per target task, started, sized and ended like the task
actors (:class:`~raymeta.train.pool.ActorPool`), each computing at the current parameters the gradient of the adapted
few-shot loss on its own seeded episodes (``TaskActor.target_gradient``). Their mean is g_target, which the
task weights follow (:mod:`raymeta.core.weighting`); it never enters the meta-gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ExperimentConfig, TaskConfig
from ..core.model import ParamLayout
from ..core.weighting import mean_target
from ..runtime import get
from .pool import ActorPool

__all__ = ["TargetActors"]


class TargetActors:
    """The target tasks' actors of one run (:class:`ActorPool` of a config whose tasks are the targets)."""

    def __init__(self, cfg: ExperimentConfig, specs: list[TaskConfig]):
        self.cfg = cfg.model_copy(update={"tasks": [s.model_copy(update={"weight": 1.0, "replicas": 1}) for s in specs],
                                          "meta": cfg.meta.model_copy(update={"fault_injection": None})})
        self.shots = list(cfg.meta.weighting.shots)
        self.pool = ActorPool()

    def __len__(self) -> int:
        return len(self.cfg.tasks)

    @property
    def actors(self) -> dict[str, Any]:
        return self.pool.actors

    def start(self, *, local: bool, others: int, layout: ParamLayout, frozen: float) -> None:
        """Start them (sized with ``others`` task actors beside them) and check they compute for ``layout``."""
        self.pool.start(self.cfg, local=local, others=others, after=others)
        self.pool.check(layout, frozen)

    def launch(self, shared: Any, step: int) -> list[Any]:
        """Their gradients at ``shared`` (the published parameters, or an ObjectRef to them), started now."""
        return [a.target_gradient.remote(shared, step, self.shots) for a in self.pool.actors.values()]

    def gradient(self, refs: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """g_target, the mean of the target tasks' gradients (in their configured order), and each one's loss."""
        results = get(refs)
        return mean_target(results), {r["task"]: r["loss"] for r in results}

    def lost(self) -> list[str]:
        return self.pool.lost()

    def release(self) -> None:
        self.pool.release()

