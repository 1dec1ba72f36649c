"""eval.validation.settings, select and tolerance, without Ray: the config (defaults, the
one-setting equivalence, bad settings), the check before Ray starts that every validation task
supplies every setting, and the choice of ``best`` on hand-made per-episode values (Validator.judge,
which the trainer's validation calls once the values are scored): no_harm against mean, no
qualifying step, tolerance, and a resume that chooses the same best."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from raymeta.config import ValidationSetting, load_config
from raymeta.errors import ConfigError, DataError
from raymeta.eval.metrics import mean_ci95
from raymeta.eval.scoring import protocol, setting_protocols
from raymeta.train.trainer import MetaTrainer
from raymeta.train.validation import BEST_JSON, STEP0_JSON, Validator, paired_gain

EPISODES = 40  # per task and setting, in the hand-made values


def rows_csv(classes: int, per_class: int, tag: str = "") -> str:
    return "text,label\n" + "".join(f"row {i} of {tag}c{c},c{c}\n" for i in range(per_class)
                                    for c in range(classes))


def cfg_with(tmp_path, **validation):
    """A run with one meta-training task and two validation tasks (va, vb: 5 classes of 16 rows
    each)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.csv").write_text(rows_csv(3, 6, "train "))
    tasks = []
    for name in ("va", "vb"):
        (tmp_path / f"{name}.csv").write_text(rows_csv(5, 16, name))
        tasks.append({"name": name, "type": "sequence_classification",
                      "source": {"kind": "files", "format": "csv",
                                 "files": {"train": str(tmp_path / f"{name}.csv")}}})
    data = {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
            "tasks": [{"name": "mine", "type": "sequence_classification",
                       "source": {"kind": "files", "format": "csv",
                                  "files": {"train": str(tmp_path / "a.csv")}}}],
            "eval": {"validation": {"tasks": tasks, "ways": 3, "shots": 2, "queries": 3,
                                    "episodes": EPISODES,
                                    "every_steps": 2, **validation}}}
    return load_config(data=data)


TWO = [{"method": "prototype", "shots": 1}, {"method": "prototype", "shots": 5}]


# -- the config --------------------------------------------------------------------------------

def test_settings_take_the_sections_fields_where_unset(tmp_path):
    v = cfg_with(tmp_path, settings=[{"shots": 1}, {"method": "ridge", "ways": 4, "queries": 5},
                                     {"method": "finetune", "shots": 8}]).eval.validation
    assert [s.model_dump() for s in v.resolved_settings()] == [
        {"method": "prototype", "ways": 3, "shots": 1, "queries": 3, "episodes": EPISODES,
         "splits": 2},
        {"method": "ridge", "ways": 4, "shots": 2, "queries": 5, "episodes": EPISODES, "splits": 2},
        {"method": "finetune", "ways": 3, "shots": 8, "queries": 3, "episodes": EPISODES,
         "splits": 2}]
    assert v.setting_names() == ["prototype_3w1s", "ridge_4w2s_q5", "finetune_8s"]
    assert v.selection == "no_harm" and v.tolerance == 0.0  # several settings: no_harm by default


def test_without_settings_the_one_setting_is_the_sections_own(tmp_path):
    """Today's configs: one setting (the section's fields), select mean, the protocol as it was; and
    a one-item list of an empty setting resolves to the same setting and protocol (only the key in
    messages differs)."""
    cfg = cfg_with(tmp_path)
    v = cfg.eval.validation
    assert v.settings is None and v.select is None and v.selection == "mean"
    assert v.resolved_settings() == [ValidationSetting(method="prototype", ways=3, shots=2,
                                                       queries=3, episodes=EPISODES,
                                                       splits=2)]
    assert setting_protocols(cfg) == [protocol(cfg, "validation")]
    one = cfg_with(tmp_path, settings=[{}])
    assert (one.eval.validation.selection == "mean"
            and one.eval.validation.resolved_settings() == v.resolved_settings())
    assert (setting_protocols(one)[0].model_copy(update={"key": "eval.validation"})
            == protocol(cfg, "validation"))
    assert cfg_with(tmp_path, settings=TWO, select="mean").eval.validation.selection == "mean"
    assert cfg_with(tmp_path, settings=[{}], select="no_harm",
                    tolerance=0.01).eval.validation.selection == "no_harm"


