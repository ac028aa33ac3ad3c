"""Statistical dimension of the cone an ellipsoidal loss sublevel set subtends.

Quadratic model (DESIGN section 2): around the trained weights w* the sublevel set
S(eps) is the ellipsoid E = {w : (w - w*)^T C (w - w*) <= 2 eps}, with semi-axes
r_i = sqrt(2 eps / lambda_i) along the eigenvectors of the curvature C. Seen from an
apex at distance R from w*, E subtends a convex cone K (the descent cone: every
direction from the apex that enters E). The approximate kinematic formula
(Amelunxen, Lotz, McCoy & Tropp 2014) says a random subspace of dimension k through
the apex meets K with high probability iff k + delta(K) > D.

This module computes delta three ways:

``statistical_dimension``
    The closed form of Zhang et al. (arXiv 2306.05857),
        delta(R) / D = tr g_c(C) / D,   g_c(lambda) = 1 / (1 + c lambda),  c = R^2 / (2 eps),
    from a :class:`~pruning_limit.spectrum.Spectrum` (zero rows give g_c(0) = 1).
``orthogonal_statistical_dimension``
    The same with R^2 replaced by R^2 (1 - p) / p: the kept-coordinate subspace of a
    magnitude pruning passes through its own closest point to w*, so it is orthogonal
    to the offset, which a random subspace is not (DESIGN section 7).
``trace_bound``
    Jensen's lower bound delta / D >= 1 / (1 + c tr(C) / D) (g_c is convex).
``statdim_exact``
    The exact delta(K) = E ||Pi_K(g)||^2 by Monte Carlo over Gaussian g, with the
    projection onto K solved exactly (a one-dimensional secular equation), optionally
    cross-checked against cvxpy with Clarabel. Needs the eigenvectors of C, so small D.

Eigenvalues <= 0 (a Hessian away from a strict minimum) follow a policy:
``"abs"`` uses |lambda| (the reference code), ``"flat"`` treats them as flat
directions (lambda <= 0 adds exactly 1 to delta). A generalised Gauss-Newton
matrix is positive semi-definite, so there the policy only touches round-off.

Quadrature bounds: f_c(x) = 1 / (1 + c x) is completely monotone on x >= 0
(f^(k) = (-1)^k k! c^k / (1 + c x)^(k+1)). For a positive semi-definite C the m-node
Gauss rule of a probe's Lanczos matrix is a *lower* bound of q^T f_c(C) q (exact minus
rule is a positive multiple of f^(2m) > 0) and the m-node Gauss-Radau rule with a
node prescribed at the lower end 0 of the spectrum is an *upper* bound (a positive
multiple of f^(2m-1) < 0). For an indefinite Hessian under the ``"abs"`` policy the
same holds for the measure of C^2 and y -> f_c(sqrt(y)), with floor(m/2) nodes built
from the same Lanczos matrix. See :func:`quadrature_bounds`.

Everything here is numpy/scipy (cvxpy only for the cross-check); nothing depends on
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal, solve_banded

from .spectrum import Spectrum, gauss_rule

POLICIES = ("abs", "flat")


# -- policies and scales --------------------------------------------------------------


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is a known eigenvalue policy, else raise ``ValueError``."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return policy


def apply_policy(eigenvalues: np.ndarray, policy: str = "abs") -> np.ndarray:
    """Eigenvalues with the policy for lambda <= 0 applied: ``|lambda|`` or ``max(lambda, 0)``.

    Both give a non-negative spectrum; with ``"flat"`` a non-positive eigenvalue becomes
    an exactly flat direction (g_c = 1 there).
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if check_policy(policy) == "abs":
        return np.abs(eigenvalues)
    return np.maximum(eigenvalues, 0.0)


def curvature_scale(radius, epsilon: float):
    """c = R^2 / (2 eps), elementwise in ``radius``; 0 where R = 0 or eps = inf.

    >>> float(curvature_scale(2.0, 0.5))
    4.0
    """
    epsilon = float(epsilon)
    if not epsilon > 0:  # also catches NaN
        raise ValueError(f"epsilon must be a positive number, got {epsilon}")
    radius = np.asarray(radius, dtype=np.float64)
    if np.isinf(epsilon):
        return np.zeros_like(radius) if radius.ndim else 0.0
    with np.errstate(over="ignore"):  # an infinite c is meaningful (g_c -> 0 off the null space)
        scale = radius**2 / (2.0 * epsilon)
    return scale if scale.ndim else float(scale)


