"""model.trainable on a local Ray instance: the distributed meta-gradient equals the single-process
reference for {full, lora, top_layers} × every algorithm × {driver, collective}; only trainable
parameters travel; a LoRA run exports a merged model and its adapter, resumes bit for bit, and
refuses another layout.

Every case reuses one set of task actors (the ``task_actors`` fixture: ``MetaTrainer(cfg,
actors=...)`` resets them), so the 30 cases cost three process start-ups, not 90."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raymeta.config import load_config
from raymeta.core.algorithms import ALGORITHMS
from raymeta.core.checkpoint import ADAPTER_DIR, latest_checkpoint
from raymeta.errors import ConfigError
from raymeta.train.trainer import MetaTrainer

from .conftest import algorithm_meta, driver_killed_at, tiny_config, write_config
from .test_trainer import reference_meta_gradient

MODES = {
    "full": {},
    "lora": {"trainable": "lora", "lora": {"r": 2, "alpha": 4.0}},
    "top_layers": {"trainable": "top_layers", "top_layers": 1, "train_norms": True},
}
CASES = [(m, a, r) for m in MODES for a in ALGORITHMS for r in ("driver", "collective")]
# full × driver × every algorithm is tests/integration/test_trainer.py's exactness test (with
# PCGrad, replicas)
CASES = [c for c in CASES if not (c[0] == "full" and c[2] == "driver")]
# MetaOptNet: full and LoRA (its encoder gradient is ProtoNet's path with another head), both heads
CASES = [c for c in CASES if not (c[1] == "metaopt" and c[0] == "top_layers")]
CASES += [("lora", "metaopt-svm", "collective")]  # and full × driver in test_trainer.py
# meta.overlap is on by default (the cases above); off, the all-reduce waits for the whole backward
# pass
CASES += [("full", a, "collective:no-overlap") for a in ("protonet", "maml", "reptile")]
CASES += [("lora", "fomaml", "driver:no-overlap")]


def config(tmp_path, data_dir, mode: str, **meta):
    data = tiny_config(tmp_path, data_dir, **meta)
    data["model"].update(MODES[mode])
    # clipping rescales the gradient in place: compare the raw meta-gradient
    data["optim"]["max_grad_norm"] = None
    return data


@pytest.mark.parametrize("mode, algorithm, reduce", CASES, ids=[f"{m}-{a}-{r}" for m, a,
                                                                r in CASES])
def test_meta_gradient_equals_reference_for_every_trainable_mode(mode, algorithm, reduce,
                                                                 task_actors, mixed_data, tmp_path):
    import ray

    reduce, _, no_overlap = reduce.partition(":")
    data = config(tmp_path, mixed_data, mode, reduce=reduce, **algorithm_meta(algorithm))
    # small buckets: the tiny model's 4 MB gradient is all-reduced in dozens of buckets, launched
    # from the backward
    data["meta"].update(overlap=not no_overlap, bucket_mb=0.05)
    cfg = load_config(data=data)
    trainer = MetaTrainer(cfg, actors=task_actors(cfg))
    trainer.setup()
    try:
        if mode != "full":  # only the trainable parameters are in the layout, published and reduced
            total = sum(p.numel() for p in trainer.state.encoder.parameters())
            assert 0 < trainer.state.layout.numel < total / 2
            assert all(".lora_" in n for n in trainer.state.layout.names) == (mode == "lora")
        shared = {k: v.detach().clone() for k, v in trainer.state.named.items()}
        if reduce == "collective":
            trainer.meta_step()
            got = torch.tensor(ray.get(next(iter(trainer.actors.values())).meta_gradient.remote()))
        else:
            record = trainer.meta_step()
            got = trainer.last_meta_grad
            # no frozen value travels
            assert set(record.grad_bytes.values()) == {trainer.state.layout.nbytes}
        ref = reference_meta_gradient(cfg, shared, 0, pcgrad=False)
        assert float(got.norm()) > 0
        rel = float((got - ref).norm() / ref.norm())
        assert rel <= 1e-5, f"{mode}/{algorithm}/{reduce}: relative error {rel:.2e}"
    finally:
        trainer.shutdown()


def _adapters(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"))


def test_lora_run_exports_merged_model_and_adapter_and_resumes_bit_for_bit(task_actors, mixed_data,
                                                                           tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModel

    from raymeta.core.model import MetaModel, load_encoder, load_tokenizer

    straight_cfg = load_config(data=config(tmp_path / "a", mixed_data, "lora", algorithm="fomaml",
                                           steps=4))
    final = MetaTrainer(straight_cfg, actors=task_actors(straight_cfg)).run()
    straight = _adapters(final)

    # the merged model loads without peft and equals base + adapter (1e-5); the adapter moved away
    # from B = 0
    tok = load_tokenizer(straight_cfg.model)
    batch = dict(tok(["Alice met Bob in New York"], ["Where?"], return_tensors="pt"))
    torch.manual_seed(straight_cfg.seed)
    from raymeta.config import ModelConfig

    base = load_encoder(ModelConfig(name_or_path=straight_cfg.model.name_or_path,
                                    from_config=straight_cfg.model.from_config), len(tok))
    with_adapter = MetaModel(PeftModel.from_pretrained(base, final / ADAPTER_DIR)).eval()
    merged = MetaModel(AutoModel.from_pretrained(final)).eval()
    with torch.no_grad():
        a, b = with_adapter.encode(batch), merged.encode(batch)
    assert float((a - b).norm() / b.norm()) <= 1e-5  # relative, as in tests/unit/test_trainable.py
    assert any(float(v.abs().sum()) > 0 for k, v in straight.items() if "lora_B" in k)
    state = json.loads((latest_checkpoint(straight_cfg.output_dir) / "trainer_state.json")
                       .read_text())
    assert state["layout"]["trainable"].startswith("lora r=2")

    # interrupted after two steps, then resumed: the same adapters, bit for bit
    cfg = load_config(data=config(tmp_path / "b", mixed_data, "lora", algorithm="fomaml", steps=4))
    with driver_killed_at(monkeypatch, 2):
        MetaTrainer(cfg, actors=task_actors(cfg)).run()
    resumed = _adapters(MetaTrainer(cfg, actors=task_actors(cfg), resume=True).run())
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k],
                                                                 resumed[k]) for k in straight)

    # another layout (full, or another rank) cannot resume it: one line, nothing written
    for change in ({"trainable": "full"}, {"lora": {"r": 4, "alpha": 4.0}}):
        data = config(tmp_path / "b", mixed_data, "lora", algorithm="fomaml", steps=6)
        data["model"].update(change)
        before = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
        with pytest.raises(ConfigError, match="its trainable layout .* differs from this run's"):
            MetaTrainer(load_config(data=data), actors=task_actors(cfg), resume=True).run()
        assert sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir()) == before


def test_cli_resume_with_another_layout_is_one_line_exit_2(task_actors, cli, mixed_data, tmp_path):
    """The same refusal through `raymeta train --resume`: exit 2, one line, no traceback, before Ray
    starts."""
    data = config(tmp_path, mixed_data, "lora", algorithm="multitask", steps=1)
    path = write_config(tmp_path, data)
    cfg = load_config(path)
    MetaTrainer(cfg, actors=task_actors(cfg)).run()
    assert (tmp_path / "run" / "final" / ADAPTER_DIR / "adapter_config.json").is_file()
    r = cli.run(["train", "--config", path, "--resume", "model.trainable=full", "meta.steps=2"],
                cwd=Path.cwd(),
                timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("raymeta: error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (len(lines) == 1 and "trainable layout (lora r=2" in lines[0]
            and "this run's (full" in lines[0]), r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()
                  if not p.name.startswith(".")) == \
        ["LATEST", "step-00000001"]
