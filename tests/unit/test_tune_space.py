"""The Tune search space as pure functions: heuristics, the simplex map, applying a trial's
parameters."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raymeta.config import load_config
from raymeta.errors import ConfigError
from raymeta.tune.space import (
    WEIGHT_PREFIX,
    apply_params,
    heuristic_log_weights,
    heuristic_of,
    mixture,
    search_space,
)


def test_heuristics_are_the_published_rules():
    sizes = {"a": 100, "b": 25, "c": 1}
    w = {k: mixture({WEIGHT_PREFIX + t: v for t, v in heuristic_log_weights(sizes, k).items()},
                    list(sizes))
         for k in ("equal", "proportional", "temperature2")}
    assert w["equal"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # Dou et al. 2019
    assert w["proportional"] == pytest.approx({"a": 100 / 126, "b": 25 / 126, "c": 1 / 126})
    # LEOPARD: ∝ √n
    assert w["temperature2"] == pytest.approx({"a": 10 / 16, "b": 5 / 16, "c": 1 / 16})


@given(st.lists(st.floats(-50, 50), min_size=2, max_size=6))
def test_any_log_weights_map_onto_the_simplex(logs):
    tasks = [f"t{i}" for i in range(len(logs))]
    w = mixture({WEIGHT_PREFIX + t: v for t, v in zip(tasks, logs)}, tasks)
    assert sum(w.values()) == pytest.approx(1.0) and all(v > 0 and math.isfinite(v)
                                                         for v in w.values())


def _cfg(**space):
    return load_config(data={
        "tasks": [{"name": n, "type": "sequence_classification", "weight": 1.0,
                   "source": {"kind": "builtin", "name": "bbc_news"}} for n in ("a", "b")],
        "optim": {"lr": 1e-3}, "meta": {"inner_lr": 0.5, "algorithm": "fomaml"},
                             "tune": {"space": space}})


def test_space_covers_the_heuristics_and_the_configs_own_values():
    cfg = _cfg(lr=[1e-5, 1e-4], inner_lr=[1e-3, 1e-1], inner_steps=[1, 3], algorithms=["protonet",
                                                                                       "fomaml"],
               log_weight_range=[-0.1, 0.1])
    space, points = search_space(cfg, {"a": 1000, "b": 10})
    assert set(space) == {"logw_a", "logw_b", "lr", "inner_lr", "inner_steps", "algorithm"}
    assert len(points) == 3
    # the range widens to hold proportional mixing's log-weights (±2.3), so Optuna can seed them as
    # given
    assert space["logw_a"].lower <= min(p["logw_b"]
                                        for p in points) and space["logw_a"].upper >= 2.3
    # the configured values, clipped into the ranges, start every heuristic
    assert all(p["lr"] == 1e-4 and p["inner_lr"] == 0.1 and p["inner_steps"] == 1
               and p["algorithm"] == "fomaml"
               for p in points)
    names = dict(zip(["equal", "proportional", "temperature2"], points))
    assert heuristic_of(dict(points[1]), names) == "proportional"
    assert heuristic_of({**points[1], "lr": 2e-5}, names) is None


def test_apply_params_sets_weights_and_rates():
    cfg = apply_params(_cfg(), {"logw_a": math.log(3.0), "logw_b": 0.0, "lr": 5e-5,
                                "inner_lr": 0.01,
                                "inner_steps": 2, "algorithm": "maml"})
    assert [t.weight for t in cfg.tasks] == pytest.approx([0.75, 0.25])
    assert (cfg.optim.lr, cfg.meta.inner_lr, cfg.meta.inner_steps,
            cfg.meta.algorithm) == (5e-5, 0.01, 2, "maml")


def test_temperature_trainable_and_lora_rank_are_searched_and_applied():
    cfg = _cfg(temperature=[1.0, 30.0], trainable=["lora", "full"], lora_r=[2, 32], lr=None)
    space, points = search_space(cfg, {"a": 10, "b": 10})
    assert {"temperature", "trainable", "lora_r"} <= set(space)
    assert space["trainable"].categories == ["lora", "full"]
    # upper bound exclusive: 32 is drawn
    assert (space["lora_r"].lower, space["lora_r"].upper) == (2, 33)
    # the config's own values (temperature 10, full, r 8) start every heuristic point
    assert all((p["temperature"], p["trainable"], p["lora_r"]) == (10.0, "full", 8) for p in points)
    got = apply_params(cfg, {"temperature": 3.0, "trainable": "lora", "lora_r": 16})
    assert (got.meta.proto.temperature, got.model.trainable, got.model.lora.r) == (3.0, "lora", 16)
    with pytest.raises(ConfigError, match=r"tune.space.*temperature.*positive"):
        _cfg(temperature=[0.0, 1.0])


def test_bad_space_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"tune.space.*lr.*low <= high"):
        _cfg(lr=[1e-3, 1e-5])
    with pytest.raises(ConfigError, match="nothing to search"):
        search_space(_cfg(weights=False, lr=None), {"a": 1, "b": 2})


def test_actor_keys_name_one_actor_per_replica_and_none_for_weight_zero(tmp_path):
    """What a Tune trial compares with the task actors its process kept from the previous trial
    (tune.reuse_actors): the trainer's own keys and weights, from the same function."""
    from raymeta.train.trainer import MetaTrainer, actor_keys

    def task(name, **kw):
        return {"name": name, "type": "sequence_classification",
                "source": {"kind": "files", "format": "csv", "files": {"train": "x.csv"}}, **kw}

    cfg = load_config(data={"output_dir": str(tmp_path), "tasks": [task("a", weight=3.0,
                                                                        replicas=3), task("b"),
                                                                    task("c", weight=0.0)]})
    assert actor_keys(cfg) == {"a": ["a", "a#1", "a#2"], "b": ["b"]}
    assert load_config(data={"tune": {}}).tune.reuse_actors is True
    trainer = MetaTrainer(cfg)
    assert trainer.mixture.replicas_of == actor_keys(cfg)
    assert trainer.mixture.actor_weights == pytest.approx({"a": 0.25, "a#1": 0.25, "a#2": 0.25,
                                                           "b": 0.25})


