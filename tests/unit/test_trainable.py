"""model.trainable (full | lora | top_layers): what trains, the exact start, the merged export, bad
input. Merged exports are compared by relative error (‖Δ‖/‖h‖ ≤ 1e-5), as the distributed
meta-gradient is."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from raymeta.config import EpisodeConfig, ModelConfig, TaskConfig, load_config
from raymeta.core.algorithms import ALGORITHMS, task_gradient
from raymeta.core.checkpoint import ADAPTER_DIR, export_model
from raymeta.core.model import MetaModel, load_encoder
from raymeta.core.trainable import is_peft, layout_signature, trainable_summary, transformer_layers
from raymeta.errors import ConfigError, ModelError
from raymeta.tasks import load_task

from ..conftest import TINY_BERT

TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 3, "n_head": 2, "n_positions": 64,
             "vocab_size": 30522,
             "bos_token_id": 0, "eos_token_id": 0}
MODES = {
    "lora": {"trainable": "lora"},
    "lora_norms": {"trainable": "lora", "train_norms": True},
    "top_layers": {"trainable": "top_layers", "top_layers": 1},
}


def encoder(seed: int = 0, family: dict = TINY_BERT, **kw):
    torch.manual_seed(seed)
    return load_encoder(ModelConfig(from_config=family, **kw))


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖: merging W + s·B·A rounds differently from W·x + s·B·(A·x), by float32 ulps per
    layer."""
    return float((a - b).norm() / b.norm())


def batch(tokenizer, pair: bool = True):
    a = ["the match ended in a draw", "prices rose again today", "a short one"]
    b = ["football", "economy", "misc"] if pair else None
    return dict(tokenizer(a, b, padding=True, return_tensors="pt"))


def trainable_names(enc) -> list[str]:
    return [n for n, p in enc.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("family", [TINY_BERT, TINY_GPT2], ids=["bert", "gpt2"])
def test_lora_step_zero_is_the_pretrained_model_bit_for_bit(family, tokenizer):
    """B = 0 at the start, dropout 0: every output equals the base model's exactly (train mode
    too)."""
    base, lora = encoder(family=family), encoder(family=family, trainable="lora")
    assert is_peft(lora) and not is_peft(base)
    x = batch(tokenizer, pair=family is TINY_BERT)
    for mode in ("eval", "train"):
        mb, ml = MetaModel(base), MetaModel(lora)
        getattr(mb, mode)(), getattr(ml, mode)()
        torch.manual_seed(1)
        hb = mb.encode(x)
        torch.manual_seed(1)
        hl = ml.encode(x)
        assert torch.equal(hb, hl), mode
    # token_type_ids still reach BERT through the PeftModel wrapper (its forward only takes
    # **kwargs)
    assert ("token_type_ids" in MetaModel(lora)._inputs) == (family is TINY_BERT)


def test_lora_trains_only_adapters_and_never_the_pooler():
    enc = encoder(trainable="lora")
    names = trainable_names(enc)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert not any("pooler" in n for n in names)  # the pooler is never used: no adapter there
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert targets == {"query", "key", "value", "dense"}
    full = sum(p.numel() for p in encoder().parameters() if p.requires_grad)
    assert sum(p.numel() for n, p in enc.named_parameters() if p.requires_grad) < full / 5


def test_gpt2_default_targets_and_custom_rank():
    enc = encoder(family=TINY_GPT2, trainable="lora", lora={"r": 4})
    names = trainable_names(enc)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"c_attn", "c_proj"}
    a = dict(enc.named_parameters())[next(n for n in names if ".lora_A." in n)]
    assert 4 in a.shape


def test_train_norms_adds_layernorms():
    names = trainable_names(encoder(**MODES["lora_norms"]))
    assert any("LayerNorm" in n for n in names) and any(".lora_A." in n for n in names)
    names = trainable_names(encoder(trainable="top_layers", top_layers=1, train_norms=True))
    assert ("embeddings.LayerNorm.weight" in names
            and "encoder.layer.0.output.LayerNorm.weight" in names)
    assert "encoder.layer.0.attention.self.query.weight" not in names


@pytest.mark.parametrize("family, k", [(TINY_BERT, 1), (TINY_GPT2, 2)], ids=["bert", "gpt2"])
def test_top_layers_freezes_everything_below(family, k):
    enc = encoder(family=family, trainable="top_layers", top_layers=k)
    layers = transformer_layers(enc)
    n = len(layers)
    for i, layer in enumerate(layers):
        assert all(p.requires_grad == (i >= n - k) for p in layer.parameters()), i
    emb = enc.get_input_embeddings()
    assert not emb.weight.requires_grad
    if family is TINY_GPT2:
        assert enc.ln_f.weight.requires_grad  # above the stack: it trains


def test_export_merges_lora_and_keeps_the_adapter(tokenizer, tmp_path):
    """final/ loads with AutoModel (no peft) and equals the peft model (1e-5); final/adapter loads
    with peft."""
    from peft import PeftModel

    enc = encoder(trainable="lora")
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)  # as after meta-training: the adapters change the model
    x = batch(tokenizer)
    with torch.no_grad():
        want = MetaModel(enc).eval().encode(x)
    out = export_model(tmp_path / "final", enc, tokenizer)
    merged = AutoModel.from_pretrained(out)
    assert not is_peft(merged) and not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        got = MetaModel(merged).eval().encode(x)
        plain = MetaModel(encoder()).eval().encode(x)
        reloaded = MetaModel(PeftModel.from_pretrained(encoder(),
                                                       out / ADAPTER_DIR)).eval().encode(x)
    assert rel(got, want) <= 1e-5
    assert rel(plain, want) > 1e-3  # the adapters did change it
    assert torch.equal(reloaded, want)


