"""Meta-algorithms as pure torch functions: an episode in, one task's gradient out.

Nothing here imports ray: the actor is a thin shell around :func:`task_gradient`, and a
test can call it in one process to check the distributed meta-gradient. Every function
maps ``(model, params, episode)`` to gradients keyed by parameter name, computed with
``torch.func.functional_call`` so that MAML can differentiate through its inner loop
(learn2learn's ``maml_update`` style, without mutating the module).

Heads:
- ``sequence_classification`` in the MAML family (fomaml, reptile, maml, anil) uses an
  *episode head* initialised from the support prototypes (Proto-MAML, Triantafillou et al.
  2020), so any N-way episode starts well; ``multitask`` uses the task's own head over all
  classes; ``protonet`` needs no head; ``metaopt`` fits its head to the support set in closed
  form or by a differentiable solve (:mod:`raymeta.core.base_learners`).
- Other task types (NER, QA, multiple choice) use the task's persistent head, adapted in
  the inner loop; its outer gradient is returned too, for the actor's head optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..config import ALGORITHMS, MetaConfig, MetaOptConfig
from ..tasks.episodes import Episode
from .base_learners import proto_logits, prototypes, ridge_weights, svm_weights
from .model import LOG_SCALE, MetaModel, pool_hidden, proto_head

__all__ = ["ALGORITHMS", "GradReady", "TaskGradient", "task_gradient", "algorithm_options",
           "global_labels"]

Batch = Mapping[str, Tensor]
Params = dict[str, Tensor]
_EPISODE_W, _EPISODE_B = "episode_head.weight", "episode_head.bias"


@dataclass
class TaskGradient:
    """Gradients of the task's outer loss for every parameter it reached (detached)."""

    grads: dict[str, Tensor]
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    n_examples: int = 0


# ----------------------------------------------------------------------------- pieces


