"""The meta-algorithms' math, in one process on a tiny model (no Ray)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raymeta.config import EpisodeConfig, MetaOptConfig, ModelConfig, TaskConfig
from raymeta.core.algorithms import ALGORITHMS, task_gradient
from raymeta.core.base_learners import proto_logits, prototypes
from raymeta.core.model import MetaModel
from raymeta.tasks import load_task

from ..conftest import TINY_BERT


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("alg")
    (d / "c.csv").write_text("text,label\n" + "".join(f"about {t} {i},{t}\n" for i in range(8)
                                                      for t in "abcd"))
    (d / "n.conll").write_text("".join("Alice\tB-per\nsaw\tO\nBob\tB-per\n\n" for _ in range(8)))
    out = {}
    kinds = [("cls", "sequence_classification", "csv", "c.csv"), ("ner", "token_classification",
                                                                  "conll", "n.conll")]
    for name, type_, fmt, f in kinds:
        spec = TaskConfig.model_validate({"name": name, "type": type_, "max_length": 16,
                                          "source": {"kind": "files", "format": fmt,
                                                     "files": {"train": str(d / f)}}})
        out[name] = load_task(spec, tokenizer, str(d))
    return out


EP = EpisodeConfig(ways=3, shots=2, queries=2, support_size=3, query_size=3)


def setup(task, attn="eager"):
    torch.manual_seed(0)
    cfg = ModelConfig(from_config=TINY_BERT, head_dropout=0.0)
    heads = [(task.name, task.config.type, task.num_labels)]
    # no dropout: comparisons are exact
    model = MetaModel.from_config(cfg, heads, attn_implementation=attn).eval()
    params = {**model.shared_named_parameters(), **model.head_named_parameters(task.name)}
    return model, params, task.episode(EP, seed=1, step=0)


def grad(alg, task, **kw):
    model, params, ep = setup(task)
    return task_gradient(alg, model, task.name, task.config.type, ep, params,
                         **kw), model, params, ep


def close(a: dict, b: dict, keys=None, tol=1e-5):
    keys = keys or [k for k in a if k.startswith("encoder.")]
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in keys) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in keys) ** 0.5
    return num / den < tol


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("name", ["cls", "ner"])
def test_every_algorithm_gives_finite_nonzero_encoder_gradient(alg, name, tasks):
    r, *_ = grad(alg, tasks[name], inner_steps=2, inner_lr=0.05)
    enc = [g for k, g in r.grads.items() if k.startswith("encoder.")]
    assert enc and all(torch.isfinite(g).all() for g in enc) and sum(float(g.abs().sum())
                                                                     for g in enc) > 0
    assert r.n_examples > 0 and r.loss == r.loss


def test_reptile_one_step_is_the_multitask_gradient(tasks):
    """Nichol et al. 2018: with k = 1, (θ - θ')/α = ∇L(θ) on the same batch."""
    rep, *_ = grad("reptile", tasks["ner"], inner_steps=1, inner_lr=1e-3)
    mt, *_ = grad("multitask", tasks["ner"])
    assert close(rep.grads, mt.grads, tol=2e-3)  # float32 difference quotient


def test_reptile_one_step_on_sequence_classification_is_the_episode_head_gradient(tasks):
    """Sequence classification has no persistent head in the MAML family: k = 1 gives the gradient
    of the support ∪ query N-way loss under the Proto-MAML episode head (prototypes as constants),
    as documented, and that is not the multitask gradient (the task's own head over every class)."""
    rep, model, params, ep = grad("reptile", tasks["cls"], inner_steps=1, inner_lr=1e-3)
    mt, *_ = grad("multitask", tasks["cls"])
    enc = {k: v for k, v in params.items() if k.startswith("encoder.")}
    with torch.no_grad():
        p = prototypes(model.embed(ep.support), ep.support["labels"], len(ep.classes))
    w, b = 2 * p, -(p**2).sum(-1)
    losses = [F.cross_entropy(F.linear(model.embed(x), w, b), x["labels"]) for x in (ep.support,
                                                                                     ep.query)]
    ns, nq = (int(x["input_ids"].shape[0]) for x in (ep.support, ep.query))
    loss = (losses[0] * ns + losses[1] * nq) / (ns + nq)
    want = {k: g for k, g in zip(enc, torch.autograd.grad(loss, list(enc.values()),
                                                          allow_unused=True)) if g is not None}
    assert close(rep.grads, want, keys=list(want), tol=2e-3)  # float32 difference quotient
    assert not close(rep.grads, mt.grads, keys=list(want), tol=0.1)


@pytest.mark.parametrize("alg", ["fomaml", "reptile", "maml", "anil", "protonet", "metaopt"])
def test_an_unused_persistent_head_gets_no_gradient(alg, tasks):
    """The episode head stands in for the task's own head: no gradient for it at all (not a zero
    one, which the actor's AdamW would still decay). NER keeps its head and its gradient."""
    r, model, *_ = grad(alg, tasks["cls"], inner_steps=2, inner_lr=0.05)
    assert not [k for k in r.grads if k.startswith(model.head_prefix("cls"))]
    if alg not in ("protonet", "metaopt"):
        r, model, *_ = grad(alg, tasks["ner"], inner_steps=2, inner_lr=0.05)
        assert [k for k in r.grads if k.startswith(model.head_prefix("ner"))]


def test_maml_and_fomaml_without_inner_steps_are_the_query_gradient(tasks):
    m, model, params, ep = grad("maml", tasks["ner"], inner_steps=0)
    f, *_ = grad("fomaml", tasks["ner"], inner_steps=0)
    loss, _ = model(tasks["ner"].name, ep.query)
    want = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    assert close(m.grads, want) and close(f.grads, want)


def test_maml_differs_from_fomaml_by_second_order_terms(tasks):
    m, *_ = grad("maml", tasks["ner"], inner_steps=1, inner_lr=0.5)
    f, *_ = grad("fomaml", tasks["ner"], inner_steps=1, inner_lr=0.5)
    assert not close(m.grads, f.grads, tol=1e-3)


def test_maml_matches_finite_differences(tasks):
    """The second-order gradient is the true derivative of L_q(θ - α∇L_s(θ)) (float64, central
    differences); the first-order approximation is not."""
    task = tasks["ner"]
    model, _, ep = setup(task)
    model = model.double()
    params = {**model.shared_named_parameters(), **model.head_named_parameters(task.name)}
    maml = task_gradient("maml", model, task.name, task.config.type, ep, params, inner_steps=1,
                         inner_lr=0.5)
    fo = task_gradient("fomaml", model, task.name, task.config.type, ep, params, inner_steps=1,
                       inner_lr=0.5)
    torch.manual_seed(5)
    direction = {k: torch.randn_like(v) for k, v in params.items()}

    def outer(eps):
        p = {k: (v + eps * direction[k]).detach().requires_grad_(True) for k, v in params.items()}
        ls, _ = torch.func.functional_call(model, p, args=(task.name, ep.support))
        gs = torch.autograd.grad(ls, list(p.values()), allow_unused=True)
        fast = {k: (v - 0.5 * g if g is not None else v) for (k, v), g in zip(p.items(), gs)}
        lq, _ = torch.func.functional_call(model, fast, args=(task.name, ep.query))
        return lq.item()

    numeric = (outer(1e-5) - outer(-1e-5)) / 2e-5

    def along(r):
        return sum(float((r.grads[k] * direction[k]).sum()) for k in r.grads)

    assert abs(numeric - along(maml)) <= 1e-5 * max(1.0, abs(numeric))
    assert abs(numeric - along(fo)) > 1e-3 * max(1.0, abs(numeric))


def test_anil_adapts_only_the_head(tasks):
    """ANIL (Raghu et al. 2020): with a zero inner learning rate nothing adapts, so it equals the
    query gradient."""
    a, model, params, ep = grad("anil", tasks["ner"], inner_steps=3, inner_lr=1e-12)
    loss, _ = model(tasks["ner"].name, ep.query)
    want = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    assert close(a.grads, want, tol=1e-4)


def test_protonet_loss_is_the_prototype_cross_entropy(tasks):
    r, model, params, ep = grad("protonet", tasks["cls"])
    with torch.no_grad():
        es, eq = model.embed(ep.support), model.embed(ep.query)
        protos = torch.stack([es[ep.support["labels"] == c].mean(0)
                              for c in range(len(ep.classes))])
        dist = torch.cdist(eq, protos) ** 2
        want = F.cross_entropy(-dist, ep.query["labels"])
    assert abs(r.loss - float(want)) < 1e-4
    assert not [k for k in r.grads if k.startswith("heads.")]  # a ProtoNet needs no head


@pytest.mark.parametrize("lam", [0.5, 4.0])
def test_metaopt_ridge_loss_is_the_scaled_ridge_cross_entropy(tasks, lam):
    """MetaOptNet's ridge head (Bertinetto et al. 2019): the primal solution W = (XᵀX + λI)⁻¹XᵀY,
    written out here independently of the dual form the algorithm uses, scaled, scores the
    queries."""
    opts = MetaOptConfig(head="ridge", scale=7.0, **{"lambda": lam})
    r, model, params, ep = grad("metaopt", tasks["cls"], metaopt=opts)
    with torch.no_grad():
        x, q = model.embed(ep.support).double(), model.embed(ep.query).double()
        y = F.one_hot(ep.support["labels"], len(ep.classes)).double()
        w = torch.linalg.solve(x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
        want = F.cross_entropy(7.0 * (q @ w), ep.query["labels"])
    assert abs(r.loss - float(want)) < 1e-4
    assert not [k for k in r.grads if k.startswith("heads.")]  # its head is fitted per episode


def test_metaopt_svm_gradient_is_finite_and_differs_from_ridge(tasks):
    ridge, *_ = grad("metaopt", tasks["cls"], metaopt=MetaOptConfig(head="ridge"))
    svm, *_ = grad("metaopt", tasks["cls"], metaopt=MetaOptConfig(head="svm", iterations=30))
    enc = [k for k in svm.grads if k.startswith("encoder.")]
    assert enc and all(torch.isfinite(svm.grads[k]).all() for k in enc)
    assert not close(svm.grads, ridge.grads, tol=1e-2)


def test_metaopt_learned_scale_is_a_head_parameter_with_a_gradient(tasks):
    """learn_scale: the task head's log_scale takes the place of the fixed scale; at the same value,
    the encoder gradient is the fixed scale's."""
    import math

    task = tasks["cls"]
    fixed, *_ = grad("metaopt", task, metaopt=MetaOptConfig(scale=5.0))
    torch.manual_seed(0)
    model = MetaModel.from_config(ModelConfig(from_config=TINY_BERT, head_dropout=0.0), [],
                                  attn_implementation="eager").eval()
    model.add_head(task.name, task.config.type, task.num_labels, log_scale=math.log(5.0))
    params = {**model.shared_named_parameters(), **model.head_named_parameters(task.name)}
    learned = task_gradient("metaopt", model, task.name, task.config.type, task.episode(EP, seed=1,
                                                                                        step=0),
                            params,
                            metaopt=MetaOptConfig(scale=5.0, learn_scale=True))
    key = model.head_prefix(task.name) + "log_scale"
    assert (key in learned.grads and torch.isfinite(learned.grads[key])
            and float(learned.grads[key]) != 0)
    assert close(learned.grads, fixed.grads, tol=1e-5)


def test_proto_maml_head_equals_prototype_classifier():
    emb = torch.randn(12, 5)
    labels = torch.arange(3).repeat(4)
    p = prototypes(emb, labels, 3)
    q = torch.randn(7, 5)
    linear = q @ (2 * p).T - (p**2).sum(-1)
    # -||q - p||² = 2 q·p - ||p||² - ||q||²: the same classifier up to a per-row constant
    assert torch.allclose(proto_logits(q, p), linear - (q**2).sum(-1, keepdim=True), atol=1e-5)


def test_multitask_uses_global_labels(tasks):
    """An N-way episode's local labels map back to the task's classes for the task's own head."""
    r, model, params, ep = grad("multitask", tasks["cls"])
    from raymeta.core.algorithms import global_labels

    s = global_labels(ep.support, ep.classes)
    assert s["labels"].tolist() == [ep.classes[i] for i in ep.support["labels"].tolist()]
    assert [k for k in r.grads if k.startswith("heads.cls")]


def test_unknown_algorithm(tasks):
    model, params, ep = setup(tasks["cls"])
    with pytest.raises(ValueError, match="unknown algorithm 'magic'"):
        task_gradient("magic", model, "cls", "sequence_classification", ep, params)


def test_algorithms_never_import_ray():
    import subprocess
    import sys

    code = ("import sys, raymeta.core.algorithms, raymeta.tasks, raymeta.core.model, "
            "raymeta.core.combine; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
