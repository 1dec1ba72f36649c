"""Fitting one candidate (an init and a head) to labelled texts: the unit of work of ``raymeta
fit``, run once per cross-validation fold and once on all the rows.

Every head comes out linear in the pooled embedding (:mod:`raymeta.classify.classifier`):

- ``setfit``: SetFit (Tunstall et al. 2022) through the ``setfit`` library, the body trained
  contrastively on pairs of the rows, then a logistic regression with balanced class weights; its
  coefficients are the head;
- ``prototype``: class means of the frozen init's embeddings (Snell et al. 2017), as the linear
  layer W = 2p, b = -‖p‖² (:func:`raymeta.core.model.proto_head`); each class counts once,
  whatever its size;
- ``ridge``: ridge regression onto one-hot targets (Bertinetto et al. 2019), frozen init;
- ``finetune``: the encoder and a prototype-initialised linear head (Triantafillou et al. 2020)
  trained with cross-entropy, balanced class weights.

Pure torch + transformers + setfit (no Ray): :mod:`raymeta.classify.select` sends these out as Ray
tasks.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..config import ModelConfig
from ..core.base_learners import prototypes, ridge_weights
from ..core.model import load_encoder, load_tokenizer, proto_head
from ..eval.finetune import FinetuneSettings
from ..eval.setfit import SetfitSettings, plain_model_dir, train_setfit
from ..storage import local_model_path
from .classifier import Classifier, embed_texts

__all__ = ["EMBEDDING_HEADS", "METHODS", "FitSettings", "fit_candidate", "init_pooling",
           "load_init", "balanced_weights", "embedding_head"]

METHODS = ("setfit", "ridge", "prototype", "finetune")
EMBEDDING_HEADS = ("ridge", "prototype")  # fitted on frozen embeddings: one embedding per init


@dataclass(frozen=True)
class FitSettings:
    """How each head is fitted; the defaults are the few-shot defaults of ``raymeta evaluate``."""

    setfit: SetfitSettings = field(default_factory=SetfitSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    ridge_lam: float = 1.0
    max_length: int = 128
    batch_size: int = 64  # embedding batch
    threads: int | None = None


def balanced_weights(class_ids: Sequence[int], n_classes: int) -> torch.Tensor:
    """n / (C · n_c) per class, scikit-learn's ``class_weight="balanced"``."""
    counts = torch.bincount(torch.as_tensor(list(class_ids)), minlength=n_classes).double()
    return (len(class_ids) / (n_classes * counts.clamp(min=1))).float()


def init_pooling(path: str, pooling: str | None) -> str:
    """``pooling``, or the model directory's default (mean for encoders, last token for GPTs)."""
    from transformers import AutoConfig

    from ..core.model import default_pooling

    return pooling or default_pooling(AutoConfig.from_pretrained(path))


def load_init(init: str, pooling: str | None = None) -> tuple[Any, Any, str]:
    """The init's encoder (eval mode), tokenizer and pooling (its default when None)."""
    from ..core.model import default_pooling

    cfg = ModelConfig(name_or_path=init, pooling=pooling)
    tok = load_tokenizer(cfg, fetch=local_model_path)
    enc = load_encoder(cfg, fetch=local_model_path).eval()
    return enc, tok, pooling or default_pooling(enc.config)


