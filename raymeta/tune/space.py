"""What ``raymeta tune`` searches: mixture weights on the simplex, learning rates, inner steps,
algorithm, ProtoNet's temperature, the episodes' ways, and what trains (``model.trainable``, LoRA
rank).

Pure functions over the config; only :func:`search_space` imports Ray, for ``ray.tune``'s sampling
primitives (``uniform``, ``loguniform``, ``choice``...), inside the function, so the rest runs and
tests without Ray. The Tune wiring (Tuner, trials, schedulers) is in :mod:`raymeta.tune.search`.

A mixture is searched as one log-weight per task, normalised with a softmax, so every point of
the box maps onto the simplex and the search never proposes an all-zero or negative mixture.
The fixed heuristics of the literature are seeded as the first trials:

* ``equal``: wᵢ = 1/T;
* ``proportional``: wᵢ ∝ nᵢ, size-proportional sampling (Dou et al. 2019, best in their study);
* ``temperature2``: wᵢ ∝ nᵢ^(1/2), temperature-2 sampling (LEOPARD, Bansal et al. 2020).
"""

from __future__ import annotations

import math
from typing import Any

from ..config import ExperimentConfig
from ..errors import ConfigError

__all__ = ["HEURISTICS", "WEIGHT_PREFIX", "heuristic_log_weights", "mixture", "search_space",
           "apply_params",
           "heuristic_of"]

WEIGHT_PREFIX = "logw_"
HEURISTICS = {"equal": 0.0, "proportional": 1.0, "temperature2": 0.5}  # exponent of nᵢ


def heuristic_log_weights(sizes: dict[str, int], kind: str) -> dict[str, float]:
    """Centred log-weights of a heuristic: wᵢ ∝ nᵢ^e with e = 0, 1 or 1/2."""
    e = HEURISTICS[kind]
    logs = {t: e * math.log(max(1, n)) for t, n in sizes.items()}
    mean = sum(logs.values()) / len(logs)
    return {t: v - mean for t, v in logs.items()}


def mixture(params: dict[str, Any], tasks: list[str]) -> dict[str, float]:
    """Softmax of the trial's log-weights: a point on the simplex."""
    logs = [float(params[WEIGHT_PREFIX + t]) for t in tasks]
    top = max(logs)
    ex = [math.exp(v - top) for v in logs]
    total = sum(ex)
    return {t: e / total for t, e in zip(tasks, ex)}


def _defaults(cfg: ExperimentConfig) -> dict[str, Any]:
    """The experiment's own values of the searched non-weight keys (the heuristics' starting
    point)."""
    s = cfg.tune.space
    point: dict[str, Any] = {}
    if s.lr is not None:
        point["lr"] = min(max(cfg.optim.lr, s.lr[0]), s.lr[1])
    if s.inner_lr is not None:
        point["inner_lr"] = min(max(cfg.meta.inner_lr, s.inner_lr[0]), s.inner_lr[1])
    if s.inner_steps is not None:
        point["inner_steps"] = min(max(cfg.meta.inner_steps, s.inner_steps[0]), s.inner_steps[1])
    if s.algorithms:
        point["algorithm"] = (cfg.meta.algorithm if cfg.meta.algorithm in s.algorithms
                              else s.algorithms[0])
    if s.temperature is not None:
        point["temperature"] = min(max(cfg.meta.proto.temperature, s.temperature[0]),
                                   s.temperature[1])
    if s.trainable:
        point["trainable"] = (cfg.model.trainable if cfg.model.trainable in s.trainable
                              else s.trainable[0])
    if s.lora_r is not None:
        point["lora_r"] = min(max(cfg.model.lora.r, s.lora_r[0]), s.lora_r[1])
    if s.ways:
        point["ways"] = cfg.meta.episode.ways if cfg.meta.episode.ways in s.ways else s.ways[0]
    if s.weighting_lr is not None:
        point["weighting_lr"] = min(max(cfg.meta.weighting.lr, s.weighting_lr[0]),
                                    s.weighting_lr[1])
    if s.weighting_floor is not None:
        n = sum(1 for t in cfg.tasks if t.weight > 0)
        point["weighting_floor"] = min(max(cfg.meta.weighting.floor * n, s.weighting_floor[0]),
                                       s.weighting_floor[1])
    return point