@pytest.mark.parametrize("validation, expect", [
    ({"settings": [{"method": "magic"}]},
     "config key 'eval.validation.settings.0.method': Input should be 'prototype'"),
    ({"settings": [{"shots": 1, "way": 3}]},
     "config key 'eval.validation.settings.0.way': unknown key"),
    ({"settings": []}, "config key 'eval.validation.settings'"),
    ({"settings": [{"shots": 0}]}, "config key 'eval.validation.settings.0.shots'"),
    ({"settings": [{"method": "finetune", "ways": 5}]},
     "config key 'eval.validation.settings': entry 0 (finetune "
                                                        "2-shot): ways applies to prototype, ridge "
     "and svm only"),
    ({"settings": [{"splits": 3}]}, "splits applies to finetune only"),
    ({"settings": [{"shots": 1}, {"shots": 1, "queries": 3}]},
     "entry 1 (prototype 1-shot) is the same setting as entry 0"),
    ({"settings": [{"shots": 39}]},
     "shots + queries = 42 rows per class, but validation embeds at most 40"),
    ({"settings": [{"method": "finetune"}], "split": "test"},
     "split: test scores held-out rows with episodes"),
    ({"settings": TWO, "select": "best"}, "config key 'eval.validation.select'"),
    ({"settings": TWO, "tolerance": -0.01}, "config key 'eval.validation.tolerance'"),
    ({"settings": [{"episodes": 1}, {"shots": 5}], "tasks": None},
     "select: no_harm needs a 95% CI of each setting's gain"),
])
def test_bad_settings_are_one_line_errors(tmp_path, validation, expect):
    # one validation task and one episode: no CI to judge harm by
    if validation.get("tasks", True) is None:
        cfg = cfg_with(tmp_path)
        data = cfg.model_dump()
        data["eval"]["validation"].update({**validation,
                                           "tasks": data["eval"]["validation"]["tasks"][:1]})
        with pytest.raises(ConfigError) as e:
            load_config(data=data)
    else:
        with pytest.raises(ConfigError) as e:
            cfg_with(tmp_path, **validation)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_a_setting_a_task_cannot_supply_fails_before_ray(tmp_path):
    """choose_rows' rule (and K-shot's) on the raw rows, when the trainer is built (before Ray
    starts): one line naming the task, the setting and its config key."""
    with pytest.raises(DataError) as e:  # 16 rows a class: 14 shots + 3 queries are more
        MetaTrainer(cfg_with(tmp_path, settings=[{"shots": 1}, {"shots": 14}]))
    assert str(e.value) == ("task 'va': scoring needs 3 classes (eval.validation.settings[1].ways) "
                            "with 17 rows each (eval.validation.settings[1].shots + "
                            "eval.validation.settings[1].queries); 0 have that many")
    with pytest.raises(DataError,
                       match=r"task 'va': scoring needs 6 classes \(eval.validation.ways\)"):
        # one setting: the section's own keys, as on the actors
        MetaTrainer(cfg_with(tmp_path, ways=6))
    with pytest.raises(DataError,
                       match=r"task 'va': setting finetune_8s \(eval.validation.settings\[1\]\): "
                       r"finetune "
                                        "validation scores a test split"):
        MetaTrainer(cfg_with(tmp_path, settings=[{"shots": 1}, {"method": "finetune", "shots": 8}]))
    cfg = cfg_with(tmp_path, settings=[{"shots": 1}, {"method": "finetune", "shots": 14}])
    for t in cfg.eval.validation.tasks:
        t["source"]["test_fraction"] = 0.25
    with pytest.raises(DataError,
                       match=r"task 'va': setting finetune_14s "
                       r"\(eval.validation.settings\[1\].shots\): "
                                        "K=14 but class 'c\\d' has only 12 training rows"):
        MetaTrainer(load_config(data=cfg.model_dump()))
    MetaTrainer(cfg_with(tmp_path, settings=[{"shots": 1}, {"shots": 13}]))  # 13 + 3 = 16: enough


# -- the choice of best, on hand-made per-episode values -------------------------------------------

def values(rng, base: dict[str, np.ndarray], shift: float,
           noise: float = 0.01) -> dict[str, list[float]]:
    """Per task, per episode: ``base`` moved by ``shift`` with a little per-episode noise (the
    paired spread)."""
    return {t: list(b + shift + rng.normal(0, noise, b.shape)) for t, b in base.items()}


@pytest.fixture
def episodes():
    """Step 0's per-episode accuracies at two settings, on tasks va and vb."""
    rng = np.random.default_rng(0)
    return rng, [{t: rng.uniform(0.4, 0.8, EPISODES) for t in ("va", "vb")} for _ in range(2)]


