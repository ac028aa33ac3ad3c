"""The quadratic model's exact answer and the re-fit, against brute-force Schur complements."""

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from pruning_limit.pruning import removed_mask
from pruning_limit.quadratic import (
    QuadraticModel,
    quadratic_cost,
    quadratic_limit,
    quadratic_refit,
)


def psd_matrix(dimension, rank=None, seed=0):
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((dimension, rank or dimension)) / np.sqrt(dimension)
    return factor @ factor.T


def brute_force(matrix, weights, pruned):
    """q = w_P^T (C_PP - C_PK C_KK^+ C_KP) w_P / 2 and the re-fit, with a pseudo-inverse."""
    kept = ~pruned
    w_p = weights[pruned]
    c_kk = matrix[np.ix_(kept, kept)]
    c_kp = matrix[np.ix_(kept, pruned)]
    c_pp = matrix[np.ix_(pruned, pruned)]
    inverse = np.linalg.pinv(c_kk, rcond=1e-12, hermitian=True)
    schur = c_pp - c_kp.T @ inverse @ c_kp
    refit = np.zeros_like(weights)
    refit[kept] = weights[kept] + inverse @ c_kp @ w_p
    return 0.5 * w_p @ schur @ w_p, refit


@pytest.mark.parametrize("dimension", [10, 80, 300])
def test_cost_and_refit_match_the_schur_complement(dimension):
    rng = np.random.default_rng(dimension)
    matrix = psd_matrix(dimension, seed=dimension) + 0.01 * np.eye(dimension)
    weights = rng.standard_normal(dimension)
    model = QuadraticModel(matrix, weights)
    for fraction in (0.1, 0.5, 0.9):
        pruned = removed_mask(weights, fraction)
        cost, refit = brute_force(matrix, weights, pruned)
        assert model.cost(pruned) == pytest.approx(cost, rel=1e-9)
        fitted = model.refit(pruned)
        np.testing.assert_allclose(fitted, refit, rtol=1e-8, atol=1e-10)
        assert np.all(fitted[pruned] == 0)
        # The re-fit minimises the quadratic over the kept coordinates.
        step = fitted - weights
        assert 0.5 * step @ matrix @ step == pytest.approx(cost, rel=1e-9)
        nudge = np.where(pruned, 0.0, 1e-3 * rng.standard_normal(dimension))
        assert 0.5 * (step + nudge) @ matrix @ (step + nudge) > cost


def test_singular_kept_block_uses_least_squares():
    dimension = 60
    matrix = psd_matrix(dimension, rank=20, seed=1)  # C_KK singular for any large K
    weights = np.random.default_rng(1).standard_normal(dimension)
    pruned = removed_mask(weights, 0.3)
    cost, refit = brute_force(matrix, weights, pruned)
    model = QuadraticModel(matrix, weights)
    assert model.cost(pruned) == pytest.approx(cost, rel=1e-7, abs=1e-12)
    np.testing.assert_allclose(model.refit(pruned), refit, atol=1e-7)  # the minimum-norm one
    assert any("least-squares" in note for note in model.notes)


