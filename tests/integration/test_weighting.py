"""meta.weighting.rule: alignment on a local Ray instance: a task of shuffled labels loses its
weight (fixed keeps it), both reduce forms learn the same weights, and a resume continues them bit
for bit."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raymeta.config import load_config
from raymeta.train.trainer import MetaTrainer

from .conftest import TOPICS, driver_killed_at, validation_on

STEPS = 8


@pytest.fixture(scope="module")
def topic_data(tmp_path_factory) -> Path:
    """A topic task (the target's classes, other sentences) and the same rows with their labels
    shuffled."""
    d = tmp_path_factory.mktemp("topics_train")
    words = {k: v.split() for k, v in TOPICS.items()}
    rows = [(f"{w[(i + 1) % 4]} {w[(i + 2) % 4]} and {w[i % 4]} {i}", k) for i in range(16) for k,
            w in words.items()]
    (d / "good.csv").write_text("text,label\n" + "".join(f"{t},{k}\n" for t, k in rows))
    labels = [k for _, k in rows]
    random.Random(0).shuffle(labels)
    (d / "noise.csv").write_text("text,label\n" + "".join(f"{t},{k}\n" for (t, _),
                                                          k in zip(rows, labels)))
    return d


def config(tmp_path, topic_data, val_file, rule: str, **meta) -> dict:
    from ..conftest import TINY_BERT

    task = {"type": "sequence_classification", "max_length": 16}
    return {
        "name": "weighting", "seed": 1, "output_dir": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "cache"),
        "model": {"from_config": TINY_BERT},
        "tasks": [{"name": n, **task,
                   "source": {"kind": "files", "format": "csv",
                              "files": {"train": str(topic_data / f"{n}.csv")}}}
                  for n in ("good", "noise")],
        "meta": {"algorithm": "protonet", "steps": STEPS,
                 "episode": {"ways": 3, "shots": 2, "queries": 2},
                 "weighting": {"rule": rule, "lr": 20.0, "shots": [1, 2]}, **meta},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "checkpoint": {"every_steps": 2, "keep_last": 5},
        # the target is the validation task (meta.weighting.target's default)
        "eval": {"validation": validation_on(val_file, every_steps=100)},
        "resources": {"torch_threads": 1},
    }


def weights_over_steps(out: Path) -> list[dict[str, float]]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["weights"] for r in recs if r.get("kind") != "validation"]


@pytest.mark.parametrize("rule", ["fixed", "alignment"])
def test_a_task_of_shuffled_labels_loses_its_weight(rule, task_actors, topic_data, val_file,
                                                    tmp_path):
    cfg = load_config(data=config(tmp_path, topic_data, val_file, rule))
    MetaTrainer(cfg, actors=task_actors(cfg)).run()
    out = Path(cfg.output_dir)
    weights = weights_over_steps(out)
    assert len(weights) == STEPS
    if rule == "fixed":
        assert all(w["noise"] == pytest.approx(0.5) for w in weights)
        assert not (out / "task_weights.png").exists()
    else:
        assert weights[0]["noise"] == pytest.approx(0.5)  # z = 0: the configured mixture
        assert weights[-1]["noise"] < 1 / 4, weights  # below 1/(2N)
        assert all(b["noise"] <= a["noise"] for a, b in zip(weights[1:], weights[2:])), weights
        rec = next(r for r in map(json.loads,
                                  (out / "metrics.jsonl").read_text().splitlines())
                   if "alignment" in r)
        assert set(rec["alignment"]) == {"good", "noise"} and set(rec["target_loss"]) == {"topics"}
        assert (out / "task_weights.png").is_file()


@pytest.mark.slow  # end to end; the slow tier CI runs (docs/testing.md)
def test_collective_learns_the_driver_weights_and_a_resume_continues_them(task_actors, topic_data,
                                                                          val_file, tmp_path,
                                                                          monkeypatch):
    finals, weights = {}, {}
    for mode in ("driver", "collective"):
        cfg = load_config(data=config(tmp_path / mode, topic_data, val_file, "alignment",
                                      reduce=mode))
        finals[mode] = load_file(str(MetaTrainer(cfg, actors=task_actors(cfg)).run()
                                     / "model.safetensors"))
        weights[mode] = weights_over_steps(Path(cfg.output_dir))
    for a, b in zip(weights["driver"], weights["collective"]):
        assert a == pytest.approx(b, rel=1e-3)
    diff = max(float((finals["driver"][k] - finals["collective"][k]).abs().max())
               for k in finals["driver"])
    assert diff < 1e-4, diff

    cfg = load_config(data=config(tmp_path / "resumed", topic_data, val_file, "alignment",
                                  reduce="driver"))
    with driver_killed_at(monkeypatch, 5):  # checkpoints at steps 2 and 4; steps 4 and 5 run again
        MetaTrainer(cfg, actors=task_actors(cfg)).run()
    resumed = load_file(str(MetaTrainer(cfg, actors=task_actors(cfg),
                                        resume=True).run() / "model.safetensors"))
    assert all(torch.equal(finals["driver"][k], resumed[k]) for k in resumed)
    assert weights_over_steps(Path(cfg.output_dir)) == weights["driver"]
