"""Many tasks from one labelled dataset (``tasks[].label_groups``, raymeta.tasks.label_groups):
seeded, disjoint groups covering every class, the parent's weight shared, resolved once into a
config that reloads as itself, and one line for a group too small for its episodes. No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymeta.config import load_config, save_config
from raymeta.config.resolve import actor_keys, resolve
from raymeta.errors import ConfigError, RaymetaError
from raymeta.tasks.label_groups import label_groups, resolve_label_groups


def csv(tmp_path: Path, classes: int = 12, per_class: int = 6) -> Path:
    p = tmp_path / "intents.csv"
    p.write_text("text,label\n" + "".join(f"row {i} of c{c:02d},c{c:02d}\n"
                                          for i in range(per_class) for c in range(classes)))
    return p


def config(tmp_path: Path, groups: int | None = 3, ways: int = 3, **extra):
    task = {"name": "intents", "type": "sequence_classification", "max_length": 16, "weight": 2.0,
            "source": {"kind": "files", "format": "csv", "files": {"train": str(csv(tmp_path))}},
            "label_groups": groups, **extra}
    other = {"name": "other", "type": "sequence_classification", "max_length": 16,
             "source": {"kind": "files", "format": "csv", "files": {"train": str(csv(tmp_path))}}}
    return load_config(data={"output_dir": str(tmp_path / "run"), "seed": 5,
                             "cache_dir": str(tmp_path / "cache"), "tasks": [task, other],
                             "meta": {"episode": {"ways": ways, "shots": 2, "queries": 2}}})


def test_groups_are_disjoint_cover_every_class_and_depend_on_seed_and_task():
    labels = [f"c{i:02d}" for i in range(77)]
    groups = label_groups("banking77", labels, 11, seed=0)
    assert sorted(c for g in groups for c in g) == labels
    assert {len(g) for g in groups} == {7}
    assert all(g == sorted(g) for g in groups)  # the labels' own order within a group
    assert label_groups("banking77", labels, 11, seed=0) == groups
    assert label_groups("banking77", labels, 11, seed=1) != groups
    assert label_groups("huffpost", labels, 11, seed=0) != groups
    assert {len(g) for g in label_groups("t", labels[:10], 3, seed=0)} == {3, 4}


def test_a_grouped_task_becomes_its_groups_with_the_weight_shared(tmp_path):
    cfg = config(tmp_path)
    resolved = resolve(cfg).cfg
    names = [t.name for t in resolved.tasks]
    assert names == ["intents_g0", "intents_g1", "intents_g2", "other"]
    groups = [resolved.task(n).include_labels for n in names[:3]]
    assert sorted(c for g in groups for c in g) == [f"c{i:02d}" for i in range(12)]
    assert [resolved.task(n).weight for n in names[:3]] == [2.0 / 3] * 3
    assert all(resolved.task(n).label_groups is None for n in names)
    assert list(actor_keys(resolved)) == names
    # resolving again changes nothing; the saved config reloads as the same run
    assert resolve_label_groups(resolved) is resolved
    assert load_config(save_config(resolved, tmp_path / "saved")) == resolved
    assert resolve_label_groups(config(tmp_path, groups=None)).tasks[0].name == "intents"


def test_a_group_smaller_than_the_episodes_ways_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'tasks.intents.label_groups': task "
                                          r"'intents' has 12 classes; 5 groups leave 2 in the "
                                          r"smallest, fewer than its episodes' 3 ways"):
        resolve(config(tmp_path, groups=5))


def test_label_groups_is_for_labelled_classification_only(tmp_path):
    with pytest.raises(RaymetaError, match="label_groups"):
        config(tmp_path, groups=1)
    with pytest.raises(RaymetaError, match="label_groups splits a sequence_classification"):
        config(tmp_path, type="token_classification")


def test_grouped_tasks_count_for_resources_workers(tmp_path):
    with pytest.raises(ConfigError, match="2 workers for 4 task actors need meta.reduce=driver"):
        resolve(config(tmp_path).model_copy(update={
            "resources": config(tmp_path).resources.model_copy(update={"workers": 2}),
            "meta": config(tmp_path).meta.model_copy(update={"reduce": "collective"})}))