def judge_steps(v: Validator, rng, base, shifts: dict[int, tuple[float, float]]) -> list[dict]:
    """Judge steps 0, 2, ... whose two settings gain ``shifts[step]`` over step 0 (with per-episode
    noise), and export best's files as the trainer does when a step is chosen."""
    out = []
    for step, (a, b) in shifts.items():
        rec = v.judge(step, [values(rng, base[0], a, 0 if step == 0 else 0.01),
                             values(rng, base[1], b, 0 if step == 0 else 0.01)])
        if rec["improved"]:
            v.best_dir.mkdir(parents=True, exist_ok=True)
            for name, text in v.best_files(rec).items():
                (v.best_dir / name).write_text(text)
        out.append(rec)
    return out


def test_a_step_that_helps_one_setting_and_hurts_another_is_best_under_mean_only(tmp_path,
                                                                                 episodes):
    """Step 2 gains 8 points at 1 shot and loses 3 at 5 shots (mean +2.5): the highest mean, but
    significantly harmful at 5 shots; step 4 gains 1 point at both, with no harm."""
    rng, base = episodes
    shifts = {0: (0, 0), 2: (0.08, -0.03), 4: (0.01, 0.01)}
    mean = judge_steps(Validator(cfg_with(tmp_path / "m", settings=TWO, select="mean"),
                                 tmp_path / "m" / "run"),
                       np.random.default_rng(1), base, shifts)
    no_harm = judge_steps(Validator(cfg_with(tmp_path / "n", settings=TWO), tmp_path / "n" / "run"),
                          np.random.default_rng(1), base, shifts)
    assert [r["best_step"] for r in mean] == [0, 2, 2]
    assert [r["best_step"] for r in no_harm] == [0, 0, 4]
    assert [r["qualifies"] for r in no_harm] == [True, False, True]
    harm = no_harm[1]["settings"]["prototype_3w5s"]
    assert harm["gain"] == pytest.approx(-0.03, abs=0.005) and harm["gain_lower"] < 0
    assert no_harm[1]["settings"]["prototype_3w1s"]["gain_lower"] > 0.07
    assert no_harm[1]["gain"] == pytest.approx(0.025, abs=0.005)  # the mean over settings
    assert "gain" not in no_harm[0]["settings"]["prototype_3w1s"]  # step 0 is the reference
    best = json.loads((tmp_path / "n" / "run" / "best" / BEST_JSON).read_text())
    assert best["step"] == 4 and best["select"] == "no_harm" and best["qualifies"] is True
    assert set(best["settings"]) == {"prototype_3w1s", "prototype_3w5s"}
    assert all({"score", "ci95", "gain", "gain_ci95",
                "gain_lower"} <= set(s) for s in best["settings"].values())


def test_when_no_step_qualifies_best_is_step_zero(tmp_path, episodes):
    rng, base = episodes
    recs = judge_steps(Validator(cfg_with(tmp_path, settings=TWO), tmp_path / "run"), rng, base,
                       {0: (0, 0), 2: (0.10, -0.02), 4: (-0.02, 0.10), 6: (-0.05, -0.05)})
    assert [r["qualifies"] for r in recs] == [True, False, False, False]
    assert [r["best_step"] for r in recs] == [0, 0, 0,
                                              0] and [r["improved"] for r in recs] == [True, False,
                                                                                       False, False]
    assert json.loads((tmp_path / "run" / "best" / BEST_JSON).read_text())["step"] == 0


@pytest.mark.parametrize("tolerance, best", [(0.0, 0), (0.02, 2)])
def test_tolerance_forgives_a_small_loss(tmp_path, episodes, tolerance, best):
    """Step 2 gains 4 points at 1 shot and loses half a point at 5 shots: its CI's lower bound is
    about -0.9 points, beyond a tolerance of 0 and within one of 2 points (tolerance is in the
    scores' unit: accuracy as a fraction)."""
    rng, base = episodes
    recs = judge_steps(Validator(cfg_with(tmp_path, settings=TWO, tolerance=tolerance),
                                 tmp_path / "run"), rng, base,
                       {0: (0, 0), 2: (0.04, -0.005)})
    lower = recs[1]["settings"]["prototype_3w5s"]["gain_lower"]
    assert -0.02 < lower < 0
    assert recs[1]["best_step"] == best and recs[1]["qualifies"] is (best == 2)


