"""The quadratic model's exact answer for the magnitude-pruning support, and the re-fit.

Around w* the loss is modelled as L(w) ~ L(w*) + (w - w*)^T C (w - w*) / 2 with C
positive semi-definite. Removing the coordinates P (keeping K) is eps-feasible in
this model iff

    q(P) = min over w with w_P = 0 of (w - w*)^T C (w - w*) / 2
         = w*_P^T (C_PP - C_PK C_KK^{-1} C_KP) w*_P / 2   <=   eps,

the Schur complement of C_KK. The minimiser keeps the re-fitted
weights w_K = w*_K + d_K with C_KK d_K = C_KP w*_P (and w_P = 0). q grows when P
grows (more constraints, same objective), so along the magnitude supports
(P = the k smallest |w*_j|, k = round(p D) as in ``torch.nn.utils.prune``, ties broken
as torch breaks them: :func:`~pruning_limit.pruning.removed_indices`) the largest
feasible k is found by bisection on k.

Two solvers:

dense (D up to ``dense_limit``)
    C as a matrix. The eigenvalue policy is applied through an eigendecomposition
    (``"abs"``: |C| = U |Lambda| U^T; ``"flat"``: negative eigenvalues set to 0), so a
    Hessian is made PSD the same way the closed forms treat it. C_KK d = b is solved
    by Cholesky; when C_KK is singular (PSD with null directions, e.g. a low-rank GGN
    or the flat policy) by least squares (``scipy.linalg.lstsq``, minimum-norm
    solution): b = C_KP w*_P lies in the range of C_KK for PSD C, so the minimum is
    the same, and the re-fit moves nothing along the null directions.
matrix-free (larger D)
    Conjugate gradients on C_KK + damping I with masked curvature products,
    C_KK v_K = (C [v_K; 0])_K, preconditioned by the diagonal of C (Jacobi; the
    diagonal estimated once from ``diagonal_probes`` Rademacher products,
    diag(C) ~ mean_k v_k * C v_k, floored at 1e-3 of its mean so that the
    preconditioner stays positive). They stop when the residual falls below
    ``cg_tolerance`` times the right-hand side's norm (the problem's own scale), or
    after ``cg_max_iterations``: such a solve is *unconverged*, recorded as such
    (``last_solve``, ``unconverged``), never passed off as the minimiser. No policy
    can be applied without eigenvectors, so C must be PSD: a GGN operator, or a Hessian
    with ``damping`` > 0 large enough that H + damping I is PSD on the kept coordinates
    (CG stops with an error when it meets a direction of non-positive curvature).

q is evaluated as r^T (C + damping I) r / 2 at the computed minimiser r = w - w*,
which is never below the true minimum and is accurate to second order in the
solver's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from .curvature import EXACT_LIMIT
from .pruning import removed_indices
from .statdim import apply_policy, check_policy


@dataclass(frozen=True)
class QuadraticLimit:
    """The largest magnitude-pruning fraction whose quadratic-model cost stays <= eps.

    Attributes
    ----------
    removal_fraction
        p*, the fraction *removed* (kept = 1 - p*), interpolated linearly in q
        between the last feasible count and the first infeasible one.
    count
        k*, the largest count of removed weights with q <= eps.
    cost_below, cost_above
        q at k* and at k* + 1 (``inf`` if k* = D).
    epsilon
        The budget eps.
    solver
        ``"dense"`` or ``"cg"``.
    evaluations
        How many supports were solved (the bisection's cost).
    notes
        What was done about singular blocks, damping, policy, unconverged solves.
    unconverged
        How many supports conjugate gradients did not solve to tolerance.

    Example
    -------
    C = [[2, 1], [1, 2]], w* = (0.1, 1): removing 0.1 costs 0.0075, removing both
    w*^T C w* / 2 = 1.11; at eps = 0.01 one weight goes, and p* lies a fraction
    (0.01 - 0.0075) / (1.11 - 0.0075) of the next step beyond 1/2.

    >>> limit = quadratic_limit(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([0.1, 1.0]), 0.01)
    >>> limit.count, round(limit.cost_below, 6), round(limit.cost_above, 6), limit.solver
    (1, 0.0075, 1.11, 'dense')
    >>> round(limit.removal_fraction, 6), round(limit.kept_fraction, 6)
    (0.501134, 0.498866)
    """

    removal_fraction: float
    count: int
    cost_below: float
    cost_above: float
    epsilon: float
    dimension: int
    solver: str
    evaluations: int
    notes: tuple[str, ...] = ()
    unconverged: int = 0

    @property
    def kept_fraction(self) -> float:
        return 1.0 - self.removal_fraction


class QuadraticModel:
    """C (made PSD) and w*, answering q(P) and the re-fit for any removed set P.

    Parameters
    ----------
    curvature
        A symmetric D x D matrix (numpy or torch), or a
        :class:`~pruning_limit.curvature.CurvatureOperator`. An operator with
        D <= ``dense_limit`` is turned into its matrix once.
    weights
        w*, flat, in the curvature's coordinate order.
    policy
        For the dense solver: ``"abs"`` or ``"flat"`` treatment of eigenvalues <= 0
        (irrelevant for a GGN apart from round-off). Ignored by the matrix-free
        solver, which requires a PSD operator.
    damping
        Added to C as damping * I (both solvers).
    dense_limit
        Largest D for the dense solver.
    cg_tolerance, cg_max_iterations
        Relative residual (to the right-hand side's norm) and iteration cap for
        conjugate gradients.
    diagonal_probes
        Rademacher products for the Jacobi preconditioner's estimate of diag(C).

    Example
    -------
    >>> import numpy as np
    >>> C = np.array([[2.0, 1.0], [1.0, 2.0]]); w = np.array([0.1, 1.0])
    >>> model = QuadraticModel(C, w)
    >>> round(model.cost(np.array([True, False])), 6)   # 0.1^2 * (2 - 1/2) / 2
    0.0075
    >>> model.refit(np.array([True, False]))            # w_1 = 1 + 0.1 * 1/2
    array([0.  , 1.05])
    """

    def __init__(
        self,
        curvature,
        weights,
        *,
        policy: str = "abs",
        damping: float = 0.0,
        dense_limit: int = EXACT_LIMIT,
        cg_tolerance: float = 1e-6,
        cg_max_iterations: int = 2000,
        diagonal_probes: int = 32,
    ) -> None:
        self.weights = as_vector(weights)
        self.dimension = self.weights.size
        self.policy = check_policy(policy)
        self.damping = float(damping)
        if not np.isfinite(self.damping) or self.damping < 0:
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        self.cg_tolerance = float(cg_tolerance)
        self.cg_max_iterations = int(cg_max_iterations)
        self.diagonal_probes = int(diagonal_probes)
        self._diagonal: np.ndarray | None = None
        self.last_solve: dict = {"converged": True, "iterations": 0, "relative_residual": 0.0}
        self.unconverged: dict[int, float] = {}  # removed count -> final relative residual
        self.notes: list[str] = []
        self._costs: dict[int, float] = {}
        self._warm: np.ndarray | None = None
        self.eigenvalues: np.ndarray | None = None
        self.eigenvectors: np.ndarray | None = None
        self.progress = None  # a tqdm bar told of every support solved, or None

        operator = None if _is_matrix(curvature) else curvature
        if operator is not None and not hasattr(operator, "apply"):
            raise TypeError(
                f"curvature must be a D x D matrix or a CurvatureOperator, got "
                f"{type(curvature).__name__}"
            )
        if operator is not None and operator.dimension != self.dimension:
            raise ValueError(
                f"the operator acts on D = {operator.dimension} coordinates but weights has "
                f"{self.dimension}"
            )
        if operator is None or operator.dimension <= dense_limit:
            matrix = _as_array(curvature if operator is None else operator.matrix(dense_limit))
            if matrix.shape != (self.dimension, self.dimension):
                raise ValueError(
                    f"curvature must be {self.dimension} x {self.dimension} to match the "
                    f"weights, got {matrix.shape}"
                )
            eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
            negative = int(np.sum(eigenvalues < 0))
            if negative:
                self.notes.append(
                    f"{negative} eigenvalues < 0 (most negative {eigenvalues.min():.3g}); "
                    f"policy {policy!r} applied"
                )
            self.eigenvalues = apply_policy(eigenvalues, policy)
            self.eigenvectors = eigenvectors
            self.matrix = (eigenvectors * self.eigenvalues) @ eigenvectors.T
            self.matrix[np.diag_indices(self.dimension)] += self.damping
            self.solver = "dense"
            self.operator = None
        else:
            if getattr(operator, "curvature", "ggn") == "hessian" and self.damping == 0:
                raise ValueError(
                    f"the matrix-free quadratic model (D = {self.dimension} > dense_limit = "
                    f"{dense_limit}) needs a PSD curvature: use curvature='ggn', or a Hessian "
                    "with damping > 0 (H + damping I), or raise dense_limit"
                )
            self.operator = operator
            self.matrix = None
            self.solver = "cg"
            self.notes.append(
                f"matrix-free CG on C_KK + {self.damping:g} I (Jacobi-preconditioned, relative "
                f"residual {self.cg_tolerance:g}); no eigenvalue policy applied"
            )
        if self.damping:
            self.notes.append(f"damping {self.damping:g} added to the diagonal")

    # -- products ------------------------------------------------------------------------

    def _product(self, vector: np.ndarray) -> np.ndarray:
        """(C + damping I) vector, for a full-length vector."""
        if self.matrix is not None:
            return self.matrix @ vector
        rows = torch.as_tensor(vector[None], dtype=self.operator.dtype)
        product = self.operator.apply(rows)[0].detach().double().cpu().numpy()
        return product + self.damping * vector

    # -- one support ---------------------------------------------------------------------

    def _check_mask(self, pruned) -> np.ndarray:
        pruned = np.asarray(pruned, dtype=bool).reshape(-1)
        if pruned.size != self.dimension:
            raise ValueError(
                f"pruned mask has {pruned.size} entries, expected D = {self.dimension}"
            )
        return pruned

    def _solve(self, pruned: np.ndarray, minimum_norm: bool = False) -> np.ndarray:
        """r = w - w* at the minimiser: r_P = -w*_P, r_K = d with C_KK d = C_KP w*_P."""
        kept = ~pruned
        removed = np.where(pruned, self.weights, 0.0)
        step = -removed
        if not kept.any() or not pruned.any():
            return step
        rhs = -self._product(step)[kept]  # C_KP w*_P (+ 0: the damping term vanishes on K)
        if self.matrix is not None:
            block = self.matrix[np.ix_(kept, kept)]
            step[kept] = self._dense_solve(block, rhs, minimum_norm)
        else:
            step[kept] = self._cg(kept, rhs, warm=not minimum_norm)
        return step

    def _dense_solve(self, block: np.ndarray, rhs: np.ndarray, minimum_norm: bool) -> np.ndarray:
        """Cholesky for a well-conditioned C_KK; minimum-norm least squares otherwise.

        Cholesky of a PSD matrix that is singular to round-off can succeed with tiny
        pivots, so a pivot ratio below 1e-12 also counts as singular.
        """
        if not minimum_norm:
            try:
                factor = scipy.linalg.cho_factor(block, check_finite=False)
                pivots = np.abs(np.diag(factor[0]))
                if pivots.min() ** 2 > 1e-12 * pivots.max() ** 2:
                    return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
            except np.linalg.LinAlgError:
                pass
        note = "singular C_KK: minimum-norm least-squares solve (scipy.linalg.lstsq)"
        if not minimum_norm and note not in self.notes:
            self.notes.append(note)
        try:
            return scipy.linalg.lstsq(block, rhs, cond=1e-12)[0]
        except np.linalg.LinAlgError:
            # LAPACK's gelsd can fail to converge on a nearly singular block (seen on a
            # digits network's exact Hessian). C_KK is symmetric: the same minimum-norm
            # solution from its eigendecomposition, eigenvalues <= 1e-12 max|lambda| cut.
            note = "lstsq's SVD did not converge: pseudo-inverse from scipy.linalg.eigh"
            if note not in self.notes:
                self.notes.append(note)
            values, vectors = scipy.linalg.eigh(block)
            keep = np.abs(values) > 1e-12 * np.abs(values).max()
            return vectors[:, keep] @ ((vectors[:, keep].T @ rhs) / values[keep])

    def diagonal(self) -> np.ndarray:
        """diag(C) + damping for the Jacobi preconditioner (estimated once, then kept)."""
        if self._diagonal is None:
            generator = torch.Generator().manual_seed(0)
            probes = (
                torch.randint(0, 2, (self.diagonal_probes, self.dimension), generator=generator).to(
                    self.operator.dtype
                )
                * 2
                - 1
            )
            products = self.operator.apply(probes).detach().cpu()  # as _product passes rows
            estimate = (probes * products).double().mean(dim=0).numpy()
            floor = 1e-3 * max(float(np.mean(np.abs(estimate))), 1e-300)
            self._diagonal = np.maximum(estimate, floor) + self.damping
        return self._diagonal

    def _cg(self, kept: np.ndarray, rhs: np.ndarray, warm: bool = True) -> np.ndarray:
        """Jacobi-preconditioned conjugate gradients on (C + damping I)_KK x = rhs.

        Records ``last_solve`` (converged, iterations, relative residual). With ``warm``,
        starts from the previous solve when that one converged: right for q, which a
        null-space part of x does not change, wrong for the re-fit's weights, which
        would keep the previous support's null-space part; without it, starts at 0,
        so that x stays in the range of C_KK (a minimum-norm solution, in the
        preconditioner's metric).
        """

        def apply(vector_kept: np.ndarray) -> np.ndarray:
            full = np.zeros(self.dimension)
            full[kept] = vector_kept
            return self._product(full)[kept]

        inverse = 1.0 / self.diagonal()[kept]
        x = np.zeros(rhs.size) if self._warm is None or not warm else self._warm[kept].copy()
        residual = rhs - apply(x) if x.any() else rhs.copy()
        scale = max(np.linalg.norm(rhs), 1e-300)
        preconditioned = inverse * residual
        direction = preconditioned.copy()
        rho = residual @ preconditioned
        converged, iterations = False, 0
        for iterations in range(self.cg_max_iterations + 1):
            if np.linalg.norm(residual) <= self.cg_tolerance * scale:
                converged = True
                break
            if iterations == self.cg_max_iterations:
                break
            product = apply(direction)
            curvature = direction @ product
            if curvature <= 0:
                raise ValueError(
                    "conjugate gradients met a direction of non-positive curvature in C_KK: "
                    "the curvature is not PSD on the kept coordinates (use curvature='ggn' or "
                    "a larger damping)"
                )
            alpha = rho / curvature
            x += alpha * direction
            residual -= alpha * product
            preconditioned = inverse * residual
            rho_next = residual @ preconditioned
            direction = preconditioned + (rho_next / rho) * direction
            rho = rho_next
        self.last_solve = {
            "converged": converged,
            "iterations": iterations,
            "relative_residual": float(np.linalg.norm(residual) / scale),
        }
        if converged:
            warm = np.zeros(self.dimension)
            warm[kept] = x
            self._warm = warm
        return x

    def cost(self, pruned) -> float:
        """q(P) = min over w with w_P = 0 of (w - w*)^T (C + damping I) (w - w*) / 2."""
        step = self._solve(self._check_mask(pruned))
        return float(0.5 * step @ self._product(step))

    def refit(self, pruned) -> np.ndarray:
        """The minimiser: w_P = 0, w_K = w*_K + C_KK^{-1} C_KP w*_P (minimum-norm if singular).

        The same weights whatever was solved before: conjugate gradients start cold.
        """
        pruned = self._check_mask(pruned)
        return self.weights + self._solve(pruned, minimum_norm=True)

    # -- along the magnitude order -----------------------------------------------------------

    def support(self, count: int) -> np.ndarray:
        """The removed set of magnitude pruning at ``count`` weights (True = removed), in
        the one magnitude order (:func:`~pruning_limit.pruning.removed_indices`)."""
        pruned = np.zeros(self.dimension, dtype=bool)
        pruned[removed_indices(torch.from_numpy(np.abs(self.weights)), int(count)).numpy()] = True
        return pruned

    def cost_of_count(self, count: int) -> float:
        """q for the support that removes the ``count`` smallest |w*_j| (cached)."""
        count = int(count)
        if count not in self._costs:
            self._costs[count] = 0.0 if count == 0 else self.cost(self.support(count))
            if count and not self.last_solve["converged"]:
                self.unconverged[count] = self.last_solve["relative_residual"]
            if self.progress is not None:
                solver = f", CG {self.last_solve['iterations']} it." if self.solver == "cg" else ""
                self.progress.set_postfix_str(f"k = {count}{solver}", refresh=False)
                self.progress.update(1)
        return self._costs[count]

    def limit(self, epsilon: float) -> QuadraticLimit:
        """Bisection over k for the largest k with q(k) <= eps; see :class:`QuadraticLimit`."""
        epsilon = float(epsilon)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be a positive number, got {epsilon}")
        before = len(self._costs)
        dimension = self.dimension
        if self.cost_of_count(dimension) <= epsilon:
            low, high = dimension, None
        else:
            low, high = 0, dimension
            while high - low > 1:
                middle = (low + high) // 2
                if self.cost_of_count(middle) <= epsilon:
                    low = middle
                else:
                    high = middle
        below = self.cost_of_count(low)
        if high is None:
            fraction, above = 1.0, float("inf")
        else:
            above = self.cost_of_count(high)
            share = (epsilon - below) / (above - below) if above > below else 0.0
            fraction = (low + float(np.clip(share, 0.0, 1.0))) / dimension
        notes = list(self.notes)
        unconverged = [k for k in self._costs if k in self.unconverged]
        if unconverged:
            worst = max(self.unconverged[k] for k in unconverged)
            notes.append(
                f"conjugate gradients did not converge for {len(unconverged)} of the supports "
                f"solved (relative residual up to {worst:.1e} after "
                f"{self.cg_max_iterations} iterations): their q, evaluated at a feasible "
                "point, is an upper bound, so p* is a lower bound"
            )
        return QuadraticLimit(
            removal_fraction=fraction,
            count=low,
            cost_below=below,
            cost_above=above,
            epsilon=epsilon,
            dimension=dimension,
            solver=self.solver,
            evaluations=len(self._costs) - before,
            notes=tuple(notes),
            unconverged=len(unconverged),
        )


def quadratic_cost(curvature, weights, pruned_mask, **options) -> float:
    """q(P) for one removed set P (``pruned_mask`` True = removed); see :class:`QuadraticModel`.

    >>> C = np.array([[2.0, 1.0], [1.0, 2.0]]); w = np.array([0.1, 1.0])
    >>> round(quadratic_cost(C, w, np.array([True, False])), 6)  # 0.1^2 (2 - 1/2) / 2
    0.0075
    >>> round(quadratic_cost(C, w, np.array([True, True])), 6)   # nothing kept: w^T C w / 2
    1.11
    """
    return QuadraticModel(curvature, weights, **options).cost(pruned_mask)


def quadratic_refit(curvature, weights, pruned_mask, **options):
    """Weights with the pruned ones zero and the kept ones re-fitted in the quadratic model.

    w_P = 0 and w_K = w*_K + C_KK^{-1} C_KP w*_P, the minimiser of
    (w - w*)^T C (w - w*) over the kept-coordinate subspace (no training).

    Parameters
    ----------
    curvature
        C as a D x D matrix or a :class:`~pruning_limit.curvature.CurvatureOperator`.
    weights
        w*, flat (numpy or torch); the result has the same type (a torch result has
        the input's dtype and device).
    pruned_mask
        Boolean, True on the removed coordinates.
    options
        ``policy``, ``damping``, ``dense_limit``, ``cg_tolerance``, ``cg_max_iterations``
        as in :class:`QuadraticModel`.

    Example
    -------
    >>> C = np.array([[2.0, 1.0], [1.0, 2.0]]); w = np.array([0.1, 1.0])
    >>> quadratic_refit(C, w, np.array([True, False])).round(6).tolist()   # 1 + 0.1 / 2
    [0.0, 1.05]
    >>> refit = quadratic_refit(torch.tensor(C), torch.tensor([0.1, 1.0]), np.array([True, False]))
    >>> refit.dtype   # a tensor in, a tensor of its dtype out
    torch.float32
    """
    refit = QuadraticModel(curvature, weights, **options).refit(pruned_mask)
    if hasattr(weights, "detach"):
        import torch

        return torch.as_tensor(refit, dtype=weights.dtype, device=weights.device).reshape(
            weights.shape
        )
    return refit.reshape(np.shape(weights))


def quadratic_limit(curvature, weights, epsilon: float, **options) -> QuadraticLimit:
    """The quadratic model's exact limit along the magnitude order (bisection on k).

    See :class:`QuadraticLimit` for what it holds.

    >>> C = np.array([[2.0, 1.0], [1.0, 2.0]]); w = np.array([0.1, 1.0])
    >>> quadratic_limit(C, w, 0.01).count, quadratic_limit(C, w, 2.0).removal_fraction
    (1, 1.0)
    """
    return QuadraticModel(curvature, weights, **options).limit(epsilon)


def _is_matrix(value) -> bool:
    return isinstance(value, np.ndarray) or (
        hasattr(value, "detach") and hasattr(value, "shape") and not hasattr(value, "apply")
    )


def _as_array(value) -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor (any shape)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=np.float64)


def as_vector(value) -> np.ndarray:
    """A flat float64 numpy copy of a numpy array or torch tensor.

    >>> as_vector(torch.ones(2, 2, dtype=torch.float32))
    array([1., 1., 1., 1.])
    """
    return _as_array(value).reshape(-1)
