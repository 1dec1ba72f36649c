"""Base learners: linear classifiers fitted to an episode's support embeddings, pure torch (no ray).

A base learner fits a classifier to the support set in closed form (or by a fixed number of solver
steps), so a query loss can be back-propagated into the encoder through the fit itself (Lee et al.,
"Meta-Learning with Differentiable Convex Optimization", CVPR 2019: MetaOptNet).

- :func:`prototypes` / :func:`proto_logits`: the nearest class mean (Snell et al. 2017), ProtoNet's.
- :func:`ridge_weights`: ridge regression on one-hot targets in its dual (Woodbury) form, as in R2D2
  (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019) and
  MetaOptNet's ridge head.
- :func:`svm_weights`: the Crammer–Singer multi-class SVM (Crammer & Singer, JMLR 2001),
  MetaOptNet's main head, solved in the dual by accelerated projected gradient (FISTA, Beck &
  Teboulle, SIAM J. Imaging Sci. 2009, with O'Donoghue & Candès 2015's adaptive restart) and
  differentiated by unrolling the solver. MetaOptNet solves the same QP with qpth and differentiates
  its KKT conditions (OptNet, Amos & Kolter 2017); unrolling needs no QP library and gives the same
  gradient in the limit of many steps when the active set is stable.

The ridge and SVM heads work in an episode's dual, whose size is the support set (n × n), not the
embedding width d: few-shot episodes have n ≪ d. Both compute in float64 and return the input's
dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["prototypes", "proto_logits", "ridge_weights", "svm_weights", "svm_dual",
           "svm_dual_objective",
           "svm_kkt_residual", "project_rows"]


def prototypes(emb: Tensor, labels: Tensor, n_classes: int, prior: Tensor | None = None,
               prior_weight: float = 0.0) -> Tensor:
    """Class means of the support embeddings (Snell et al. 2017, eq. 1): the nearest-mean base
    learner.

    With ``prior`` (one row per class: its label name's embedding) and ``prior_weight`` λ > 0, the
    name is one more support point of weight λ: p_c = (Σ_{i: y_i = c} e_i + λ·prior_c) / (n_c + λ)
    (the label-name prior, ``meta.proto.label_prior``; LaSAML, Luo et al. 2021, uses label names in
    the support set the same way). A class with no support example (K = 0) is its name. λ = 0 is
    exactly the plain class mean."""
    onehot = F.one_hot(labels, n_classes).to(emb.dtype)
    if prior is None or prior_weight == 0.0:
        return (onehot.T @ emb) / onehot.sum(0).unsqueeze(1)
    if prior.shape != (n_classes, emb.shape[-1]):
        raise ValueError(f"label prior of shape {tuple(prior.shape)}; expected ({n_classes}, "
                         f"{emb.shape[-1]})")
    return ((onehot.T @ emb + prior_weight * prior.to(emb.dtype))
            / (onehot.sum(0) + prior_weight).unsqueeze(1))


def proto_logits(query: Tensor, protos: Tensor, distance: str = "euclidean",
                 temperature: float = 1.0) -> Tensor:
    """Negative squared Euclidean distance to each prototype (Snell et al. 2017, eq. 2), or the
    cosine similarity (``distance="cosine"``), divided by ``temperature`` (metric scaling, Oreshkin
    et al. 2018)."""
    if distance == "cosine":
        logits = F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T
    elif distance == "euclidean":
        logits = -((query.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)
    else:
        raise ValueError(f"unknown prototype distance '{distance}' (euclidean, cosine)")
    # skipped at 1.0, so the default graph is exactly the unscaled one (bit-equal gradients)
    return logits if temperature == 1.0 else logits / temperature


def _check(support: Tensor, labels: Tensor, n_classes: int, lam: float,
           iterations: int = 1) -> None:
    if support.dim() != 2:
        raise ValueError(f"support must be (n, d) embeddings, got shape {tuple(support.shape)}")
    if labels.dim() != 1 or labels.shape[0] != support.shape[0]:
        raise ValueError(f"labels must be ({support.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    # `not lam > 0` also rejects NaN
    if not lam > 0 or lam == float("inf"):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")


def ridge_weights(support: Tensor, labels: Tensor, n_classes: int, lam: float) -> Tensor:
    """(C, d) weights W of the ridge-regression classifier fitted to one-hot targets Y (n, C) of the
    support embeddings X (n, d): W = Xᵀ (X Xᵀ + λ I)⁻¹ Y, transposed (the dual / Woodbury form,
    R2D2: Bertinetto et al., ICLR 2019; MetaOptNet's ridge head). No bias. Logits for queries Q: Q @
    W.T.

    This is argmin_W ‖X Wᵀ − Y‖² + λ‖W‖², whose primal solution (XᵀX + λI)⁻¹XᵀY equals the dual one
    by the push-through identity; the dual solves an n × n system instead of a d × d one.
    Differentiable w.r.t. ``support`` (autograd through ``torch.linalg.solve``).
    """
    _check(support, labels, n_classes, lam)
    # float64: X Xᵀ of nearly collinear embeddings is badly conditioned when λ is small, and the
    # system is tiny
    x = support.to(torch.float64)
    y = F.one_hot(labels.long(), n_classes).to(torch.float64)
    gram = x @ x.T
    eye = torch.eye(x.shape[0], dtype=torch.float64, device=x.device)
    beta = torch.linalg.solve(gram + lam * eye, y)  # (n, C): the dual coefficients
    return (x.T @ beta).T.to(support.dtype)


def project_rows(alpha: Tensor, labels: Tensor, c_reg: float) -> Tensor:
    """Euclidean projection of each row α_i of ``alpha`` (n, C) onto {α : α[m] ≤ c·1[m = yᵢ], Σ_m
    α[m] = 0}.

    With u = c·e_{yᵢ} − α the set is the simplex {u ≥ 0, Σ u = c}, and the map α ↦ u is an isometry,
    so the projection is u ↦ max(u − θ, 0) with the threshold θ of the sort-based algorithm (Duchi
    et al., ICML 2008; Condat, Math. Program. 2016): sort u descending, ρ = max{k : u₍ₖ₎ > (Σ_{j≤k}
    u₍ⱼ₎ − c)/k}, θ = (Σ_{j≤ρ} u₍ⱼ₎ − c)/ρ. Written in torch ops (sort, cumsum, gather, clamp), so
    it is differentiable almost everywhere: away from the ties where the support of the projection
    changes.
    """
    eye_y = F.one_hot(labels.long(), alpha.shape[1]).to(alpha.dtype)
    u = c_reg * eye_y - alpha
    sorted_u, _ = torch.sort(u, dim=1, descending=True)
    excess = torch.cumsum(sorted_u, dim=1) - c_reg
    k = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    # The condition holds exactly for k = 1..ρ (a prefix), so counting it gives ρ; it holds at k = 1
    # always.
    rho = (sorted_u - excess / k > 0).sum(dim=1, keepdim=True).clamp(min=1)
    theta = excess.gather(1, rho - 1) / rho.to(u.dtype)
    return c_reg * eye_y - (u - theta).clamp(min=0)


def svm_dual_objective(alpha: Tensor, K: Tensor, Y: Tensor) -> Tensor:
    """f(α) = ½ Σ_ij K_ij ⟨α_i, α_j⟩ − Σ_i ⟨α_i, Y_i⟩, the Crammer–Singer dual to minimise (Y
    one-hot (n, C)).

    The SVM's dual objective (to maximise) is −f(α); at the optimum it equals the primal objective.
    """
    return 0.5 * (alpha * (K @ alpha)).sum() - (alpha * Y).sum()


def _lipschitz(K: Tensor) -> Tensor:
    # ∇f(α) = Kα − Y is Lipschitz with constant λ_max(K) (the Hessian is K ⊗ I_C). Detached: the
    # step size is a solver setting, not part of the model, and eigvalsh's backward is unstable at
    # repeated eigenvalues. Clamped so that an all-zero support (K = 0) gives a finite step.
    return torch.linalg.eigvalsh(K.detach()).max().clamp(min=1e-12)


def svm_kkt_residual(alpha: Tensor, K: Tensor, Y: Tensor, c_reg: float) -> float:
    """L·‖α − P(α − ∇f(α)/L)‖∞, the projected-gradient fixed-point residual of the dual QP (L =
    λ_max(K)).

    P is the projection onto the feasible set (:func:`project_rows`), ∇f(α) = Kα − Y. For a convex
    problem α is a minimiser (a KKT point) exactly when α = P(α − ∇f(α)/L), so this is 0 there; the
    factor L puts it in the units of the gradient.
    """
    step = _lipschitz(K)
    labels = Y.argmax(dim=1)
    moved = project_rows(alpha - (K @ alpha - Y) / step, labels, c_reg)
    return float((alpha - moved).abs().max() * step)


def svm_dual(support: Tensor, labels: Tensor, n_classes: int, lam: float,
             iterations: int) -> Tensor:
    """Dual variables α (n, C) of the Crammer–Singer SVM with C_reg = 1/λ after ``iterations`` FISTA
    steps.

    Minimises f(α) = ½ Σ_ij K_ij ⟨α_i, α_j⟩ − Σ_i α_i[y_i] with K = X Xᵀ, subject to α_i[m] ≤
    C_reg·1[m = y_i] and Σ_m α_i[m] = 0 for every i, starting from α = 0 (feasible) with step 1/L, L
    = λ_max(K): α_{k+1} = P(z_k − ∇f(z_k)/L), t_{k+1} = (1 + √(1 + 4t_k²))/2, z_{k+1} = α_{k+1} +
    (t_k − 1)/t_{k+1}·(α_{k+1} − α_k), with P the row-wise projection (:func:`project_rows`) and the
    adaptive restart t_k ← 1 whenever ⟨z_k − α_{k+1}, α_{k+1} − α_k⟩ > 0 (O'Donoghue & Candès,
    Found. Comput. Math. 2015). Returned in the dtype of ``support``; differentiable by unrolling.
    """
    _check(support, labels, n_classes, lam, iterations)
    return _fista(support.to(torch.float64), labels, n_classes, 1.0 / lam,
                  iterations).to(support.dtype)


def _fista(x: Tensor, labels: Tensor, n_classes: int, c_reg: float, iterations: int) -> Tensor:
    # float64 in and out, so that svm_weights forms W = αᵀX before rounding to the caller's dtype
    y = F.one_hot(labels.long(), n_classes).to(torch.float64)
    K = x @ x.T
    step = _lipschitz(K)
    alpha = torch.zeros_like(y)
    z, t = alpha, torch.ones((), dtype=torch.float64, device=x.device)
    for _ in range(iterations):
        alpha_next = project_rows(z - (K @ z - y) / step, labels, c_reg)
        # Gradient-scheme restart: drop the momentum when it points uphill. Without it FISTA crawls
        # once the embeddings are correlated (K ill-conditioned): 3-8x more steps to the same
        # residual. A tensor condition (no .item()), so the loop never syncs with the GPU; the
        # comparison carries no gradient.
        t = torch.where(((z - alpha_next) * (alpha_next - alpha)).sum() > 0, 1.0, t)
        t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = alpha_next + ((t - 1.0) / t_next) * (alpha_next - alpha)
        alpha, t = alpha_next, t_next
    return alpha


def svm_weights(support: Tensor, labels: Tensor, n_classes: int, lam: float,
                iterations: int) -> Tensor:
    """(C, d) weights of the Crammer–Singer multi-class SVM (Crammer & Singer, JMLR 2001) with C_reg
    = 1/λ, solved in the dual by `iterations` steps of accelerated projected gradient (FISTA, Beck &
    Teboulle 2009), differentiable by unrolling those steps (autograd through the solver; MetaOptNet
    instead differentiates the KKT conditions with qpth).

    Primal: min_W ½ Σ_m ‖W_m‖² + C_reg Σ_i max_m (W_m·x_i + 1[m ≠ y_i] − W_{y_i}·x_i), no bias.
    Dual: :func:`svm_dual`; the weights are W = αᵀ X. Logits for queries Q: Q @ W.T.
    """
    _check(support, labels, n_classes, lam, iterations)
    x = support.to(torch.float64)
    return (_fista(x, labels, n_classes, 1.0 / lam, iterations).T @ x).to(support.dtype)
