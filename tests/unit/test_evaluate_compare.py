"""``raymeta evaluate --init A --init B``'s comparison without Ray or models: each later init's gain
over the first is the mean of its per-split differences with the paired 95% CI, marked where the CI
excludes 0; one table (a row per task and setting, a column per init, then the gains), the same in
results.json, the .md beside it, and a plot of the score against K."""

from __future__ import annotations

import json

import pytest

from raymeta.eval.compare import (
    comparison,
    evaluation_table,
    gains,
    paired_table,
    write_evaluation_report,
)
from raymeta.eval.metrics import mean_ci95, paired_ci95


def _results(proto: list[float], finetune: list[float], episodic: list[float] | None = None):
    """One init's results as ``raymeta evaluate`` writes them (the per-split values and their
    summary)."""
    tasks = {"intents": {"type": "sequence_classification", "metric": "accuracy",
                         "shots": {"2": mean_ci95(finetune)},
                         "methods": {"prototype": {"2": mean_ci95(proto)}}}}
    if episodic is not None:
        tasks["held"] = {"type": "sequence_classification", "metric": "accuracy",
                         "episodic": {"3-way 1-shot": {"prototype": mean_ci95(episodic)}}}
    return {"tasks": tasks}


PLAIN = _results([0.50, 0.60, 0.55, 0.52, 0.58], [0.40, 0.45, 0.42, 0.41, 0.44], [0.5, 0.6])
META = _results([0.60, 0.68, 0.66, 0.61, 0.70], [0.30, 0.55, 0.50, 0.38, 0.47], [0.6, 0.8])


def test_the_gain_is_the_mean_of_the_per_split_differences_with_the_paired_ci():
    c = comparison({"plain": PLAIN, "runs/meta": META})
    assert c["inits"] == ["plain", "runs/meta"] and c["baseline"] == "plain"
    assert c["results"]["runs/meta"] is META and set(c["gains"]) == {"runs/meta"}
    g = c["gains"]["runs/meta"]["intents"]["K=2 prototype"]
    meta, plain = (r["tasks"]["intents"]["methods"]["prototype"]["2"]["values"]
                   for r in (META, PLAIN))
    diffs = [m - p for m, p in zip(meta, plain)]
    assert g["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert g["values"] == pytest.approx(diffs) and g == paired_ci95(meta, plain)
    # every setting, K-shot and episodic, paired with the same setting on the first init
    assert set(c["gains"]["runs/meta"]["intents"]) == {"K=2", "K=2 prototype"}
    assert set(c["gains"]["runs/meta"]["held"]) == {"3-way 1-shot prototype"}
    json.dumps(c)  # results.json holds it as it is


def test_one_table_with_each_init_and_the_marked_paired_gains():
    c = comparison({"plain": PLAIN, "runs/meta": META, "other": PLAIN})
    table = paired_table(c["results"], c["gains"], c["baseline"])
    lines = table.splitlines()
    assert lines[0].startswith("mean ± 95% CI, in %; gain: the paired difference to plain")
    assert "* where the CI excludes 0" in lines[0]
    header = next(ln for ln in lines if ln.startswith("| task"))
    assert header == ("| task | setting | plain | runs/meta | other | gain: runs/meta | "
                      "gain: other |")
    rows = {tuple(c.strip() for c in ln.split("|")[1:3]): ln for ln in lines
            if ln.startswith("| ") and not ln.startswith("| task")}
    assert list(rows) == [("intents (accuracy)", "K=2"), ("intents (accuracy)", "K=2 prototype"),
                          ("held (accuracy)", "3-way 1-shot prototype")]
    # +10.0 ± 2.0 *: the CI excludes 0 (the means' own CIs overlap); the same init against itself
    # gains +0.0 ± 0.0, unmarked
    assert rows["intents (accuracy)", "K=2 prototype"] == (
        "| intents (accuracy) | K=2 prototype | 55.0 ± 5.1 | 65.0 ± 5.4 | 55.0 ± 5.1 "
        "| +10.0 ± 2.0 * | +0.0 ± 0.0 |")
    # fine-tuning: a gain whose CI spans 0 is shown, not marked
    assert rows["intents (accuracy)", "K=2"].endswith("| +1.6 ± 10.2 | +0.0 ± 0.0 |")
    assert "*" not in rows["held (accuracy)", "3-way 1-shot prototype"]  # 2 episodes: wide CI


def test_one_split_has_no_interval_and_no_mark():
    one = {"a": _results([0.5], [0.4]), "b": _results([0.9], [0.8])}
    table = paired_table(one)
    assert "| intents (accuracy) | K=2 prototype | 50.0 | 90.0 | +40.0 |" in table
    assert "*" not in table.split("\n", 1)[1]


def test_a_setting_one_init_lacks_is_a_dash():
    b = _results([0.6, 0.7], [0.5, 0.5])
    del b["tasks"]["intents"]["shots"]
    table = paired_table({"a": _results([0.5, 0.6], [0.4, 0.5]), "b": b})
    assert "| intents (accuracy) | K=2 | 45.0 ± 63.5 | — | — |" in table


def test_one_init_is_its_scores_alone():
    out = {"init": "runs/x", **_results([0.5, 0.6], [0.4, 0.5])}
    table = evaluation_table(out)
    assert table.splitlines()[0] == "mean ± 95% CI, in %" and "gain" not in table
    assert "| task | setting | runs/x |" in table


def test_gains_of_an_init_without_the_baseline_are_empty():
    assert gains({"a": PLAIN}, "missing") == {}


def test_the_report_beside_the_results_holds_the_table_and_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    c = comparison({"plain": PLAIN, "runs/meta": META})
    md, plot = write_evaluation_report(c, tmp_path / "cmp.json")
    assert md == tmp_path / "cmp.md" and plot == tmp_path / "cmp.png"
    assert plot.stat().st_size > 0 and plot.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert text.startswith("# raymeta evaluate: plain, runs/meta\n")
    assert evaluation_table(c) in text and "gain: runs/meta" in text
    assert text.rstrip().endswith("![score against K](cmp.png)")


def test_no_plot_without_scores(tmp_path):
    md, plot = write_evaluation_report({"init": "x", "tasks": {}}, tmp_path / "r.json")
    assert plot is None and not (tmp_path / "r.png").exists() and md.is_file()
