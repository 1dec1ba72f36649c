"""Every ready-made task loads, validates, tokenises and yields an episode.

Tasks on ../shared/data skip (with the reason) only when that folder is absent; the
built-in starter tasks never skip."""

from __future__ import annotations

import pytest

from raymeta.config import EpisodeConfig
from raymeta.tasks import catalog_names, load_task, task_config

STARTER = ["bbc_news", "chatterbot_language", "chatterbot_response", "chatterbot_topics",
           "chatterbot_topics_val",
           "smlmt_starter"]
SHARED = [n for n in catalog_names() if n not in STARTER]
CFG = EpisodeConfig(ways=5, shots=2, queries=2, support_size=3, query_size=3)


def check(task):
    assert len(task.features["train"]) > 0 and "test" in task.features
    ep = task.episode(CFG, seed=0, step=0)
    assert ep.support["input_ids"].shape[0] > 0
    if task.config.type == "sequence_classification":
        assert len(ep.classes) == min(5, len(task.labels))


@pytest.mark.parametrize("name", STARTER)
def test_starter_task(name, tokenizer, feature_cache):
    task = load_task(task_config(name), tokenizer, "unused", feature_cache)
    check(task)


def test_starter_suite_covers_two_types():
    assert {task_config(n).type for n in STARTER} == {"sequence_classification", "multiple_choice"}


@pytest.mark.parametrize("name", SHARED)
def test_shared_data_task(name, shared_data, tokenizer, feature_cache):
    task = load_task(task_config(name), tokenizer, str(shared_data), feature_cache)
    check(task)


def test_catalog_covers_all_four_types():
    assert {task_config(n).type for n in catalog_names()} == {
        "sequence_classification", "token_classification", "extractive_qa", "multiple_choice"
    }


def test_meta_splits_are_class_disjoint():
    for group in (["huffpost_meta_train", "huffpost_meta_val", "huffpost_meta_test"],
                  ["fewrel_meta_train", "fewrel_meta_test"],
                  ["chatterbot_topics", "chatterbot_topics_val"]):
        sets = [set(task_config(n).include_labels) for n in group]
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                assert not sets[i] & sets[j], (group[i], group[j])
