"""One episodic scorer for meta-validation and ``raymeta tune`` (raymeta.eval.scoring), in this
process (no Ray): the same encoder under the same protocol scores the same through both paths, under
either ProtoNet distance."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

from raymeta.config import load_config
from raymeta.eval.scoring import protocol
from raymeta.train.actor import TaskActor
from raymeta.tune.scoring import FewShotScorer, task_specs

from ..conftest import TINY_BERT

EPISODES = dict(ways=3, shots=2, queries=3, episodes=30, max_rows_per_class=8)
WORDS = ("goal bank bread song team loan cheese band price soup market guitar apple album "
         "dinner stock").split()


def _csv(path, classes: list[str], rows: int) -> dict:
    """Rows of shared random words, each class with a word of its own now and then: hard enough that
    the two distances rank some episodes' queries differently."""
    rng = random.Random(path.stem)
    lines = [f"{' '.join(rng.sample(WORDS, 5) + ([c] if rng.random() < 0.5 else []))},{c}"
             for _ in range(rows) for c in classes]
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    return {"name": path.stem, "type": "sequence_classification", "max_length": 16,
            "source": {"kind": "files", "format": "csv", "files": {"train": str(path)}}}


@pytest.mark.parametrize("distance, method", [("euclidean", "prototype"), ("cosine", "prototype"),
                                              ("euclidean", "ridge"),
                                              ("euclidean", "svm")])
def test_validation_and_tune_score_an_encoder_the_same(tmp_path, distance, method):
    train = _csv(tmp_path / "train_task.csv", ["alpha", "beta"], 6)
    val = _csv(tmp_path / "topics.csv", ["sport", "money", "food", "music"], 10)
    cfg = load_config(data={
        "seed": 5, "model": {"from_config": TINY_BERT}, "cache_dir": str(tmp_path / "cache"),
                            "data_dir": str(tmp_path),
        "tasks": [train], "meta": {"algorithm": "protonet", "proto": {"distance": distance,
                                                                      "temperature": 0.5},
                                   "episode": {"ways": 2, "shots": 1, "queries": 1}},
        "eval": {"validation": {"tasks": [val], "method": method, **EPISODES},
                 "svm": {"iterations": 20}},
        "tune": {"validation_tasks": [val], "method": method, **EPISODES},
    })
    assert protocol(cfg, "validation").model_copy(update={"key": "", "split_key": ""}) == \
        protocol(cfg, "tune").model_copy(update={"key": "", "split_key": ""})
    actor = TaskActor(cfg.model_dump_json(), "train_task", torch.get_num_threads())
    # meta-validation: what the trainer's Validator gets back from a task actor (its own parameters:
    # shared=None)
    spec = task_specs(cfg, cfg.eval.validation.tasks)[0]
    validation = actor.validate(None, [spec.model_dump_json()])["topics"]
    assert actor.model.training  # scoring is in eval mode, and puts the replica back
    # raymeta tune: what a trial reports, on the same encoder
    tune = (FewShotScorer(cfg, task_specs(cfg, cfg.tune.validation_tasks))
            .episodes(actor.model.encoder)["topics"])
    assert len(validation) == 30 and tune.values == validation
    assert tune.mean == pytest.approx(sum(validation) / 30)
    # and the classifier is the run's: the prototype scores these episodes otherwise
    if method != "prototype":
        swapped = cfg.model_copy(
            update={"tune": cfg.tune.model_copy(update={"method": "prototype"})})
        assert FewShotScorer(swapped,
                             [spec]).episodes(actor.model.encoder)["topics"].values != validation
        return
    # and the distance is the run's: the other metric scores these episodes otherwise
    other = {"euclidean": "cosine", "cosine": "euclidean"}[distance]
    swapped = cfg.model_copy(update={"meta": cfg.meta.model_copy(update={
        "proto": cfg.meta.proto.model_copy(update={"distance": other})})})
    assert FewShotScorer(swapped,
                         [spec]).episodes(actor.model.encoder)["topics"].values != validation


def test_the_task_actor_imports_only_the_light_scorer():
    code = ("import sys, raymeta.train.actor; "
            "print(sorted(m for m in sys.modules if m in ('raymeta.eval.evaluate', "
            "'raymeta.eval.finetune', "
            "'raymeta.eval.setfit', 'raymeta.eval.frozen', 'raymeta.train.validation', "
            "'raymeta.tune')), 'raymeta.eval.scoring' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] True"
