"""Meta-validation during training (eval.validation): step 0 is scored, ``best`` is the best-scoring
step (step 0 included), early stopping, both reduce modes, and records in metrics.jsonl and
TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from raymeta.config import ModelConfig, load_config
from raymeta.train.trainer import MetaTrainer
from raymeta.train.validation import BEST_JSON

from ..tb_events import tensorboard_scalars
from .conftest import tiny_config, validation_on


def config(tmp_path, mixed_data, val_file, *, reduce="driver", lr=10.0, steps=4,
           patience=None) -> dict:
    data = tiny_config(tmp_path, mixed_data, algorithm="multitask", reduce=reduce, steps=steps)
    # lr 10: every step wrecks the encoder
    data["optim"] = {"lr": lr, "warmup_steps": 0, "max_grad_norm": None}
    data["eval"] = {"validation": validation_on(val_file, every_steps=2,
                                                **({"early_stopping": {"patience": patience}}
                                                   if patience else {}))}
    return data


def validations(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "validation"]


@pytest.mark.parametrize("reduce", ["driver", "collective"])
def test_validation_picks_step_zero_when_training_only_hurts(reduce, task_actors, mixed_data,
                                                             val_file, tmp_path):
    from transformers import AutoModel

    cfg = load_config(data=config(tmp_path, mixed_data, val_file, reduce=reduce))
    final = MetaTrainer(cfg, actors=task_actors(cfg)).run()
    out = Path(cfg.output_dir)
    vals = validations(out)
    # the starting model, every 2 steps, the last step
    assert [v["step"] for v in vals] == [0, 2, 4]
    assert vals[0]["score"] > 0.9 and all(v["score"] < vals[0]["score"] for v in vals[1:]), vals
    assert ([v["best_step"] for v in vals] == [0, 0, 0] and vals[0]["improved"]
            and not vals[1]["improved"])
    best = json.loads((out / "best" / BEST_JSON).read_text())
    assert (best["step"] == 0 and best["score"] == vals[0]["score"]
            and best["tasks"] == {"topics": vals[0]["score"]})
    # best is the starting model itself, and loads like any Hugging Face model
    torch.manual_seed(cfg.seed)
    from raymeta.core.model import load_encoder, load_tokenizer

    init = load_encoder(ModelConfig(**cfg.model.model_dump()),
                        len(load_tokenizer(cfg.model))).state_dict()
    loaded = AutoModel.from_pretrained(out / "best").state_dict()
    assert all(torch.equal(loaded[k], init[k]) for k in init)
    moved = AutoModel.from_pretrained(final).state_dict()
    assert any(not torch.equal(moved[k], init[k]) for k in init)  # final is the last step, not best
    shown = tensorboard_scalars(out / "tensorboard")["val/score"]
    assert shown == [(v["step"], pytest.approx(v["score"], abs=1e-6)) for v in vals]


def test_early_stopping_and_resume_keep_the_best(task_actors, mixed_data, val_file, tmp_path):
    """patience 1: the first validation without a new best (step 2) ends the run at a checkpoint."""
    cfg = load_config(data=config(tmp_path, mixed_data, val_file, steps=8, patience=1))
    MetaTrainer(cfg, actors=task_actors(cfg)).run()
    out = Path(cfg.output_dir)
    assert [v["step"] for v in validations(out)] == [0, 2]
    assert validations(out)[-1]["stop"] is True
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*"))[-1] == "step-00000002"
    assert (out / "final" / "model.safetensors").is_file()
    # --resume: validation at the resumed step runs again (same score: same parameters, same
    # episodes), best stays
    before = json.loads((out / "best" / BEST_JSON).read_text())
    stopped = validations(out)
    data = config(tmp_path, mixed_data, val_file, steps=4)
    cfg2 = load_config(data=data)
    MetaTrainer(cfg2, actors=task_actors(cfg2), resume=True).run()
    vals = validations(out)
    assert [v["step"] for v in vals] == [0, 2, 4]
    assert vals[1]["score"] == stopped[1]["score"] and vals[0] == stopped[0]
    assert json.loads((out / "best" / BEST_JSON).read_text())["step"] == before["step"] == 0


# slow tier (CI runs it): the linking itself is tests/unit/test_st_folder.py's
@pytest.mark.slow
def test_final_at_the_best_step_links_its_weights(task_actors, mixed_data, val_file, tmp_path,
                                                  monkeypatch):
    """The last step is the best one (here step 1's episodes all score 1, step 0's 0): final/'s
    weights are hard links to best/'s, one copy on disk; both are sentence-transformers folders."""
    from raymeta.train.validation import Validator

    judge = Validator.judge

    def last_is_best(self, step, values, t0=None):
        values = [{t: [float(step == 1)] * len(v) for t, v in setting.items()}
                  for setting in values]
        return judge(self, step, values, t0)

    monkeypatch.setattr(Validator, "judge", last_is_best)
    cfg = load_config(data=config(tmp_path, mixed_data, val_file, steps=1))
    final = Path(MetaTrainer(cfg, actors=task_actors(cfg)).run())
    best = Path(cfg.output_dir) / "best"
    assert json.loads((best / BEST_JSON).read_text())["step"] == 1
    weights = "model.safetensors"
    assert os.stat(final / weights).st_ino == os.stat(best / weights).st_ino
    assert (final / "modules.json").is_file() and (best / "1_Pooling" / "config.json").is_file()


