"""CLINC150 split by domain (``clinc150_domains_train`` / ``clinc150_domains_test``): the intent
lists written into the catalog YAMLs are the documented seeded rule applied to CLINC's own
domains.json, class-disjoint, covering all 150."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raymeta.tasks import task_config


def _rule(domains: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The rule the YAMLs document: numpy default_rng(0).permutation of the sorted domain names, the
    last 3 test."""
    names = sorted(domains)
    order = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    return sorted(order[:-3]), sorted(order[-3:])


def test_the_two_tasks_are_class_disjoint_and_split_by_whole_domains_without_data():
    train, test = task_config("clinc150_domains_train"), task_config("clinc150_domains_test")
    assert len(train.include_labels) == len(set(train.include_labels)) == 105
    assert len(test.include_labels) == len(set(test.include_labels)) == 45
    assert not set(train.include_labels) & set(test.include_labels)
    # quoted in the YAML: not booleans
    assert "yes" in train.include_labels and "no" in train.include_labels
    # CLINC's own train/validation/test splits
    assert train.source == test.source and test.source.format == "clinc"


def test_the_intent_lists_are_the_seeded_domain_rule(shared_data):
    domains = json.loads((shared_data / "clinc150" / "domains.json").read_text())
    assert len(domains) == 10 and all(len(v) == 15 for v in domains.values())
    train_domains, test_domains = _rule(domains)
    # as the YAMLs' descriptions say
    assert test_domains == ["auto_and_commute", "banking", "utility"]
    train, test = task_config("clinc150_domains_train"), task_config("clinc150_domains_test")
    for spec, chosen in ((train, train_domains), (test, test_domains)):
        assert sorted(spec.include_labels) == sorted(i for d in chosen
                                                     for i in domains[d]), spec.name
        assert all(d in spec.description for d in chosen), spec.name
    everything = {i for v in domains.values() for i in v}
    assert (set(train.include_labels) | set(test.include_labels) == everything
            and len(everything) == 150)


def test_the_test_task_scores_clincs_own_test_split(shared_data, tmp_path):
    from raymeta.tasks import load_raw

    spec = task_config("clinc150_domains_test")
    raw = load_raw(spec, str(shared_data), str(tmp_path))
    keep = set(spec.include_labels)
    counts = {split: sum(1 for x in ds["label"] if x in keep) for split, ds in raw.items()}
    assert counts == {"train": 45 * 100, "validation": 45 * 20, "test": 45 * 30}


@pytest.mark.parametrize("name", ["clinc150_domains_train", "clinc150_domains_test"])
def test_listed_by_the_catalog(name):
    from raymeta.tasks import catalog_names

    assert name in catalog_names()