def test_every_algorithm_reaches_exactly_the_trainable_parameters(tokenizer, tmp_path):
    d = tmp_path
    (d / "c.csv").write_text("text,label\n" + "".join(f"about {t} {i},{t}\n" for i in range(8)
                                                      for t in "abcd"))
    spec = TaskConfig.model_validate({"name": "cls", "type": "sequence_classification",
                                      "max_length": 16,
                                      "source": {"kind": "files", "format": "csv",
                                                 "files": {"train": str(d / "c.csv")}}})
    task = load_task(spec, tokenizer, str(d))
    ep = task.episode(EpisodeConfig(ways=3, shots=2, queries=2), seed=1, step=0)
    for mode, kw in MODES.items():
        for alg in ALGORITHMS:
            torch.manual_seed(0)
            cfg = ModelConfig(from_config=TINY_BERT, head_dropout=0.0, **kw)
            model = MetaModel.from_config(cfg, [("cls", "sequence_classification",
                                                 task.num_labels)],
                                          attn_implementation="eager").eval()
            shared = model.shared_named_parameters()
            assert shared and all(p.requires_grad for p in shared.values())
            params = {**shared, **model.head_named_parameters("cls")}
            r = task_gradient(alg, model, "cls", "sequence_classification", ep, params,
                              inner_steps=1, inner_lr=0.1)
            enc = {k: g for k, g in r.grads.items() if k.startswith("encoder.")}
            assert set(enc) <= set(shared), (mode, alg)
            assert sum(float(g.norm()) for g in enc.values()) > 0, (mode, alg)
            assert all(torch.isfinite(g).all() for g in enc.values())


def test_bad_lora_targets_name_the_key_and_list_what_exists():
    with pytest.raises(ModelError) as e:
        encoder(trainable="lora", lora={"target_modules": ["c_attn"]})
    msg = str(e.value)
    assert ("model.lora.target_modules" in msg and "'c_attn'" in msg and "query" in msg
            and "\n" not in msg)


def test_top_layers_larger_than_the_model_is_one_line():
    with pytest.raises(ModelError, match=r"model.top_layers': 5 is more than the model's 2 layers"):
        encoder(trainable="top_layers", top_layers=5)


def test_top_layers_mode_needs_k_and_unknown_keys_fail():
    with pytest.raises(ConfigError, match="model.top_layers"):
        load_config(data={"model": {"trainable": "top_layers"}})
    with pytest.raises(ConfigError, match="model.lora.rank"):
        load_config(data={"model": {"lora": {"rank": 4}}})
    with pytest.raises(ConfigError, match="model.trainable"):
        load_config(data={"model": {"trainable": "adapters"}})


def test_summary_and_layout_signature_tell_modes_apart():
    full, lora = ModelConfig(), ModelConfig(trainable="lora", lora={"r": 4})
    assert trainable_summary(full) == "full" and trainable_summary(lora).startswith("lora r=4")
    a = layout_signature(lora, ["x", "y"], 10)
    assert a == layout_signature(lora, ["x", "y"], 10)
    assert a["names_crc32"] != layout_signature(lora, ["x", "z"], 10)["names_crc32"]


def test_evaluate_init_takes_the_adapter_directory(tokenizer, tmp_path):
    """`raymeta evaluate --init <run>/final/adapter`: the adapter is merged into its recorded base
    (MiniLM here)."""
    from raymeta.core.model import OFFLINE_MINILM
    from raymeta.eval.evaluate import resolve_init

    enc = load_encoder(ModelConfig(name_or_path=OFFLINE_MINILM, trainable="lora"))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if ".lora_B." in n:
                # about what meta-training leaves (the default scale alpha/r = 2 applies on top)
                p.normal_(0, 0.01)
    out = export_model(tmp_path / "final", enc, tokenizer)
    x = batch(tokenizer)
    path = resolve_init(str(out / ADAPTER_DIR))
    assert path == str(out / ADAPTER_DIR)
    with torch.no_grad():
        got = MetaModel(load_encoder(ModelConfig(name_or_path=path))).eval().encode(x)
        want = MetaModel(enc).eval().encode(x)
    assert rel(got, want) <= 1e-5


def test_adapter_of_a_from_config_model_has_no_base_to_merge_into(tokenizer, tmp_path):
    enc = encoder(trainable="lora")
    out = export_model(tmp_path / "final", enc, tokenizer)
    with pytest.raises(ModelError, match="base model is not recorded"):
        load_encoder(ModelConfig(name_or_path=str(out / ADAPTER_DIR)))


@pytest.mark.parametrize("mode, match", [({"trainable": "lora",
                                           "lora": {"target_modules": ["c_attn"]}},
                                          "no module named"),
                                         ({"trainable": "top_layers", "top_layers": 7},
                                          "more than the model's 2 layers")])
def test_a_model_that_cannot_be_built_as_configured_fails_before_ray_starts(mode, match, tmp_path,
                                                                            monkeypatch):
    """MetaTrainer.run builds the driver's model before it connects: the mistake is reported in a
    second, not after a local Ray instance has started (which takes seconds, and is what `raymeta
    train` would do first)."""
    from raymeta.train import trainer

    def connect(*args, **kwargs):
        raise AssertionError("connected to Ray before the model was built")

    monkeypatch.setattr(trainer, "connect", connect)
    cfg = load_config(data={"output_dir": str(tmp_path / "run"), "model": {"from_config": TINY_BERT,
                                                                           **mode},
                            "tasks": [{"name": "t", "type": "sequence_classification",
                                       "source": {"kind": "files", "format": "csv",
                                                  "files": {"train": "x.csv"}}}]})
    with pytest.raises(ModelError, match=match):
        trainer.MetaTrainer(cfg).run()
    assert not (tmp_path / "run").exists()
