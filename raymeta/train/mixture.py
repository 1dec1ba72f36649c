"""The task mixture wᵢ of the objective min_θ Σ wᵢ Lᵢ(θ): per task, and per task actor.

Fixed (``meta.weighting.rule: fixed``, the configured weights, normalised) or learned
(``alignment``: each task's log-weight follows the cosine of its gradient with the target tasks'
gradient, :class:`~raymeta.core.weighting.AlignmentWeights`). A task with replicas splits its
weight evenly over its replicas' actors.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..config import ExperimentConfig
from ..core.combine import normalise_weights
from ..core.weighting import AlignmentWeights, entropy
from .pool import actor_keys

__all__ = ["Mixture"]


class Mixture:
    """The mixture of one run. ``weights``: task -> wᵢ (sums to 1); ``actor_weights``: actor key ->
    its share; ``learned``: the learned log-weights (None under ``rule: fixed``)."""

    def __init__(self, cfg: ExperimentConfig):
        self.replicas_of = actor_keys(cfg)  # task -> its actors' keys, "<task>" or "<task>#<r>"
        self.weights = normalise_weights({t.name: t.weight for t in cfg.tasks})
        w = cfg.meta.weighting
        self.learned = AlignmentWeights(self.weights, w.lr, w.floor, w.every_steps, w.max_kl) \
            if w.rule == "alignment" else None
        self._apply()

    def _apply(self) -> None:
        if self.learned is not None:
            self.weights = self.learned.weights()
        self.actor_weights = {key: self.weights[name] / len(keys)
                              for name, keys in self.replicas_of.items() for key in keys}

    def entropy(self) -> float:
        """H(w) of the task mixture, in nats (log N for N equal weights)."""
        return entropy(list(self.weights.values()))

    def observe(self, step: int, record: Any) -> None:
        """After step ``step`` (its :class:`~raymeta.train.record.StepRecord`): with learned
        weights, the record gets the entropy and temperature of the mixture the step used, and the
        step's cosines move it (:meth:`reweight`)."""
        if self.learned is None:
            return
        record.mixture_entropy = self.entropy()
        record.mixture_temperature = self.learned.temperature
        if record.alignment is not None:
            self.reweight(step, record.alignment)

    def reweight(self, step: int, alignment: Mapping[str, float]) -> None:
        """After step ``step``: each task's cosine with g_target (the mean over its replicas' finite
        ones) moves its log-weight, every ``meta.weighting.every_steps``; the next step uses the new
        mixture."""
        assert self.learned is not None
        per_task = {}
        for name, keys in self.replicas_of.items():
            cs = [alignment[k] for k in keys
                  if alignment.get(k) is not None and math.isfinite(alignment[k])]
            per_task[name] = float(np.mean(cs)) if cs else math.nan
        if self.learned.due(step):
            self.learned.update(per_task)
            self._apply()

    def state(self) -> dict[str, Any] | None:
        """The learned log-weights, for a checkpoint (None when the weights are fixed)."""
        return self.learned.state() if self.learned is not None else None

    def load_state(self, state: Mapping[str, Any] | None) -> None:
        """Back to a checkpoint's learned log-weights (a resume or a replay continues from them)."""
        if self.learned is not None and state is not None:
            self.learned.load_state(state)
            self._apply()