def _finetune(encoder: Any, tokenizer: Any, texts: Sequence[str], ids: torch.Tensor,
              n_classes: int, pooling: str, s: FitSettings,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..core.model import pool_hidden

    f = s.finetune
    torch.manual_seed(seed)
    emb = embed_texts(encoder, tokenizer, texts, pooling=pooling, max_length=s.max_length,
                      batch_size=s.batch_size)
    w0, b0 = proto_head(prototypes(emb, ids, n_classes))
    head = torch.nn.Linear(emb.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(w0)
        head.bias.copy_(b0)
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": f.lr},
                             {"params": list(head.parameters()), "lr": f.head_lr}],
                            weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(weight=balanced_weights(ids.tolist(), n_classes))
    rng = np.random.default_rng(seed)
    rows = list(range(len(texts)))
    encoder.train()
    for _ in range(f.steps):
        chosen = rows if len(rows) <= f.batch_size else rng.choice(rows, f.batch_size,
                                                                   replace=False).tolist()
        batch = tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                          max_length=s.max_length, return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        loss = loss_fn(head(pool_hidden(hidden, batch["attention_mask"], pooling)), ids[chosen])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    encoder.eval()
    return head.weight.detach().clone(), head.bias.detach().clone()


def _logistic_head(lr: Any, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A scikit-learn ``LogisticRegression`` as (W, b) whose softmax is its ``predict_proba``: the
    binary case's one row z becomes the rows (0, z), since softmax(0, z) = (1 - σ(z), σ(z))."""
    coef = torch.as_tensor(np.asarray(lr.coef_), dtype=torch.float32)
    bias = torch.as_tensor(np.asarray(lr.intercept_), dtype=torch.float32)
    if n_classes == 2 and coef.shape[0] == 1:
        coef = torch.cat([torch.zeros_like(coef), coef])
        bias = torch.cat([torch.zeros_like(bias), bias])
    return coef, bias


def fit_candidate(init: str, method: str, texts: Sequence[str], class_ids: Sequence[int],
                  labels: Sequence[str], *, settings: FitSettings, seed: int,
                  pooling: str | None = None) -> Classifier:
    """``method`` fitted on ``init`` on all ``texts``: a :class:`Classifier`, temperature 1."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    n = len(labels)
    ids = torch.as_tensor(list(class_ids), dtype=torch.long)
    extra: dict[str, torch.Tensor] = {}
    if method == "setfit":
        from sklearn.linear_model import LogisticRegression

        cfg = ModelConfig(name_or_path=init, pooling=pooling)
        with tempfile.TemporaryDirectory(prefix="raymeta-fit-") as tmp:
            path = plain_model_dir(init, cfg, tmp)
            pool = init_pooling(path, pooling)  # the pooling SetFit's body gets
            model = train_setfit(path, texts, class_ids, settings=settings.setfit, seed=seed,
                                 pooling=pool, max_length=settings.max_length, tmp=tmp,
                                 head=LogisticRegression(class_weight="balanced", max_iter=1000))
        encoder = model.model_body[0].auto_model.eval()
        tokenizer = model.model_body.tokenizer
        weight, bias = _logistic_head(model.model_head, n)
        return Classifier(encoder, tokenizer, weight, bias, list(labels), pool,
                          settings.max_length)
    encoder, tokenizer, pool = load_init(init, pooling)
    if method == "finetune":
        weight, bias = _finetune(encoder, tokenizer, texts, ids, n, pool, settings, seed)
    elif method in EMBEDDING_HEADS:
        emb = embed_texts(encoder, tokenizer, texts, pooling=pool,
                          max_length=settings.max_length, batch_size=settings.batch_size)
        weight, bias = embedding_head(method, emb, ids, n, settings.ridge_lam)
        if method == "prototype":
            extra["prototypes"] = prototypes(emb, ids, n)
    else:
        raise ValueError(f"unknown method '{method}' ({', '.join(METHODS)})")
    return Classifier(encoder, tokenizer, weight, bias, list(labels), pool, settings.max_length,
                      extra_tensors=extra)


def embedding_head(method: str, emb: torch.Tensor, ids: torch.Tensor, n_classes: int,
                   ridge_lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of a head fitted on frozen embeddings."""
    if method == "prototype":
        return proto_head(prototypes(emb, ids, n_classes))
    if method == "ridge":
        return ridge_weights(emb, ids, n_classes, ridge_lam), torch.zeros(n_classes)
    raise ValueError(f"not an embedding head: '{method}'")
