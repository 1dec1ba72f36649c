"""``eval.validation.holdout_classes`` without Ray: the seeded split of a task's classes
(deterministic, sized, both sides), the resolved config (restricted meta-training tasks, held-out
validation tasks), bad input as one line, and, over many seeded episodes of real loaded tasks, no
held-out class in a meta-training episode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raymeta.config import load_config, save_config
from raymeta.errors import ConfigError
from raymeta.tasks.holdout import (
    HOLDOUT_JSON,
    check_same_holdout,
    resolve_holdout,
    split_classes,
    task_labels,
)
from raymeta.train.validation_tasks import validation_specs

REPO = Path(__file__).resolve().parents[2]
LABELS = [f"c{i}" for i in range(10)]


# -- the split
# -------------------------------------------------------------------------------------------------


def test_split_is_seeded_by_the_run_seed_and_the_task_name():
    kept, held = split_classes("mine", LABELS, 0.2, seed=0)
    # the order given is irrelevant
    assert (kept, held) == split_classes("mine", list(reversed(LABELS)), 0.2, seed=0)
    # and so are repeats
    assert (kept, held) == split_classes("mine", LABELS + LABELS[:3], 0.2, seed=0)
    assert sorted(kept + held) == sorted(LABELS) and not set(kept) & set(held)
    draws = {tuple(split_classes(name, LABELS, 0.2, seed)[1]) for name in ("mine", "other",
                                                                           "third")
             for seed in range(4)}
    assert len(draws) > 6  # the task name and the seed both choose


def test_split_is_the_same_in_another_process():
    """crc32 of the task name, not hash(): a process with another hash salt draws the same
    classes."""
    code = ("from raymeta.tasks.holdout import split_classes; "
            f"print(split_classes('mine', {LABELS!r}, 0.3, 7)[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert out == str(split_classes("mine", LABELS, 0.3, 7)[1])


@pytest.mark.parametrize("n, fraction, held", [(10, 0.2, 2), (10, 0.25, 3), (10, 0.01, 1),
                                               (5, 0.5, 3), (150, 0.2, 30),
                                               (3, 0.99, 3)])
def test_split_holds_a_rounded_fraction_and_at_least_one(n, fraction, held):
    kept, h = split_classes("t", [str(i) for i in range(n)], fraction, 0)
    assert len(h) == held and len(kept) == n - held
    assert kept == sorted(kept, key=int) and h == sorted(h, key=int)  # natural order on both sides


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_refuses_a_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="in .0, 1."):
        split_classes("t", LABELS, fraction, 0)


# -- the config
# -------------------------------------------------------------------------------------------------


def csv(tmp_path: Path, classes: int = 10, per_class: int = 12, name: str = "a.csv") -> Path:
    p = tmp_path / name
    p.write_text("text,label\n" + "".join(f"row {i} of c{c},c{c}\n" for i in range(per_class)
                                          for c in range(classes)))
    return p


def task(path: Path, name: str = "mine", **kw) -> dict:
    return {"name": name, "type": "sequence_classification", "max_length": 16,
            "source": {"kind": "files", "format": "csv", "files": {"train": str(path)}}, **kw}


def config(tmp_path: Path, tasks: list[dict] | None = None, validation: dict | None = None, **top):
    return load_config(data={
        "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "seed": 5,
        "tasks": tasks if tasks is not None else [task(csv(tmp_path))],
        "meta": {"episode": {"ways": 3, "shots": 2, "queries": 2}},
        "eval": {"validation": {"holdout_classes": 0.3, "ways": 2, "shots": 2, "queries": 3,
                                "episodes": 20,
                                **(validation or {})}}, **top})


def test_resolved_config_trains_on_kept_classes_and_validates_on_held_ones(tmp_path):
    ner = {"name": "ner", "type": "token_classification",
           "source": {"kind": "files", "format": "conll",
                      "files": {"train": str(tmp_path / "x.conll")}}}
    zero = task(csv(tmp_path, name="z.csv"), name="unused", weight=0.0)
    cfg = config(tmp_path, [task(csv(tmp_path)), ner, zero])
    resolved, record = resolve_holdout(cfg)
    kept, held = split_classes("mine", LABELS, 0.3, 5)
    assert resolved.task("mine").include_labels == kept and len(held) == 3
    assert resolved.task("ner") == cfg.task("ner") and resolved.task("unused") == cfg.task("unused")
    v = resolved.eval.validation
    assert v.holdout_classes is None and [t["name"] for t in v.tasks] == ["mine_holdout"]
    assert (v.tasks[0]["include_labels"] == held
            and v.tasks[0]["source"] == cfg.task("mine").source.model_dump(mode="json"))
    assert record == {"holdout_classes": 0.3, "seed": 5, "unchanged": {
        "ner": "token_classification: no classes to hold back", "unused": "weight 0: not "
                                                                       "meta-trained"},
        "tasks": {"mine": {"validation_task": "mine_holdout", "classes": 10, "kept": kept,
                           "held": held}}}
    # the resolved config is a run of its own: resolving it again changes nothing, and it saves and
    # reloads as itself
    assert resolve_holdout(resolved) == (resolved, None)
    assert load_config(save_config(resolved, tmp_path / "saved")) == resolved
    # the validation layer sees the held-out task from the unresolved config too (raymeta train's
    # check before Ray)
    specs = validation_specs(cfg)
    assert [(s.name, s.include_labels) for s in specs] == [("mine_holdout", held)]


def test_a_task_with_its_own_class_split_holds_back_within_it(tmp_path):
    """include_labels (huffpost_meta_train's kind) are the task's classes; a labels list is filtered
    alike."""
    cfg = config(tmp_path, [task(csv(tmp_path), include_labels=LABELS[:8],
                                 labels=list(reversed(LABELS)))])
    resolved, record = resolve_holdout(cfg)
    kept, held = record["tasks"]["mine"]["kept"], record["tasks"]["mine"]["held"]
    assert sorted(kept + held) == sorted(LABELS[:8]) and len(held) == 2
    assert resolved.task("mine").labels == [c for c in reversed(LABELS) if c in kept]
    assert resolved.eval.validation.tasks[0]["labels"] == [c for c in reversed(LABELS) if c in held]


def test_labels_come_from_the_train_split_when_not_listed(tmp_path):
    cfg = config(tmp_path)
    assert task_labels(cfg.task("mine"), cfg.data_dir, cfg.cache_dir) == LABELS


def test_tasks_and_holdout_classes_exclude_each_other(tmp_path):
    with pytest.raises(ConfigError, match="config key 'eval.validation': eval.validation.tasks and "
                                          "eval.validation.holdout_classes exclude each other"):
        config(tmp_path, validation={"tasks": [task(csv(tmp_path, name="v.csv"), name="v")]})
    with pytest.raises(ConfigError, match="give validation tasks .eval.validation.tasks., or "
                                          "eval.validation.holdout_classes"):
        config(tmp_path, validation={"holdout_classes": None})


@pytest.mark.parametrize("fraction", [0, 1, 1.2, -0.5])
def test_fraction_outside_zero_one_is_one_line(tmp_path, fraction):
    with pytest.raises(ConfigError, match="config key 'eval.validation.holdout_classes'"):
        config(tmp_path, validation={"holdout_classes": fraction})


def test_too_few_classes_on_either_side_is_one_line(tmp_path):
    # 10 classes, meta-training ways 3: holding back 0.8 keeps 2
    with pytest.raises(ConfigError,
                       match=r"config key 'eval.validation.holdout_classes': task 'mine' has 10 "
                       r"classes, "
                                          r"and holding back 0.8 of them leaves 2 to meta-train "
                       r"on, fewer than its 3 "
                                          r"ways \(meta.episode.ways\)"):
        resolve_holdout(config(tmp_path, validation={"holdout_classes": 0.8}))
    with pytest.raises(ConfigError,
                       match=r"leaves 4 to meta-train on, fewer than its 5 ways "
                       r"\(tasks.mine.episode.ways\)"):
        resolve_holdout(config(tmp_path, [task(csv(tmp_path), episode={"ways": 5})],
                               {"holdout_classes": 0.6}))
    # 0.1 of 10 holds back 1; validation's 2-way episodes need 2 (a setting at 4 ways: 4)
    with pytest.raises(ConfigError,
                       match=r"holds back 1, fewer than the 2 ways validation scores "
                       r"\(eval.validation.ways\)"):
        resolve_holdout(config(tmp_path, validation={"holdout_classes": 0.1}))
    with pytest.raises(ConfigError, match=r"holds back 3, fewer than the 4 ways validation scores "
                                          r"\(eval.validation.settings\)"):
        resolve_holdout(config(tmp_path, validation={"settings": [{"shots": 1}, {"ways": 4,
                                                                                 "shots": 1}]}))


def test_no_classification_task_to_hold_back_from_is_one_line(tmp_path):
    smlmt = {"name": "words", "type": "sequence_classification", "source": {"kind": "smlmt",
                                                                            "from": ["bbc_news"]}}
    with pytest.raises(ConfigError,
                       match="config key 'eval.validation.holdout_classes': no meta-training task "
                       "to hold "
                                          "classes back from"):
        resolve_holdout(config(tmp_path, [smlmt]))


def test_a_taken_holdout_name_is_one_line(tmp_path):
    cfg = config(tmp_path, [task(csv(tmp_path)), task(csv(tmp_path, name="b.csv"),
                                                      name="mine_holdout", weight=0.0)])
    with pytest.raises(ConfigError,
                       match="make a validation task 'mine_holdout', but a task of that name is "
                       "configured"):
        resolve_holdout(cfg)


def test_a_resume_must_hold_back_the_same_classes(tmp_path):
    _, record = resolve_holdout(config(tmp_path))
    saved = json.loads(json.dumps(record))  # as holdout_classes.json reads back
    check_same_holdout(saved, record)
    _, other_seed = resolve_holdout(config(tmp_path, seed=6))
    with pytest.raises(ConfigError,
                       match=f"--resume: the run held back classes with seed 5 .{HOLDOUT_JSON}., "
                       "this "
                                          "config with 6"):
        check_same_holdout(saved, other_seed)
    changed = json.loads(json.dumps(record))
    changed["tasks"]["mine"]["held"] = ["c0", "c1", "c2"]
    with pytest.raises(ConfigError, match="--resume: task 'mine': the run held back classes"):
        check_same_holdout(changed, record)


def test_the_trainer_resolves_it_before_ray_starts(tmp_path):
    """MetaTrainer resolves in its constructor (no Ray yet): the run's config, and the choice it
    saves."""
    from raymeta.train.trainer import MetaTrainer

    cfg = config(tmp_path)
    trainer = MetaTrainer(cfg)
    assert trainer.cfg == resolve_holdout(cfg)[0] and trainer.holdout == resolve_holdout(cfg)[1]
    assert [s.name for s in trainer.validator.specs] == ["mine_holdout"]
    with pytest.raises(ConfigError, match="leaves 2 to meta-train on"):
        MetaTrainer(config(tmp_path, validation={"holdout_classes": 0.8}))


# -- episodes
# -------------------------------------------------------------------------------------------------


def _episodes_never_draw_held_classes(spec, held: list[str], tokenizer, data_dir: str, cache: str,
                                      episode) -> None:
    from raymeta.tasks import load_task

    loaded = load_task(spec, tokenizer, data_dir, cache)
    assert not set(loaded.labels) & set(held)  # the head never even has a slot for them
    raw_labels = [str(x) for x in loaded.raw["train"]["label"]]
    assert not set(raw_labels) & set(held)
    seen: set[str] = set()
    for seed in range(5):
        for step in range(100):  # 500 seeded episodes
            ep = loaded.episode(episode, seed=seed, step=step)
            classes = {loaded.labels[c] for c in ep.classes}
            # the rows' own labels, not only the ids
            rows = {raw_labels[i] for i in ep.support_rows + ep.query_rows}
            assert not (classes | rows) & set(held), (seed, step, classes & set(held))
            assert rows == classes
            seen |= classes
    assert seen == set(loaded.labels)  # every kept class was drawn: the episodes did vary


def test_no_held_class_in_500_meta_training_episodes_of_a_builtin_task(tmp_path, tokenizer,
                                                                       feature_cache):
    cfg = load_config("tiny", ["eval.validation.holdout_classes=0.4", "eval.validation.ways=2",
                               f"cache_dir={tmp_path / 'cache'}"])
    resolved, record = resolve_holdout(cfg)
    held = record["tasks"]["bbc_news"]["held"]
    assert len(held) == 2 and "chatterbot_response" in record["unchanged"]
    _episodes_never_draw_held_classes(resolved.task("bbc_news"), held, tokenizer, "unused",
                                      feature_cache,
                                      resolved.meta.episode.model_copy(update={"ways": 2}))


def test_no_held_class_in_500_meta_training_episodes_of_clinc150(shared_data, tmp_path, tokenizer,
                                                                 feature_cache):
    """150 intents, 0.2 held back: 30 classes that no 5-way episode of the other 120 may draw."""
    cfg = load_config(data={"data_dir": str(shared_data), "cache_dir": str(tmp_path / "cache"),
                            "seed": 1,
                            "tasks": [{"use": "clinc150", "max_length": 24}],
                            "eval": {"validation": {"holdout_classes": 0.2}}})
    resolved, record = resolve_holdout(cfg)
    held = record["tasks"]["clinc150"]["held"]
    assert len(held) == 30 and len(record["tasks"]["clinc150"]["kept"]) == 120
    _episodes_never_draw_held_classes(resolved.task("clinc150"), held, tokenizer, str(shared_data),
                                      feature_cache,
                                      resolved.meta.episode)


# -- the command line
# -------------------------------------------------------------------------------------------------


def test_raymeta_train_with_too_large_a_fraction_is_one_line_before_ray(cli, tmp_path):
    """Exit 2, one line, no traceback; before Ray starts (an address where no Ray answers is never
    reached)."""
    r = cli.run(["train", "--config", "tiny", f"output_dir={tmp_path / 'run'}",
                 "eval.validation.holdout_classes=0.9",
                 "eval.validation.ways=2", "--address", "127.0.0.9:6399"], cwd=REPO, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("raymeta: error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines == ["raymeta: error: config key 'eval.validation.holdout_classes': task "
                     "'bbc_news' has 5 classes, and "
                     "holding back 0.9 of them leaves 0 to meta-train on, fewer than its 3 ways "
                     "(meta.episode.ways)"]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# -- raymeta tune on the held-out classes
# ---------------------------------------------------------------------------


def tune_cfg(tmp_path: Path, ways: list[int] | None = None, **tune):
    return config(tmp_path, tune={"space": {"weights": False, "lr": [1e-5, 1e-4], "ways": ways},
                                  **tune})


def test_tune_ranks_trials_on_the_held_out_classes(tmp_path):
    from raymeta.tune.search import check_tune_config, tune_holdout

    cfg = tune_cfg(tmp_path, ways=[2, 3, 7])
    resolved, record = tune_holdout(cfg)
    direct, same = resolve_holdout(cfg)
    # the trainer's split, resolved once for every trial
    assert record == same and resolved.tasks == direct.tasks
    assert (resolved.tune.validation_tasks == direct.eval.validation.tasks
            and resolved.tune.validation_split == "all")
    assert resolved.meta.episode.ways == 3  # the config's own; the trials' ways are searched
    check_tune_config(resolved)  # held-out tasks are class-disjoint from meta-training: accepted
    # explicit tune.validation_tasks rank the trials: nothing resolves here (each trial's trainer
    # does)
    explicit = tune_cfg(tmp_path, ways=[2], validation_tasks=[task(csv(tmp_path, name="v.csv"),
                                                                   name="val")])
    assert tune_holdout(explicit) == (explicit, None)


def test_tune_ways_wider_than_the_kept_classes_is_one_line(tmp_path):
    from raymeta.tune.search import check_tune_config, tune_holdout

    with pytest.raises(ConfigError,
                       match=r"task 'mine' has 10 classes.*leaves 7 to meta-train on, fewer than "
                       r"its 8 "
                                          r"ways \(the widest of tune\.space\.ways\)"):
        tune_holdout(tune_cfg(tmp_path, ways=[2, 8]))
    explicit = tune_cfg(tmp_path, ways=[11], validation_tasks=[task(csv(tmp_path, name="v.csv"),
                                                                    name="val")])
    with pytest.raises(ConfigError,
                       match=r"tune\.space\.ways': 11-way episodes, but task 'mine' has 10 "
                             r"classes"):
        check_tune_config(explicit)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        tune_cfg(tmp_path, ways=[1, 5])
