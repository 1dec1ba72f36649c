"""Many tasks from one labelled dataset (``tasks[].label_groups``, raymeta.tasks.label_groups):
seeded, disjoint groups covering every class, the parent's weight shared, resolved once into a
config that reloads as itself, and one line for a group too small for its episodes. No Ray."""

from __future__ import annotations

import json
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


def test_named_groups_from_a_mapping_or_a_json_file(tmp_path):
    """CLINC150's domains.json shape: group -> labels. Each group a task <name>_<group> over the
    task's classes in it (in the task's order); the weight shared; a group whose classes the task
    does not have is no task; classes in no group are left out."""
    mapping = {"banking": ["c03", "c00", "c01"], "travel": ["c04", "c05", "c06", "c07"],
               "gone": ["zz1", "zz2"]}
    (tmp_path / "domains.json").write_text(json.dumps(mapping))
    for groups in (mapping, str(tmp_path / "domains.json")):
        resolved = resolve(config(tmp_path, groups=groups)).cfg
        assert [t.name for t in resolved.tasks] == ["intents_banking", "intents_travel", "other"]
        assert resolved.task("intents_banking").include_labels == ["c00", "c01", "c03"]
        assert resolved.task("intents_travel").include_labels == ["c04", "c05", "c06", "c07"]
        assert [resolved.task(n).weight for n in ("intents_banking", "intents_travel")] == [1.0,
                                                                                           1.0]
        assert load_config(save_config(resolved, tmp_path / "saved")) == resolved


@pytest.mark.parametrize("groups, expect", [
    ({"a": ["c00", "c01", "c02"], "b": ["c02", "c03", "c04"]},
     "label 'c02' is in groups 'a' and 'b'"),
    ({"a": ["c00", "c01"], "b": ["c02", "c03", "c04"]},
     "group 'a' of task 'intents' has 2 classes, fewer than its episodes' 3 ways"),
    ({"a b": ["c00", "c01", "c02"]}, "group name 'a b' cannot be part of a task name"),
    ({"a": ["x", "y", "z"]}, "no group holds any of task 'intents''s classes"),
    ({"a": "c00"}, "expected an object group -> [labels]"),
])
def test_bad_named_groups_are_one_line(tmp_path, groups, expect):
    with pytest.raises(ConfigError) as e:
        resolve(config(tmp_path, groups=groups))
    assert str(e.value).startswith("config key 'tasks.intents.label_groups'")
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_a_missing_or_broken_groups_file_is_one_line(tmp_path):
    with pytest.raises(RaymetaError, match="file not found") as e:
        resolve(config(tmp_path, groups=str(tmp_path / "nope.json")))
    assert "nope.json" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad.json\): not a readable JSON file"):
        resolve(config(tmp_path, groups=str(tmp_path / "bad.json")))


def domains_csv(tmp_path: Path) -> Path:
    """Rows of three domains: 'bank' and 'travel' with 4 classes each, 'tiny' with 2."""
    p = tmp_path / "domains.csv"
    rows = [(d, f"{d}{c}") for d, n in (("bank", 4), ("travel", 4), ("tiny", 2)) for c in range(n)]
    p.write_text("text,label,domain\n" + "".join(f"row {i} of {lab},{lab},{d}\n"
                                                 for i in range(6) for d, lab in rows))
    return p


def split_config(tmp_path: Path, **extra):
    task = {"name": "intents", "type": "sequence_classification", "max_length": 16, "weight": 3.0,
            "source": {"kind": "files", "format": "csv",
                       "files": {"train": str(domains_csv(tmp_path))}, "test_fraction": 0.25},
            "split_by": "domain", **extra}
    return load_config(data={"output_dir": str(tmp_path / "run"), "seed": 5, "tasks": [task],
                             "cache_dir": str(tmp_path / "cache"),
                             "meta": {"episode": {"ways": 3, "shots": 2, "queries": 2}}})


