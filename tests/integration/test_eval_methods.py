"""`evaluate(method=...)`: the embedding classifiers (prototype, ridge, svm) and SetFit on a tiny
init, as Ray tasks, on the fine-tuning method's K-shot splits and test rows (tiny settings: 2
splits, K=2, a handful of pairs, 1 epoch)."""

from __future__ import annotations

import json

from raymeta.config import ModelConfig
from raymeta.core.model import load_tokenizer
from raymeta.eval.evaluate import evaluate, kshot_splits, resolve_eval_task
from raymeta.eval.report import results_table
from raymeta.eval.setfit import SetfitSettings
from raymeta.tasks import load_task

from .test_evaluate import QUICK, jsonl_dir, tiny_init  # noqa: F401  (tiny_init: the fixture)

TINY_SETFIT = SetfitSettings(iterations=2, epochs=1, batch_size=8)


def test_prototype_and_setfit_on_the_finetune_splits(ray_local, tiny_init, tmp_path):  # noqa: F811
    spec = resolve_eval_task(str(jsonl_dir(tmp_path / "colors")))
    run = dict(shots=(2,), settings=QUICK, seed=0, data_dir=".", cache_dir=None, progress=False,
               setfit=TINY_SETFIT)
    out = evaluate(tiny_init, [spec], n_splits=2, output=tmp_path / "r.json", method=["prototype",
                                                                                      "ridge",
                                                                                      "svm",
                                                                                      "setfit"],
                   **run)
    assert json.loads((tmp_path / "r.json").read_text())["tasks"] == out["tasks"]
    task = load_task(spec, load_tokenizer(ModelConfig(name_or_path=tiny_init)), ".", None)
    # what finetune trains on, split by split
    assert out["splits"]["colors"]["2"] == kshot_splits(task, 2, 2, 0)
    entry = out["tasks"]["colors"]
    # no finetune
    assert "shots" not in entry and set(entry["methods"]) == {"prototype", "ridge", "svm", "setfit"}
    for res in entry["methods"].values():
        r = res["2"]
        assert set(r["all"]) == {"accuracy",
                                 "macro_f1"} and r["metric"] == "accuracy" and r["n"] == 2
        assert all(0 <= v <= 1 for vs in r["all"].values()
                   for v in vs) and r["values"] == r["all"]["accuracy"]
    assert out["methods"] == ["prototype", "ridge", "svm",
                              "setfit"] and out["setfit_settings"]["iterations"] == 2
    table = results_table({"tiny": out})
    assert all(f"K=2 {m}" in table for m in out["methods"])
    # seeded: split 0 again (alone) gives the same SetFit scores
    again = evaluate(tiny_init, [spec], n_splits=1, output=None, method="setfit", **run)
    assert again["tasks"]["colors"]["methods"]["setfit"]["2"]["all"]["accuracy"][0] == \
        entry["methods"]["setfit"]["2"]["all"]["accuracy"][0]


def test_setfit_with_label_name_templates_is_the_names_track(ray_local, tiny_init,  # noqa: F811
                                                              tmp_path):
    spec = resolve_eval_task(str(jsonl_dir(tmp_path / "colors")))
    run = dict(shots=(2,), settings=QUICK, seed=0, data_dir=".", cache_dir=None, progress=False,
               setfit=TINY_SETFIT, n_splits=1, output=None, method="setfit")
    plain = evaluate(tiny_init, [spec], **run)
    named = evaluate(tiny_init, [spec], setfit_template="This is about {name}.", **run)
    assert set(named["tasks"]["colors"]["methods"]) == {"setfit+names"}
    assert named["setfit_settings"]["label_template"] == "This is about {name}."
    assert plain["setfit_settings"]["label_template"] is None
    r = named["tasks"]["colors"]["methods"]["setfit+names"]["2"]
    assert r["n"] == 1 and 0 <= r["mean"] <= 1
