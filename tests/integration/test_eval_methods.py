"""`evaluate(method=...)`: the embedding classifiers (prototype, ridge, svm) and SetFit on a tiny
init, as Ray tasks, on the fine-tuning method's K-shot splits and test rows (tiny settings: 2
splits, K=2, a handful of pairs, 1 epoch)."""

from __future__ import annotations

import json

from raymeta.config import ModelConfig
from raymeta.core.model import load_tokenizer
from raymeta.eval.evaluate import evaluate, kshot_splits, resolve_eval_task
from raymeta.eval.fastfit import FastfitSettings
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


TINY_FASTFIT = FastfitSettings(epochs=2, batch_size=8, num_repeats=1, max_text_length=32)


def test_fastfit_on_the_same_splits_seeded(ray_local, tiny_init, tmp_path):  # noqa: F811
    spec = resolve_eval_task(str(jsonl_dir(tmp_path / "colors")))
    run = dict(shots=(2,), settings=QUICK, seed=0, data_dir=".", cache_dir=None, progress=False,
               fastfit=TINY_FASTFIT, output=None)
    out = evaluate(tiny_init, [spec], n_splits=2, method=["prototype", "fastfit"], **run)
    task = load_task(spec, load_tokenizer(ModelConfig(name_or_path=tiny_init)), ".", None)
    assert out["splits"]["colors"]["2"] == kshot_splits(task, 2, 2, 0)
    r = out["tasks"]["colors"]["methods"]["fastfit"]["2"]
    assert set(r["all"]) == {"accuracy", "macro_f1"} and r["n"] == 2
    assert all(0 <= v <= 1 for v in r["values"])
    assert out["fastfit_settings"]["epochs"] == 2 and "K=2 fastfit" in results_table({"t": out})
    again = evaluate(tiny_init, [spec], n_splits=1, method="fastfit", **run)
    assert again["tasks"]["colors"]["methods"]["fastfit"]["2"]["all"] == {
        k: v[:1] for k, v in r["all"].items()}


def test_fastfit_learns_and_maps_its_label_order_back_to_class_ids(tmp_path):
    """FastFit orders its label documents by name (sorted strings); here that order is not the
    class-id order, so a wrong mapping back would score far below a trained model's."""
    import datasets

    from raymeta.core.model import OFFLINE_MINILM, resolve_model_path
    from raymeta.eval.fastfit import train_fastfit
    from raymeta.storage import local_model_path

    names = ["sports", "cooking", "astronomy"]  # sorted: astronomy, cooking, sports
    train = {0: ["the team won the football match", "a goal in the final minute",
                 "the tennis player served an ace"],
             1: ["bake the bread for an hour", "stir the soup and add salt",
                 "a recipe for chocolate cake"],
             2: ["the telescope saw a distant galaxy", "a comet passed near the planet",
                 "stars and nebulae in the night sky"]}
    texts = [t for c in train for t in train[c]]
    ids = [c for c in train for _ in train[c]]
    clf = train_fastfit(resolve_model_path(OFFLINE_MINILM, local_model_path), texts, ids, names,
                        settings=FastfitSettings(epochs=3, batch_size=9, num_repeats=1,
                                                 max_text_length=32), seed=0, tmp=str(tmp_path))
    assert clf.class_ids == [2, 1, 0]
    test = ["the striker scored twice", "fry the onions in butter", "the moon orbits the earth",
            "the referee blew the whistle", "boil the pasta", "a new planet around a star"]
    assert clf.predict(test) == [0, 1, 2, 0, 1, 2]
    assert not hasattr(datasets, "load_metric")  # lent only while fastfit was imported
