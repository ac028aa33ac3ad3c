"""Gauss quadrature of a spectral measure: rules, brackets and convergence diagnostics.

A Spectrum keeps, per probe, the Lanczos (Jacobi) matrix T of the spectral measure of
C seen from the probe. Its m-node Gauss rule (:func:`gauss_rule`) gives q^T g(C) q ~
sum_j tau_j g(theta_j); the rule after s < m steps is that of T's leading s x s block,
so one run serves every step count (:func:`quadrature_rules`, and the m/2-versus-m
convergence check of the predictions).

Quadrature bounds: f_c(x) = 1 / (1 + c x) is completely monotone on x >= 0
(f^(k) = (-1)^k k! c^k / (1 + c x)^(k+1)). For a positive semi-definite C the m-node
Gauss rule of a probe's Lanczos matrix is a *lower* bound of q^T f_c(C) q (exact minus
rule is a positive multiple of f^(2m) > 0) and the m-node Gauss-Radau rule with a
node prescribed at the lower end 0 of the spectrum is an *upper* bound (a positive
multiple of f^(2m-1) < 0). For an indefinite Hessian under the ``"abs"`` policy the
same holds for the measure of C^2 and y -> f_c(sqrt(y)), with floor(m/2) nodes built
from the same Lanczos matrix. See :func:`quadrature_bounds`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg import eigh_tridiagonal, solve_banded

if TYPE_CHECKING:  # spectrum.py builds its rules with gauss_rule from here
    from .spectrum import Spectrum


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

    Example
    -------
    The uniform measure on {1, 2, 3} (C = diag(1, 2, 3) seen from q = 1/sqrt(3)) has
    T_3 = tridiag(sqrt(2/3), sqrt(1/3); 2, 2, 2). Two nodes, one of them at 0, match
    its moments 1, 2, 14/3 up to degree 2 = 2m - 2:

    >>> nodes, weights = gauss_radau_rule([2.0, 2.0], [np.sqrt(2 / 3)], node=0.0)
    >>> (nodes.round(6) + 0.0).tolist(), weights.round(6).tolist()   # 7/3; 1/7, 6/7
    ([0.0, 2.333333], [0.142857, 0.857143])
    >>> [round(float(weights @ nodes**k), 6) for k in range(3)]
    [1.0, 2.0, 4.666667]
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

    Example
    -------
    T_3 of the uniform measure on {1, 2, 3} (see :func:`gauss_radau_rule`): its Gauss
    rule is the measure itself, so three steps give the uniform measure on {1, 4, 9};
    the default floor(3/2) = 1 step gives its mean, 14/3.

    >>> alphas, betas = np.array([2.0, 2.0, 2.0]), np.sqrt([2 / 3, 1 / 3])
    >>> nodes, weights = gauss_rule(*squared_measure_jacobi(alphas, betas, steps=3))
    >>> nodes.round(6).tolist(), weights.round(6).tolist()
    ([1.0, 4.0, 9.0], [0.333333, 0.333333, 0.333333])
    >>> squared_measure_jacobi(alphas, betas)[0].round(6).tolist()
    [4.666667]
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

    >>> from pruning_limit.spectrum import Spectrum
    >>> alphas, betas = np.array([[2.0, 2.0, 2.0]]), np.sqrt([[2 / 3, 1 / 3]])
    >>> spectrum = Spectrum(nodes=[[1.0, 2.0, 3.0]], weights=np.full((1, 3), 1 / 3),
    ...                     dimension=3, zero_rows=0, curvature="ggn", method="slq",
    ...                     alphas=alphas, betas=betas)
    >>> rules = quadrature_rules(spectrum, steps=2)
    >>> rules.variable, rules.steps, rules.lower_node, rules.radau_valid.tolist()
    ('x', 2, 0.0, [True])
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

    Example
    -------
    C = diag(1, 2, 3) seen from q = 1/sqrt(3) (its T_3 as in :func:`gauss_radau_rule`):
    after 3 steps the Gauss rule is exact, and the Radau rule has a node at 0.

    >>> from pruning_limit.spectrum import Spectrum
    >>> alphas, betas = np.array([[2.0, 2.0, 2.0]]), np.sqrt([[2 / 3, 1 / 3]])
    >>> spectrum = Spectrum(nodes=[[1.0, 2.0, 3.0]], weights=np.full((1, 3), 1 / 3),
    ...                     dimension=3, zero_rows=0, curvature="ggn", method="slq",
    ...                     alphas=alphas, betas=betas)
    >>> rules = quadrature_rules(spectrum)
    >>> rules.gauss_nodes.round(6).tolist(), rules.gauss_weights.round(6).tolist()
    ([[1.0, 2.0, 3.0]], [[0.333333, 0.333333, 0.333333]])
    >>> float(rules.radau_nodes[0, 0].round(6) + 0.0)
    0.0
    >>> quadrature_rules(spectrum, absolute=True)   # C^2 needs m >= 4
    Traceback (most recent call last):
    ...
    ValueError: steps must lie in [4, 3], got 3
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
    >>> from pruning_limit.quadrature import _lanczos_for_doc
    >>> from pruning_limit.spectrum import Spectrum
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


def gauss_rule(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature rule of a Jacobi (symmetric tridiagonal) matrix.

    Nodes are the eigenvalues of T = tridiag(betas, alphas, betas); weights are the
    squared first components of its normalised eigenvectors (they sum to 1).

    Example
    -------
    T_3 of C = diag(1, 2, 3) seen from q = 1/sqrt(3) gives back C's eigenvalues and
    the squared components of q:

    >>> nodes, weights = gauss_rule([2.0, 2.0, 2.0], np.sqrt([2 / 3, 1 / 3]))
    >>> nodes.round(6).tolist(), weights.round(6).tolist()
    ([1.0, 2.0, 3.0], [0.333333, 0.333333, 0.333333])
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    if alphas.size == 1:
        return alphas.copy(), np.ones(1)
    nodes, vectors = eigh_tridiagonal(alphas, betas)
    return nodes, vectors[0] ** 2


def bracket_rules(spectrum: Spectrum, policy: str, steps: int | None = None):
    """Gauss / Gauss-Radau rules that bound tr g_c/D, or None where no bound holds.

    GGN (PSD): rules of the measure of C. Hessian with the ``"abs"`` policy: rules of
    the measure of C^2 (f_c(|x|) = f_c(sqrt(x^2))), with half the nodes. Hessian with
    ``"flat"``: none (f_c(max(x, 0)) is not completely monotone in x or in x^2).

    Example
    -------
    >>> import dataclasses
    >>> from pruning_limit.spectrum import Spectrum
    >>> ggn = Spectrum(nodes=[[1.0, 2.0, 3.0]], weights=np.full((1, 3), 1 / 3),
    ...                dimension=3, zero_rows=0, curvature="ggn", method="slq",
    ...                alphas=np.array([[2.0, 2.0, 2.0]]), betas=np.sqrt([[2 / 3, 1 / 3]]))
    >>> bracket_rules(ggn, "abs").variable
    'x'
    >>> print(bracket_rules(dataclasses.replace(ggn, curvature="hessian"), "flat"))
    None
    """
    if spectrum.method == "exact" or spectrum.alphas is None:
        return None
    steps = spectrum.steps if steps is None else steps
    if spectrum.curvature == "ggn" and steps >= 2:
        return quadrature_rules(spectrum, steps)
    if policy == "abs" and steps >= 4:
        return quadrature_rules(spectrum, steps, absolute=True)
    return None


def bounds_at(spectrum: Spectrum, rules, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe (lower, upper) bounds on delta/D at c = ``scale``, upper clipped to 1.

    Example
    -------
    C = diag(1, 2, 3) seen from q = 1/sqrt(3): at c = 1, delta/D = (1/2 + 1/3 + 1/4) / 3
    = 0.3611..., bracketed after two Lanczos steps:

    >>> from pruning_limit.spectrum import Spectrum
    >>> spectrum = Spectrum(nodes=[[1.0, 2.0, 3.0]], weights=np.full((1, 3), 1 / 3),
    ...                     dimension=3, zero_rows=0, curvature="ggn", method="slq",
    ...                     alphas=np.array([[2.0, 2.0, 2.0]]), betas=np.sqrt([[2 / 3, 1 / 3]]))
    >>> lower, upper = bounds_at(spectrum, quadrature_rules(spectrum, steps=2), 1.0)
    >>> round(float(lower[0]), 6), round(13 / 36, 6), round(float(upper[0]), 6)
    (0.36, 0.361111, 0.4)
    """
    lower, upper = quadrature_bounds(spectrum, lambda x: 1.0 / (1.0 + scale * x), rules=rules)
    # With the Radau node a hair below 0, f_c is completely monotone there only for
    # c |node| < 1; past 1/2 fall back to the trivial bound delta/D <= 1.
    if rules.variable == "x" and scale * -rules.lower_node >= 0.5:
        upper = np.ones_like(upper)
    return lower, np.minimum(upper, 1.0)


