"""Checkpoints: atomic directories, LATEST, safetensors only, clear errors for bad files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from raymeta.config import ExperimentConfig, ModelConfig
from raymeta.core.checkpoint import (
    atomic_dir,
    latest_checkpoint,
    load_checkpoint,
    load_encoder_weights,
    save_checkpoint,
)
from raymeta.core.model import load_encoder
from raymeta.errors import ModelError

from ..conftest import TINY_BERT


@pytest.fixture()
def encoder():
    torch.manual_seed(0)
    return load_encoder(ModelConfig(from_config=TINY_BERT))


def save(tmp_path, step, encoder, tokenizer, **kw):
    return save_checkpoint(tmp_path, step, encoder=encoder, tokenizer=tokenizer,
                           cfg=ExperimentConfig(),
                           tensors={"optim.0.exp_avg": torch.ones(3) * step}, state={"x": step},
                           **kw)


def test_save_and_load_round_trip(tmp_path, encoder, tokenizer):
    path = save(tmp_path, 5, encoder, tokenizer)
    assert latest_checkpoint(tmp_path) == path
    tensors, state = load_checkpoint(path)
    assert state["step"] == 5 and state["x"] == 5 and torch.equal(tensors["optim.0.exp_avg"],
                                                                  torch.full((3,), 5.0))
    torch.manual_seed(1)
    other = load_encoder(ModelConfig(from_config=TINY_BERT))
    load_encoder_weights(other, path / "model")
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                 other.state_dict().values()))


def test_keep_last_prunes_old(tmp_path, encoder, tokenizer):
    for s in (1, 2, 3):
        save(tmp_path, s, encoder, tokenizer, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                   if p.name.startswith("step-"))
    assert names == ["step-00000002", "step-00000003"]


def test_failure_mid_write_leaves_previous_checkpoint(tmp_path, encoder, tokenizer, monkeypatch):
    good = save(tmp_path, 1, encoder, tokenizer)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("raymeta.core.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        save(tmp_path, 2, encoder, tokenizer)
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["LATEST",
                                                                            "step-00000001"]


def test_incomplete_directory_is_never_picked(tmp_path, encoder, tokenizer):
    good = save(tmp_path, 1, encoder, tokenizer)
    half = tmp_path / "checkpoints" / "step-00000009"  # e.g. copied by hand, no trainer_state.json
    (half / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "LATEST").write_text("step-00000009\n")
    assert latest_checkpoint(tmp_path) == good


def test_atomic_dir_replaces_existing(tmp_path):
    target = tmp_path / "final"
    for v in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "f").write_text(v)
    assert (target / "f").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["final"]


def test_truncated_safetensors_is_a_clear_error(tmp_path, encoder, tokenizer):
    path = save(tmp_path, 1, encoder, tokenizer)
    f = path / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"model.safetensors: not a readable safetensors file"):
        load_encoder_weights(encoder, path / "model")


def test_different_architecture_is_a_clear_error(tmp_path, encoder):
    save_file({"embeddings.word_embeddings.weight": torch.zeros(10, 8)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="different architecture from the configured model"):
        load_encoder_weights(encoder, tmp_path)


def test_latest_is_the_newest_complete_one_even_before_LATEST_names_it(tmp_path, encoder,
                                                                       tokenizer):
    save(tmp_path, 1, encoder, tokenizer)
    newer = save(tmp_path, 2, encoder, tokenizer)
    # killed between the rename and LATEST
    (tmp_path / "checkpoints" / "LATEST").write_text("step-00000001\n")
    assert latest_checkpoint(tmp_path) == newer


def test_checkpoints_after_the_saved_step_are_another_timeline_and_go(tmp_path, encoder, tokenizer):
    for s in (1, 2, 3):
        save(tmp_path, s, encoder, tokenizer, keep_last=1)
    # restored from step 1, step 2 replayed
    again = save(tmp_path, 2, encoder, tokenizer, keep_last=1)
    assert latest_checkpoint(tmp_path) == again
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["LATEST",
                                                                            "step-00000002"]


def test_leftovers_of_killed_writers_are_removed_by_the_next_save(tmp_path, encoder, tokenizer):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid is free
    root = tmp_path / "checkpoints"
    mine_alive = os.getppid()  # a live process: its leftovers may still be in use
    for name in (f".tmp-step-00000005-{dead.pid}", f".old-step-00000004-{dead.pid}",
                 f".trash-step-00000001-{dead.pid}",
                 f".tmp-step-00000006-{mine_alive}"):
        (root / name / "model").mkdir(parents=True)
    (root / f".LATEST.tmp{dead.pid}").write_text("step-00000005\n")
    save(tmp_path, 1, encoder, tokenizer)
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-step-00000006-{mine_alive}", "LATEST",
                                                      "step-00000001"]
