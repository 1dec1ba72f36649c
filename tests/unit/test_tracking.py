"""Tracker: after a rewind (actor-crash recovery) or a resume, each step is logged once — in
metrics.jsonl, in TensorBoard, and in the task-affinity average."""

from __future__ import annotations

import json

import numpy as np

from raymeta.train.record import StepRecord
from raymeta.train.tracking import Tracker

from ..tb_events import tensorboard_scalars


def record(step: int, skipped: list[str] | None = None, cosine: np.ndarray | None = None,
           used: list[str] | None = None) -> StepRecord:
    weighted = ["a"] if skipped else ["a", "b"]
    return StepRecord(step=step, steps=10, loss={"a": 1.0, "b": 2.0}, metrics={},
                      weights={t: 1 / len(weighted) for t in weighted}, skipped=skipped or [],
                      grad_norm=1.0, lr=1e-3,
                      step_s=0.1, compute_max_s=0.1, compute_s={}, outer_s=0.0,
                      used=used or weighted, cosine=cosine)


def run(t: Tracker, steps: range, cos: float) -> None:
    for s in steps:
        t.step(record(s, cosine=np.array([[1.0, cos], [cos, 1.0]]), used=["a", "b"]))


def test_rewind_logs_each_step_once(tmp_path):
    t = Tracker(tmp_path, ["a", "b"])
    run(t, range(5), cos=-1.0)  # steps 3 and 4 are lost: a crash, back to the checkpoint at step 3
    t.rewind(3)
    run(t, range(3, 6), cos=0.5)
    t.close()
    assert [json.loads(ln)["step"]
            for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(6))
    shown = tensorboard_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in shown["train/grad_norm"]] == list(range(6))
    assert [s for s, _ in shown["affinity/a/b"]] == list(range(6))
    # the affinity average: 3 kept steps at -1 and 3 new ones at 0.5, not the 2 lost ones again
    assert t.cos_n[0, 1] == 6 and t.cos_sum[0, 1] == 3 * -1.0 + 3 * 0.5


def test_resume_keeps_the_earlier_steps_affinity(tmp_path):
    t = Tracker(tmp_path, ["a", "b"])
    run(t, range(4), cos=0.25)
    t.close()
    resumed = Tracker(tmp_path, ["a", "b"], start_step=2)
    assert resumed.cos_n[0, 1] == 2 and resumed.cos_sum[0, 1] == 0.5 and resumed.cos_n[0, 0] == 2
    resumed.close()


def test_skipped_tasks_are_a_scalar(tmp_path):
    t = Tracker(tmp_path, ["a", "b"])
    t.step(record(0, used=["a", "b"]))
    t.step(record(1, skipped=["b"], used=["a"]))
    t.close()
    assert tensorboard_scalars(tmp_path / "tensorboard")["train/skipped_tasks"] == [(0, 0.0),
                                                                                    (1, 1.0)]


def test_a_nonfinite_loss_is_strict_json_null_with_a_flag(tmp_path):
    """A NaN loss (meta.nan_policy=skip_task keeps the run going) is written as null and named in
    "nonfinite": strict JSON that any reader accepts, never a bare NaN."""
    t = Tracker(tmp_path, ["a", "b"])
    rec = record(0, skipped=["b"])
    rec.loss["b"] = float("nan")
    rec.metrics = {"b": {"acc": float("inf")}}
    t.step(rec)
    t.step(record(1, cosine=np.array([[1.0, np.nan], [np.nan, 1.0]]), used=["a", "b"]))
    t.step(record(2, cosine=np.array([[1.0, 0.5], [0.5, 1.0]]), used=["a", "b"]))
    t.close()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name} in metrics.jsonl")

    lines = [json.loads(ln, parse_constant=no_constants)
             for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == {"a": 1.0, "b": None} and lines[0]["metrics"] == {"b": {"acc": None}}
    assert lines[0]["nonfinite"] == ["loss.b", "metrics.b.acc"]
    assert lines[1]["affinity"] == {"a|b": None} and lines[1]["nonfinite"] == ["affinity.a|b"]
    assert "nonfinite" not in lines[2]  # the flag only where something was non-finite
    resumed = Tracker(tmp_path, ["a", "b"], start_step=3)  # a resume reads the nulls back
    assert np.isnan(resumed.cos_sum[0, 1]) and resumed.cos_n[0, 1] == 2
    resumed.close()


def test_step_lines_estimate_the_time_left_from_the_steps_done(tmp_path, caplog):
    """After two steps of 30 s each (on a fake clock), 8 of 10 to go: about 4 min left; none after
    one step (it carries the start-up) or after the last."""
    now = [100.0]
    t = Tracker(tmp_path, ["a", "b"], clock=lambda: now[0])
    with caplog.at_level("INFO", logger="raymeta.train"):
        for s in range(10):
            now[0] += 30.0
            t.step(record(s))
    t.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert "left" not in lines[0] and "left" not in lines[-1]
    assert lines[1].endswith("| about 4 min left")
    assert lines[8].endswith("| about 30 s left")
    resumed = Tracker(tmp_path, ["a", "b"], start_step=9)
    assert resumed.time_left(9, 10) == ""
    resumed.close()


def test_training_curves_show_the_losses_and_the_validation_scores(tmp_path):
    t = Tracker(tmp_path, ["a", "b"])
    assert t.curves_png() is None  # nothing logged yet: no picture
    for s in range(3):
        t.step(record(s))
    t.validation({"step": 3, "kind": "validation", "score": 0.5, "ci95": 0.1, "tasks": {"v": 0.5},
                  "n": 10, "improved": True, "best_score": 0.5, "best_step": 3, "stop": False,
                  "seconds": 1.0, "method": "prototype"})
    t.flush()
    pictures = t.pictures()
    t.close()
    assert tmp_path / "training_curves.png" in pictures
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
