"""Exported model directories are sentence-transformers folders too (raymeta.core.st_folder):
``SentenceTransformer(path)`` and ``SetFitModel.from_pretrained(path)`` embed exactly as raymeta's
own pooling does (within 1e-5), for each pooling raymeta has; ``final/`` at ``best/``'s step
hard-links its weights (raymeta.core.checkpoint.share_files)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModel

from raymeta.config import ExperimentConfig, ModelConfig, load_config
from raymeta.core.checkpoint import ADAPTER_DIR, export_model, share_files
from raymeta.core.model import MetaModel, load_encoder
from raymeta.core.st_folder import max_seq_length, sentence_transformers_files

from ..conftest import TINY_BERT

TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
             "vocab_size": 30522, "bos_token_id": 0, "eos_token_id": 0}
# lengths differ, so that padding matters: a pooling that ignored the mask would be seen
SENTENCES = ["the match ended in a draw after extra time", "prices rose", "a short one today",
             "what time does the museum open on sundays"]
POOLINGS = ("mean", "cls", "last")


def encoder(family: dict = TINY_BERT, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return load_encoder(ModelConfig(from_config=family, **kw))


@torch.no_grad()
def raymeta_embeddings(enc, tokenizer, pooling: str, max_length: int) -> torch.Tensor:
    """What raymeta's evaluation embeds: the tasks' tokenisation (truncated to the task's
    max_length) and MetaModel.embed."""
    batch = dict(tokenizer(SENTENCES, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
    return MetaModel(enc, pooling).eval().embed(batch)


def st_embeddings(path) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    return torch.as_tensor(model.encode(SENTENCES, convert_to_numpy=True))


def setfit_embeddings(path) -> torch.Tensor:
    from setfit import SetFitModel

    model = SetFitModel.from_pretrained(str(path), device="cpu")
    assert not model.normalize_embeddings
    return torch.as_tensor(model.encode(SENTENCES))


def cfg_with(pooling: str | None) -> ExperimentConfig:
    """The shipped tiny config (its tasks' max_length: 32) with ``model.pooling``."""
    return load_config("tiny", [f"model.pooling={pooling}"] if pooling else [])


@pytest.mark.parametrize("family, pooling", [(TINY_BERT, p) for p in POOLINGS]
                         + [(TINY_GPT2, "last")], ids=["mean", "cls", "last", "gpt2-last"])
def test_sentence_transformers_and_setfit_embed_with_raymetas_pooling(family, pooling, tokenizer,
                                                                      tmp_path):
    enc = encoder(family)
    cfg = cfg_with(pooling)
    out = export_model(tmp_path / "final", enc, tokenizer, cfg=cfg, step=3)
    length = max(t.max_length for t in cfg.tasks)
    sbert = json.loads((out / "sentence_bert_config.json").read_text())
    assert length == 32 and sbert["max_seq_length"] == 32 and sbert["do_lower_case"] is False
    # GPT-2 (here with the MiniLM tokenizer, which makes token_type_ids) is never given
    # token_type_ids by raymeta: nor by sentence-transformers
    assert sbert.get("tokenizer_args") == ({"model_input_names": ["input_ids", "attention_mask"]}
                                           if family is TINY_GPT2 else None)
    want = raymeta_embeddings(enc, tokenizer, pooling, length)
    for got in (st_embeddings(out), setfit_embeddings(out)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # the other poolings give other embeddings on this model: a wrong 1_Pooling would fail
        for other in set(POOLINGS) - {pooling}:
            assert (raymeta_embeddings(enc, tokenizer, other, length) - got).abs().max() > 1e-3


def test_default_pooling_is_the_familys_and_nothing_normalises(tokenizer, tmp_path):
    """No model.pooling: mean for BERT (the pooled vectors are not unit length: no Normalize);
    no config at all (the validation's scratch export): the same pooling."""
    enc = encoder()
    for out in (export_model(tmp_path / "cfg", enc, tokenizer, cfg=ExperimentConfig(), step=0),
                export_model(tmp_path / "bare", enc, tokenizer)):
        modules = json.loads((out / "modules.json").read_text())
        assert [m["path"] for m in modules] == ["", "1_Pooling"]
        pool = json.loads((out / "1_Pooling" / "config.json").read_text())
        assert pool["word_embedding_dimension"] == 32 and pool["pooling_mode_mean_tokens"]
        assert sum(v for k, v in pool.items() if k.startswith("pooling_mode_")) == 1
        got = st_embeddings(out)
        torch.testing.assert_close(got, raymeta_embeddings(enc, tokenizer, "mean", 128),
                                   atol=1e-5, rtol=0)
        assert (got.norm(dim=-1) - 1).abs().max() > 1e-2


def test_lora_export_describes_the_merged_model(tokenizer, tmp_path):
    """final/ (merged) is the sentence-transformers folder; it embeds like the peft model
    (relative error 1e-5, as the merged export is compared in test_trainable) and exactly like the
    merged weights loaded with AutoModel."""
    enc = encoder(trainable="lora")
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    out = export_model(tmp_path / "final", enc, tokenizer, cfg=cfg_with(None), step=1)
    assert (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert not (out / ADAPTER_DIR / "modules.json").exists()
    got = st_embeddings(out)
    merged = raymeta_embeddings(AutoModel.from_pretrained(out), tokenizer, "mean", 32)
    torch.testing.assert_close(got, merged, atol=1e-5, rtol=0)
    peft = raymeta_embeddings(enc, tokenizer, "mean", 32)
    assert float((got - peft).norm() / peft.norm()) <= 1e-5


def test_files_are_plain_json_in_the_hub_format(tokenizer):
    """What the offline MiniLM's own sentence-transformers folder has, and the run's settings:
    the longest task, capped by the tokenizer and the position embeddings; the prototype metric."""
    from transformers import BertConfig

    config = BertConfig(hidden_size=384, max_position_embeddings=512)
    files = sentence_transformers_files(config, tokenizer, pooling="mean", task_max_length=128,
                                        similarity="euclidean")
    assert files["modules.json"][1] == {"idx": 1, "name": "1", "path": "1_Pooling",
                                        "type": "sentence_transformers.models.Pooling"}
    assert files["1_Pooling/config.json"]["pooling_mode_mean_tokens"] is True
    assert files["sentence_bert_config.json"] == {"max_seq_length": 128, "do_lower_case": False}
    assert files["config_sentence_transformers.json"]["similarity_fn_name"] == "euclidean"
    assert max_seq_length(config, tokenizer) == 512  # the tokenizer's model_max_length
    assert max_seq_length(BertConfig(max_position_embeddings=64), tokenizer, 128) == 64
    with pytest.raises(ValueError, match="unknown pooling"):
        sentence_transformers_files(config, tokenizer, pooling="max")


def test_share_files_hard_links_the_same_weights(tokenizer, tmp_path):
    """final/ exported with share_with=best/ of the same parameters: its weights are best's inode,
    its bytes those of a fresh export; small files (the model card, which differs) stay its own."""
    enc = encoder()
    cfg = ExperimentConfig()
    best = export_model(tmp_path / "best", enc, tokenizer, cfg=cfg, step=4,
                        card={"validation_score": 0.5}, files={"raymeta_best.json": "{}"})
    final = export_model(tmp_path / "final", enc, tokenizer, cfg=cfg, step=4, share_with=best)
    fresh = export_model(tmp_path / "fresh", enc, tokenizer, cfg=cfg, step=4)
    weights = "model.safetensors"
    assert os.stat(final / weights).st_ino == os.stat(best / weights).st_ino
    assert os.stat(final / weights).st_nlink == 2
    assert os.stat(fresh / weights).st_ino != os.stat(best / weights).st_ino
    for f in fresh.rglob("*"):
        if f.is_file():
            assert (final / f.relative_to(fresh)).read_bytes() == f.read_bytes(), f.name
    assert os.stat(final / "README.md").st_ino != os.stat(best / "README.md").st_ino
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    # best/ replaced later (a later best): final/ keeps its bytes
    other = encoder(seed=1)
    export_model(best, other, tokenizer, cfg=cfg, step=5)
    assert (final / weights).read_bytes() == (fresh / weights).read_bytes()
    # different parameters are never linked to (the bytes are compared, not only the names)
    assert share_files(fresh, best) == []
    assert os.stat(fresh / weights).st_nlink == 1


def test_share_files_keeps_the_copy_where_no_link_can_be_made(tokenizer, tmp_path, monkeypatch):
    enc = encoder()
    best = export_model(tmp_path / "best", enc, tokenizer)

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    final = export_model(tmp_path / "final", enc, tokenizer, share_with=best)
    assert os.stat(final / "model.safetensors").st_ino != os.stat(best / "model.safetensors").st_ino
    assert (final / "model.safetensors").read_bytes() == (best / "model.safetensors").read_bytes()
