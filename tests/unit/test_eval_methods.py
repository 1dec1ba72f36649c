"""Evaluation methods (``finetune | prototype | setfit``) without Ray or models: the config keys,
the checks made before anything runs, and how results that hold several methods are tabled, plotted
and paired."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest

from raymeta.benchmark import gains
from raymeta.config import TaskConfig, load_config
from raymeta.errors import ConfigError, DataError, RaymetaError
from raymeta.eval.evaluate import check_methods, summarise
from raymeta.eval.fastfit import FastfitSettings, _fastfit_trainer_class, check_fastfit_task
from raymeta.eval.report import kshot_label, kshot_results, plot_scores, results_table
from raymeta.eval.setfit import SetfitSettings, check_setfit_task, setfit_and_evaluate

CLS = TaskConfig.model_validate({"name": "topics", "type": "sequence_classification",
                                 "source": {"kind": "files", "format": "csv",
                                            "files": {"train": "x.csv"}}})
NER = TaskConfig.model_validate({"name": "ents", "type": "token_classification",
                                 "source": {"kind": "files", "format": "conll",
                                            "files": {"train": "x.conll"}}})


def test_eval_methods_and_setfit_settings_in_the_config():
    cfg = load_config(None, [])
    assert cfg.eval.methods == ["finetune"]
    assert SetfitSettings(**cfg.eval.setfit.model_dump()) == SetfitSettings()  # one set of defaults
    cfg = load_config(None, ["eval.methods=[finetune,setfit,prototype]",
                             "eval.setfit.iterations=5"])
    assert cfg.eval.methods == ["finetune", "setfit",
                                "prototype"] and cfg.eval.setfit.iterations == 5


@pytest.mark.parametrize("override, expect", [
    ("eval.methods=[finetune,knn]",
     "config key 'eval.methods.1': Input should be 'finetune', 'prototype', 'ridge', 'svm', "
     "'setfit' or 'fastfit'"),
    ("eval.methods=[setfit,setfit]", "config key 'eval.methods': a method is listed twice"),
    ("eval.methods=[]", "config key 'eval.methods'"),
    ("eval.setfit.epochs=0", "config key 'eval.setfit.epochs'"),
    ("eval.setfit.body_lr=0", "config key 'eval.setfit.body_lr'"),
    ("eval.setfit.pairs=3", "config key 'eval.setfit.pairs': unknown key"),
    ("eval.fastfit.epochs=0", "config key 'eval.fastfit.epochs'"),
    ("eval.fastfit.optim=sgd", "config key 'eval.fastfit.optim'"),
    ("eval.ridge.lambda=0", "config key 'eval.ridge.lambda'"),
    ("eval.svm.iterations=0", "config key 'eval.svm.iterations'"),
    ("eval.episodic_methods=[prototype,knn]", "config key 'eval.episodic_methods.1'"),
])
def test_bad_eval_methods_are_config_errors(override, expect):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_checks_before_anything_runs(monkeypatch):
    assert check_methods([CLS, NER], "finetune") == ["finetune"]
    assert check_methods([CLS], ["prototype", "setfit"]) == ["prototype", "setfit"]
    with pytest.raises(RaymetaError,
                       match="--method knn: expected one or more of finetune, prototype, ridge, "
                       "svm, setfit"):
        check_methods([CLS], "knn")
    with pytest.raises(DataError,
                       match="task 'ents': --method prototype needs a sequence_classification "
                       "task; "
                                        "the task is token_classification"):
        check_methods([CLS, NER], ["finetune", "prototype"])
    with pytest.raises(DataError,
                       match="task 'ents': --method setfit needs a sequence_classification task"):
        check_methods([NER], "setfit")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "setfit" else find_spec(name, *a))
    with pytest.raises(RaymetaError,
                       match=r"^--method setfit needs the setfit package: pip install "
                       r"'raymeta\[setfit\]'$"):
        check_methods([CLS], ["finetune", "setfit"])


def test_setfit_missing_inside_a_run_is_the_same_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "setfit", None)  # `import setfit` raises ImportError
    with pytest.raises(RaymetaError, match=r"pip install 'raymeta\[setfit\]'"):
        setfit_and_evaluate("unused", CLS.model_dump_json(), [0], settings=SetfitSettings(), seed=0,
                            data_dir=".",
                            cache_dir=None, max_test=None)


def test_setfit_takes_single_sentences():
    import datasets

    pairs = SimpleNamespace(raw={"train": datasets.Dataset.from_dict({"text": ["a"],
                                                                      "text_pair": ["b"],
                                                                      "label": ["x"]})})
    with pytest.raises(DataError, match="task 'topics': --method setfit takes single sentences"):
        check_setfit_task(CLS, pairs)  # type: ignore[arg-type]


def _kshot(values: list[float]) -> dict:
    return {"all": {"accuracy": values}, "metric": "accuracy", **summarise(values)}


def _results(ft: list[float], sf: list[float], *, episodic: bool = True) -> dict:
    entry = {"type": "sequence_classification", "metric": "accuracy", "shots": {"4": _kshot(ft)},
             "methods": {"setfit": {"4": _kshot(sf)}}}
    if episodic:
        entry["episodic"] = {"5-way 1-shot": {"prototype": _kshot([0.5, 0.6, 0.7])}}
    return {"tasks": {"topics": entry}}


def test_kshot_results_and_labels_keep_finetune_where_it_was():
    entry = _results([0.5, 0.6, 0.7], [0.8, 0.8, 0.9])["tasks"]["topics"]
    assert [(m, k) for m, k, _ in kshot_results(entry)] == [("finetune", "4"), ("setfit", "4")]
    assert kshot_label("finetune", 4) == "K=4" and kshot_label("setfit", "4") == "K=4 setfit"
    assert kshot_results({"episodic": {}}) == []


def test_results_table_has_a_column_per_method():
    table = results_table({"plain": _results([0.5, 0.6, 0.7], [0.8, 0.8, 0.9]),
                           "legacy": {"tasks": {"topics": {"metric": "accuracy",
                                                           "shots": {"4": _kshot([0.4, 0.4])}}}}})
    header = next(line for line in table.splitlines() if line.startswith("| init"))
    assert header == "| init | K=4 | K=4 setfit | 5-way 1-shot prototype |"
    assert "| legacy | 40.0 ± 0.0 | — | — |" in table  # results from before methods still table
    assert "| plain | 60.0 ± 24.8 | 83.3 ± 14.3 | 60.0 ± 24.8 |" in table


def test_gains_pair_each_method_with_the_same_method():
    g = gains({"pretrained": _results([0.5, 0.6, 0.7], [0.8, 0.8, 0.9]),
               "meta": _results([0.6, 0.6, 0.9], [0.7, 0.8, 0.9], episodic=False)},
              "pretrained")["meta"]["topics"]
    assert set(g) == {"K=4", "K=4 setfit"}
    assert g["K=4"]["values"] == pytest.approx([0.1, 0.0, 0.2])
    assert g["K=4 setfit"]["values"] == pytest.approx([-0.1, 0.0, 0.0])


def test_plot_scores_draws_every_method(tmp_path):
    pytest.importorskip("matplotlib")
    paths = plot_scores({"plain": _results([0.5, 0.6, 0.7], [0.8, 0.8, 0.9]),
                         "setfit only": {"tasks": {"topics": {
                             "metric": "accuracy",
                             "methods": {"setfit": {"4": _kshot([0.9, 0.9])}}}}}},
                        tmp_path)
    assert [p.name for p in paths] == ["scores_topics.png"] and paths[0].stat().st_size > 0


def test_fastfit_checks_and_settings(monkeypatch):
    cfg = load_config(None, ["eval.methods=[setfit,fastfit]", "eval.fastfit.epochs=3"])
    assert cfg.eval.methods == ["setfit", "fastfit"] and cfg.eval.fastfit.epochs == 3
    # one set of defaults: FastFit's README
    assert FastfitSettings(**load_config(None, []).eval.fastfit.model_dump()) == FastfitSettings()
    assert check_methods([CLS], ["setfit", "fastfit"]) == ["setfit", "fastfit"]
    with pytest.raises(DataError,
                       match="task 'ents': --method fastfit needs a sequence_classification task"):
        check_methods([NER], "fastfit")
    same_name = SimpleNamespace(raw={}, label_texts=lambda template: ["spam", "ham", "spam"])
    with pytest.raises(DataError, match="task 'topics': --method fastfit tells classes apart by "
                       "name; two classes are named 'spam'"):
        check_fastfit_task(CLS, same_name)  # type: ignore[arg-type]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "fastfit" else find_spec(name, *a))
    with pytest.raises(RaymetaError, match=r"^--method fastfit needs the fast-fit package: pip "
                       r"install 'raymeta\[fastfit\]'$"):
        check_methods([CLS], ["prototype", "fastfit"])


def test_fastfit_missing_inside_a_run_is_the_same_one_line_error(monkeypatch):
    for name in [m for m in sys.modules if m == "fastfit" or m.startswith("fastfit.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastfit", None)  # `import fastfit...` raises ImportError
    with pytest.raises(RaymetaError, match=r"pip install 'raymeta\[fastfit\]'"):
        _fastfit_trainer_class()
    import datasets

    assert not hasattr(datasets, "load_metric")  # what was lent for the import is taken back