def test_the_choice_is_the_same_after_a_resume(tmp_path, episodes):
    """A fresh Validator resumed at step 6 reads best and step 0's values back from best/ and
    chooses as the one that never stopped, bit for bit: the same qualification, gains and best."""
    rng, base = episodes
    cfg = cfg_with(tmp_path, settings=TWO)
    shifts = {0: (0, 0), 2: (0.01, 0.005), 4: (0.08, -0.03), 6: (0.02, 0.01), 8: (0.03, -0.002)}
    steps = {s: [values(rng, base[0], a, 0 if s == 0 else 0.01), values(rng, base[1], b,
                                                                        0 if s == 0 else 0.01)]
             for s, (a, b) in shifts.items()}

    def run(v: Validator, which) -> list[dict]:
        out = []
        for s in which:
            rec = v.judge(s, steps[s])
            if rec["improved"]:
                v.best_dir.mkdir(parents=True, exist_ok=True)
                for name, text in v.best_files(rec).items():
                    (v.best_dir / name).write_text(text)
            out.append(rec)
        return out

    whole = run(Validator(cfg, tmp_path / "whole"), shifts)
    assert [r["best_step"] for r in whole] == [0, 2, 2, 6, 6]
    first = Validator(cfg, tmp_path / "run")
    run(first, [0, 2, 4])
    again = Validator(cfg, tmp_path / "run")  # a new process: only what is on disk
    again.resume(6)
    assert again.reference == first.reference and again.reference_scores == first.reference_scores
    assert (again.state.best_step, again.state.best_score) == (2, whole[1]["score"])
    resumed = run(again, [6, 8])
    for a, b in zip(resumed, whole[3:]):
        assert {k: a[k] for k in ("best_step", "qualifies", "gain", "settings", "improved")} == \
            {k: b[k] for k in ("best_step", "qualifies", "gain", "settings", "improved")}
    assert json.loads((tmp_path / "run" / "best" / BEST_JSON).read_text())["step"] == 6
    # changed settings: the stored values are not paired with, and no later step can show it does no
    # harm
    other = Validator(cfg_with(tmp_path / "o", settings=[TWO[0], {"shots": 4}]), tmp_path / "run")
    other.resume(8)
    assert other.reference is None
    assert other.judge(8, steps[8])["qualifies"] is False


def test_the_paired_gain_is_the_ci_of_the_per_episode_differences():
    ref = {"a": [0.5, 0.6, 0.7], "b": [0.2, 0.4]}
    now = {"a": [0.6, 0.6, 0.9], "b": [0.3, 0.3]}
    g = paired_gain(now, ref, score=0.65, reference_score=0.5)
    ci = mean_ci95([0.1, 0.0, 0.2, 0.1, -0.1])["ci95"]
    assert g == {"gain": pytest.approx(0.15), "gain_ci95": pytest.approx(ci),
                 "gain_lower": pytest.approx(0.15 - ci)}


def test_records_without_settings_are_as_they_were(tmp_path, episodes):
    """One setting, select mean: the metrics.jsonl record has today's keys only; raymeta_best.json
    gains the rule and the setting's score; no step-0 file is written. With settings, the record has
    each setting's score."""
    rng, base = episodes
    v = Validator(cfg_with(tmp_path), tmp_path / "run")
    rec = v.judge(0, [values(rng, base[0], 0, 0)])
    assert list(rec) == ["step", "kind", "method", "score", "ci95", "tasks", "n", "seconds",
                         "best_step", "best_score",
                         "improved", "stop"]
    files = v.best_files(rec)
    assert set(files) == {BEST_JSON}
    best = json.loads(files[BEST_JSON])
    assert best["select"] == "mean" and best["settings"]["prototype_3w2s"]["score"] == rec["score"]
    v2 = Validator(cfg_with(tmp_path / "two", settings=TWO), tmp_path / "two" / "run")
    rec2 = v2.judge(0, [values(rng, base[0], 0, 0), values(rng, base[1], 0, 0)])
    assert rec2["score"] == pytest.approx(np.mean([s["score"] for s in rec2["settings"].values()]))
    assert (rec2["select"] == "no_harm" and rec2["qualifies"] is True
            and set(v2.best_files(rec2)) == {BEST_JSON, STEP0_JSON})


def test_the_summary_table_marks_the_chosen_step(tmp_path, episodes):
    rng, base = episodes
    v = Validator(cfg_with(tmp_path, settings=TWO), tmp_path / "run")
    judge_steps(v, rng, base, {0: (0, 0), 2: (0.08, -0.03), 4: (0.01, 0.01)})
    lines = v.table()
    assert lines[0].startswith("validation by setting (select: no_harm, tolerance 0;")
    assert "prototype_3w1s" in lines[1] and "prototype_3w5s" in lines[1] and "qualifies" in lines[1]
    assert ("(step 0)" in lines[2] and lines[3].split()[0] == "2" and lines[3].endswith(" no")
            and "<- best" not in lines[3])
    assert lines[4].split()[0] == "4" and " yes " in lines[4] and lines[4].endswith("<- best")
    # the gains (1 and 5 shots), CIs
    assert re.search(r"\+0\.0[78]\d\d ± 0\.00\d\d +-0\.0[23]\d\d ± 0\.00\d\d", lines[3])