def _split(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class _Functional:
    """The model evaluated at an explicit parameter dict: encoder features, then a head."""

    def __init__(self, model: MetaModel, task: str, task_type: str, episode_head: bool,
                 distance: str = "euclidean", temperature: float = 1.0, label_prior: float = 0.0):
        self.model, self.task, self.type = model, task, task_type
        self.episode_head = episode_head
        self.distance, self.temperature = distance, temperature  # the prototype metric (meta.proto)
        self.label_prior = label_prior  # λ of meta.proto.label_prior (0: none)
        self.head_prefix = model.head_prefix(task)

    def prototypes(self, params: Params, emb: Tensor, ep: Episode) -> Tensor:
        """The support set's class means, with each class's name as one more point of weight λ when
        ``meta.proto.label_prior`` is on (its embedding at the same ``params``, so the names train
        too)."""
        assert ep.classes is not None
        if self.label_prior == 0.0:
            return prototypes(emb, ep.support["labels"], len(ep.classes))
        if ep.names is None:
            raise ValueError(f"task '{self.task}': meta.proto.label_prior needs the episode's "
                             "label names")
        return prototypes(emb, ep.support["labels"], len(ep.classes), self.features(params,
                                                                                    ep.names),
                          self.label_prior)

    def features(self, params: Params, batch: Batch) -> Tensor:
        enc = _split(params, "encoder.")
        hidden = functional_call(self.model.encoder, enc, args=(), kwargs={
            **self.model.encoder_inputs(batch), "return_dict": True}).last_hidden_state
        if self.episode_head:  # pooled embeddings for the prototype-initialised linear head
            mask = batch.get("attention_mask")
            return pool_hidden(hidden, None if mask is None else mask.reshape(-1, mask.shape[-1]),
                               self.model.pooling)
        return hidden

    def logits(self, params: Params, feats: Tensor, batch: Batch) -> Tensor:
        if self.episode_head:
            # cosine: the episode head reads unit-length features, so that W = p/(‖p‖·T) gives cos/T
            x = F.normalize(feats, dim=-1) if self.distance == "cosine" else feats
            x = F.dropout(x, self.model.head_dropout, self.model.training)
            return F.linear(x, params[_EPISODE_W], params[_EPISODE_B])
        head = self.model.head(self.task)
        return functional_call(head, _split(params, self.head_prefix), args=(feats, batch))

    def loss(self, params: Params, logits: Tensor, batch: Batch) -> Tensor:
        if self.episode_head:
            return F.cross_entropy(logits, batch["labels"])
        return self.model.head(self.task).loss(logits, batch)

    def __call__(self, params: Params, batch: Batch) -> tuple[Tensor, Tensor]:
        logits = self.logits(params, self.features(params, batch), batch)
        return self.loss(params, logits, batch), logits


def _accuracy(task_type: str, logits: Tensor, batch: Batch) -> dict[str, float]:
    if task_type in ("sequence_classification", "multiple_choice") and "labels" in batch:
        return {"acc": float((logits.argmax(-1) == batch["labels"]).float().mean())}
    return {}


def _n(batch: Batch) -> int:
    return int(batch["input_ids"].shape[0])


def _both(f: Callable[[Batch], Tensor], ep: Episode) -> Tensor:
    """Example-weighted mean loss over support and query: one batch, two forwards."""
    ns, nq = _n(ep.support), _n(ep.query)
    return (f(ep.support) * ns + f(ep.query) * nq) / (ns + nq)


def global_labels(batch: Batch, classes: list[int] | None) -> dict[str, Tensor]:
    """The batch with episode-local labels (0..ways-1) mapped to the task's class ids: the multitask
    loss trains the task's own head, which scores every class."""
    out = dict(batch)
    if classes is not None:
        out["labels"] = torch.tensor(classes, device=batch["labels"].device)[batch["labels"]]
    return out


GradReady = Callable[[str, Tensor], None]


def _grads(loss: Tensor, params: Params, keys: list[str], create_graph: bool = False,
           on_grad: GradReady | None = None) -> dict[str, Tensor]:
    """∂loss/∂params[k] for each k the loss reaches. ``on_grad(k, g)`` is called from the backward
    pass as soon as each gradient is complete (a tensor hook fires once per leaf, with its whole
    gradient), before the others are done: the hook a bucketed all-reduce starts from
    (:class:`raymeta.train.collective.GradientBuckets`)."""
    hooks = ([params[k].register_hook(lambda g, k=k: on_grad(k, g)) for k in keys]
             if on_grad is not None else [])
    try:
        gs = torch.autograd.grad(loss, [params[k] for k in keys], create_graph=create_graph,
                                 allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    return {k: g for k, g in zip(keys, gs) if g is not None}


def _sgd(fast: Params, grads: Mapping[str, Tensor], lr: float, keep_graph: bool) -> Params:
    """One inner SGD step. First-order: the new tensors are fresh leaves (no graph to θ)."""
    out = dict(fast)
    for k, g in grads.items():
        new = fast[k] - lr * g
        out[k] = new if keep_graph else new.detach().requires_grad_(True)
    return out


def _outer(trainable: list[str]) -> list[str]:
    return [k for k in trainable if not k.startswith("episode_head.")]


# ----------------------------------------------------------------------------- algorithms


def _multitask(fn: _Functional, params: Params, ep: Episode,
               on_grad: GradReady | None = None) -> TaskGradient:
    """The plain gradient of the task loss: ∇θ L_i(θ), over support ∪ query (global labels)."""
    s, q = global_labels(ep.support, ep.classes), global_labels(ep.query, ep.classes)
    ns, nq = _n(s), _n(q)
    ls, _ = fn(params, s)
    lq, logits = fn(params, q)
    loss = (ls * ns + lq * nq) / (ns + nq)
    return TaskGradient(_grads(loss, params, list(params), on_grad=on_grad), loss.item(),
                        _accuracy(fn.type, logits, q),
                        ns + nq)


def _protonet(fn: _Functional, params: Params, ep: Episode,
              on_grad: GradReady | None = None) -> TaskGradient:
    """Prototypical networks (Snell et al. 2017): query CE over distances to support means."""
    assert ep.classes is not None
    emb_s, emb_q = fn.features(params, ep.support), fn.features(params, ep.query)
    logits = proto_logits(emb_q, fn.prototypes(params, emb_s, ep), fn.distance, fn.temperature)
    loss = F.cross_entropy(logits, ep.query["labels"])
    enc = [k for k in params if k.startswith("encoder.")]
    return TaskGradient(_grads(loss, params, enc, on_grad=on_grad), loss.item(),
                        _accuracy(fn.type, logits, ep.query),
                        _n(ep.support) + _n(ep.query))


def _metaopt(fn: _Functional, params: Params, ep: Episode, opts: MetaOptConfig,
             on_grad: GradReady | None = None) -> TaskGradient:
    """MetaOptNet (Lee et al. 2019): the query cross-entropy of a linear classifier fitted to the
    support embeddings (ridge: Bertinetto et al. 2019's closed form; svm: Crammer and Singer's),
    differentiated through the fit into the encoder. The logits are scaled (``meta.metaopt.scale``,
    or the task's learned ``log_scale``): a ridge fit to one-hot targets gives scores in about [0,
    1], too flat for a softmax."""
    assert ep.classes is not None
    emb_s, emb_q = fn.features(params, ep.support), fn.features(params, ep.query)
    labels, n = ep.support["labels"], len(ep.classes)
    w = ridge_weights(emb_s, labels, n, opts.lam) if opts.head == "ridge" else \
        svm_weights(emb_s, labels, n, opts.lam, int(opts.iterations or 0))
    keys = [k for k in params if k.startswith("encoder.")]
    scale_key = fn.head_prefix + LOG_SCALE
    if scale_key in params:  # learn_scale: a parameter of the task's head
        scale, keys = params[scale_key].exp(), keys + [scale_key]
    else:
        scale = opts.scale
    logits = scale * (emb_q @ w.T)
    loss = F.cross_entropy(logits, ep.query["labels"])
    return TaskGradient(_grads(loss, params, keys, on_grad=on_grad), loss.item(),
                        _accuracy(fn.type, logits, ep.query),
                        _n(ep.support) + _n(ep.query))


def _with_episode_head(fn: _Functional, params: Params, ep: Episode,
                       differentiable: bool) -> Params:
    """Proto-MAML head (:func:`raymeta.core.model.proto_head`): a linear layer equal to the
    prototype classifier of the support set under ``meta.proto``, differentiable through the
    prototypes for second-order algorithms."""
    assert ep.classes is not None
    with torch.set_grad_enabled(differentiable):
        emb = fn.features(params, ep.support)
        w, b = proto_head(fn.prototypes(params, emb, ep), fn.distance, fn.temperature)
        if differentiable and not b.requires_grad:
            # cosine: b (zeros) has no path to θ; a leaf of its own, adapted by the inner loop like
            # the Euclidean bias
            b.requires_grad_(True)
    if not differentiable:
        w, b = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
    return {**params, _EPISODE_W: w, _EPISODE_B: b}


def _maml_family(algorithm: str, fn: _Functional, params: Params, ep: Episode, steps: int,
                 lr: float,
                 on_grad: GradReady | None = None) -> TaskGradient:
    """FOMAML / MAML (Finn et al. 2017), ANIL (Raghu et al. 2020), Reptile (Nichol et al. 2018).

    - maml: ∇θ L_q(U^k(θ)), second order through the inner loop (and the prototype init).
    - fomaml: ∇_{θ'} L_q(θ'), θ' = U^k(θ) treated as independent of θ.
    - anil: the inner loop adapts only the head; second order through it, which is cheap
      because the encoder features are computed once per batch.
    - reptile: (θ - U^k(θ)) / (k·α), k SGD steps on support ∪ query. For k = 1 it is the plain
      gradient of the support ∪ query loss under the inner loop's head. With a persistent head
      (NER, QA, multiple choice) that is exactly the multitask gradient, so the outer learning rate
      means the same thing. For sequence classification it is not: the inner loop adapts the
      Proto-MAML episode head (W = 2·p_c, b = -‖p_c‖² from the support prototypes, taken as
      constants), so k = 1 gives ∇θ of the N-way cross-entropy under that head, with episode-local
      labels, whereas multitask trains the task's own head over all its classes.

    ``on_grad`` (see :func:`_grads`) sees the outer gradients as the outer backward produces them.
    Reptile has no outer backward: its "gradient" is a parameter difference, formed after the inner
    loop, so ``on_grad`` sees each difference as soon as it is formed, before the query loss is
    evaluated (what a bucketed all-reduce can overlap there is that evaluation, not a backward
    pass).

    Gradients are returned for the parameters the loss reached: the task's persistent head gets
    none when the episode head stands in for it (sequence classification), in every algorithm, so
    the actor's head optimizer leaves it alone (no weight decay on an unused head).
    """
    second_order = algorithm in ("maml", "anil")
    if fn.episode_head:
        params = _with_episode_head(fn, params, ep, differentiable=second_order)
    head_keys = [k for k in params if not k.startswith("encoder.")]
    trainable = head_keys if algorithm == "anil" else list(params)
    fast: Params = dict(params) if second_order else {
        k: v.detach().requires_grad_(True) for k, v in params.items()}

    if algorithm == "anil":  # features once: the encoder does not move in the inner loop
        feats_s, feats_q = fn.features(params, ep.support), fn.features(params, ep.query)

        def support_loss(p: Params) -> Tensor:
            return fn.loss(p, fn.logits(p, feats_s, ep.support), ep.support)
    elif algorithm == "reptile":
        def support_loss(p: Params) -> Tensor:
            return _both(lambda b: fn(p, b)[0], ep)
    else:
        def support_loss(p: Params) -> Tensor:
            return fn(p, ep.support)[0]

    first_loss = None
    # parameters the inner loop moved: the only ones with a Reptile gradient
    reached: set[str] = set()
    for _ in range(steps):
        loss = support_loss(fast)
        first_loss = loss.item() if first_loss is None else first_loss
        inner = _grads(loss, fast, trainable, create_graph=second_order)
        reached.update(inner)
        fast = _sgd(fast, inner, lr, keep_graph=second_order)

    metrics = {} if first_loss is None else {"support_loss": first_loss}
    n = _n(ep.support) + _n(ep.query)
    if algorithm == "reptile":
        if steps == 0:
            raise ValueError("reptile needs inner_steps >= 1")
        # not the unused persistent head: a zero "gradient" for it would still let AdamW decay it
        # every step
        grads = {k: (params[k].detach() - fast[k].detach()) / (steps * lr)
                 for k in _outer(trainable) if k in reached}
        if on_grad is not None:
            # last layers first, the order a backward pass produces them
            for k in reversed(list(grads)):
                on_grad(k, grads[k])
        with torch.no_grad():
            lq, logits = fn(fast, ep.query)
        return TaskGradient(grads, lq.item(), {**metrics, **_accuracy(fn.type, logits, ep.query)},
                            n)

    if algorithm == "anil":
        logits = fn.logits(fast, feats_q, ep.query)
        lq = fn.loss(fast, logits, ep.query)
    else:
        lq, logits = fn(fast, ep.query)
    if second_order:  # through the inner loop, back to the original θ
        grads = _grads(lq, params, _outer(list(params)), on_grad=on_grad)
    else:  # first order: the gradient at the adapted parameters
        grads = _grads(lq, fast, _outer(list(params)), on_grad=on_grad)
    return TaskGradient({k: g.detach() for k, g in grads.items()}, lq.item(),
                        {**metrics, **_accuracy(fn.type, logits, ep.query)}, n)


def algorithm_options(meta: MetaConfig) -> dict[str, Any]:
    """:func:`task_gradient`'s keyword arguments from ``meta``: one place for the task actor, the
    speed baselines and the tests' single-process references."""
    return {"inner_steps": meta.inner_steps, "inner_lr": meta.inner_lr,
            "distance": meta.proto.distance,
            "temperature": meta.proto.temperature, "metaopt": meta.metaopt,
            "label_prior": meta.proto.prior_weight}


def task_gradient(
    algorithm: str, model: MetaModel, task: str, task_type: str, episode: Episode, params: Params,
    *, inner_steps: int = 1, inner_lr: float = 1e-3, distance: str = "euclidean",
                  temperature: float = 1.0,
    metaopt: MetaOptConfig | None = None, on_grad: GradReady | None = None,
                  label_prior: float = 0.0,
) -> TaskGradient:
    """One task's contribution to the meta-gradient.

    ``params`` maps every name the computation may use — ``encoder.*`` and the task's
    ``heads.<task>.*`` — to a tensor that requires grad. The result's ``grads`` has the
    same names (those the loss reached); the encoder part is what the driver reduces.
    ``distance`` and ``temperature`` (``meta.proto``) set the prototype metric of ``protonet`` and
    of the MAML family's episode head; the defaults are the original unscaled squared Euclidean
    distance. ``metaopt`` (``meta.metaopt``) sets ``metaopt``'s base learner (default:
    :class:`MetaOptConfig`'s). ``label_prior`` λ (``meta.proto.label_prior``): each class's name
    (``episode.names``) is one more support point of the prototypes of ``protonet`` and of the
    episode head (:func:`raymeta.core.base_learners.prototypes`). ``on_grad(name, grad)``: called
    with each outer gradient as soon as the last backward pass has produced it (for Reptile, as soon
    as its parameter difference is formed), while the rest is still being computed; the result's
    ``grads`` are the same with or without it.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algorithm}' (known: {', '.join(ALGORITHMS)})")
    classification = task_type == "sequence_classification"
    if algorithm == "multitask" or (algorithm in ("protonet", "metaopt") and not classification):
        # ProtoNet and MetaOptNet need classes; other task types contribute their supervised loss.
        return _multitask(_Functional(model, task, task_type, episode_head=False), params, episode,
                          on_grad)
    if algorithm == "protonet":
        return _protonet(_Functional(model, task, task_type, True, distance, temperature,
                                     label_prior), params, episode,
                         on_grad)
    if algorithm == "metaopt":
        return _metaopt(_Functional(model, task, task_type, True), params, episode,
                        metaopt or MetaOptConfig(), on_grad)
    fn = _Functional(model, task, task_type, classification, distance, temperature, label_prior)
    return _maml_family(algorithm, fn, params, episode, inner_steps, inner_lr, on_grad)
