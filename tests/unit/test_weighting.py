"""Learned task weights (meta.weighting.rule: alignment) on hand-made gradients: the update is the
formula, a task against the target loses weight at every update, the floor holds, the state
round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raymeta.core.weighting import AlignmentWeights, alignment_cosines


def test_cosines_of_hand_made_gradients():
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    grads = {"along": torch.tensor([2.0, 0.0, 0.0, 0.0]), "against": torch.tensor([-1.0, 1.0, 0.0,
                                                                                   0.0]),
             "orthogonal": torch.tensor([0.0, 0.0, 3.0, 0.0]), "zero": torch.zeros(4),
             "nan": torch.tensor([float("nan"), 0.0, 0.0, 0.0])}
    c = alignment_cosines(grads, target, chunk=3)  # chunks of 3: the sums cross a chunk boundary
    assert c["along"] == pytest.approx(1.0) and c["against"] == pytest.approx(-1 / math.sqrt(2))
    assert c["orthogonal"] == 0.0 and math.isnan(c["zero"]) and math.isnan(c["nan"])


def test_the_update_is_the_formula():
    base = {"a": 2.0, "b": 1.0, "c": 1.0}
    w = AlignmentWeights(base, lr=0.5, floor=0.1)
    assert w.weights() == pytest.approx({"a": 0.9 * 0.5 + 0.1 / 3, "b": 0.9 * 0.25 + 0.1 / 3,
                                         "c": 0.9 * 0.25 + 0.1 / 3})
    cos = [{"a": 0.2, "b": -0.4, "c": 0.9}, {"a": -0.1, "b": math.nan, "c": 0.3}]
    z = np.zeros(3)
    for c in cos:
        w.update(c)
        z += 0.5 * np.array([c["a"], 0.0 if math.isnan(c["b"]) else c["b"], c["c"]])
        logits = z + np.log([0.5, 0.25, 0.25])
        p = np.exp(logits) / np.exp(logits).sum()
        assert list(w.weights().values()) == pytest.approx(list(0.9 * p + 0.1 / 3), rel=1e-12)


def test_a_task_against_the_target_loses_weight_at_every_update_and_the_floor_holds():
    w = AlignmentWeights({"good": 1.0, "noise": 1.0, "ok": 1.0}, lr=2.0, floor=0.05)
    before = w.weights()["noise"]
    for _ in range(12):
        w.update({"good": 0.6, "noise": -0.3, "ok": 0.1})
        now = w.weights()
        assert now["noise"] < before and now["noise"] >= 0.05 / 3 - 1e-15
        assert sum(now.values()) == pytest.approx(1.0)
        before = now["noise"]
    assert before == pytest.approx(0.05 / 3, rel=1e-6)  # down to the floor, never below


def test_floor_outside_zero_to_one_over_n_is_refused():
    with pytest.raises(ValueError, match=r"floor 0.6 outside \[0, 1/N\] = \[0, 0.5\]"):
        AlignmentWeights({"a": 1.0, "b": 1.0}, lr=1.0, floor=0.6)


def test_every_steps_and_state_round_trip():
    w = AlignmentWeights({"a": 1.0, "b": 3.0}, lr=1.0, floor=0.0, every_steps=3)
    assert [s for s in range(9) if w.due(s)] == [2, 5, 8]
    w.update({"a": 0.5, "b": -0.5})
    again = AlignmentWeights({"a": 1.0, "b": 3.0}, lr=1.0, floor=0.0, every_steps=3)
    again.load_state(w.state())
    assert again.weights() == w.weights()
    with pytest.raises(ValueError, match="cannot resume"):
        AlignmentWeights({"b": 1.0, "a": 1.0}, lr=1.0, floor=0.0).load_state(w.state())


def _cfg(tmp_path, **weighting):
    from raymeta.config import load_config

    f = tmp_path / "t.csv"
    f.write_text("text,label\n" + "".join(f"x {i},{'ab'[i % 2]}\n" for i in range(8)))
    g = tmp_path / "v.csv"
    g.write_text(f.read_text())
    task = {"type": "sequence_classification", "source": {"kind": "files", "format": "csv"}}
    return load_config(data={
        "name": "w", "output_dir": str(tmp_path / "run"),
                             "model": {"from_config": {"hidden_size": 8}},
        "tasks": [{**task, "name": n, "source": {**task["source"],
                                                 "files": {"train": str(f if n == "a" else g)}}}
                  for n in ("a", "b")],
        "meta": {"weighting": {"rule": "alignment", **weighting}},
        "eval": {"validation": {"tasks": [{**task, "name": "val", "source": {
            **task["source"], "files": {"train": str(tmp_path / "x.csv")}}}]}},
    })


def test_bad_weighting_input_is_one_line_naming_the_key(tmp_path):
    from raymeta.errors import ConfigError
    from raymeta.train.validation_tasks import target_specs

    (tmp_path / "x.csv").write_text("text,label\nx,a\n")
    # eval.validation.tasks by default
    assert [s.name for s in target_specs(_cfg(tmp_path))] == ["val"]
    overlapping = [{"name": "t", "type": "sequence_classification",
                    "source": {"kind": "files", "format": "csv",
                               "files": {"train": str(tmp_path / "t.csv")}}}]
    with pytest.raises(ConfigError,
                       match=r"config key 'meta.weighting.target': task 't' overlaps the "
                       r"meta-training "
                                          r"task 'a' \(same files and classes\)"):
        target_specs(_cfg(tmp_path, target=overlapping))
    with pytest.raises(ConfigError,
                       match=r"config key 'meta.weighting.floor': 0.6 is outside \[0, 1/N\] = \[0, "
                       r"0.5\]"):
        target_specs(_cfg(tmp_path, floor=0.6))
    cfg = _cfg(tmp_path)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"validation": None})})
    with pytest.raises(ConfigError,
                       match=r"config key 'meta.weighting.target': meta.weighting.rule alignment "
                       r"needs "
                                          r"target tasks"):
        target_specs(cfg)


def _run(max_kl, steps=80, lr=21.3):
    """Seven tasks; "clinc" leads the cosines for 40 updates, then "wnut" does (the collapse and
    the flip that configs/recipes/general_alignment.yaml's tuned η showed without a bound)."""
    tasks = ["clinc", "banking", "trec", "sst2", "wnut", "xquad", "smlmt"]
    w = AlignmentWeights({t: 1.0 for t in tasks}, lr=lr, floor=0.0101 / 7, max_kl=max_kl)
    rng = np.random.default_rng(0)
    out = [w.weights()]
    for step in range(steps):
        lead = "clinc" if step < steps // 2 else "wnut"
        cos = {t: 0.05 + 0.02 * rng.standard_normal() for t in tasks}
        cos[lead] += 0.1
        w.update(cos)
        out.append(w.weights())
    return tasks, out


def test_without_a_bound_the_tuned_step_collapses_and_flips():
    tasks, ws = _run(None)
    assert max(w["clinc"] for w in ws) > 0.99 and ws[-1]["wnut"] > 0.99
    # the flip: from nothing to nearly everything within 5 updates
    assert max(b["wnut"] - a["wnut"] for a, b in zip(ws, ws[5:])) > 0.9


def test_the_kl_bound_keeps_an_entropy_floor_and_moves_smoothly():
    from raymeta.core.weighting import entropy, kl_divergence

    tasks, ws = _run(math.log(2))
    n = len(tasks)
    for w in ws:
        p = [w[t] for t in tasks]
        assert kl_divergence(p, [1 / n] * n) <= math.log(2) + 1e-9
        assert entropy(p) >= math.log(n / 2) - 1e-9  # exp(H) ≥ N/2: at least half the tasks
        assert sum(p) == pytest.approx(1.0)
    # still learns: the leader gains weight, the order follows the cosines
    assert ws[40]["clinc"] == max(ws[40].values()) and ws[-1]["wnut"] == max(ws[-1].values())
    assert ws[40]["clinc"] > 2 / n
    # no flip: after the first updates (η moves z by ~3 at once), no weight moves by more than
    # 0.2 within 5 updates, and the hand-over from clinc to wnut takes 20 updates or more
    assert max(abs(b[t] - a[t]) for a, b in zip(ws[3:], ws[8:]) for t in tasks) < 0.2
    assert ws[60]["clinc"] > ws[60]["wnut"]


def test_the_bound_does_not_bind_near_the_configured_mixture_and_records_lambda():
    w = AlignmentWeights({"a": 1.0, "b": 1.0, "c": 2.0}, lr=0.1, floor=0.0, max_kl=math.log(2))
    free = AlignmentWeights({"a": 1.0, "b": 1.0, "c": 2.0}, lr=0.1, floor=0.0)
    for t in (w, free):
        t.update({"a": 0.3, "b": -0.2, "c": 0.1})
    assert w.weights() == free.weights() and w.temperature == 1.0
    for t in (w, free):
        for _ in range(200):
            t.update({"a": 1.0, "b": -1.0, "c": 0.0})
    assert w.weights() != free.weights() and w.temperature > 1.0
    with pytest.raises(ValueError, match="max_kl -1 is negative"):
        AlignmentWeights({"a": 1.0}, lr=1.0, floor=0.0, max_kl=-1)