def _shrinkage(scale: float, policy: str) -> Callable[[np.ndarray], np.ndarray]:
    """g_c(lambda) = 1 / (1 + c * policy(lambda)) as a vectorised function."""
    check_policy(policy)
    if np.isinf(scale):
        return lambda x: (apply_policy(x, policy) == 0).astype(np.float64)
    return lambda x: 1.0 / (1.0 + scale * apply_policy(x, policy))


# -- closed forms from a Spectrum -------------------------------------------------------


def statistical_dimension(
    spectrum: Spectrum,
    radius: float,
    epsilon: float,
    policy: str = "abs",
    *,
    steps: int | None = None,
) -> float:
    """delta(R) / D = tr g_c(C) / D with g_c(lambda) = 1 / (1 + c lambda), c = R^2 / (2 eps).

    The closed form of Zhang et al.: sum_i r_i^2 / (R^2 + r_i^2) over D with
    r_i^2 = 2 eps / lambda_i. Identically-zero rows add exactly 1 each.

    Parameters
    ----------
    spectrum
        Quadrature rule of the curvature C (exact or SLQ).
    radius
        R, the distance from the apex to the ellipsoid's centre (for pruning: the
        norm of the removed weights, :func:`pruning_limit.limit.pruned_norm`).
    epsilon
        The loss budget eps > 0.
    policy
        ``"abs"`` (use |lambda|) or ``"flat"`` (lambda <= 0 adds 1). Irrelevant for a
        GGN spectrum apart from round-off.
    steps
        Use the SLQ rule after this many Lanczos steps (default: all).

    Returns
    -------
    float
        delta / D in [0, 1].

    Example
    -------
    >>> import numpy as np
    >>> eigs = np.array([0.0, 1.0, 3.0])
    >>> s = Spectrum(nodes=eigs[None], weights=np.full((1, 3), 1 / 3), dimension=3,
    ...              zero_rows=0, curvature="hessian", method="exact")
    >>> round(statistical_dimension(s, radius=1.0, epsilon=0.5), 6)   # (1 + 1/2 + 1/4) / 3
    0.583333
    """
    scale = curvature_scale(radius, epsilon)
    return spectrum.trace_function(_shrinkage(scale, policy), steps=steps)[0]


def orthogonal_statistical_dimension(
    spectrum: Spectrum,
    radius: float,
    epsilon: float,
    removal_fraction: float,
    policy: str = "abs",
    *,
    steps: int | None = None,
) -> float:
    """The coordinate-subspace form: the closed form with R^2 replaced by R^2 (1 - p) / p.

    For Haar-random eigenvectors and a kept-coordinate subspace orthogonal to the
    offset w* - (pruned point), the feasibility condition reads
    p = (1/D) sum_i r_i^2 / (r_i^2 + R(p)^2 (1 - p) / p) (DESIGN section 7). It equals
    :func:`statistical_dimension` at p = 1/2, and is 1 at p = 1 (so the fixed point of
    interest is the *first* crossing).
    """
    p = float(removal_fraction)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"removal_fraction must lie in (0, 1], got {removal_fraction}")
    effective = float(radius) * np.sqrt((1.0 - p) / p)
    return statistical_dimension(spectrum, effective, epsilon, policy, steps=steps)


def mean_curvature(
    spectrum: Spectrum, policy: str = "abs", *, steps: int | None = None
) -> tuple[float, float]:
    """tr(policy(C)) / D and its standard error over probes (zero rows count as 0).

    With ``"abs"`` this is the mean |lambda|, which SLQ integrates only approximately
    (|x| is not a polynomial); for a PSD curvature it is tr(C)/D, exact for any m >= 1.
    """
    check_policy(policy)
    return spectrum.trace_function(lambda x: apply_policy(x, policy), steps=steps)


def trace_bound(spectrum: Spectrum, radius: float, epsilon: float, policy: str = "abs") -> float:
    """Jensen's lower bound on delta / D: 1 / (1 + c tr(policy(C)) / D).

    g_c is convex on [0, inf), so the mean of g_c over the (policy-applied) spectrum
    is at least g_c of the mean eigenvalue. Needs only a trace estimate.

    >>> import numpy as np
    >>> eigs = np.array([0.0, 1.0, 3.0])
    >>> s = Spectrum(nodes=eigs[None], weights=np.full((1, 3), 1 / 3), dimension=3,
    ...              zero_rows=0, curvature="hessian", method="exact")
    >>> round(trace_bound(s, 1.0, 0.5), 6) <= round(statistical_dimension(s, 1.0, 0.5), 6)
    True
    """
    scale = curvature_scale(radius, epsilon)
    trace, _ = mean_curvature(spectrum, policy)
    return float(1.0 / (1.0 + scale * trace))


# -- Gauss and Gauss-Radau quadrature bounds -------------------------------------------------


