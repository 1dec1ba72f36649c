"""Episodic prototype evaluation on synthetic embeddings: separable classes score 1, noise ~1/N."""

from __future__ import annotations

import numpy as np

from raymeta.episodic import episodic_accuracy


def test_separable_classes_are_perfect_and_noise_is_chance():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(10), 30)
    centers = rng.normal(size=(10, 16)) * 10
    emb = (centers[ids] + rng.normal(size=(300, 16)) * 0.1).astype(np.float32)
    good = episodic_accuracy(emb, ids, ways=5, shots=1, queries=5, episodes=100)
    assert good.mean == 1.0 and good.ci95 == 0.0
    noise = rng.normal(size=(300, 16)).astype(np.float32)
    bad = episodic_accuracy(noise, ids, ways=5, shots=5, queries=5, episodes=300)
    assert abs(bad.mean - 0.2) < 0.04 and 0 < bad.ci95 < 0.03


def test_same_seed_same_episodes():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(6), 20)
    emb = rng.normal(size=(120, 8)).astype(np.float32)
    a = episodic_accuracy(emb, ids, ways=3, shots=2, queries=3, episodes=50, seed=4)
    b = episodic_accuracy(emb, ids, ways=3, shots=2, queries=3, episodes=50, seed=4)
    c = episodic_accuracy(emb, ids, ways=3, shots=2, queries=3, episodes=50, seed=5)
    assert a.mean == b.mean and a.mean != c.mean
