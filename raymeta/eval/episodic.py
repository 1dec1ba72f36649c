"""Episodic N-way K-shot evaluation with classifiers fitted to frozen embeddings, and no
fine-tuning.

The encoder embeds every row of the held-out classes once; episodes are then drawn on the
embeddings (seeded, so every init sees the same episodes), which makes 1000 episodes cost
seconds instead of an hour. Each episode's support set fits the classifiers asked for: the nearest
prototype (Snell et al. 2017), ridge regression or the multi-class SVM (MetaOptNet's heads, Lee et
al. 2019;
:mod:`raymeta.core.base_learners`), each scored on the same queries, so the classifiers are paired
too. Accuracy is reported with a 95% CI over episodes (e.g. Snell et al. 2017; Bao et al. 2020),
from Student's t (:func:`raymeta.eval.metrics.mean_ci95`; at hundreds of episodes it is the
literature's normal approximation to the third digit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..config import EpisodeConfig, ModelConfig, RidgeConfig, SvmConfig, TaskConfig
from ..core.base_learners import proto_logits, prototypes, ridge_weights, svm_weights
from ..core.model import MetaModel, load_encoder, load_tokenizer, proto_head
from ..storage import local_model_path
from ..tasks import Task, load_task
from ..tasks.episodes import sample_episode
from .metrics import mean_ci95

__all__ = ["EpisodicResult", "classifier_logits", "embed_label_names", "embed_task", "embed_rows",
           "episodic_accuracy",
           "evaluate_init_episodic", "subsample_per_class"]


@dataclass
class EpisodicResult:
    ways: int
    shots: int
    queries: int
    episodes: int
    mean: float
    std: float
    ci95: float
    values: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "ci95": self.ci95, "n": self.episodes,
                "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "values": [round(v, 4) for v in self.values]}

    def __str__(self) -> str:
        return (f"{self.ways}-way {self.shots}-shot: {100 * self.mean:.1f} ± {100 * self.ci95:.1f} "
                f"({self.episodes} episodes)")


@torch.no_grad()
def embed_task(init: str, task: TaskConfig, *, data_dir: str, cache_dir: str | None,
               splits: tuple[str, ...] = ("test",),
               batch_size: int = 128, pooling: str | None = None,
               label_template: str | None = None) -> tuple[np.ndarray, np.ndarray,
                                                           np.ndarray | None]:
    """Pooled embeddings of every row of ``splits`` (concatenated), their class ids, and, with
    ``label_template``, each class's name embedding (:func:`embed_label_names`; else None)."""
    mcfg = ModelConfig(name_or_path=init, pooling=pooling)
    tok = load_tokenizer(mcfg, fetch=local_model_path)  # a storage URI: a copy on this node
    model = MetaModel(load_encoder(mcfg, fetch=local_model_path), mcfg.pooling).eval()
    loaded = load_task(task, tok, data_dir, cache_dir)
    names = embed_label_names(model, loaded, label_template) if label_template is not None else None
    return (*embed_rows(model, loaded, {s: None for s in splits}, batch_size=batch_size), names)


@torch.no_grad()
def embed_label_names(model: MetaModel, task: Task, template: str = "{name}") -> np.ndarray:
    """One row per class id: the pooled embedding of the class's name under ``template``
    (:meth:`raymeta.tasks.Task.label_texts`), in eval mode, as the rows are embedded: the label-name
    prior's support points (``meta.proto.label_prior``)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in task.label_batch(None, template).items()}
    return model.embed(batch).float().cpu().numpy()


@torch.no_grad()
def embed_rows(model: MetaModel, task: Task, rows: dict[str, list[int] | None], *,
               batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings of ``rows[split]`` (None: every row) of each split, concatenated, and their
    class ids."""
    embs, ids = [], []
    device = next(model.parameters()).device  # a task actor's replica may sit on a GPU
    for split, chosen in rows.items():
        idx = list(range(len(task.features[split]))) if chosen is None else list(chosen)
        for start in range(0, len(idx), batch_size):
            batch = {k: v.to(device) for k, v in task.batch(idx[start:start + batch_size],
                                                            split).items()}
            embs.append(model.embed(batch).float().cpu().numpy())
        class_ids = task.class_ids(split)
        assert class_ids is not None, "embedding needs a classification task"
        ids.append(class_ids[idx])
    return np.concatenate(embs), np.concatenate(ids)


