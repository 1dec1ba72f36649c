"""Episodic prototype evaluation on synthetic embeddings: separable classes score 1, noise ~1/N."""

from __future__ import annotations

import numpy as np

from raymeta.eval.episodic import episodic_accuracy, subsample_per_class


def test_separable_classes_are_perfect_and_noise_is_chance():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(10), 30)
    centers = rng.normal(size=(10, 16)) * 10
    emb = (centers[ids] + rng.normal(size=(300, 16)) * 0.1).astype(np.float32)
    good = episodic_accuracy(emb, ids, ways=5, shots=1, queries=5, episodes=100,
                             head_steps=5)["prototype"]
    assert good.mean == 1.0 and good.ci95 == 0.0
    noise = rng.normal(size=(300, 16)).astype(np.float32)
    bad = episodic_accuracy(noise, ids, ways=5, shots=5, queries=5, episodes=300)["prototype"]
    assert abs(bad.mean - 0.2) < 0.04 and 0 < bad.ci95 < 0.03


def test_same_seed_same_episodes():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(6), 20)
    emb = rng.normal(size=(120, 8)).astype(np.float32)
    a = episodic_accuracy(emb, ids, ways=3, shots=2, queries=3, episodes=50, seed=4)["prototype"]
    b = episodic_accuracy(emb, ids, ways=3, shots=2, queries=3, episodes=50, seed=4)["prototype"]
    c = episodic_accuracy(emb, ids, ways=3, shots=2, queries=3, episodes=50, seed=5)["prototype"]
    assert a.mean == b.mean and a.mean != c.mean


def test_finetuned_head_learns_what_prototypes_miss():
    """Classes that differ along one dimension, drowned in a large shared noise dimension: a trained
    linear head can learn to ignore the noise; the Euclidean prototype classifier cannot."""
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(5), 40)
    emb = np.zeros((200, 2), dtype=np.float32)
    emb[:, 0] = ids * 1.0 + rng.normal(size=200) * 0.05
    emb[:, 1] = rng.normal(size=200) * 20
    r = episodic_accuracy(emb, ids, ways=5, shots=5, queries=5, episodes=40, head_steps=100,
                          head_lr=1.0)
    assert r["finetuned_head"].mean > r["prototype"].mean + 0.05


class _Rows:
    """What subsample_per_class reads of a task: its splits and their class ids."""

    def __init__(self, **splits: list[int]):
        self.features = {k: list(v) for k, v in splits.items()}

    def class_ids(self, split: str) -> np.ndarray:
        return np.asarray(self.features[split])


def test_subsample_per_class_over_all_splits_or_only_the_given_ones():
    task = _Rows(train=[0, 1] * 10, test=[0, 1] * 3)
    rows, per_class = subsample_per_class(task, 8, np.random.default_rng(0))
    # splits in name order: every test row (3 per class), then train rows up to 8 per class
    assert len(rows["test"]) == 6 and len(rows["train"]) == 10 and per_class == {0: 8, 1: 8}
    rows, per_class = subsample_per_class(task, 8, np.random.default_rng(0), splits=("test",))
    assert (set(rows) == {"test"} and sorted(rows["test"]) == list(range(6))
            and per_class == {0: 3, 1: 3})


def test_every_embedding_classifier_scores_the_same_episodes():
    """prototype, ridge and svm on one set of seeded episodes: separable clusters are all correct;
    on overlapping ones the classifiers differ, episode by episode, with the same number of episodes
    each."""
    import pytest

    from raymeta.config import RidgeConfig, SvmConfig
    from raymeta.eval.episodic import classifier_logits, episodic_accuracy

    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(4), 30)
    centres = rng.normal(size=(4, 16)) * 10
    kw = dict(ways=3, shots=2, queries=5, episodes=40, methods=("prototype", "ridge", "svm"),
              ridge=RidgeConfig(**{"lambda": 1.0}), svm=SvmConfig(**{"lambda": 1.0}, iterations=50))
    easy = episodic_accuracy((centres[ids] + rng.normal(size=(120, 16))).astype(np.float32), ids,
                             **kw)
    assert {m: r.mean for m, r in easy.items()} == {"prototype": 1.0, "ridge": 1.0, "svm": 1.0}
    hard = episodic_accuracy((centres[ids] / 10 + rng.normal(size=(120, 16))).astype(np.float32),
                             ids, **kw)
    assert all(len(r.values) == 40
               for r in hard.values()) and hard["ridge"].values != hard["prototype"].values
    with pytest.raises(ValueError, match="unknown embedding classifier 'knn'"):
        classifier_logits("knn", *[None] * 4)