def search_space(cfg: ExperimentConfig, sizes: dict[str, int]) -> tuple[dict[str, Any],
                                                                        list[dict[str, Any]]]:
    """Tune's ``param_space`` and the seeded heuristic points (``points_to_evaluate``)."""
    from ray import tune

    s = cfg.tune.space
    tasks = list(sizes)
    heur = {k: heuristic_log_weights(sizes, k) for k in cfg.tune.heuristics} if s.weights else {}
    space: dict[str, Any] = {}
    if s.weights:
        if len(tasks) < 2:
            raise ConfigError("config key 'tune.space.weights': a mixture needs at least 2 "
                              "meta-training tasks")
        seeded = [v for h in heur.values() for v in h.values()]
        lo, hi = min([s.log_weight_range[0], *seeded]), max([s.log_weight_range[1], *seeded])
        space.update({WEIGHT_PREFIX + t: tune.uniform(lo, hi) for t in tasks})
    if s.lr is not None:
        space["lr"] = tune.loguniform(*s.lr)
    if s.inner_lr is not None:
        space["inner_lr"] = tune.loguniform(*s.inner_lr)
    if s.inner_steps is not None:
        space["inner_steps"] = tune.randint(s.inner_steps[0], s.inner_steps[1] + 1)
    if s.algorithms:
        space["algorithm"] = tune.choice(list(s.algorithms))
    if s.temperature is not None:
        space["temperature"] = tune.loguniform(*s.temperature)
    if s.trainable:
        space["trainable"] = tune.choice(list(s.trainable))
    if s.lora_r is not None:  # ranks span powers of two: 2, 4, ..., 64 equally likely per octave
        space["lora_r"] = tune.lograndint(s.lora_r[0], s.lora_r[1] + 1)
    if s.ways:
        space["ways"] = tune.choice(sorted(set(s.ways)))
    if (s.weighting_lr is not None
        or s.weighting_floor is not None) and cfg.meta.weighting.rule != "alignment":
        raise ConfigError("config key 'tune.space.weighting_lr': searching the learned weights' "
                          "settings needs meta.weighting.rule: alignment")
    if s.weighting_lr is not None:
        space["weighting_lr"] = tune.loguniform(*s.weighting_lr)
    if s.weighting_floor is not None:
        space["weighting_floor"] = tune.uniform(*s.weighting_floor)
    if not space:
        raise ConfigError("config key 'tune.space': nothing to search (weights off and no ranges "
                          "given)")
    base = _defaults(cfg)
    points = [{**{WEIGHT_PREFIX + t: v for t, v in h.items()}, **base} for h in heur.values()]
    return space, points


def apply_params(cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """The experiment config a trial (or ``best_config.yaml``) trains with."""
    data = cfg.model_dump(mode="json")
    names = [t["name"] for t in data["tasks"]]
    if any(WEIGHT_PREFIX + n in params for n in names):
        w = mixture(params, names)
        for t in data["tasks"]:
            t["weight"] = w[t["name"]]
    if "lr" in params:
        data["optim"]["lr"] = float(params["lr"])
    if "inner_lr" in params:
        data["meta"]["inner_lr"] = float(params["inner_lr"])
    if "inner_steps" in params:
        data["meta"]["inner_steps"] = int(params["inner_steps"])
    if "algorithm" in params:
        data["meta"]["algorithm"] = str(params["algorithm"])
    if "temperature" in params:
        data["meta"]["proto"]["temperature"] = float(params["temperature"])
    if "trainable" in params:
        data["model"]["trainable"] = str(params["trainable"])
    if "lora_r" in params:
        data["model"]["lora"]["r"] = int(params["lora_r"])
    if "ways" in params:
        data["meta"]["episode"]["ways"] = int(params["ways"])
    if "weighting_lr" in params:
        data["meta"]["weighting"]["lr"] = float(params["weighting_lr"])
    if "weighting_floor" in params:  # a fraction of 1/N: every value of [0, 1] is a legal floor
        n = sum(1 for t in data["tasks"] if t["weight"] > 0)
        data["meta"]["weighting"]["floor"] = float(params["weighting_floor"]) / n
    return ExperimentConfig.model_validate(data)


def heuristic_of(params: dict[str, Any], points: dict[str, dict[str, Any]]) -> str | None:
    """Which seeded heuristic a trial's parameters are (None: a searched point)."""
    for name, point in points.items():
        if all(k in params and (abs(float(params[k]) - float(v)) < 1e-9
                                if isinstance(v, (int, float)) else params[k] == v)
               for k, v in point.items()):
            return name
    return None
