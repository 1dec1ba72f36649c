"""Meta-validation during training (eval.validation): step 0 is scored, ``best`` is the best-scoring step
(step 0 included), early stopping, both reduce modes, and records in metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raymeta.config import ModelConfig, load_config
from raymeta.train.trainer import MetaTrainer
from raymeta.train.validation import BEST_JSON

from ..tb_events import tensorboard_scalars
from .conftest import tiny_config, validation_on


def config(tmp_path, mixed_data, val_file, *, reduce="driver", lr=10.0, steps=4, patience=None) -> dict:
    data = tiny_config(tmp_path, mixed_data, algorithm="multitask", reduce=reduce, steps=steps)
    data["optim"] = {"lr": lr, "warmup_steps": 0, "max_grad_norm": None}  # lr 10: every step wrecks the encoder
    data["eval"] = {"validation": validation_on(val_file, every_steps=2,
                                                **({"early_stopping": {"patience": patience}} if patience else {}))}
    return data


def validations(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "validation"]


@pytest.mark.parametrize("reduce", ["driver", "collective"])
def test_validation_picks_step_zero_when_training_only_hurts(reduce, task_actors, mixed_data, val_file, tmp_path):
    from transformers import AutoModel

    cfg = load_config(data=config(tmp_path, mixed_data, val_file, reduce=reduce))
    final = MetaTrainer(cfg, actors=task_actors(cfg)).run()
    out = Path(cfg.output_dir)
    vals = validations(out)
    assert [v["step"] for v in vals] == [0, 2, 4]  # the starting model, every 2 steps, the last step
    assert vals[0]["score"] > 0.9 and all(v["score"] < vals[0]["score"] for v in vals[1:]), vals
    assert [v["best_step"] for v in vals] == [0, 0, 0] and vals[0]["improved"] and not vals[1]["improved"]
    best = json.loads((out / "best" / BEST_JSON).read_text())
    assert best["step"] == 0 and best["score"] == vals[0]["score"] and best["tasks"] == {"topics": vals[0]["score"]}
    # best is the starting model itself, and loads like any Hugging Face model
    torch.manual_seed(cfg.seed)
    from raymeta.core.model import load_encoder, load_tokenizer

    init = load_encoder(ModelConfig(**cfg.model.model_dump()), len(load_tokenizer(cfg.model))).state_dict()
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
    # --resume: validation at the resumed step runs again (same score: same parameters, same episodes), best stays
    before = json.loads((out / "best" / BEST_JSON).read_text())
    stopped = validations(out)
    data = config(tmp_path, mixed_data, val_file, steps=4)
    cfg2 = load_config(data=data)
    MetaTrainer(cfg2, actors=task_actors(cfg2), resume=True).run()
    vals = validations(out)
    assert [v["step"] for v in vals] == [0, 2, 4]
    assert vals[1]["score"] == stopped[1]["score"] and vals[0] == stopped[0]
    assert json.loads((out / "best" / BEST_JSON).read_text())["step"] == before["step"] == 0


def test_finetune_validation_under_collective_reduce(task_actors, mixed_data, val_file, tmp_path):
    """method finetune: K-shot fine-tuning of each validated step as Ray tasks (no CPU reserved: the actors hold
    it), on the driver's copy of the parameters, which under reduce: collective is pulled from rank 0 first."""
    data = config(tmp_path, mixed_data, val_file, reduce="collective", steps=2)
    v = data["eval"]["validation"]
    v["tasks"][0]["source"]["test_fraction"] = 0.3  # fine-tuning scores a test split
    v.update({"method": "finetune", "shots": 2, "splits": 2})
    data["eval"].update({"finetune_steps": 2, "max_test_examples": 12})
    cfg = load_config(data=data)
    MetaTrainer(cfg, actors=task_actors(cfg)).run()
    out = Path(cfg.output_dir)
    vals = validations(out)
    assert [v["step"] for v in vals] == [0, 2] and all(v["method"] == "finetune" and v["n"] == 2 for v in vals)
    assert all(0.0 <= v["score"] <= 1.0 for v in vals)
    assert json.loads((out / "best" / BEST_JSON).read_text())["step"] == max(vals, key=lambda v: v["score"])["step"]
    assert not (out / ".validation").exists() or not any((out / ".validation").iterdir())  # temporary exports removed