def gauss_radau_rule(
    alphas: np.ndarray, betas: np.ndarray, node: float
) -> tuple[np.ndarray, np.ndarray]:
    """m-node Gauss-Radau rule of a Jacobi matrix with one node prescribed at ``node``.

    From the first m - 1 Lanczos steps and beta_{m-1} (Golub & Meurant, "Matrices,
    Moments and Quadrature", ch. 6): the last diagonal entry of T_m is replaced by
    node + d_{m-1}, where (T_{m-1} - node I) d = beta_{m-1}^2 e_{m-1}. The rule is
    exact for polynomials of degree <= 2m - 2; ``node`` must not be an eigenvalue of
    T_{m-1}.

    Parameters
    ----------
    alphas, betas
        Diagonal (length m >= 2) and off-diagonal (length m - 1) of T_m.
    node
        The prescribed node, at or outside an end of the spectrum.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    m = alphas.size
    if m < 2:
        raise ValueError("a Gauss-Radau rule needs at least two Lanczos steps")
    shifted = np.zeros((3, m - 1))
    shifted[0, 1:] = betas[: m - 2]
    shifted[1] = alphas[: m - 1] - node
    shifted[2, :-1] = betas[: m - 2]
    rhs = np.zeros(m - 1)
    rhs[-1] = betas[m - 2] ** 2
    correction = solve_banded((1, 1), shifted, rhs)
    modified = alphas.copy()
    modified[-1] = node + correction[-1]
    return gauss_rule(modified, betas[: m - 1])


def squared_measure_jacobi(
    alphas: np.ndarray, betas: np.ndarray, steps: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Jacobi matrix of the spectral measure of C^2 seen from the same probe.

    T_m reproduces the moments q^T C^j q for j <= 2m - 1, so its Gauss rule pushed
    forward by x -> x^2 reproduces the moments of y = x^2 up to degree m - 1, enough
    for the first floor(m/2) Lanczos (Stieltjes) steps of the y-measure. Runs them on
    diag(theta^2) from sqrt(tau), with full re-orthogonalisation. The result is a
    valid Jacobi matrix of the probe's measure of C^2 (stops early if the rule has
    fewer distinct points).
    """
    nodes, weights = gauss_rule(alphas, betas)
    diagonal = nodes**2
    steps = max(1, alphas.size // 2) if steps is None else int(steps)
    basis = [np.sqrt(weights)]
    out_alphas, out_betas = [], []
    for j in range(steps):
        product = diagonal * basis[j]
        out_alphas.append(float(basis[j] @ product))
        for _ in range(2):
            for vector in basis:
                product = product - (vector @ product) * vector
        if j + 1 < steps:
            beta = float(np.linalg.norm(product))
            if beta <= 1e-13 * max(float(diagonal.max()), 1e-300):
                break
            out_betas.append(beta)
            basis.append(product / beta)
    return np.array(out_alphas), np.array(out_betas)


@dataclass(frozen=True)
class QuadratureRules:
    """Per-probe Gauss (lower) and Gauss-Radau (upper) rules of an SLQ spectrum.

    ``variable`` is ``"x"`` (rules for the measure of C, PSD C only) or ``"x^2"``
    (rules for the measure of C^2, any symmetric C: they bound q^T f(|C|) q).
    ``lower_node`` is the prescribed Radau node; ``radau_valid`` marks the probes whose
    Radau rule exists (where T_{m-1} is singular at the node, the upper bound falls
    back to sup f = f(lower end)).
    """

    gauss_nodes: np.ndarray
    gauss_weights: np.ndarray
    radau_nodes: np.ndarray
    radau_weights: np.ndarray
    radau_valid: np.ndarray
    lower_node: float
    steps: int
    variable: str


def quadrature_rules(
    spectrum: Spectrum, steps: int | None = None, *, absolute: bool = False
) -> QuadratureRules:
    """Gauss and Gauss-Radau (node at the lower end 0) rules after ``steps`` Lanczos steps.

    ``absolute=False``: rules of the measure of C itself, m nodes; valid as bounds only
    for a positive semi-definite C (a GGN). ``absolute=True``: rules of the measure of
    C^2 with floor(m/2) nodes (see :func:`squared_measure_jacobi`), for bounds on
    q^T f(|C|) q for any symmetric C: if f is completely monotone on [0, inf), so is
    y -> f(sqrt(y)) (a completely monotone function of a Bernstein function).
    """
    if spectrum.alphas is None:
        raise ValueError("quadrature bounds need an SLQ spectrum (its Lanczos tridiagonals)")
    steps = spectrum.alphas.shape[1] if steps is None else int(steps)
    smallest = 4 if absolute else 2
    if not smallest <= steps <= spectrum.alphas.shape[1]:
        raise ValueError(f"steps must lie in [{smallest}, {spectrum.alphas.shape[1]}], got {steps}")
    jacobi = [(a[:steps], b[: steps - 1]) for a, b in zip(spectrum.alphas, spectrum.betas)]
    if absolute:
        jacobi = [squared_measure_jacobi(a, b) for a, b in jacobi]
    size = min(a.size for a, _ in jacobi)
    jacobi = [(a[:size], b[: size - 1]) for a, b in jacobi]
    scale = max(float(np.abs(a).max()) + 2 * float(np.abs(b).max(initial=0)) for a, b in jacobi)
    scale = scale or 1.0
    # T_{m-1} has eigenvalues strictly inside the spectrum's hull; one at 0 to round-off
    # (a null direction found) makes the Radau system singular there. For C itself the
    # node can move a hair below 0 (f = 1/(1 + c x) is smooth there); for C^2 it cannot
    # (f(sqrt(y)) ends at 0), so that probe's upper bound falls back to f(0).
    lowest = np.array(
        [
            float(eigh_tridiagonal(a[:-1], b[:-1], eigvals_only=True)[0])
            if a.size > 2
            else float(a[0])
            for a, b in jacobi
        ]
    )
    singular = lowest <= 1e-9 * scale
    node = 0.0
    if singular.any() and not absolute:
        node = min(float(lowest.min()), 0.0) - 1e-9 * scale
        singular[:] = False
    gauss = [gauss_rule(a, b) for a, b in jacobi]
    radau = [
        (np.zeros(size), np.full(size, 1.0 / size))
        if bad or size < 2
        else gauss_radau_rule(a, b, node)
        for (a, b), bad in zip(jacobi, singular)
    ]
    return QuadratureRules(
        gauss_nodes=np.stack([g[0] for g in gauss]),
        gauss_weights=np.stack([g[1] for g in gauss]),
        radau_nodes=np.stack([r[0] for r in radau]),
        radau_weights=np.stack([r[1] for r in radau]),
        radau_valid=~singular & (size >= 2),
        lower_node=node,
        steps=steps,
        variable="x^2" if absolute else "x",
    )


def quadrature_bounds(
    spectrum: Spectrum,
    f: Callable[[np.ndarray], np.ndarray],
    steps: int | None = None,
    *,
    absolute: bool = False,
    rules: QuadratureRules | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe lower (Gauss) and upper (Gauss-Radau at 0) bounds on q^T f(C) q.

    Valid when f is completely monotone on [0, inf) ((-1)^k f^(k) >= 0, e.g.
    f(x) = 1 / (1 + c x)) and either C is positive semi-definite (``absolute=False``)
    or the bounds are meant for q^T f(|C|) q (``absolute=True``, any symmetric C).
    The m-node Gauss error (exact minus rule) is a positive multiple of f^(2m) >= 0,
    so Gauss is low; the m-node Radau error with the node at the lower end is a
    positive multiple of f^(2m-1) <= 0, so Radau is high. Each array has shape
    (probes,) and, like ``Spectrum.per_probe``, already mixes in the zero rows' z f(0)
    and divides by D.

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((50, 50)); C = A @ A.T / 50
    >>> q = rng.standard_normal(50); q /= np.linalg.norm(q)
    >>> from pruning_limit.geometry import _lanczos_for_doc
    >>> a, b = _lanczos_for_doc(C, q, 6)
    >>> s = Spectrum(nodes=np.zeros((1, 6)), weights=np.full((1, 6), 1 / 6), dimension=50,
    ...              zero_rows=0, curvature="ggn", method="slq", alphas=a[None], betas=b[None])
    >>> f = lambda x: 1 / (1 + 10 * x)
    >>> lo, hi = quadrature_bounds(s, f)
    >>> w, V = np.linalg.eigh(C); exact = float(((V.T @ q) ** 2) @ f(w))
    >>> bool(lo[0] <= exact <= hi[0])
    True
    """
    rules = quadrature_rules(spectrum, steps, absolute=absolute) if rules is None else rules
    if rules.variable == "x^2":

        def g(y):
            return f(np.sqrt(np.maximum(y, 0.0)))

    else:
        node = rules.lower_node

        def g(x):
            return f(np.maximum(x, node))

    lower = spectrum.per_probe(g, rules.gauss_nodes, rules.gauss_weights)
    upper = spectrum.per_probe(g, rules.radau_nodes, rules.radau_weights)
    if not rules.radau_valid.all():
        # sup of a completely monotone f is its value at the lower end.
        top = spectrum.per_probe(g, np.zeros((1, 1)), np.ones((1, 1)))[0]
        upper = np.where(rules.radau_valid, upper, top)
    return lower, upper


def _lanczos_for_doc(matrix: np.ndarray, start: np.ndarray, steps: int):
    """Plain Lanczos with full re-orthogonalisation (for the docstring example only)."""
    basis = [start / np.linalg.norm(start)]
    alphas, betas = [], []
    for j in range(steps):
        w = matrix @ basis[j]
        alphas.append(float(basis[j] @ w))
        for v in basis:
            w = w - (v @ w) * v
        if j + 1 < steps:
            betas.append(float(np.linalg.norm(w)))
            basis.append(w / betas[-1])
    return np.array(alphas), np.array(betas)


# -- the exact statistical dimension of the descent cone -------------------------------------


@dataclass(frozen=True)
class ExactStatisticalDimension:
    """Monte Carlo estimate of delta(K) / D for the cone K an ellipsoid subtends.

    Attributes
    ----------
    fraction
        delta / D, the mean of ||Pi_K(g)||^2 / D over the Gaussian samples.
    standard_error
        Of ``fraction``, from the spread over samples.
    samples, seed
        The Monte Carlo sample count and seed.
    case
        ``"cone"`` (apex outside the ellipsoid), ``"whole space"`` (apex inside:
        delta = D exactly) or ``"half-space"`` (apex on the surface to within 1e-9
        relative: K is the tangent half-space, delta = D - 1/2 exactly). The last two
        are returned without sampling (standard error 0).
    cross_checked
        Samples also projected with cvxpy (Clarabel).
    cross_check_error
        max ||x_secular - x_cvxpy|| / ||g|| over the cross-checked samples whose solve
        succeeded (NaN when none was asked for).
    cvxpy_failures
        Cross-check solves that did not reach an optimal status (the secular answer is
        kept for them).
    """

    fraction: float
    standard_error: float
    samples: int
    seed: int
    case: str
    cross_checked: int = 0
    cross_check_error: float = float("nan")
    cvxpy_failures: int = 0


class DescentCone:
    """The cone K = {t (y - apex) : t >= 0, (y - w*)^T C (y - w*) <= 2 eps}, in C's eigenbasis.

    With u = w* - apex, lambda = the (policy-applied, >= 0) eigenvalues and
    a = u^T C u - 2 eps > 0 (apex outside), a direction x lies in K iff
    c^T x >= 0 and (c^T x)^2 >= a x^T C x, with c = C u: K = {x : x^T M x <= 0,
    c^T x >= 0} for M = a C - c c^T, which has exactly one negative eigenvalue.

    Projection (``project``): Pi_K(g) is g (if g in K), 0, the null-space part of g,
    or a boundary point x(mu) = (I + mu M)^{-1} g with x^T M x = 0. In M's eigenbasis
    the constraint phi(mu) = sum_i m_i g_i^2 / (1 + mu m_i)^2 is decreasing on
    mu in (0, 1/|m_0|) and, written in nu = 1/mu, increasing on the other branch
    mu > 1/|m_0|; so each branch has at most one root, found by safeguarded Newton
    (bisection fallback) on a log-ratio form in a variable that resolves the pole
    exactly. The feasible candidate (c^T x >= 0) nearest to g is the projection.

    M is diagonalised densely (D up to a few hundred). Its eigenvalues are accurate to
    ~1e-16 of its largest, so directions whose curvature is below ~1e-13 of the largest
    act as exactly flat ones (lines inside K), which they are to that precision.

    Parameters
    ----------
    eigenvalues
        Eigenvalues of C with the policy applied (non-negative).
    center
        u = w* - apex in C's eigenbasis (``eigenvectors.T @ (w* - apex)``).
    epsilon
        The loss budget eps > 0.
    """

    def __init__(self, eigenvalues: np.ndarray, center: np.ndarray, epsilon: float) -> None:
        lam = np.asarray(eigenvalues, dtype=np.float64)
        u = np.asarray(center, dtype=np.float64)
        if lam.shape != u.shape or lam.ndim != 1:
            raise ValueError(
                f"eigenvalues and center must be vectors of one length, got {lam.shape} "
                f"and {u.shape}"
            )
        if np.any(lam < 0):
            raise ValueError("eigenvalues must be non-negative (apply a policy first)")
        self.eigenvalues, self.center, self.epsilon = lam, u, float(epsilon)
        self.dimension = lam.size
        quad = float(lam @ u**2)
        gap = quad - 2.0 * self.epsilon
        self.normal = lam * u
        if gap < -1e-9 * max(quad, 2.0 * self.epsilon):
            self.case = "whole space"
        elif gap <= 1e-9 * max(quad, 2.0 * self.epsilon):
            self.case = "half-space"
        else:
            self.case = "cone"
            scale = max(gap * float(lam.max()), float(self.normal @ self.normal))
            matrix = (gap * np.diag(lam) - np.outer(self.normal, self.normal)) / scale
            m, vectors = np.linalg.eigh(matrix)
            # Exactly one eigenvalue is negative (Sylvester's inertia); round-off must not
            # make a second one, and round-off-sized ones are null directions.
            tiny = 64 * np.finfo(np.float64).eps * self.dimension
            m[1:] = np.where(m[1:] <= tiny, 0.0, m[1:])
            self._m, self._vectors = m, vectors
            self._normal_m = vectors.T @ self.normal

    def contains(self, points: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
        """Whether each row of ``points`` (eigenbasis coordinates) lies in K."""
        points = np.atleast_2d(points)
        if self.case == "whole space":
            return np.ones(points.shape[0], dtype=bool)
        along = points @ self.normal
        norm = np.linalg.norm(points, axis=1) * np.linalg.norm(self.normal)
        if self.case == "half-space":
            return along >= -tolerance * norm
        coords = points @ self._vectors
        form = (coords**2) @ self._m
        return (form <= tolerance * np.sum(coords**2, axis=1)) & (along >= -tolerance * norm)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pi_K of each row of ``points`` (shape (n, D), eigenbasis coordinates)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if self.case == "whole space":
            return points.copy()
        if self.case == "half-space":
            direction = self.normal / np.linalg.norm(self.normal)
            along = points @ direction
            return points - np.minimum(along, 0.0)[:, None] * direction[None, :]
        m, vectors = self._m, self._vectors
        coords = points @ vectors  # rows in M's eigenbasis
        form = (coords**2) @ m
        inside = (form <= 0) & (coords @ self._normal_m >= 0)

        # The null-space part of g (0 when M has no null space) is always in K.
        best = np.where((m == 0.0)[None, :], coords, 0.0)
        best_distance = np.sum((best - coords) ** 2, axis=1)
        best[inside] = coords[inside]
        best_distance[inside] = 0.0
        for branch in (self._branch_one, self._branch_two):
            rows = np.flatnonzero(~inside)
            g = coords[rows]
            has_root, lo, hi = branch(g, None)
            rows, g = rows[has_root], g[has_root]
            tau = _safeguarded_newton(
                lambda t, k, g=g, b=branch: b(g[k], t), lo[has_root], hi[has_root]
            )
            x = branch(g, tau, with_point=True)
            distance = np.where(x @ self._normal_m >= 0, np.sum((x - g) ** 2, axis=1), np.inf)
            better = distance < best_distance[rows]
            best[rows[better]] = x[better]
            best_distance[rows[better]] = distance[better]
        return best @ vectors.T

    # Each branch is solved in tau, a variable in which the pole is exact, as
    # h(tau) = 0 for an increasing h that is nearly linear in tau (a log-ratio form).

    def _branch_one(self, g, tau, with_point=False):
        """Branch mu in (0, 1/|m0|): mu = (1 - e^{-tau}) / |m0|, so 1 + mu m0 = e^{-tau}.

        x^T M x = 0 reads |m0| g0^2 e^{2 tau} = S(tau) = sum_{i>0} m_i g_i^2 / (1 + mu m_i)^2,
        i.e. h = 2 tau - log S + log(|m0| g0^2) = 0. S falls with tau, so h rises; a root
        exists iff h(0) < 0 (g^T M g > 0), and lies below tau_0 = log(S(0) / (|m0| g0^2)) / 2.

        ``tau=None`` returns (has_root, lower, upper) brackets; else (h, h') or the point.
        """
        m, top = self._m, 700.0
        neg = -m[0]
        anchor = np.log(neg * np.maximum(g[:, 0] ** 2, 1e-300))
        if tau is None:
            level = (g[:, 1:] ** 2) @ m[1:]
            with np.errstate(divide="ignore"):
                upper = 0.5 * (np.log(level) - anchor)
            has_root = np.isfinite(upper) & (upper > 0)
            return has_root, np.zeros(g.shape[0]), np.clip(upper, 0.0, top)
        mu = -np.expm1(-tau) / neg
        denominators = 1.0 + mu[:, None] * m[None, 1:]
        if with_point:
            return np.concatenate([(g[:, 0] * np.exp(tau))[:, None], g[:, 1:] / denominators], 1)
        terms = g[:, 1:] ** 2 * m[None, 1:] / denominators**2
        level = terms.sum(axis=1)
        slope_level = -2.0 * np.exp(-tau) / neg * ((terms / denominators) @ m[1:])
        return 2.0 * tau - np.log(level) + anchor, 2.0 - slope_level / level

    def _branch_two(self, g, tau, with_point=False):
        """Branch mu > 1/|m0|: nu = 1/mu = |m0| e^{-tau} in (0, |m0|), x_i = nu g_i / (nu + m_i).

        x^T M x = 0 reads s^2 S(tau) = g0^2 / |m0| with s = 1 - e^{-tau} and
        S = sum_{i>0} m_i g_i^2 / (nu + m_i)^2 rising with tau; h = 2 log s + log S -
        log(g0^2 / |m0|) rises from -inf, and a root exists iff h(60) > 0 (to within
        e^{-60}, iff sum_i g_i^2 / m_i > 0 over the non-null i).
        """
        m, top = self._m, 60.0
        neg = -m[0]
        anchor = np.log(np.maximum(g[:, 0] ** 2, 1e-300) / neg)
        if tau is None:
            value, _ = self._branch_two(g, np.full(g.shape[0], top))
            return value > 0, np.zeros(g.shape[0]), np.full(g.shape[0], top)
        nu = neg * np.exp(-tau)
        denominators = nu[:, None] + m[None, 1:]
        if with_point:
            scaled = nu[:, None] * g[:, 1:] / denominators
            rest = np.where((m[1:] == 0.0)[None, :], g[:, 1:], scaled)
            first = -g[:, 0] * np.exp(-tau) / -np.expm1(-tau)
            return np.concatenate([first[:, None], rest], 1)
        terms = g[:, 1:] ** 2 * m[None, 1:] / denominators**2
        level = terms.sum(axis=1)
        slope_level = 2.0 * nu * ((terms / denominators).sum(axis=1))
        s = -np.expm1(-tau)
        with np.errstate(divide="ignore"):
            value = 2.0 * np.log(s) + np.log(level) - anchor
        return value, 2.0 * np.exp(-tau) / s + slope_level / level

    def project_cvxpy(self, point: np.ndarray) -> np.ndarray | None:
        """Pi_K(point) from a second-order-cone program solved by Clarabel; ``None`` on failure.

        K = {x : exists t >= 0, ||C^{1/2} (x - t u)|| <= sqrt(2 eps) t}. Clarabel tends
        to fail when the apex lies on (or very near) the ellipsoid's surface.
        """
        import cvxpy as cp

        point = np.asarray(point, dtype=np.float64)
        x = cp.Variable(self.dimension)
        t = cp.Variable(nonneg=True)
        root = np.sqrt(self.eigenvalues)
        constraints = [
            cp.SOC(np.sqrt(2.0 * self.epsilon) * t, cp.multiply(root, x - t * self.center))
        ]
        problem = cp.Problem(cp.Minimize(cp.sum_squares(x - point)), constraints)
        try:
            problem.solve(solver=cp.CLARABEL)
        except cp.error.SolverError:
            return None
        if problem.status not in (cp.OPTIMAL,) or x.value is None:
            return None
        return np.asarray(x.value)


def _safeguarded_newton(function, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Roots of increasing functions h_k with h_k(lo_k) <= 0 <= h_k(hi_k), solved together.

    ``function(t, rows) -> (values, slopes)`` evaluates h_k and h_k' for k in ``rows``
    at ``t``. A Newton step that leaves the current bracket is replaced by bisection;
    a root is final when its Newton step (or its bracket) is below 1e-13 in tau.
    """
    lo, hi = lo.copy(), hi.copy()
    t = 0.5 * (lo + hi)
    rows = np.arange(t.size)
    for _ in range(200):
        if rows.size == 0:
            break
        value, slope = function(t[rows], rows)
        below = value < 0
        lo[rows] = np.where(below, t[rows], lo[rows])
        hi[rows] = np.where(below, hi[rows], t[rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            step = value / slope
        newton = t[rows] - step
        inside = (newton >= lo[rows]) & (newton <= hi[rows])
        t[rows] = np.where(inside, newton, 0.5 * (lo[rows] + hi[rows]))
        converged = (inside & (np.abs(step) <= 1e-13)) | (hi[rows] - lo[rows] <= 1e-13)
        rows = rows[~converged]
    return t


def _eigen(curvature, policy: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(curvature, tuple):
        eigenvalues, eigenvectors = (np.asarray(a, dtype=np.float64) for a in curvature)
    else:
        matrix = np.asarray(curvature, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"curvature must be a square matrix, got shape {matrix.shape}")
        eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return apply_policy(eigenvalues, policy), eigenvectors


def descent_cone(
    curvature, center: np.ndarray, epsilon: float, policy: str = "abs"
) -> tuple[DescentCone, np.ndarray]:
    """The :class:`DescentCone` of the ellipsoid {(w - w*)^T C (w - w*) <= 2 eps} from an apex.

    ``curvature`` is C (D x D) or its eigendecomposition ``(eigenvalues, eigenvectors)``;
    ``center`` is w* - apex in the original coordinates. Returns the cone and the
    eigenvectors (its coordinates are ``eigenvectors.T @ x``).
    """
    eigenvalues, eigenvectors = _eigen(curvature, policy)
    center = np.asarray(center, dtype=np.float64)
    if center.shape != eigenvalues.shape:
        raise ValueError(f"center must have length D = {eigenvalues.size}, got {center.shape}")
    return DescentCone(eigenvalues, eigenvectors.T @ center, epsilon), eigenvectors


def project_onto_descent_cone(
    points: np.ndarray,
    curvature,
    center: np.ndarray,
    epsilon: float,
    policy: str = "abs",
    solver: str = "secular",
) -> np.ndarray:
    """Euclidean projection of each row of ``points`` onto the ellipsoid's descent cone.

    ``solver="secular"`` (exact, vectorised) or ``"cvxpy"`` (Clarabel, one SOCP per
    point; a failed solve falls back to the secular answer). Coordinates are the
    original ones.
    """
    cone, vectors = descent_cone(curvature, center, epsilon, policy)
    coords = np.atleast_2d(np.asarray(points, dtype=np.float64)) @ vectors
    projected = cone.project(coords)
    if solver == "cvxpy" and cone.case == "cone":
        for i, g in enumerate(coords):
            solved = cone.project_cvxpy(g)
            if solved is not None:
                projected[i] = solved
    elif solver not in ("secular", "cvxpy"):
        raise ValueError(f"solver must be 'secular' or 'cvxpy', got {solver!r}")
    return projected @ vectors.T


def statdim_exact(
    curvature,
    center: np.ndarray,
    epsilon: float,
    *,
    policy: str = "abs",
    samples: int = 1000,
    seed: int = 0,
    cross_check: int = 0,
) -> ExactStatisticalDimension:
    """The exact statistical dimension (over D) of the descent cone, by Monte Carlo.

    delta(K) = E ||Pi_K(g)||^2 for g ~ N(0, I_D); the projection is exact (see
    :class:`DescentCone`). g is drawn directly in C's eigenbasis (its law is rotation
    invariant), so the same ``seed`` gives the same samples for every centre: estimates
    at nearby centres share their noise, which keeps a fixed-point search smooth.

    Parameters
    ----------
    curvature
        C (D x D, symmetric) or ``(eigenvalues, eigenvectors)``; the policy is applied
        to the eigenvalues. D up to a few hundred (one D x D eigendecomposition).
    center
        w* - apex (for pruning: w*_P, the removed weights, supported on the pruned
        coordinates).
    epsilon
        The loss budget eps > 0.
    samples, seed
        Monte Carlo sample count and seed.
    cross_check
        Project this many of the samples with cvxpy (Clarabel) as well and record the
        largest disagreement; a failed solve is counted, not fatal.

    Example
    -------
    >>> import numpy as np
    >>> D = 20; u = np.zeros(D); u[0] = 2.0           # ball of radius 1 seen from distance 2
    >>> est = statdim_exact(np.eye(D), u, 0.5, samples=4000)
    >>> est.case, abs(est.fraction - 0.25 - 0.5 / D) < 0.05   # ~ sin^2(30 deg) + cos(60 deg)/D
    ('cone', True)
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    cone, _ = descent_cone(curvature, center, epsilon, policy)
    if cone.case != "cone":
        # K is the whole space (delta = D) or a half-space (delta = D - 1/2): exact.
        exact = 1.0 if cone.case == "whole space" else 1.0 - 0.5 / cone.dimension
        return ExactStatisticalDimension(exact, 0.0, samples, seed, cone.case)
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((samples, cone.dimension))
    projected = cone.project(gaussian)
    values = np.sum(projected**2, axis=1) / cone.dimension
    checked, worst, failures = 0, float("nan"), 0
    if cross_check:
        errors = []
        for g, x in zip(gaussian[:cross_check], projected[:cross_check]):
            checked += 1
            solved = cone.project_cvxpy(g)
            if solved is None:
                failures += 1
                continue
            errors.append(np.linalg.norm(solved - x) / np.linalg.norm(g))
        worst = float(max(errors)) if errors else float("nan")
    return ExactStatisticalDimension(
        fraction=float(values.mean()),
        standard_error=float(values.std(ddof=1) / np.sqrt(samples)),
        samples=samples,
        seed=seed,
        case=cone.case,
        cross_checked=checked,
        cross_check_error=worst,
        cvxpy_failures=failures,
    )
