"""eval.validation's checks and arithmetic, without Ray: overlap with meta-training tasks, best
without validation, the score summary, and where a resumed run's best stands."""

from __future__ import annotations

import json

import pytest

from raymeta.config import load_config
from raymeta.config.resolve import wants_best
from raymeta.errors import ConfigError
from raymeta.train.trainer import MetaTrainer
from raymeta.train.validation import BEST_JSON, Validator, summarise_scores
from raymeta.train.validation_tasks import validation_specs


def cfg_with(tmp_path, validation=None, **top):
    csv = tmp_path / "a.csv"
    csv.write_text("text,label\n" + "".join(f"t{i},{'abc'[i % 3]}\n" for i in range(12)))
    data = {"output_dir": str(tmp_path / "run"),
            "tasks": [{"name": "mine", "type": "sequence_classification",
                       "source": {"kind": "files", "format": "csv", "files": {"train": str(csv)}}}],
            **top}
    if validation is not None:
        data["eval"] = {"validation": validation}
    return load_config(data=data)


def rows_csv(classes: int, per_class: int) -> str:
    """A classification CSV of ``classes`` classes (c0, c1, ...) with ``per_class`` rows each."""
    return "text,label\n" + "".join(f"row {i} of c{c},c{c}\n" for i in range(per_class)
                                    for c in range(classes))


def val_task(path, name="held", **kw):
    return {"name": name, "type": "sequence_classification",
            "source": {"kind": "files", "format": "csv", "files": {"train": str(path)}}, **kw}


def test_validation_on_a_meta_training_task_is_one_line(tmp_path):
    cfg = cfg_with(tmp_path, {"tasks": [val_task(tmp_path / "a.csv", name="mine")]})
    with pytest.raises(ConfigError,
                       match="task 'mine' overlaps the meta-training task 'mine' .same name"):
        MetaTrainer(cfg)
    cfg = cfg_with(tmp_path, {"tasks": [val_task(tmp_path / "a.csv")]})
    with pytest.raises(ConfigError,
                       match="task 'held' overlaps the meta-training task 'mine' .same files and "
                       "classes"):
        validation_specs(cfg)


def test_class_disjoint_splits_of_one_file_are_allowed(tmp_path):
    cfg = cfg_with(tmp_path, {"tasks": [val_task(tmp_path / "a.csv", include_labels=["c"])]})
    cfg.tasks[0].include_labels = ["a", "b"]
    assert [s.name for s in validation_specs(cfg)] == ["held"]
    cfg.tasks[0].include_labels = ["b", "c"]
    with pytest.raises(ConfigError, match="overlaps"):
        validation_specs(cfg)


def test_held_back_rows_of_a_meta_training_task_are_allowed_only_with_split_test(tmp_path):
    """In-domain selection (e.g. FewRel's 8 meta-training relations): validation on the test split
    that meta-training never reads, which needs the same source carved the same way."""
    held = {"tasks": [val_task(tmp_path / "a.csv", name="mine")], "split": "test"}
    cfg = cfg_with(tmp_path, held)
    cfg.tasks[0].source.test_fraction = 0.25
    # the spec has no test split
    with pytest.raises(ConfigError, match="overlaps the meta-training task 'mine'"):
        validation_specs(cfg)
    held["tasks"][0]["source"]["test_fraction"] = 0.25
    cfg = cfg_with(tmp_path, held)
    cfg.tasks[0].source.test_fraction = 0.25
    assert [s.name for s in validation_specs(cfg)] == ["mine"]
    cfg.tasks[0].source.split_seed = 1  # carved differently: its held-back rows are not these
    with pytest.raises(ConfigError, match="overlaps the meta-training task 'mine'"):
        validation_specs(cfg)
    cfg.tasks[0].source.split_seed = 0
    cfg.eval.validation.split = "all"  # every split would include rows that meta-training reads
    with pytest.raises(ConfigError, match=r"\(or its held-back rows: eval.validation.split=test\)"):
        validation_specs(cfg)
    with pytest.raises(ConfigError, match="eval.validation.*split: test scores held-out rows"):
        cfg_with(tmp_path, {**held, "method": "finetune"})


def test_validation_on_a_test_task_is_one_line(tmp_path):
    """Choosing on a task the run also tests on would make its test score optimistic."""
    other = tmp_path / "b.csv"
    other.write_text("text,label\nx,a\ny,b\n")
    cfg = cfg_with(tmp_path, {"tasks": [val_task(other, include_labels=["a"])]})
    cfg.eval.episodic_tasks = [val_task(other, name="test_part", include_labels=["b"])]
    assert [s.name for s in validation_specs(cfg)] == ["held"]  # class-disjoint: allowed
    cfg.eval.episodic_tasks = [val_task(other, name="test_part")]
    with pytest.raises(ConfigError,
                       match="task 'held' overlaps the evaluation .test. task 'test_part' .same "
                       "files"):
        validation_specs(cfg)
    cfg.eval.episodic_tasks, cfg.eval.tasks = [], [val_task(tmp_path / "c.csv")]
    with pytest.raises(ConfigError, match="overlaps the evaluation .test. task 'held' .same name"):
        validation_specs(cfg)


