"""An SMLMT task (Bansal et al. 2020) meta-trains through the real trainer, in both reduce modes: it
is an ordinary sequence_classification task to everything above ``raymeta/tasks``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raymeta.config import load_config
from raymeta.core.algorithms import ALGORITHMS
from raymeta.train.trainer import MetaTrainer

from .conftest import tiny_config
from .test_trainer import reference_meta_gradient


def smlmt_config(tmp_path, mixed_data, **meta) -> dict:
    data = tiny_config(tmp_path, mixed_data, **meta)
    # the classification task's text ("a sentence about sport number 3") as masked-word classes:
    # sentence, number, sport, music, travel, food
    data["tasks"][0] = {"name": "smlmt", "type": "sequence_classification", "weight": 2.0,
                        "max_length": 24,
                        "source": {"kind": "smlmt", "min_count": 5, "from": [
                            {"source": {"kind": "files", "format": "csv",
                                        "files": {"train": "${data_dir}/cls.csv"}}}]}}
    return data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_smlmt_meta_gradient_equals_single_process_reference(algorithm, task_actors, mixed_data,
                                                             tmp_path):
    """The exactness test with an SMLMT task in the mixture (beside NER and QA), every algorithm."""
    data = smlmt_config(tmp_path, mixed_data, algorithm=algorithm)
    data["optim"]["max_grad_norm"] = None
    cfg = load_config(data=data)
    trainer = MetaTrainer(cfg, actors=task_actors(cfg))
    trainer.setup()
    try:
        shared = {k: v.detach().clone() for k, v in trainer.state.named.items()}
        trainer.meta_step()
        ref = reference_meta_gradient(cfg, shared, 0, pcgrad=False)
        rel = float((trainer.last_meta_grad - ref).norm() / ref.norm())
        assert float(ref.norm()) > 0 and rel <= 1e-5, f"{algorithm}: relative error {rel:.2e}"
    finally:
        trainer.shutdown()


def test_smlmt_task_trains_in_driver_and_collective_mode(task_actors, mixed_data, tmp_path):
    finals = {}
    for mode in ("driver", "collective"):
        cfg = load_config(data=smlmt_config(tmp_path / mode, mixed_data, algorithm="protonet",
                                            reduce=mode, steps=2))
        final = MetaTrainer(cfg, actors=task_actors(cfg)).run()
        records = [json.loads(ln)
                   for ln in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "loss" in r]
        assert [r["step"] for r in steps] == [0, 1], mode
        assert all(math.isfinite(r["loss"]["smlmt"]) for r in steps), mode
        finals[mode] = load_file(str(final / "model.safetensors"))
    for k, v in finals["driver"].items():  # the same meta-gradients, reduced two ways
        assert torch.allclose(v, finals["collective"][k], rtol=1e-5, atol=1e-6), k
