"""One local Ray instance (on a loopback address) shared by the integration tests of a pytest
process (under ``make test``'s pytest-xdist, one per worker; ``--dist loadfile`` keeps a file's
tests, and so its module-scoped actors, in one worker)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from raymeta.cluster import connect

    started = connect(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def task_actors(ray_local):
    """Task actors shared by one test module's trainers: ``MetaTrainer(cfg,
    actors=task_actors(cfg))`` resets them to ``cfg`` (``TaskActor.reset``) instead of starting new
    worker processes, which costs seconds each (importing torch and transformers) on 2 CPUs. Keyed
    like the trainer's actors (``<task>``, ``<task>#<r>``); one is started the first time a key is
    asked for.

    They reserve no CPU (num_cpus=0), so idle ones never keep other work off the instance (a trainer
    with its own actors sizes them to every CPU of the cluster), and run one torch thread, as the
    trainer's own actors do here whenever there are two or more of them. Tests that kill actors, or
    need the trainer's own resource sizing, start their own."""
    from raymeta.train.pool import ActorPool

    pool = ActorPool(options={"num_cpus": 0, "max_restarts": 0}, threads=1, device="cpu")
    yield pool.lend
    pool.release()


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory):
    """Three small raw files, one per task type the exactness test covers: csv, CoNLL, SQuAD."""
    d = tmp_path_factory.mktemp("mixed")
    topics = ["sport", "music", "travel", "food"]
    rows = ["text,label"] + [f"a sentence about {t} number {i},{t}" for i in range(12)
                             for t in topics]
    (d / "cls.csv").write_text("\n".join(rows) + "\n")
    words = [("Alice", "B-person"), ("met", "O"), ("Bob", "B-person"), ("in", "O"), ("New",
                                                                                     "B-location"),
             ("York", "I-location"), ("today", "O")]
    (d / "ner.conll").write_text("".join("".join(f"{w}\t{t}\n" for w,
                                                 t in words[: 3 + i % 5]) + "\n"
                                         for i in range(20)))
    paras = []
    for i in range(6):
        ctx = f"The river number {i} flows through the town of Ville{i}, which has {i + 3} bridges."
        town, bridges = f"Ville{i}", str(i + 3)
        qas = [{"id": f"{i}a", "question": "Which town?",
                "answers": [{"text": town, "answer_start": ctx.index(town)}]},
               {"id": f"{i}b", "question": "How many bridges?",
                "answers": [{"text": bridges, "answer_start": ctx.index(f"{bridges} bridges")}]}]
        paras.append({"context": ctx, "qas": qas})
    (d / "qa.json").write_text(json.dumps({"data": [{"title": "rivers", "paragraphs": paras}]}))
    return d


# Classes told apart by their words alone: even the tiny random BERT's mean-pooled embeddings
# separate them at step 0, and a destructive learning rate can only make that worse.
TOPICS = {"fruit": "apple banana cherry grape", "vehicle": "car truck bus train",
          "weather": "rain snow wind storm",
          "music": "guitar piano drum violin"}


@pytest.fixture(scope="session")
def val_file(tmp_path_factory) -> Path:
    """A validation task (eval.validation) disjoint from :func:`mixed_data`'s tasks: 10 rows of each
    of 4 topics."""
    p = tmp_path_factory.mktemp("val") / "topics.csv"
    words = {k: v.split() for k, v in TOPICS.items()}
    p.write_text("text,label\n" + "".join(f"{' '.join(w[i % 4:] + w[:i % 4])} {w[i % 3]},{k}\n"
                                          for i in range(10) for k, w in words.items()))
    return p


def validation_on(val_file: Path, **settings) -> dict:
    """An ``eval.validation`` block scoring :func:`val_file` with 3-way 2-shot prototype
    episodes."""
    return {"tasks": [{"name": "topics", "type": "sequence_classification", "max_length": 16,
                       "source": {"kind": "files", "format": "csv",
                                  "files": {"train": str(val_file)}}}],
            "ways": 3, "shots": 2, "queries": 3, "episodes": 30, **settings}


def tiny_config(tmp_path, data_dir, **meta) -> dict:
    from ..conftest import TINY_BERT

    return {
        "name": "it", "seed": 3, "output_dir": str(tmp_path / "run"), "data_dir": str(data_dir),
        "cache_dir": str(tmp_path / "cache"),
        "model": {"from_config": TINY_BERT},
        "tasks": [
            {"name": "cls", "type": "sequence_classification", "weight": 2.0, "max_length": 24,
             "source": {"kind": "files", "format": "csv",
                        "files": {"train": "${data_dir}/cls.csv"}}},
            {"name": "ner", "type": "token_classification", "weight": 1.0, "max_length": 24,
             "source": {"kind": "files", "format": "conll",
                        "files": {"train": "${data_dir}/ner.conll"}}},
            {"name": "qa", "type": "extractive_qa", "weight": 0.5, "max_length": 48, "stride": 16,
             "source": {"kind": "files", "format": "squad",
                        "files": {"train": "${data_dir}/qa.json"}}},
        ],
        "meta": {"steps": 3, "inner_steps": 2, "inner_lr": 0.05,
                 "episode": {"ways": 3, "shots": 2, "queries": 2, "support_size": 3,
                             "query_size": 3}, **meta},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "checkpoint": {"every_steps": 1, "keep_last": 5},
        # One torch thread per task actor, as every test process has (tests/conftest.py): a trainer
        # sizes its own actors' threads to their CPU share, which is 2 for a lone actor on a 2-CPU
        # instance, while the suite's other xdist worker keeps the second CPU busy: the OpenMP
        # threads then wait on each other.
        "resources": {"torch_threads": 1},
    }


def algorithm_meta(name: str) -> dict:
    """``meta`` keys for a test case's algorithm name: an algorithm, or ``metaopt-svm``
    (MetaOptNet's SVM head, with a learned per-task scale: a head parameter that moves on the
    actors), or ``<algorithm>-prior`` (with meta.proto.label_prior: the class names as weighted
    support points)."""
    if name == "metaopt-svm":
        return {"algorithm": "metaopt", "metaopt": {"head": "svm", "iterations": 10,
                                                    "learn_scale": True}}
    if name.endswith("-prior"):
        return {"algorithm": name.removesuffix("-prior"),
                "proto": {"label_prior": {"weight": 2.0, "template": "about {name}"}}}
    return {"algorithm": name}


def write_config(tmp_path, cfg: dict) -> str:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


class Interrupt(Exception):
    """The driver "killed" mid-run by :func:`driver_killed_at`."""


@contextlib.contextmanager
def driver_killed_at(monkeypatch, step: int):
    """Within the block, ``MetaTrainer.meta_step`` raises :class:`Interrupt` when the trainer
    reaches ``step`` (the checkpoints before it are written); the real ``meta_step`` is back after
    it, for the resume."""
    from raymeta.train.trainer import MetaTrainer

    original = MetaTrainer.meta_step

    def crash(self):
        if self.step == step:
            raise Interrupt("driver killed")
        return original(self)

    monkeypatch.setattr(MetaTrainer, "meta_step", crash)
    try:
        with pytest.raises(Interrupt):
            yield
    finally:
        monkeypatch.setattr(MetaTrainer, "meta_step", original)