def convergence_check(spectrum, full, half, rules, scale, tolerance, policy) -> dict:
    """How well the quadrature resolves tr g_c(C)/D at the paper's c*.

    ``full`` and ``half`` give the per-probe delta/D at c (``delta(c)``) from the rules
    after m and m/2 steps (``half`` None: no such check); ``rules`` are those of
    :func:`bracket_rules` (None: no bracket). Returns a report whose ``message`` says
    it in one paragraph.

    Example
    -------
    >>> from pruning_limit.spectrum import Spectrum
    >>> spectrum = Spectrum(nodes=[[1.0, 2.0, 3.0]], weights=np.full((1, 3), 1 / 3),
    ...                     dimension=3, zero_rows=0, curvature="ggn", method="slq",
    ...                     alphas=np.array([[2.0, 2.0, 2.0]]), betas=np.sqrt([[2 / 3, 1 / 3]]))
    >>> class Rule:   # delta/D per probe at c, from the rule after ``steps`` steps
    ...     def __init__(self, steps):
    ...         self.nodes, self.weights = spectrum.rule(steps)
    ...     def delta(self, c):
    ...         return spectrum.per_probe(lambda x: 1 / (1 + c * x), self.nodes, self.weights)
    >>> report = convergence_check(spectrum, Rule(3), Rule(1), bracket_rules(spectrum, "abs"),
    ...                            scale=1.0, tolerance=0.05, policy="abs")
    >>> print(report["converged"], report["message"])   # doctest: +NORMALIZE_WHITESPACE
    True SLQ at the paper's c* = 1 (c* lambda_max = 3), 3 steps: delta/D changes by 7.69%
    between 1 and 3 steps; Gauss/Gauss-Radau bracket (C, PSD) on delta/D = [0.3611, 0.363],
    relative width 0.51%
    """
    report: dict = {"scale": float(scale), "tolerance": tolerance}
    if spectrum.method == "exact":
        report.update(converged=True, message="exact spectrum: no quadrature error")
        return report
    steps = spectrum.steps
    kappa = scale * float(np.max(np.abs(spectrum.nodes)))
    estimate = float(full.delta(scale).mean())
    report.update(steps=steps, scale_times_lambda_max=kappa, estimate=estimate)
    message = f"SLQ at the paper's c* = {scale:.3g} (c* lambda_max = {kappa:.3g}), {steps} steps: "
    if half is not None:
        previous = float(half.delta(scale).mean())
        change = abs(estimate - previous) / max(estimate, 1e-300)
        report.update(half_steps=steps // 2, estimate_half_steps=previous, relative_change=change)
        message += f"delta/D changes by {change:.2%} between {steps // 2} and {steps} steps"
    else:
        message += "no m/2-step check (fewer than 2 steps or no tridiagonals)"
    if rules is None:
        converged = report.get("relative_change", np.inf) <= tolerance
        if spectrum.curvature == "hessian":
            message += (
                f"; no bracket: with the {policy!r} policy f_c(max(x, 0)) is not completely "
                "monotone, so Gauss rules bound nothing (the 'abs' policy or the GGN give one)"
            )
        if not converged:
            message += f"; not converged to {tolerance:.0%}"
        report.update(converged=bool(converged), message=message)
        return report

    lower, upper = bounds_at(spectrum, rules, scale)
    gauss, radau = float(lower.mean()), float(upper.mean())
    if gauss > radau:
        # A Gauss node below zero (round-off on a PSD curvature) puts f_c above 1 there:
        # the Gauss value is then no lower bound, and a negative "width" no convergence.
        converged = report.get("relative_change", np.inf) <= tolerance
        message += (
            f"; no Gauss/Gauss-Radau bracket: the Gauss value {gauss:.4g} exceeds the "
            f"Gauss-Radau bound {radau:.4g} by {gauss - radau:.2g} (quadrature nodes below zero)"
        )
        if not converged:
            message += f"; not converged to {tolerance:.0%}"
        report.update(
            bracket_valid=False, gauss=gauss, radau=radau, converged=bool(converged),
            message=message,
        )  # fmt: skip
        return report
    width = (radau - gauss) / max(gauss, 1e-300)
    squared = rules.variable == "x^2"
    report.update(
        bracket_rule="C^2, abs policy" if squared else "C, PSD",
        bracket_nodes=int(rules.gauss_nodes.shape[1]),
        gauss=gauss,
        radau=radau,
        relative_width=width,
    )
    half_rules = bracket_rules(spectrum, policy, steps // 2)
    if half_rules is not None and half_rules.gauss_nodes.shape[1] >= 2:
        lo_h, hi_h = bounds_at(spectrum, half_rules, scale)
        width_half = (float(hi_h.mean()) - float(lo_h.mean())) / max(float(lo_h.mean()), 1e-300)
        report["relative_width_half_steps"] = width_half
        report["steps_for_tolerance_observed"] = _extrapolate_steps(
            width_half, width, steps // 2, steps, tolerance, geometric=not squared
        )
    if not squared:
        report["steps_for_tolerance_theory"] = _chebyshev_steps(kappa, tolerance)
    # Lanczos is exact once m reaches the number of distinct eigenvalues (<= D - z), so
    # an extrapolation beyond that says "use the exact path or the GGN", not "run longer".
    ceiling = spectrum.active_dimension
    for key in ("steps_for_tolerance_observed", "steps_for_tolerance_theory"):
        if report.get(key) is not None and report[key] > ceiling:
            report[key] = float(ceiling)
            report[key.replace("steps", "capped", 1)] = True
    converged = width <= tolerance
    message += (
        f"; Gauss/Gauss-Radau bracket ({report['bracket_rule']}) on delta/D = "
        f"[{gauss:.4g}, {radau:.4g}], relative width {width:.2%}"
    )
    if not converged:
        message += (
            f"; not converged to {tolerance:.0%}: about "
            f"{_fmt_steps(report.get('steps_for_tolerance_observed'))} Lanczos steps by the "
            + ("observed power law" if squared else "observed geometric rate")
        )
        if not squared:
            message += (
                f", {_fmt_steps(report['steps_for_tolerance_theory'])} by the Chebyshev "
                "estimate (grows like sqrt(c* lambda_max))"
            )
        if any(key.startswith("capped") for key in report):
            message += (
                f" (capped at D - z = {ceiling}, where Lanczos is exact: use the exact "
                "spectrum" + (" or the GGN" if squared else "") + ")"
            )
    report.update(converged=bool(converged), message=message)
    return report


def _extrapolate_steps(
    width_half: float, width: float, steps_half: int, steps: int, tolerance: float, geometric: bool
) -> float | None:
    """Steps at which the bracket width reaches ``tolerance``, from its values at m/2 and m.

    ``geometric``: width ~ A rho^{-m} (PSD, analytic integrand); else width ~ A m^{-a}
    (the C^2 measure, where f_c(sqrt(y)) has a branch point at 0).
    """
    if width <= tolerance:
        return float(steps)
    if not (width_half > width > 0):
        return None
    if geometric:
        rate = math.log(width_half / width) / (steps - steps_half)
        return float(math.ceil(steps + math.log(width / tolerance) / rate))
    power = math.log(width_half / width) / math.log(steps / steps_half)
    return float(math.ceil(steps * (width / tolerance) ** (1.0 / power)))


def _chebyshev_steps(kappa: float, tolerance: float) -> float:
    """m with rho^{-2m} ~ tolerance / 2, rho = zeta + sqrt(zeta^2 - 1), zeta = 1 + 2/kappa.

    The Gauss error for 1/(1 + c x) on [0, lambda_max] falls like rho^{-2m}, where the
    pole at -1/c sets the Bernstein ellipse; for large kappa = c lambda_max, about
    sqrt(kappa)/4 * log(2 / tolerance) steps.
    """
    if kappa <= 0:
        return 1.0
    return float(math.log(2.0 / tolerance) / (2.0 * math.acosh(1.0 + 2.0 / kappa)))


def _fmt_steps(value) -> str:
    return "?" if value is None else f"{value:.0f}"