def subsample_per_class(task: Task, max_per_class: int, rng: np.random.Generator,
                        splits: tuple[str, ...] | None = None) -> tuple[dict[str, list[int]],
                                                                        dict[int, int]]:
    """At most ``max_per_class`` rows of each class over ``splits`` of ``task`` (None: all of them;
    in split-name order), drawn with ``rng``: the fixed row set that meta-validation scores at every
    step. Returns the rows per split and the count per class id."""
    rows: dict[str, list[int]] = {}
    per_class: dict[int, int] = {}
    for split in sorted(task.features if splits is None else splits):
        ids = task.class_ids(split)
        assert ids is not None, "subsampling per class needs a classification task"
        chosen: list[int] = []
        for c in np.unique(ids):
            room = max_per_class - per_class.get(int(c), 0)
            if room > 0:
                pick = rng.permutation(np.flatnonzero(ids == c))[:room]
                chosen += pick.tolist()
                per_class[int(c)] = per_class.get(int(c), 0) + len(pick)
        rows[split] = sorted(chosen)
    return rows, per_class


def _summary(accs: list[float], ways: int, shots: int, queries: int) -> EpisodicResult:
    s = mean_ci95(accs)
    # one episode: no spread to estimate; 0 as before (an EpisodicResult's ci95 is a number in its
    # tables)
    return EpisodicResult(ways, shots, queries, s["n"], s["mean"], s["std"],
                          s["ci95"] if s["n"] > 1 else 0.0, list(accs))