def test_a_least_squares_solve_that_does_not_converge_falls_back_to_the_eigendecomposition(
    monkeypatch,
):
    """LAPACK's gelsd failed to converge on a digits network's exact Hessian; the
    fallback must give the same minimum-norm refit, and say so."""
    import scipy.linalg

    def failing(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge in Linear Least Squares")

    dimension = 60
    matrix = psd_matrix(dimension, rank=20, seed=1)
    weights = np.random.default_rng(1).standard_normal(dimension)
    pruned = removed_mask(weights, 0.3)
    cost, refit = brute_force(matrix, weights, pruned)
    monkeypatch.setattr(scipy.linalg, "lstsq", failing)
    model = QuadraticModel(matrix, weights)
    np.testing.assert_allclose(model.refit(pruned), refit, atol=1e-7)
    assert model.cost(pruned) == pytest.approx(cost, rel=1e-7, abs=1e-12)
    assert any("did not converge" in note for note in model.notes)


def test_cost_grows_along_nested_supports_and_limit_is_the_last_feasible_count():
    dimension = 120
    matrix = psd_matrix(dimension, seed=2)
    weights = np.random.default_rng(2).standard_normal(dimension)
    order = np.argsort(np.abs(weights), kind="stable")
    costs = []
    for count in range(dimension + 1):
        pruned = np.zeros(dimension, dtype=bool)
        pruned[order[:count]] = True
        costs.append(brute_force(matrix, weights, pruned)[0] if 0 < count else 0.0)
    costs = np.array(costs)
    assert np.all(np.diff(costs) >= -1e-12)
    for epsilon in (1e-4, 1e-2, 0.3, 1e3):
        result = quadratic_limit(matrix, weights, epsilon)
        feasible = np.flatnonzero(costs <= epsilon)
        assert result.count == feasible.max()
        assert result.count / dimension <= result.removal_fraction
        assert result.removal_fraction <= min(result.count + 1, dimension) / dimension
        assert result.evaluations <= 2 + np.ceil(np.log2(dimension)) + 1
    assert quadratic_limit(matrix, weights, 1e9).removal_fraction == 1.0
    assert quadratic_limit(matrix, weights, 1e3).kept_fraction == pytest.approx(0.0)


def test_policy_makes_an_indefinite_hessian_psd():
    dimension = 40
    basis = ortho_group.rvs(dimension, random_state=3)
    eigenvalues = np.linspace(-0.5, 1.0, dimension)
    hessian = (basis * eigenvalues) @ basis.T
    weights = np.random.default_rng(3).standard_normal(dimension)
    pruned = removed_mask(weights, 0.5)
    absolute = (basis * np.abs(eigenvalues)) @ basis.T
    flat = (basis * np.maximum(eigenvalues, 0)) @ basis.T
    assert quadratic_cost(hessian, weights, pruned, policy="abs") == pytest.approx(
        brute_force(absolute, weights, pruned)[0]
    )
    assert quadratic_cost(hessian, weights, pruned, policy="flat") == pytest.approx(
        brute_force(flat, weights, pruned)[0], abs=1e-10
    )
    model = QuadraticModel(hessian, weights)
    assert any("eigenvalues < 0" in note for note in model.notes)


class MatrixOperator:
    """The CurvatureOperator interface on an explicit matrix (float64 torch products)."""

    def __init__(self, matrix, curvature="ggn"):
        self._matrix = torch.as_tensor(matrix)
        self.dimension = matrix.shape[0]
        self.curvature = curvature
        self.dtype = torch.float64
        self.products = 0

    def apply(self, rows):
        self.products += rows.shape[0]
        return rows @ self._matrix

    def matrix(self, max_dimension=5000):
        return self._matrix


def test_matrix_free_conjugate_gradients_match_the_dense_solver():
    dimension = 150
    matrix = psd_matrix(dimension, seed=4) + 1e-3 * np.eye(dimension)
    weights = np.random.default_rng(4).standard_normal(dimension)
    operator = MatrixOperator(matrix)
    sparse = QuadraticModel(operator, weights, dense_limit=0, cg_tolerance=1e-10)
    dense = QuadraticModel(matrix, weights)
    assert (sparse.solver, dense.solver) == ("cg", "dense")
    pruned = removed_mask(weights, 0.4)
    assert sparse.cost(pruned) == pytest.approx(dense.cost(pruned), rel=1e-8)
    np.testing.assert_allclose(sparse.refit(pruned), dense.refit(pruned), atol=1e-7)
    assert sparse.limit(0.05).count == dense.limit(0.05).count
    assert operator.products > 0


def test_matrix_free_needs_a_psd_curvature():
    dimension = 30
    weights = np.random.default_rng(5).standard_normal(dimension)
    basis = ortho_group.rvs(dimension, random_state=5)
    indefinite = (basis * np.linspace(-1.0, 1.0, dimension)) @ basis.T
    hessian = MatrixOperator(indefinite, curvature="hessian")
    with pytest.raises(ValueError, match="PSD"):
        QuadraticModel(hessian, weights, dense_limit=0)
    pruned = removed_mask(weights, 0.2)
    with pytest.raises(ValueError, match="non-positive curvature"):
        QuadraticModel(hessian, weights, dense_limit=0, damping=0.2).cost(pruned)
    damped = QuadraticModel(hessian, weights, dense_limit=0, damping=1.5)
    expected = brute_force(indefinite + 1.5 * np.eye(dimension), weights, pruned)[0]
    assert damped.cost(pruned) == pytest.approx(expected, rel=1e-8)


def test_refit_keeps_the_input_type_and_a_real_operator_works():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 2, bias=False).double()
    inputs = torch.randn(40, 6, dtype=torch.float64)
    targets = torch.randn(40, 2, dtype=torch.float64)
    from pruning_limit.curvature import CurvatureOperator

    operator = CurvatureOperator(
        layer, torch.nn.MSELoss(), (inputs, targets), device="cpu", curvature="hessian"
    )
    weights = layer.weight.detach().reshape(-1)
    pruned = removed_mask(weights, 0.5)
    refit = quadratic_refit(operator, weights, pruned)
    assert isinstance(refit, torch.Tensor) and refit.dtype == torch.float64
    # MSE of a linear layer: the Hessian is exact, so the re-fit is the constrained least squares.
    matrix = operator.matrix().numpy()
    _, expected = brute_force(matrix, weights.numpy(), pruned)
    np.testing.assert_allclose(refit.numpy(), expected, atol=1e-10)
    through_cg = quadratic_refit(operator, weights.numpy(), pruned, dense_limit=0, damping=1e-12)
    np.testing.assert_allclose(through_cg, expected, atol=1e-6)


