"""``raymeta benchmark``'s run plan, without Ray: variants x algorithms, their overrides, one-line
errors, and which baselines each init is paired with."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymeta.benchmark import _baselines, run_configs
from raymeta.config import load_config
from raymeta.errors import ConfigError

TINY = "configs/tiny_benchmark.yaml"


def test_without_variants_one_run_per_algorithm(tmp_path):
    cfg = load_config(TINY, ["benchmark.algorithms=[multitask,protonet]"])
    runs = run_configs(cfg, tmp_path)
    assert list(runs) == ["multitask", "protonet"]
    assert runs["protonet"].meta.algorithm == "protonet"
    assert Path(runs["protonet"].output_dir) == tmp_path / "runs" / "protonet"


def test_variants_apply_their_overrides_and_resolve_task_entries(tmp_path):
    cfg = load_config(TINY, ["benchmark.algorithms=[protonet,fomaml]"])
    cfg.benchmark.variants = {"supervised": {}, "hybrid": {"tasks": [{"use": "bbc_news",
                                                                      "max_length": 32},
                                                                     {"use": "smlmt_starter"}],
                                                           "meta.proto.temperature": 3.0}}
    runs = run_configs(cfg, tmp_path)
    assert list(runs) == ["supervised/protonet", "supervised/fomaml", "hybrid/protonet",
                          "hybrid/fomaml"]
    assert [t.name for t in runs["supervised/fomaml"].tasks] == ["bbc_news", "chatterbot_response"]
    hybrid = runs["hybrid/fomaml"]
    assert ([t.name for t in hybrid.tasks] == ["bbc_news", "smlmt_starter"]
            and hybrid.tasks[1].source.kind == "smlmt")
    assert (hybrid.meta.proto.temperature == 3.0
            and runs["supervised/fomaml"].meta.proto.temperature == 10.0)
    assert Path(hybrid.output_dir) == tmp_path / "runs" / "hybrid" / "fomaml"
    assert cfg.meta.proto.temperature == 10.0  # the benchmark's own config is untouched


def test_a_bad_variant_is_one_line_naming_it(tmp_path):
    cfg = load_config(TINY)
    cfg.benchmark.variants = {"ok": {}, "typo": {"meta.stepz": 3}}
    with pytest.raises(ConfigError,
                       match=r"^config key 'benchmark.variants.typo': config key 'meta.stepz': "
                       r"unknown key$"):
        run_configs(cfg, tmp_path)
    assert not (tmp_path / "runs").exists()
    # a variant whose validation task is one of its meta-training tasks fails before anything runs
    cfg.benchmark.variants = {"leaky": {"eval.validation": {"tasks": [{"use": "bbc_news"}]}}}
    with pytest.raises(ConfigError,
                       match="task 'bbc_news' overlaps the meta-training task 'bbc_news'"):
        run_configs(cfg, tmp_path)
    with pytest.raises(ConfigError, match="variant name"):
        load_config(TINY, ["benchmark.variants={'a/b': {}}"])


def test_baselines_pair_each_variant_with_the_first(tmp_path):
    cfg = load_config(TINY, ["benchmark.algorithms=[multitask,protonet]"])
    cfg.benchmark.variants = {"sup": {}, "hyb": {}, "ssl": {}}
    results = {k: {} for k in ["pretrained", "sup/multitask", "sup/protonet", "hyb/multitask",
                               "hyb/protonet",
                               "ssl/protonet"]}
    assert _baselines(cfg, results) == {
        "pretrained": [k for k in results if k != "pretrained"],
        "sup/multitask": ["hyb/multitask"],
        "sup/protonet": ["hyb/protonet", "ssl/protonet"]}
    cfg.benchmark.variants = {}
    assert set(_baselines(cfg, {"pretrained": {}, "multitask": {},
                                "protonet": {}})) == {"pretrained", "multitask"}


def test_a_variant_that_sets_the_algorithm_is_one_run_and_compare_to_pairs_with_it(tmp_path):
    cfg = load_config(TINY, ["benchmark.algorithms=[multitask,protonet]",
                             "benchmark.compare_to=[base/protonet]"])
    cfg.benchmark.variants = {"base": {}, "svm": {"meta.algorithm": "metaopt",
                                                  "meta.metaopt.head": "svm",
                                                  "meta.metaopt.iterations": 20}}
    runs = run_configs(cfg, tmp_path)
    assert list(runs) == ["base/multitask", "base/protonet", "svm"]
    assert runs["svm"].meta.algorithm == "metaopt" and runs["svm"].meta.metaopt.head == "svm"
    assert Path(runs["svm"].output_dir) == tmp_path / "runs" / "svm"
    results = {k: {} for k in ["pretrained", *runs]}
    assert _baselines(cfg, results)["base/protonet"] == ["pretrained", "base/multitask", "svm"]


def test_the_label_name_track_merges_beside_the_no_name_scores_and_pairs_with_itself():
    from raymeta.benchmark import _merge, gains

    def one(proto, names):
        kshot = {"tasks": {"t": {"shots": {"8": {"values": [0.5, 0.6]}},
                                 "methods": {"prototype": {"8": {"values": proto}}}}},
                 "splits": {"t": {"8": [[1], [2]]}}}
        episodic = {"tasks": {"h": {"episodic": {
            "5-way 1-shot": {"prototype": {"values": proto}}}}}}
        k_names = {"tasks": {"t": {"methods": {"prototype+names": {"0": {"values": names},
                                                                   "8": {"values": names}}}}},
                   "splits": {"t": {"0": [[], []], "8": [[1], [2]]}}}
        e_names = {"tasks": {"h": {"episodic": {
            "5-way 0-shot": {"prototype+names": {"values": names}},
            "5-way 1-shot": {"prototype+names": {"values": names}}}}}}
        return _merge(kshot, episodic, k_names, e_names)

    plain, init = one([0.4, 0.5], [0.6, 0.7]), one([0.5, 0.5], [0.8, 0.7])
    t = plain["tasks"]["t"]
    assert set(t["methods"]) == {"prototype",
                                 "prototype+names"} and t["shots"]["8"]["values"] == [0.5, 0.6]
    assert set(plain["tasks"]["h"]["episodic"]["5-way 1-shot"]) == {"prototype", "prototype+names"}
    assert plain["splits"]["t"] == {"0": [[], []], "8": [[1], [2]]}
    g = gains({"pretrained": plain, "init": init}, "pretrained")["init"]
    assert g["h"]["5-way 1-shot prototype+names"]["mean"] == pytest.approx(0.1)
    assert g["h"]["5-way 0-shot prototype+names"]["mean"] == pytest.approx(0.1)
    assert g["h"]["5-way 1-shot prototype"]["mean"] == pytest.approx(0.05)