def test_finetune_validation_under_collective_reduce(task_actors, mixed_data, val_file, tmp_path):
    """method finetune: K-shot fine-tuning of each validated step as Ray tasks (no CPU reserved: the
    actors hold it), on the driver's copy of the parameters, which under reduce: collective is
    pulled from rank 0 first."""
    data = config(tmp_path, mixed_data, val_file, reduce="collective", steps=2)
    v = data["eval"]["validation"]
    v["tasks"][0]["source"]["test_fraction"] = 0.3  # fine-tuning scores a test split
    v.update({"method": "finetune", "shots": 2, "splits": 2})
    data["eval"].update({"finetune_steps": 2, "max_test_examples": 12})
    cfg = load_config(data=data)
    MetaTrainer(cfg, actors=task_actors(cfg)).run()
    out = Path(cfg.output_dir)
    vals = validations(out)
    assert [v["step"] for v in vals] == [0, 2] and all(v["method"] == "finetune" and v["n"] == 2
                                                       for v in vals)
    assert all(0.0 <= v["score"] <= 1.0 for v in vals)
    assert (json.loads((out / "best" / BEST_JSON).read_text())["step"]
            == max(vals, key=lambda v: v["score"])["step"])
    # temporary exports removed
    assert not (out / ".validation").exists() or not any((out / ".validation").iterdir())


# -- several settings (eval.validation.settings), select: no_harm | mean
# ------------------------------------------

# 3-way 1-shot and 2-way 2-shot prototype episodes: lr 10 wrecks the encoder, which leaves each near
# its chance level (1/3, 1/2), so the 3-way setting loses more than the 2-way one; and 2-shot
# fine-tuning (Ray tasks, not the actors)
SETTINGS = [{"method": "prototype", "ways": 3, "shots": 1}, {"method": "prototype", "ways": 2,
                                                             "shots": 2},
            {"method": "finetune", "shots": 2}]
NAMES = ["prototype_3w1s", "prototype_2w2s", "finetune_2s"]


@pytest.fixture(scope="module")
def two_settings(task_actors, mixed_data, val_file, tmp_path_factory):
    """One tiny run validated at two settings (select: no_harm, their default), lr 10; with each
    validation's per-episode values, per setting and task, as the trainer's validator got them from
    the actors."""
    from raymeta.train.validation import Validator

    data = config(tmp_path_factory.mktemp("settings"), mixed_data, val_file)
    data["eval"]["validation"]["settings"] = SETTINGS
    # fine-tuning scores a test split
    data["eval"]["validation"]["tasks"][0]["source"]["test_fraction"] = 0.3
    data["eval"].update({"finetune_steps": 2, "max_test_examples": 12})
    cfg = load_config(data=data)
    seen: dict[int, list] = {}
    judge = Validator.judge

    def spy(self, step, values, t0=None):
        seen[step] = values
        return judge(self, step, values, t0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Validator, "judge", spy)
        MetaTrainer(cfg, actors=task_actors(cfg)).run()
    return cfg, Path(cfg.output_dir), seen


