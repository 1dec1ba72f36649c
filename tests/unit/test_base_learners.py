"""MetaOptNet's base learners (raymeta/core/base_learners.py): ridge against sklearn and its
gradient, the Crammer–Singer SVM's dual solver against its optimality certificates (KKT residual,
duality gap) and sklearn, gradients through the unrolled solver, argument checks, and a separable
toy problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from sklearn.svm import LinearSVC

from raymeta.core.base_learners import (
    project_rows,
    ridge_weights,
    svm_dual,
    svm_dual_objective,
    svm_kkt_residual,
    svm_weights,
)


def episode(seed: int, n_way: int, shot: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support embeddings (n_way·shot, d), float64, roughly unit norm, with labels 0..n_way-1 in
    blocks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_way * shot, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return x, torch.arange(n_way).repeat_interleave(shot)


def svm_primal(w: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, c_reg: float) -> float:
    """½‖W‖² + C_reg Σ_i max_m (W_m·x_i + 1[m≠y_i] − W_{y_i}·x_i): the Crammer–Singer objective, no
    bias."""
    scores = x @ w.T
    margins = (scores + 1.0 - F.one_hot(labels, w.shape[0]).to(x.dtype)
               - scores.gather(1, labels[:, None]))
    return float(0.5 * (w**2).sum() + c_reg * margins.max(dim=1).values.sum())


# ----------------------------------------------------------------------------- ridge


@pytest.mark.parametrize("n_way, shot, d", [(5, 1, 32), (5, 5, 8)], ids=["n<d", "n>d"])
def test_ridge_equals_sklearn(n_way, shot, d):
    x, labels = episode(0, n_way, shot, d)
    lam = 0.7
    w = ridge_weights(x, labels, n_way, lam)
    onehot = F.one_hot(labels, n_way).numpy().astype(np.float64)
    ref = Ridge(alpha=lam, fit_intercept=False).fit(x.numpy(), onehot)
    assert w.shape == (n_way, d) and w.dtype == torch.float64
    np.testing.assert_allclose(w.numpy(), ref.coef_, atol=1e-6, rtol=0)


def test_ridge_gradient_matches_finite_differences():
    x, labels = episode(1, 3, 2, 5)
    queries = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 1])

    def loss(support):
        return F.cross_entropy(queries @ ridge_weights(support, labels, 3, 0.5).T, targets)

    assert torch.autograd.gradcheck(loss, (x.clone().requires_grad_(),))


def test_ridge_keeps_the_input_dtype():
    x, labels = episode(3, 5, 2, 16)
    w = ridge_weights(x.float(), labels, 5, 1.0)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w.double(), ridge_weights(x, labels, 5, 1.0), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- SVM: the solver


@pytest.mark.parametrize("shot", [1, 5])
@pytest.mark.parametrize("d", [16, 64])
@pytest.mark.parametrize("lam", [1.0, 0.1])
def test_svm_solves_the_crammer_singer_dual(shot, d, lam):
    x, labels = episode(10 * shot + d, 5, shot, d)
    c_reg = 1.0 / lam
    alpha = svm_dual(x, labels, 5, lam, 2000)
    w = svm_weights(x, labels, 5, lam, 2000)
    K, Y = x @ x.T, F.one_hot(labels, 5).to(x.dtype)
    torch.testing.assert_close(w, alpha.T @ x, atol=1e-12, rtol=0)

    # feasible: every row sums to 0, α_i[m] ≤ C_reg·1[m = y_i]
    assert alpha.sum(dim=1).abs().max() < 1e-9
    assert (alpha - c_reg * Y).max() < 1e-9

    # optimal: the fixed-point residual is in the units of ∇f = Kα − Y, whose Y part has entries 1,
    # so an absolute 1e-6 is a relative one; the duality gap P(W) − D(α) ≥ 0 certifies optimality
    # from both sides
    assert svm_kkt_residual(alpha, K, Y, c_reg) < 1e-6
    primal, dual = svm_primal(w, x, labels, c_reg), -float(svm_dual_objective(alpha, K, Y))
    gap = primal - dual
    assert -1e-9 * abs(primal) <= gap <= 1e-6 * max(1.0, abs(primal))

    ref = LinearSVC(multi_class="crammer_singer", fit_intercept=False, C=c_reg, tol=1e-10,
                    max_iter=100000,
                    random_state=0).fit(x.numpy(), labels.numpy())
    w_ref = torch.from_numpy(ref.coef_)
    # The primal is 1-strongly convex in W, so ½‖W − W*‖² ≤ P(W) − P* ≤ P(W) − D(α) for any W: a
    # certified bound on how far each solution can be from the true W*, from our dual point alone,
    # whatever liblinear's stopping rule (its tol bounds a per-sample KKT violation, not the error
    # in W).
    bound = math.sqrt(2 * max(gap, 0.0)) + math.sqrt(2 * max(svm_primal(w_ref, x, labels,
                                                                        c_reg) - dual, 0.0))
    assert float((w - w_ref).norm()) <= bound + 1e-12
    # And a plain number: both solvers land within ~1e-9 of each other on these episodes; 1e-4
    # leaves room for liblinear's (shuffled, tolerance-stopped) coordinate descent on another
    # platform without hiding a real bug, which would show as an error of the order of W itself
    # (~0.3-2 here).
    np.testing.assert_allclose(w.numpy(), ref.coef_, atol=1e-4, rtol=0)


def test_svm_residual_and_gap_shrink_with_iterations():
    x, labels = episode(7, 5, 5, 16)
    K, Y = x @ x.T, F.one_hot(labels, 5).to(x.dtype)
    alphas = [svm_dual(x, labels, 5, 0.1, it) for it in (1, 10, 100, 1000)]
    # every iterate is feasible, not only the converged one (the returned point is a projection, not
    # the extrapolated momentum point)
    for alpha in alphas:
        assert alpha.sum(dim=1).abs().max() < 1e-12 and (alpha - 10.0 * Y).max() < 1e-12
    residuals = [svm_kkt_residual(alpha, K, Y, 10.0) for alpha in alphas]
    assert residuals[0] > 1e-2 and residuals[-1] < 1e-9
    assert all(a > b for a, b in zip(residuals, residuals[1:]))


def test_projection_is_the_nearest_feasible_point():
    g = torch.Generator().manual_seed(4)
    v = 3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=g)
    c_reg = 0.8
    p = project_rows(v, labels, c_reg)
    upper = c_reg * F.one_hot(labels, 4).to(v.dtype)
    assert p.sum(dim=1).abs().max() < 1e-12 and (p - upper).max() < 1e-12
    torch.testing.assert_close(project_rows(p, labels, c_reg), p, atol=1e-12, rtol=0)  # idempotent
    # The projection's optimality condition: ⟨v − P(v), q − P(v)⟩ ≤ 0 for every feasible q. Random
    # feasible points: project further random points.
    for _ in range(20):
        q = project_rows(3 * torch.randn(50, 4, generator=g, dtype=torch.float64), labels, c_reg)
        assert ((v - p) * (q - p)).sum(dim=1).max() < 1e-10


def test_svm_keeps_the_input_dtype():
    x, labels = episode(5, 5, 5, 32)
    w = svm_weights(x.float(), labels, 5, 1.0, 300)
    assert w.dtype == torch.float32 and svm_dual(x.float(), labels, 5, 1.0,
                                                 300).dtype == torch.float32
    torch.testing.assert_close(w.double(), svm_weights(x, labels, 5, 1.0, 300), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- SVM: gradients


def test_svm_gradient_flows_to_the_support_after_moderate_iterations():
    x, labels = episode(8, 5, 5, 64)
    support = x.clone().requires_grad_()
    queries, targets = episode(9, 5, 3, 64)
    loss = F.cross_entropy(queries @ svm_weights(support, labels, 5, 0.1, 50).T, targets)
    loss.backward()
    assert (support.grad is not None and torch.isfinite(support.grad).all()
            and support.grad.abs().max() > 1e-6)


def test_projection_gradient_matches_finite_differences():
    # The projection alone, away from ties: gradcheck's ±1e-6 steps do not change which coordinates
    # are clipped.
    g = torch.Generator().manual_seed(5)
    v = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.autograd.gradcheck(lambda t: project_rows(t, labels, 0.7), (v,))


@pytest.mark.parametrize("iterations", [5, 50])
def test_unrolled_svm_gradient_matches_finite_differences(iterations):
    # The step size 1/L, L = λ_max(X Xᵀ), is computed detached (a solver setting, not part of the
    # model), so finite differences would see L move with the support while autograd does not, and
    # before convergence the iterates depend on L. Rescaling the support to spectral norm 1 first
    # pins L = 1 under any perturbation; the rescaling itself is differentiated normally. What is
    # left is the exact derivative of the unrolled steps.
    x, labels = episode(6, 3, 2, 8)
    queries, targets = episode(11, 3, 2, 8)

    def loss(support):
        pinned = support / torch.linalg.matrix_norm(support, ord=2)
        return F.cross_entropy(queries @ svm_weights(pinned, labels, 3, 0.5, iterations).T, targets)

    assert torch.autograd.gradcheck(loss, (x.clone().requires_grad_(),))


def test_converged_svm_gradient_matches_finite_differences():
    # A tiny, well-conditioned problem (n = 6 ≤ d = 8, so K is invertible and α* unique) that the
    # solver fits to machine precision within 200 steps. Two things make gradcheck meaningful only
    # there: the step size 1/L is computed detached, so finite differences see L move with the
    # support while autograd does not; and the unrolled map has kinks where the set of clipped
    # coordinates changes. Once the iterates have converged and the active set is settled (strict
    # complementarity holds for this seed), L no longer matters and the unrolled derivative is the
    # derivative of the QP's solution, smooth around this support.
    x, labels = episode(6, 3, 2, 8)
    queries, targets = episode(11, 3, 2, 8)
    lam = 0.5

    def loss(support):
        return F.cross_entropy(queries @ svm_weights(support, labels, 3, lam, 200).T, targets)

    K, Y = x @ x.T, F.one_hot(labels, 3).to(x.dtype)
    assert svm_kkt_residual(svm_dual(x, labels, 3, lam, 200), K, Y, 1 / lam) < 1e-12
    assert torch.autograd.gradcheck(loss, (x.clone().requires_grad_(),))


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("lam", [0.0, -1.0, math.nan, math.inf])
def test_bad_lambda_is_refused(lam):
    x, labels = episode(0, 3, 2, 4)
    with pytest.raises(ValueError, match="lam"):
        ridge_weights(x, labels, 3, lam)
    with pytest.raises(ValueError, match="lam"):
        svm_weights(x, labels, 3, lam, 10)


def test_bad_iterations_and_labels_are_refused():
    x, labels = episode(0, 3, 2, 4)
    with pytest.raises(ValueError, match="iterations"):
        svm_weights(x, labels, 3, 1.0, 0)
    with pytest.raises(ValueError, match="iterations"):
        svm_dual(x, labels, 3, 1.0, -1)
    for fit in (lambda lab: ridge_weights(x, lab, 3, 1.0), lambda lab: svm_weights(x, lab, 3, 1.0,
                                                                                   10)):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            fit(torch.tensor([0, 1, 2, 3, 0, 1]))
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            fit(torch.tensor([0, 1, 2, -1, 0, 1]))
        with pytest.raises(ValueError, match=r"labels must be \(6,\)"):
            fit(torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- a separable toy
# problem


@pytest.mark.parametrize("head", ["ridge", "svm"])
def test_separable_clusters_are_classified_perfectly(head):
    g = torch.Generator().manual_seed(12)
    centres = 3 * torch.randn(4, 10, generator=g, dtype=torch.float64)

    def draw(per_class):
        labels = torch.arange(4).repeat_interleave(per_class)
        return centres[labels] + 0.1 * torch.randn(len(labels), 10, generator=g,
                                                   dtype=torch.float64), labels

    (support, labels), (queries, targets) = draw(3), draw(25)
    if head == "ridge":
        w = ridge_weights(support, labels, 4, 1.0)
    else:
        w = svm_weights(support, labels, 4, 1.0, 100)
    assert torch.equal((queries @ w.T).argmax(dim=1), targets)