def test_the_learned_weights_settings_are_searched_instead_of_the_mixture():
    cfg = _cfg(weights=False, lr=None, weighting_lr=[0.1, 10.0], weighting_floor=[0.0, 0.5])
    with pytest.raises(ConfigError, match="needs meta.weighting.rule: alignment"):
        search_space(cfg, {"a": 10, "b": 10})
    data = cfg.model_dump(mode="json")
    data["meta"]["weighting"] = {"rule": "alignment", "target": [{"use": "bbc_news"}]}
    cfg = load_config(data=data)
    space, _ = search_space(cfg, {"a": 10, "b": 10})
    assert set(space) == {"weighting_lr", "weighting_floor"}
    got = apply_params(cfg, {"weighting_lr": 3.0, "weighting_floor": 0.5})
    assert (got.meta.weighting.lr, got.meta.weighting.floor) == (3.0, 0.25)  # half of 1/N, N = 2
    with pytest.raises(ConfigError, match=r"weighting_floor: a fraction of 1/N in \[0, 1\]"):
        _cfg(weighting_floor=[0.0, 2.0])


def test_ways_is_a_categorical_choice_applied_to_the_episodes():
    cfg = _cfg(lr=None, ways=[10, 5, 5, 20])
    space, points = search_space(cfg, {"a": 100, "b": 10})
    assert sorted(space["ways"].categories) == [5, 10, 20]
    # the config's own meta.episode.ways (5) seeds the heuristics
    assert all(p["ways"] == 5 for p in points)
    _, points = search_space(_cfg(lr=None, ways=[10, 20]), {"a": 100, "b": 10})
    assert all(p["ways"] == 10 for p in points)  # not among the choices: the first one
    assert apply_params(cfg, {"ways": 20}).meta.episode.ways == 20