def test_two_settings_record_each_score_and_gain(two_settings):
    """metrics.jsonl, TensorBoard and best/raymeta_best.json carry each setting's score and, after
    step 0, its paired gain over step 0 with the 95% CI (per episode, or per K-shot split for
    finetune); step 0's values are kept beside best, and read back on resume."""
    from raymeta.eval.metrics import mean_ci95
    from raymeta.train.validation import STEP0_JSON, Validator

    cfg, out, seen = two_settings
    vals = validations(out)
    assert [v["step"] for v in vals] == [0, 2, 4] and all(v["select"] == "no_harm" for v in vals)
    assert all(list(v["settings"]) == NAMES for v in vals)
    assert "gain" not in vals[0]["settings"][NAMES[0]] and vals[0]["qualifies"] is True
    for v in vals[1:]:
        for i, name in enumerate(NAMES):
            s = v["settings"][name]
            diffs = [a - b for t in seen[0][i] for a, b in zip(seen[v["step"]][i][t],
                                                               seen[0][i][t])]
            assert s["gain"] == pytest.approx(s["score"] - vals[0]["settings"][name]["score"])
            assert (s["gain_ci95"] == pytest.approx(mean_ci95(diffs)["ci95"])
                    and len(diffs) == (30 if i < 2 else 2))
            # lr 10 harms the embeddings (fine-tuning may recover)
            assert s["gain_lower"] < 0 or i == 2
        assert v["qualifies"] is False and v["score"] == pytest.approx(
            sum(s["score"] for s in v["settings"].values()) / 3)
    assert [v["best_step"] for v in vals] == [0, 0, 0]
    best = json.loads((out / "best" / BEST_JSON).read_text())
    assert best["step"] == 0 and best["select"] == "no_harm" and list(best["settings"]) == NAMES
    assert best["settings"][NAMES[1]]["score"] == vals[0]["settings"][NAMES[1]]["score"]
    shown = tensorboard_scalars(out / "tensorboard")
    assert ([s for s, _ in shown[f"val/{NAMES[0]}/score"]] == [0, 2, 4]
            and len(shown[f"val/{NAMES[1]}/gain"]) == 2)
    # step 0's per-episode values, bit for bit, for a resume to pair with
    assert (out / "best" / STEP0_JSON).is_file() and not any((out / ".validation").iterdir())
    resumed = Validator(cfg, out)
    resumed.resume(4)
    assert resumed.reference == seen[0] and resumed.state.best_step == 0
    # the summary table's earlier rows, from metrics.jsonl
    assert [r["step"] for r in resumed.state.rows] == [0, 2]


def test_no_harm_refuses_a_step_that_mean_picks_on_a_real_runs_values(two_settings):
    """Training that helps one setting and hurts another, on the per-episode values of the real run
    above. A live run cannot promise that pattern (lr 10 hurts every setting at once; a gentle lr
    may help or hurt either), so it is built from that run's values, every one of them an actual
    episode's accuracy: at the 3-way setting the candidate is the starting encoder and the reference
    the wrecked one (a real gain), at the 2-way setting the other way round (a real loss, smaller:
    its chance level is higher). mean takes the candidate (its mean gain is positive); no_harm keeps
    step 0, since the 2-way loss is significant."""
    from raymeta.train.validation import Validator

    cfg, out, seen = two_settings
    wrecked = seen[2]
    # finetune unchanged
    timeline = {0: [wrecked[0], seen[0][1], seen[0][2]], 2: [seen[0][0], wrecked[1], seen[0][2]]}
    chosen = {}
    for select in ("mean", "no_harm"):
        v = Validator(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
            "validation": cfg.eval.validation.model_copy(update={"select": select})})}),
                      out / f"judge-{select}")
        recs = [v.judge(step, values) for step, values in timeline.items()]
        gain, harm = recs[1]["settings"][NAMES[0]], recs[1]["settings"][NAMES[1]]
        assert (gain["gain_lower"] > 0 and harm["gain_lower"] < 0
                and harm["gain"] < 0 < recs[1]["gain"]), recs[1]
        assert recs[1]["qualifies"] is False
        chosen[select] = recs[1]["best_step"]
    assert chosen == {"mean": 2, "no_harm": 0}