def test_best_needs_validation_tasks(tmp_path):
    with pytest.raises(ConfigError,
                       match="config key 'checkpoint.best': choosing the best step needs "
                       "validation tasks"):
        MetaTrainer(cfg_with(tmp_path, checkpoint={"best": True}))
    assert not wants_best(cfg_with(tmp_path))
    other = tmp_path / "b.csv"
    other.write_text("text,label\nx,a\n")
    assert wants_best(cfg_with(tmp_path, {"tasks": [val_task(other)]}))
    assert not wants_best(cfg_with(tmp_path, {"tasks": [val_task(other)]},
                                   checkpoint={"best": False}))
    with pytest.raises(ConfigError, match="eval.validation.tasks"):
        cfg_with(tmp_path, {"tasks": []})


def test_score_is_the_mean_of_task_means():
    s = summarise_scores({"a": [1.0, 0.0], "b": [1.0, 1.0, 1.0, 1.0]})
    assert s["score"] == 0.75 and s["tasks"] == {"a": 0.5,
                                                 "b": 1.0} and s["n"] == 6 and s["ci95"] > 0


@pytest.mark.parametrize("best_step, resumed_at, since", [(0, 6, 2), (4, 6, 0), (4, 8, 1),
                                                          (8, 8, None), (10, 8, None)])
def test_resume_counts_validations_since_the_best(tmp_path, best_step, resumed_at, since):
    """every_steps 2; the validation at the resumed step runs again, so it is not counted here, and
    a best from that step or later (another timeline) is forgotten: the re-run validation finds it
    again."""
    other = tmp_path / "b.csv"
    # a Validator checks before Ray starts that the task supplies its episodes
    other.write_text(rows_csv(5, 15))
    v = Validator(cfg_with(tmp_path, {"tasks": [val_task(other)], "every_steps": 2}),
                  tmp_path / "run")
    v.best_dir.mkdir(parents=True)
    (v.best_dir / BEST_JSON).write_text(json.dumps({"step": best_step, "score": 0.5}))
    v.resume(resumed_at)
    if since is None:
        assert v.state.best_step is None
    else:
        assert (v.state.best_step, v.state.since_best, v.state.best_score) == (best_step, since,
                                                                               0.5)



def test_exported_at_names_best_only_at_its_own_step(tmp_path):
    """final/ shares best/'s weights only when best/ holds the same step (raymeta_best.json)."""
    other = tmp_path / "b.csv"
    other.write_text(rows_csv(5, 15))
    v = Validator(cfg_with(tmp_path, {"tasks": [val_task(other)], "every_steps": 2}),
                  tmp_path / "run")
    assert v.exported_at(4) is None  # no best/ yet
    v.best_dir.mkdir(parents=True)
    (v.best_dir / BEST_JSON).write_text(json.dumps({"step": 4, "score": 0.5}))
    assert v.exported_at(4) == v.best_dir and v.exported_at(6) is None
    (v.best_dir / BEST_JSON).write_text("{trunc")
    assert v.exported_at(4) is None

class _Rows:
    """What choose_rows reads of a task: its name, its splits and their class ids."""

    name = "rel"

    def __init__(self, **splits: list[int]):
        self.features = splits

    def class_ids(self, split: str):
        import numpy as np

        return np.asarray(self.features[split])


def test_split_test_scores_only_the_held_back_rows():
    from raymeta.config import EpisodicProtocol
    from raymeta.errors import DataError
    from raymeta.eval.scoring import choose_rows

    v = EpisodicProtocol(ways=2, shots=1, queries=2, split="test", seed=0)
    rows = choose_rows(_Rows(train=[0, 1] * 20, test=[0, 1, 1, 0, 0, 1]), v)
    assert set(rows) == {"test"} and sorted(rows["test"]) == list(range(6))
    with pytest.raises(DataError, match="task 'rel'.*split=test needs a test split"):
        choose_rows(_Rows(train=[0, 1] * 20), v)
    v = v.model_copy(update={"split": "all"})
    assert set(choose_rows(_Rows(train=[0, 1] * 20, test=[0, 1]), v)) == {"test", "train"}


def test_tune_validates_on_a_meta_training_task_only_through_its_held_back_rows(tmp_path):
    from raymeta.tune.search import check_tune_config

    csv = tmp_path / "a.csv"
    csv.write_text("text,label\n" + "".join(f"t{i},{'abc'[i % 3]}\n" for i in range(12)))
    mine = val_task(csv, name="mine")
    mine["source"]["test_fraction"] = 0.25
    data = {"tasks": [mine], "tune": {"validation_tasks": [mine], "space": {"weights": False}}}
    with pytest.raises(ConfigError,
                       match="task 'mine' is also a meta-training task .validate on its held-back "
                       "rows"):
        check_tune_config(load_config(data=data))
    data["tune"]["validation_split"] = "test"
    check_tune_config(load_config(data=data))
    # carved otherwise
    data["tune"]["validation_tasks"] = [{**mine, "source": {**mine["source"], "split_seed": 1}}]
    with pytest.raises(ConfigError, match="also a meta-training task"):
        check_tune_config(load_config(data=data))
