"""Statistical dimension of the cone an ellipsoidal loss sublevel set subtends: closed forms.

Quadratic model (Zhang et al., arXiv 2306.05857): around the trained weights w* the
sublevel set S(eps) is the ellipsoid E = {w : (w - w*)^T C (w - w*) <= 2 eps}, with
semi-axes r_i = sqrt(2 eps / lambda_i) along the eigenvectors of the curvature C. Seen
from an apex at distance R from w*, E subtends a convex cone K (the descent cone: every
direction from the apex that enters E). The approximate kinematic formula (Amelunxen,
Lotz, McCoy & Tropp 2014) says a random subspace of dimension k through the apex meets
K with high probability iff k + delta(K) > D.

This module computes delta from a :class:`~pruning_limit.spectrum.Spectrum`:

``statistical_dimension``
    The closed form of Zhang et al.,
        delta(R) / D = tr g_c(C) / D,   g_c(lambda) = 1 / (1 + c lambda),  c = R^2 / (2 eps)
    (zero rows give g_c(0) = 1).
``orthogonal_statistical_dimension``
    The same with R^2 replaced by R^2 (1 - p) / p: the kept-coordinate subspace of a
    magnitude pruning passes through its own closest point to w*, so it is orthogonal
    to the offset, which a random subspace is not.
``trace_bound``
    Jensen's lower bound delta / D >= 1 / (1 + c tr(C) / D) (g_c is convex).

The exact delta(K) (Monte Carlo over exact projections) is in
:mod:`pruning_limit.descent_cone`; the quadrature that evaluates tr g_c(C) and its
bounds in :mod:`pruning_limit.quadrature`.

Eigenvalues <= 0 (a Hessian away from a strict minimum) follow a policy:
``"abs"`` uses |lambda| (the reference code), ``"flat"`` treats them as flat
directions (lambda <= 0 adds exactly 1 to delta). A generalised Gauss-Newton
matrix is positive semi-definite, so there the policy only touches round-off.

Everything here is numpy/scipy; nothing depends on torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .spectrum import Spectrum

POLICIES = ("abs", "flat")


# -- policies and scales --------------------------------------------------------------


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is a known eigenvalue policy, else raise ``ValueError``.

    >>> check_policy("flat")
    'flat'
    >>> check_policy("sign")
    Traceback (most recent call last):
    ...
    ValueError: policy must be one of ('abs', 'flat'), got 'sign'
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return policy


def apply_policy(eigenvalues: np.ndarray, policy: str = "abs") -> np.ndarray:
    """Eigenvalues with the policy for lambda <= 0 applied: ``|lambda|`` or ``max(lambda, 0)``.

    Both give a non-negative spectrum; with ``"flat"`` a non-positive eigenvalue becomes
    an exactly flat direction (g_c = 1 there).

    >>> eigenvalues = [-2.0, 0.0, 3.0]
    >>> apply_policy(eigenvalues, "abs").tolist(), apply_policy(eigenvalues, "flat").tolist()
    ([2.0, 0.0, 3.0], [0.0, 0.0, 3.0])
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
    p = (1/D) sum_i r_i^2 / (r_i^2 + R(p)^2 (1 - p) / p). It equals
    :func:`statistical_dimension` at p = 1/2, and is 1 at p = 1 (so the fixed point of
    interest is the *first* crossing).

    Example
    -------
    >>> import numpy as np
    >>> s = Spectrum(nodes=[[0.0, 1.0, 3.0]], weights=np.full((1, 3), 1 / 3), dimension=3,
    ...              zero_rows=0, curvature="hessian", method="exact")
    >>> round(orthogonal_statistical_dimension(s, 1.0, 0.5, 0.5), 6)   # = the closed form
    0.583333
    >>> round(orthogonal_statistical_dimension(s, 1.0, 0.5, 0.2), 6)   # c = 4: (1 + 1/5 + 1/13) / 3
    0.425641
    >>> orthogonal_statistical_dimension(s, 1.0, 0.5, 1.0)
    1.0
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

    Example
    -------
    >>> import numpy as np
    >>> s = Spectrum(nodes=[[-2.0, 1.0, 3.0]], weights=np.full((1, 3), 1 / 3), dimension=3,
    ...              zero_rows=0, curvature="hessian", method="exact")
    >>> mean_curvature(s, "abs")                        # (2 + 1 + 3) / 3, exact: no error
    (2.0, 0.0)
    >>> round(mean_curvature(s, "flat")[0], 6)          # (0 + 1 + 3) / 3
    1.333333
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


# -- the exact statistical dimension of the descent cone -------------------------------------
