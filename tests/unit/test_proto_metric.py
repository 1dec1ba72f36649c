"""``meta.proto``: the prototype metric (distance and temperature) of ProtoNet, the Proto-MAML
episode head and the episodic prototype classifier, on a tiny model in one process (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raymeta.config import EpisodeConfig, ModelConfig, ProtoConfig, TaskConfig, load_config
from raymeta.core import algorithms
from raymeta.core.algorithms import ALGORITHMS, task_gradient
from raymeta.core.base_learners import proto_logits, prototypes
from raymeta.core.model import MetaModel
from raymeta.errors import ConfigError
from raymeta.eval.episodic import episodic_accuracy
from raymeta.tasks import load_task

from ..conftest import TINY_BERT

EP = EpisodeConfig(ways=3, shots=2, queries=2)


@pytest.fixture(scope="module")
def task(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("proto")
    (d / "c.csv").write_text("text,label\n" + "".join(f"about {t} {i},{t}\n" for i in range(8)
                                                      for t in "abcd"))
    spec = TaskConfig.model_validate({"name": "cls", "type": "sequence_classification",
                                      "max_length": 16,
                                      "source": {"kind": "files", "format": "csv",
                                                 "files": {"train": str(d / "c.csv")}}})
    return load_task(spec, tokenizer, str(d))


def setup(task):
    torch.manual_seed(0)
    cfg = ModelConfig(from_config=TINY_BERT, head_dropout=0.0)
    model = MetaModel.from_config(cfg, [(task.name, task.config.type, task.num_labels)],
                                  attn_implementation="eager").eval()
    params = {**model.shared_named_parameters(), **model.head_named_parameters(task.name)}
    return model, params, task.episode(EP, seed=1, step=0)


def test_config_default_is_the_euclidean_metric_scaled_by_ten():
    # chosen on validation tasks (configs/proto_metric.yaml, benchmarks/results/protonet-metric.md)
    assert load_config().meta.proto == ProtoConfig(distance="euclidean", temperature=10.0)
    assert load_config(overrides=["meta.proto.distance=cosine",
                                  "meta.proto.temperature=0.1"]).meta.proto.temperature == 0.1
    with pytest.raises(ConfigError, match="meta.proto.temperature"):
        load_config(overrides=["meta.proto.temperature=0"])
    with pytest.raises(ConfigError, match="meta.proto.distance"):
        load_config(overrides=["meta.proto.distance=manhattan"])


def test_default_logits_are_bit_equal_to_the_unscaled_distance():
    torch.manual_seed(0)
    q, p = torch.randn(7, 5), torch.randn(3, 5)
    # the formula before meta.proto existed
    before = -((q.unsqueeze(1) - p.unsqueeze(0)) ** 2).sum(-1)
    assert torch.equal(proto_logits(q, p), before)
    assert torch.equal(proto_logits(q, p, "euclidean", 1.0), before)


def test_cosine_logits_are_the_scaled_cosine_similarity():
    torch.manual_seed(1)
    q, p = torch.randn(7, 5), torch.randn(3, 5)
    want = F.cosine_similarity(q.unsqueeze(1), p.unsqueeze(0), dim=-1) / 0.1
    assert torch.allclose(proto_logits(q, p, "cosine", 0.1), want, atol=1e-5)
    assert float(proto_logits(q, p, "cosine").abs().max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="unknown prototype distance"):
        proto_logits(q, p, "manhattan")


def test_temperature_divides_the_protonet_logits_and_sets_the_loss(task):
    model, params, ep = setup(task)
    r1 = task_gradient("protonet", model, task.name, "sequence_classification", ep, params)
    model, params, ep = setup(task)
    r4 = task_gradient("protonet", model, task.name, "sequence_classification", ep, params,
                       temperature=4.0)
    with torch.no_grad():  # the loss written out independently: CE over -‖q - p‖² / T
        es, eq = model.embed(ep.support), model.embed(ep.query)
        protos = torch.stack([es[ep.support["labels"] == c].mean(0)
                              for c in range(len(ep.classes))])
        d = torch.cdist(eq, protos) ** 2
        for r, t in ((r1, 1.0), (r4, 4.0)):
            assert abs(r.loss - float(F.cross_entropy(-d / t, ep.query["labels"]))) < 1e-4
    assert abs(r1.loss - r4.loss) > 1e-3  # the temperature really changes the objective


def test_cosine_protonet_loss(task):
    model, params, ep = setup(task)
    r = task_gradient("protonet", model, task.name, "sequence_classification", ep, params,
                      distance="cosine", temperature=0.2)
    with torch.no_grad():
        es, eq = model.embed(ep.support), model.embed(ep.query)
        protos = torch.stack([es[ep.support["labels"] == c].mean(0)
                              for c in range(len(ep.classes))])
        cos = F.cosine_similarity(eq.unsqueeze(1), protos.unsqueeze(0), dim=-1)
        assert abs(r.loss - float(F.cross_entropy(cos / 0.2, ep.query["labels"]))) < 1e-4


def _episode_head(task, distance, temperature):
    model, params, ep = setup(task)
    fn = algorithms._Functional(model, task.name, "sequence_classification", True, distance,
                                temperature)
    with torch.no_grad():
        head = algorithms._with_episode_head(fn, params, ep, differentiable=False)
        feats_s, feats_q = fn.features(params, ep.support), fn.features(params, ep.query)
        logits = fn.logits(head, feats_q, ep.query)
        p = prototypes(feats_s, ep.support["labels"], len(ep.classes))
    return head, logits, p, feats_q


def test_default_episode_head_is_bit_equal_to_proto_maml(task):
    head, _, p, _ = _episode_head(task, "euclidean", 1.0)
    # Triantafillou et al. 2020: W = 2p, b = -‖p‖²
    assert torch.equal(head["episode_head.weight"], 2 * p)
    assert torch.equal(head["episode_head.bias"], -(p**2).sum(-1))


def test_episode_head_takes_the_same_scale_as_protonet(task):
    _, default, p, feats_q = _episode_head(task, "euclidean", 1.0)
    _, scaled, _, _ = _episode_head(task, "euclidean", 2.5)
    assert torch.allclose(scaled, default / 2.5, atol=1e-5)
    # the head is the prototype classifier up to a per-query constant, so the softmax is the same
    assert torch.allclose(F.softmax(scaled, -1), F.softmax(proto_logits(feats_q, p, "euclidean",
                                                                        2.5), -1), atol=1e-5)
    _, cosine, p, feats_q = _episode_head(task, "cosine", 0.1)
    # exactly cos / T
    assert torch.allclose(cosine, proto_logits(feats_q, p, "cosine", 0.1), atol=1e-4)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_runs_with_the_cosine_metric(alg, task):
    model, params, ep = setup(task)
    r = task_gradient(alg, model, task.name, "sequence_classification", ep, params, inner_steps=2,
                      inner_lr=0.05,
                      distance="cosine", temperature=0.1)
    enc = [g for k, g in r.grads.items() if k.startswith("encoder.")]
    assert enc and all(torch.isfinite(g).all() for g in enc) and sum(float(g.abs().sum())
                                                                     for g in enc) > 0


def test_episodic_classifier_depends_on_the_distance_not_the_temperature():
    # Two classes that differ in direction only; norms spread over three decades: cosine separates
    # them perfectly, the Euclidean distance does not.
    rng = np.random.default_rng(0)
    r = np.exp(rng.uniform(np.log(0.1), np.log(100.0), size=80))
    angle = np.repeat([0.0, 0.4], 40)
    emb = np.stack([r * np.cos(angle), r * np.sin(angle)], 1).astype(np.float32)
    ids = np.repeat([0, 1], 40)
    kw = dict(ways=2, shots=3, queries=10, episodes=30, head_steps=5)
    euc = episodic_accuracy(emb, ids, **kw)
    cos = episodic_accuracy(emb, ids, **kw, distance="cosine", temperature=0.1)
    assert cos["prototype"].mean == 1.0 and euc["prototype"].mean < 0.9
    hot = episodic_accuracy(emb, ids, **kw, temperature=7.0)
    # argmax is invariant to the temperature
    assert hot["prototype"].values == euc["prototype"].values
    assert "finetuned_head" in cos and cos["finetuned_head"].mean > 0.9
