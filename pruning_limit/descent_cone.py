"""The exact statistical dimension of the descent cone (small D).

delta(K) = E ||Pi_K(g)||^2 by Monte Carlo over Gaussian g, with the projection onto the
cone K that the ellipsoid {w : (w - w*)^T C (w - w*) <= 2 eps} subtends from an apex
solved exactly (a one-dimensional secular equation in the eigenbasis of C),
optionally cross-checked against cvxpy with Clarabel (``pip install
'pruning-limit[exact]'``). Needs the eigenvectors of C, so small D. The closed forms it
checks are in :mod:`pruning_limit.statdim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .statdim import apply_policy


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

    Example
    -------
    The unit ball (C = I, eps = 1/2) seen from an apex inside it (K is the whole space)
    and on its surface (K is a half-space), both exact, without sampling:

    >>> inside = statdim_exact(np.eye(2), np.array([0.5, 0.0]), 0.5)
    >>> inside.case, inside.fraction, inside.standard_error
    ('whole space', 1.0, 0.0)
    >>> on = statdim_exact(np.eye(2), np.array([1.0, 0.0]), 0.5)
    >>> on.case, on.fraction                                # (D - 1/2) / D
    ('half-space', 0.75)
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

    Example
    -------
    The unit ball (C = I, eps = 1/2) seen from distance 2 subtends a cone of half-angle
    30 degrees around the direction of w*; a point outside it projects onto the
    nearest boundary ray, d = (cos 30, sin 30), as (g . d) d.

    >>> cone = DescentCone(np.ones(2), np.array([2.0, 0.0]), epsilon=0.5)
    >>> cone.case, cone.contains(np.array([[1.0, 0.5], [0.0, 1.0], [-1.0, 0.0]])).tolist()
    ('cone', [True, False, False])
    >>> cone.project(np.array([[0.5, 1.0]])).round(6).tolist()
    [[0.808013, 0.466506]]
    >>> DescentCone(np.ones(2), np.array([0.5, 0.0]), epsilon=0.5).case   # apex inside
    'whole space'
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
        outside = np.flatnonzero(~inside)
        candidates = [(outside, self._pole_points(coords[outside]))]
        for branch in (self._branch_one, self._branch_two):
            g = coords[outside]
            has_root, lo, hi = branch(g, None)
            rows, g = outside[has_root], g[has_root]
            tau = _safeguarded_newton(
                lambda t, k, g=g, b=branch: b(g[k], t), lo[has_root], hi[has_root]
            )
            candidates.append((rows, branch(g, tau, with_point=True)))
        for rows, x in candidates:
            # A candidate counts only if it lies on K's boundary: a branch "root" found for
            # g_0 = 0 (no component along M's negative direction) does not.
            squares = x**2
            on_boundary = np.abs(squares @ m) <= 1e-9 * (squares @ np.abs(m)) + 1e-300
            feasible = on_boundary & (x @ self._normal_m >= 0)
            distance = np.where(feasible, np.sum((x - coords[rows]) ** 2, axis=1), np.inf)
            better = distance < best_distance[rows]
            best[rows[better]] = x[better]
            best_distance[rows[better]] = distance[better]
        return best @ vectors.T

    def _pole_points(self, g):
        """The candidates at the pole mu = 1/|m0| (the "hard case", g_0 = 0).

        There 1 + mu m_0 = 0 leaves x_0 free: x_i = g_i / (1 + m_i / |m0|) for i > 0, and
        x_0 = +-sqrt(sum_{i>0} m_i x_i^2 / |m0|) puts x on x^T M x = 0, with the sign
        that makes c^T x >= 0. When g_0 = 0 this is the projection; otherwise it is
        one more feasible point, and the nearest candidate wins.
        """
        m = self._m
        neg = -m[0]
        rest = g[:, 1:] / (1.0 + m[None, 1:] / neg)
        first = np.sqrt(np.maximum((rest**2) @ m[1:], 0.0) / neg)
        x = np.concatenate([first[:, None], rest], axis=1)
        along = x @ self._normal_m
        flipped = x.copy()
        flipped[:, 0] = -first
        return np.where((along >= 0)[:, None], x, flipped)

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
        try:
            import cvxpy as cp
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "the cvxpy cross-check of the descent-cone projection needs cvxpy: "
                "pip install 'pruning-limit[exact]' (the secular solver needs nothing more)"
            ) from None

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

    Example
    -------
    >>> cone, vectors = descent_cone((np.ones(2), np.eye(2)), [2.0, 0.0], epsilon=0.5)
    >>> cone.case, cone.dimension, cone.center.tolist()
    ('cone', 2, [2.0, 0.0])
    >>> descent_cone(np.eye(2), [2.0, 0.0, 0.0], epsilon=0.5)
    Traceback (most recent call last):
    ...
    ValueError: center must have length D = 2, got (3,)
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

    Example
    -------
    The unit ball seen from distance 2 (cone of half-angle 30 degrees, see
    :class:`DescentCone`): a point inside the cone stays, one outside goes to
    (g . d) d on the boundary ray d = (cos 30, sin 30).

    >>> points = [[3.0, 0.0], [0.5, 1.0]]
    >>> project_onto_descent_cone(points, np.eye(2), [2.0, 0.0], epsilon=0.5).round(6).tolist()
    [[3.0, 0.0], [0.808013, 0.466506]]
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