def _finetune_head(
    xs: torch.Tensor, ys: torch.Tensor, protos: torch.Tensor, steps: int, lr: float,
    distance: str = "euclidean", temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head initialised from the prototypes (:func:`raymeta.core.model.proto_head`, the
    Proto-MAML head of meta-training), then trained on the support set."""
    w0, b0 = proto_head(protos, distance, temperature)
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(xs @ w.T + b, ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def classifier_logits(method: str, support: torch.Tensor, labels: torch.Tensor, n_classes: int,
                      query: torch.Tensor, *,
                      distance: str = "euclidean", ridge: RidgeConfig | None = None,
                      svm: SvmConfig | None = None, prior: torch.Tensor | None = None,
                      prior_weight: float = 0.0) -> torch.Tensor:
    """The query logits of an embedding classifier fitted to ``support``: ``prototype`` (nearest
    class mean under ``distance``), ``ridge`` or ``svm`` (``eval.ridge`` / ``eval.svm``). One
    definition for episodic evaluation, meta-validation, ``raymeta tune``'s score and the K-shot
    ``--method prototype | ridge | svm``. ``prior`` (one row per class, its name's embedding) with
    ``prior_weight`` λ > 0: the label-name prior of the prototypes
    (:func:`raymeta.core.base_learners.prototypes`; prototype only)."""
    if method == "prototype":
        return proto_logits(query, prototypes(support, labels, n_classes, prior, prior_weight),
                            distance)
    if prior is not None and prior_weight > 0:
        raise ValueError(f"the label-name prior is for the prototype classifier, not {method}")
    if method == "ridge":
        return query @ ridge_weights(support, labels, n_classes, (ridge or RidgeConfig()).lam).T
    if method == "svm":
        s = svm or SvmConfig()
        return query @ svm_weights(support, labels, n_classes, s.lam, s.iterations).T
    raise ValueError(f"unknown embedding classifier '{method}' (prototype, ridge, svm)")


def episodic_accuracy(emb: np.ndarray, class_ids: np.ndarray, *, ways: int, shots: int,
                      queries: int,
                      episodes: int, seed: int = 0, head_steps: int = 0, head_lr: float = 1e-2,
                      distance: str = "euclidean", temperature: float = 1.0,
                      methods: Sequence[str] = ("prototype",), ridge: RidgeConfig | None = None,
                      svm: SvmConfig | None = None, names: np.ndarray | None = None,
                      prior_weight: float = 0.0) -> dict[str, EpisodicResult]:
    """Mean query accuracy over seeded episodes of each embedding classifier in ``methods`` (no
    training; see
    :func:`classifier_logits`) and, with ``head_steps > 0``, of a prototype-initialised linear head
    fine-tuned on each support set (``finetuned_head``). Every classifier sees the same episodes.

    ``names`` (one row per class id: :func:`embed_label_names`) and ``prior_weight`` λ > 0: the
    prototypes, and the fine-tuned head's start, take each class's name as one more support point of
    weight λ (the other classifiers are unchanged). ``shots = 0``: the names alone are the
    prototypes (zero-shot; no head is fine-tuned).

    ``distance`` (``meta.proto.distance``) changes which prototype is nearest; ``temperature``
    cannot change the prototype classifier's argmax, only the fine-tuned head's starting scale (so
    its training)."""
    use_prior = names is not None and prior_weight > 0
    if shots == 0 and not use_prior:
        raise ValueError("0-shot episodes need label names (a label prior of weight > 0)")
    cfg = EpisodeConfig(ways=ways, shots=shots, queries=queries)
    x = torch.from_numpy(emb)
    name_x = torch.from_numpy(names) if use_prior else None
    # what the cosine head reads
    xn = torch.nn.functional.normalize(x, dim=-1) if distance == "cosine" else x
    accs: dict[str, list[float]] = {m: [] for m in methods}
    head_accs = []
    for e in range(episodes):
        s, q, classes = sample_episode(len(class_ids), class_ids, cfg, seed, "episodic-eval", e)
        assert classes is not None
        local = {c: j for j, c in enumerate(classes)}
        # long even when empty (K = 0)
        ys = torch.tensor([local[int(class_ids[i])] for i in s], dtype=torch.long)
        yq = torch.tensor([local[int(class_ids[i])] for i in q], dtype=torch.long)
        prior = name_x[classes] if name_x is not None else None
        for m in methods:
            logits = classifier_logits(m, x[s], ys, len(classes), x[q], distance=distance,
                                       ridge=ridge, svm=svm,
                                       **({"prior": prior,
                                           "prior_weight": prior_weight} if m == "prototype"
                                          else {}))
            accs[m].append(float((logits.argmax(-1) == yq).float().mean()))
        if head_steps > 0 and shots > 0:
            protos = prototypes(x[s], ys, len(classes), prior, prior_weight)
            with torch.enable_grad():
                w, b = _finetune_head(xn[s], ys, protos, head_steps, head_lr, distance, temperature)
            head_accs.append(float(((xn[q] @ w.T + b).argmax(-1) == yq).float().mean()))
    out = {m: _summary(a, ways, shots, queries) for m, a in accs.items()}
    if head_accs:
        out["finetuned_head"] = _summary(head_accs, ways, shots, queries)
    return out


def evaluate_init_episodic(init: str, task: TaskConfig, *, data_dir: str, cache_dir: str | None,
                           ways: int = 5,
                           shots: tuple[int, ...] = (1, 5), queries: int = 15, episodes: int = 1000,
                           seed: int = 0, head_steps: int = 0, splits: tuple[str, ...] = ("test",),
                           distance: str = "euclidean", temperature: float = 1.0,
                           methods: Sequence[str] = ("prototype",),
                           ridge: RidgeConfig | None = None,
                           svm: SvmConfig | None = None, label_prior: float = 0.0,
                           label_template: str = "{name}") -> dict[int, dict[str, EpisodicResult]]:
    """Per K: each classifier's result in ``methods`` (and the fine-tuned head's, if
    ``head_steps``). Episodes are drawn from the rows of ``splits`` (default: the test split).
    ``label_prior`` λ > 0: the label-name prior of the prototypes (``template``), and K = 0 is the
    names alone."""
    emb, ids, names = embed_task(init, task, data_dir=data_dir, cache_dir=cache_dir, splits=splits,
                                 label_template=label_template if label_prior > 0 else None)
    return {k: episodic_accuracy(emb, ids, ways=ways, shots=k, queries=queries, episodes=episodes,
                                 seed=seed,
                                 head_steps=head_steps, distance=distance, temperature=temperature,
                                 methods=methods,
                                 ridge=ridge, svm=svm, names=names,
                                 prior_weight=label_prior) for k in shots}