def test_masks_and_bad_input():
    weights = np.array([0.3, -0.1, 2.0, 0.0, -0.5])
    assert removed_mask(weights, 0.4).tolist() == [False, True, False, True, False]
    assert removed_mask(weights, 0.5).sum() == 2  # round(2.5) = 2, as torch rounds
    with pytest.raises(ValueError, match="removal_fraction"):
        removed_mask(weights, 1.5)
    model = QuadraticModel(np.eye(5), weights)
    with pytest.raises(ValueError, match="entries"):
        model.cost(np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="epsilon"):
        model.limit(0.0)
    with pytest.raises(ValueError, match="epsilon"):
        model.limit(float("nan"))
    with pytest.raises(ValueError, match="5 x 5"):
        QuadraticModel(np.eye(4), weights)
    with pytest.raises(ValueError, match="damping"):
        QuadraticModel(np.eye(5), weights, damping=-1.0)


def test_conjugate_gradients_that_cannot_converge_are_reported_not_trusted():
    """Too few iterations for the problem: every solve is marked, and p* said to be a
    lower bound (q is evaluated at a feasible point, so it can only be too large)."""
    dimension = 120
    matrix = psd_matrix(dimension, seed=6) + 1e-4 * np.eye(dimension)
    weights = np.random.default_rng(6).standard_normal(dimension)
    stuck = QuadraticModel(MatrixOperator(matrix), weights, dense_limit=0, cg_max_iterations=2)
    result = stuck.limit(0.05)
    assert result.unconverged > 0  # every support solved (all but k = 0 and k = D)
    assert "did not converge" in result.notes[-1] and "lower bound" in result.notes[-1]
    assert not stuck.last_solve["converged"] and stuck.last_solve["iterations"] == 2
    exact = QuadraticModel(matrix, weights).limit(0.05)
    assert result.count <= exact.count
    solved = QuadraticModel(MatrixOperator(matrix), weights, dense_limit=0)
    assert solved.limit(0.05).unconverged == 0 and solved.last_solve["converged"]


def test_a_refit_does_not_depend_on_what_was_solved_before():
    """On a singular C_KK many w_K minimise q. Conjugate gradients warm-started from
    another support's solution kept its null-space part: q the same, the weights not
    (issue 16: re-fits of an MLP with D = 5,184 on 200 samples at p = 0.15-0.18, solved
    after p = 0.99, had train loss 0.88, those either side 0.64). The re-fit starts cold."""
    dimension = 60
    matrix = psd_matrix(dimension, rank=8, seed=8)
    weights = np.random.default_rng(8).standard_normal(dimension)
    pruned = removed_mask(weights, 0.3)
    fresh = QuadraticModel(MatrixOperator(matrix), weights, dense_limit=0, cg_tolerance=1e-10)
    cold = fresh.refit(pruned)
    model = QuadraticModel(MatrixOperator(matrix), weights, dense_limit=0, cg_tolerance=1e-10)
    model.refit(removed_mask(weights, 0.95))
    model.limit(0.05)  # the bisection's solves, warm-started from one another
    assert model.cost(pruned) == pytest.approx(fresh.cost(pruned), rel=1e-6)
    np.testing.assert_allclose(model.refit(pruned), cold, atol=1e-8)
    # and the cold solve has no null-space part: with the Jacobi preconditioner M,
    # M (w_K - w*_K) lies in the range of C_KK
    kept = ~pruned
    step = fresh.diagonal()[kept] * (cold - weights)[kept]
    eigenvalues, eigenvectors = np.linalg.eigh(matrix[np.ix_(kept, kept)])
    null = eigenvectors[:, eigenvalues < 1e-10 * eigenvalues.max()]
    assert null.shape[1] > 0 and np.linalg.norm(null.T @ step) < 1e-6 * np.linalg.norm(step)


def test_the_jacobi_preconditioner_handles_a_badly_scaled_curvature():
    """Weights of very different scales make C's diagonal span decades; Jacobi undoes it
    (the same solve without it, a unit diagonal, does not converge)."""
    dimension = 200
    scales = np.geomspace(1e-2, 1e2, dimension)
    matrix = scales[:, None] * (0.2 * psd_matrix(dimension, seed=7) + np.eye(dimension)) * scales
    matrix = 0.5 * (matrix + matrix.T)
    weights = np.random.default_rng(7).standard_normal(dimension) / scales
    pruned = removed_mask(weights, 0.3)
    dense = QuadraticModel(matrix, weights)
    model = QuadraticModel(MatrixOperator(matrix), weights, dense_limit=0, cg_max_iterations=400)
    assert model.cost(pruned) == pytest.approx(dense.cost(pruned), rel=1e-4)
    assert model.last_solve["converged"]
    plain = QuadraticModel(MatrixOperator(matrix), weights, dense_limit=0, cg_max_iterations=400)
    plain._diagonal = np.ones(dimension)
    plain.cost(pruned)
    assert not plain.last_solve["converged"]