def test_split_by_a_column_makes_a_task_of_each_value_over_its_rows(tmp_path, caplog):
    """``split_by: domain``: ``intents_bank`` and ``intents_travel``, each over its own rows and
    classes, the weight shared; 'tiny' (2 classes, 3 ways) left out with a log line; the saved
    config reloads as the same run, and the parts load with only their rows."""
    from raymeta.tasks.sources import load_raw

    with caplog.at_level("INFO", logger="raymeta"):
        resolved = resolve(split_config(tmp_path)).cfg
    assert [t.name for t in resolved.tasks] == ["intents_bank", "intents_travel"]
    assert resolved.task("intents_bank").where == {"domain": "bank"}
    assert [t.weight for t in resolved.tasks] == [1.5, 1.5]
    assert any("leaves out 1 value(s) with fewer than 3 classes (tiny)" in r.getMessage()
               for r in caplog.records)
    assert load_config(save_config(resolved, tmp_path / "saved")) == resolved
    raw = load_raw(resolved.task("intents_travel"), ".", None)
    assert sorted(set(raw["train"]["label"]) | set(raw["test"]["label"])) == [
        "travel0", "travel1", "travel2", "travel3"]
    assert len(raw["train"]) + len(raw["test"]) == 24


@pytest.mark.parametrize("extra, expect", [
    ({"split_by": "region"}, "domains.csv: split 'train' has no column 'region' (split_by); "
                             "it has: text, label, domain"),
    ({"split_by": None, "where": {"domain": "moon"}}, "task 'intents': split 'train' has no row "
                                                       "where {'domain': 'moon'}"),
    ({"episode": {"ways": 5, "shots": 2, "queries": 2}},
     "config key 'tasks.intents.split_by': no value of column 'domain' of task 'intents' has 5 "
     "classes"),
])
def test_bad_splits_are_one_line(tmp_path, extra, expect):
    with pytest.raises(RaymetaError) as e:
        from raymeta.tasks.sources import load_raw

        cfg = split_config(tmp_path, **extra)
        resolve(cfg)
        load_raw(cfg.tasks[0], ".", None)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_smlmt_split_by_corpus_is_one_smlmt_task_per_source(tmp_path):
    """SMLMT as many tasks: ``split_by: corpus`` over two sources, one SMLMT task each, reading
    that source alone; the saved config reloads as the same run."""
    task = {"use": "smlmt_starter", "weight": 2.0, "split_by": "corpus",
            "source": {"kind": "smlmt", "from": ["bbc_news", "chatterbot_language"],
                       "vocab_size": 300, "min_count": 20, "max_sentences_per_word": 30,
                       "sentence_words": [4, 32], "test_fraction": 0.1}}
    cfg = load_config(data={"output_dir": str(tmp_path / "run"), "tasks": [task]})
    resolved = resolve(cfg).cfg
    assert [t.name for t in resolved.tasks] == ["smlmt_starter_bbc_news",
                                                "smlmt_starter_chatterbot_language"]
    assert [t.source.corpus for t in resolved.tasks] == [["bbc_news"], ["chatterbot_language"]]
    assert [t.weight for t in resolved.tasks] == [1.0, 1.0]
    assert load_config(save_config(resolved, tmp_path / "saved")) == resolved
    with pytest.raises(ConfigError, match="reads one source; split_by: corpus needs two or more"):
        resolve(load_config(data={"tasks": [{"use": "smlmt_starter", "split_by": "corpus"}]}))
    with pytest.raises(ConfigError, match="an SMLMT task splits by its sources"):
        load_config(data={"tasks": [{"use": "smlmt_starter", "split_by": "domain"}]})


def test_a_part_whose_name_is_taken_is_one_line(tmp_path):
    """Two values with one slug ('a b' and 'a_b'), or a group named as a configured task: one line
    naming the key and the task, not two tasks of one name."""
    p = tmp_path / "rows.csv"
    p.write_text("text,label,domain\n" + "".join(f"row {i} {c},{c},{d}\n" for i in range(4)
                                                for c in ("x", "y", "z") for d in ("a b", "a_b")))
    with pytest.raises(ConfigError, match=r"^config key 'tasks.intents.split_by': it makes task "
                       r"'intents_a_b', a name another task or part has already$"):
        resolve(split_config(tmp_path, source={"kind": "files", "format": "csv",
                                               "files": {"train": str(p)}, "test_fraction": 0.25}))
    cfg = config(tmp_path, groups={"g": ["c00", "c01", "c02"]})
    taken = cfg.model_copy(update={"tasks": [cfg.tasks[0], cfg.tasks[1].model_copy(
        update={"name": "intents_g"})]})
    with pytest.raises(ConfigError, match="'tasks.intents.label_groups': it makes task "
                                          "'intents_g'"):
        resolve(taken)
