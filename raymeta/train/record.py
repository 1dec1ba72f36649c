"""``StepRecord``: what one meta-step did, as the trainer hands it to the tracker, the step hooks
and ``raymeta speed``.

One typed record for both reduce forms (:mod:`raymeta.train.reduce`); the fields a form does not
measure stay None and are left out of its ``metrics.jsonl`` line (:meth:`StepRecord.to_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StepRecord"]

# metrics.jsonl's keys, in the order they are written (the tracker appends "affinity")
_LOGGED = ("step", "steps", "tasks", "loss", "metrics", "weights", "skipped", "grad_norm", "lr",
           "step_s", "publish_s", "wait_s",
           "reduce_s", "allreduce_s", "outer_s", "compute_max_s", "compute_s", "load_s",
           "publish_bytes", "grad_bytes",
           "alignment", "target_loss", "mixture_entropy", "mixture_temperature")


@dataclass
class StepRecord:
    step: int  # the step's index: steps done before it
    steps: int  # meta.steps
    loss: dict[str, float]  # per actor key (<task>, <task>#<r>)
    metrics: dict[str, dict[str, float]]
    weights: dict[str, float]  # the mixture over the tasks that entered the sum, renormalised
    skipped: list[str]  # non-finite, left out (meta.nan_policy=skip_task)
    grad_norm: float  # of the meta-gradient, before clipping
    lr: float  # the outer learning rate the step used
    step_s: float
    compute_max_s: float  # the slowest actor's compute
    compute_s: dict[str, float]
    outer_s: float
    # the actor keys that entered the sum, in order (not logged)
    used: list[str] = field(default_factory=list)
    # pairwise cosine of the used tasks' gradients, reduce: driver (not logged)
    cosine: np.ndarray | None = None
    # reduce: driver: publication, the wait for the gradients, the reduction; what each actor read
    # and returned
    publish_s: float | None = None
    wait_s: float | None = None
    reduce_s: float | None = None
    load_s: dict[str, float] | None = None
    publish_bytes: int | None = None
    grad_bytes: dict[str, int] | None = None
    # reduce: collective: the slowest rank's all-reduce
    allreduce_s: float | None = None
    # meta.weighting.rule alignment: each task's cos(gᵢ, g_target) this step (the next step's
    # weights follow it), and each target task's adapted loss
    alignment: dict[str, float] | None = None
    target_loss: dict[str, float] | None = None
    # and the entropy H(w) (nats) of the mixture over the tasks that this step used, and the
    # temperature λ that kept it within meta.weighting.max_kl (1: the bound did not bind)
    mixture_entropy: float | None = None
    mixture_temperature: float | None = None
    # meta.task_batch: the tasks drawn for this step, in task order (None: every task)
    tasks: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` form: every logged field this reduce form measured, in a fixed
        order."""
        return {k: getattr(self, k) for k in _LOGGED if getattr(self, k) is not None}
