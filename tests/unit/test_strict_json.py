"""Every JSON file raymeta writes is strict JSON: a NaN or ±Inf is written as ``null`` (its place
listed under ``"nonfinite"``), never as the bare ``NaN`` that strict readers reject; and no writer
can bypass the helper."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.config import ExperimentConfig, ModelConfig
from raymeta.core.checkpoint import load_checkpoint, save_checkpoint
from raymeta.core.jsonio import dumps, strict_json, write_json_atomic
from raymeta.core.model import load_encoder
from raymeta.eval.metrics import mean_ci95
from raymeta.eval.report import results_table
from raymeta.train.record import StepRecord
from raymeta.train.tracking import Tracker

from ..conftest import TINY_BERT

RAYMETA = Path(__file__).resolve().parents[2] / "raymeta"


def _reject(name: str):
    raise ValueError(f"not strict JSON: {name}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_reject)


def test_the_helper_turns_nan_and_inf_into_null_and_says_where():
    data = {"mean": 0.5, "ci95": float("nan"), "n": 1, "ok": [1.0, np.float32("inf")],
            "deep": {"x": -math.inf, "y": np.float64(2.0)}}
    out = strict_json(data)
    assert out["ci95"] is None and out["ok"] == [1.0, None] and out["deep"] == {"x": None, "y": 2.0}
    assert out["nonfinite"] == ["ci95", "ok.1", "deep.x"]
    assert data["ci95"] != data["ci95"]  # the input is left as it was
    # the flag only where something was non-finite
    assert "nonfinite" not in strict_json({"a": 1.0, "b": [2]})
    assert strict_json([float("nan"), 1]) == [None, 1]
    assert strict_loads(dumps(data, indent=1))["ci95"] is None


def test_results_json_of_one_split_is_strict_and_its_table_still_reads(tmp_path):
    """``raymeta evaluate`` with one split: the 95% CI is undefined (NaN in memory), null in
    results.json."""
    res = {"metric": "accuracy", **mean_ci95([0.75]), "all": {"accuracy": [0.75]}}
    assert math.isnan(res["ci95"])
    out = {"init": "x", "tasks": {"t": {"type": "sequence_classification", "metric": "accuracy",
                                        "shots": {"8": res}}}}
    f = write_json_atomic(tmp_path / "results.json", out)
    back = strict_loads(f.read_text())
    assert back["tasks"]["t"]["shots"]["8"]["ci95"] is None
    assert back["nonfinite"] == ["tasks.t.shots.8.ci95"]
    assert "| 75.0 |" in results_table({"x": back})


def test_metrics_jsonl_is_strict(tmp_path):
    t = Tracker(tmp_path, ["a"])
    t.step(StepRecord(step=0, steps=1, loss={"a": float("nan")}, metrics={}, weights={"a": 1.0},
                      skipped=[],
                      grad_norm=float("inf"), lr=1e-3, step_s=0.1, compute_max_s=0.1, compute_s={},
                      outer_s=0.0,
                      used=["a"], cosine=None))
    t.validation({"step": 1, "kind": "validation", "score": 0.5, "ci95": float("nan"),
                  "tasks": {"a": 0.5},
                  "seconds": 1.0, "improved": True, "best_score": 0.5, "best_step": 1})
    t.close()
    lines = [strict_loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (lines[0]["loss"]["a"] is None and lines[0]["grad_norm"] is None
            and lines[1]["ci95"] is None)


def test_trainer_state_json_is_strict(tmp_path, tokenizer):
    torch.manual_seed(0)
    encoder = load_encoder(ModelConfig(from_config=TINY_BERT))
    path = save_checkpoint(tmp_path, 3, encoder=encoder, tokenizer=tokenizer,
                           cfg=ExperimentConfig(),
                           tensors={"t": torch.ones(2)}, state={"best_score": float("-inf"),
                                                                "x": 1})
    state = strict_loads((path / "trainer_state.json").read_text())
    assert (state["best_score"] is None and state["step"] == 3
            and state["nonfinite"] == ["best_score"])
    assert load_checkpoint(path)[1]["x"] == 1


def test_the_summaries_read_null_confidence_intervals():
    from raymeta.benchmark import _gains_table
    from raymeta.tune.report import summary_table

    summary = strict_loads(dumps({"best": {"is_heuristic": None}, "compare": {"tune best": {
        "val": 0.5, "val_ci95": float("nan"), "test": 0.6, "test_ci95": 0.1,
        "val_gap_to_best": {"mean": 0.0, "ci95": float("nan")}, "mixture": None}}}))
    table = summary_table(summary)
    assert "| 50.0 |" in table and "60.0 ± 10.0" in table and "+0.0 |" in table
    report = strict_loads(dumps({"gain_over": {"pretrained": {"maml": {"t": {
        "K=8": {"mean": 0.02, "ci95": math.nan}}}}}}))
    gains = _gains_table(report["gain_over"]["pretrained"], "pretrained")
    assert "| +2.0 |" in gains


def _json_writes_without_allow_nan_false(path: Path) -> list[str]:
    """``json.dump``/``json.dumps`` calls (``json`` under any alias) that do not pass
    ``allow_nan=False``."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
               for a in n.names if a.name == "json"}
    direct = {a.asname or a.name for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module == "json"
              for a in n.names if a.name in ("dump", "dumps")}
    bad = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        hit = (isinstance(f, ast.Attribute) and f.attr in ("dump",
                                                           "dumps") and isinstance(f.value,
                                                                                   ast.Name)
               and f.value.id in aliases) or (isinstance(f, ast.Name) and f.id in direct)
        strict = any(k.arg == "allow_nan" and isinstance(k.value,
                                                         ast.Constant) and k.value.value is False
                     for k in n.keywords)
        if hit and not strict:
            bad.append(f"{path}:{n.lineno}")
    return bad


def test_no_json_writer_bypasses_the_strict_helper():
    """A new ``json.dumps(...)`` would write a bare NaN: write through ``raymeta.core.jsonio``
    instead."""
    bad = []
    for p in sorted(RAYMETA.rglob("*.py")):
        bad += _json_writes_without_allow_nan_false(p)
    assert not bad, ("write JSON with raymeta.core.jsonio (dumps / write_json_atomic), not "
                     "json.dump(s):\n" + "\n".join(bad))


@pytest.mark.parametrize("src, n", [
    ("import json\njson.dumps({})\n", 1),
    ("import json as j\nj.dump({}, f, indent=1)\n", 1),
    ("from json import dumps\ndumps({})\n", 1),
    ("import json\njson.dumps({}, allow_nan=False)\n", 0),
])
def test_the_scan_sees_a_plain_json_dumps(tmp_path, src, n):
    f = tmp_path / "m.py"
    f.write_text(src)
    assert len(_json_writes_without_allow_nan_false(f)) == n
