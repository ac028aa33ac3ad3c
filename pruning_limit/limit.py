"""The predicted pruning limit p*: R(p), the predictors and their fixed points.

Convention: p is always the fraction of prunable weights *removed* (``amount`` in
``torch.nn.utils.prune``); the fraction kept is 1 - p. Every result says so.

Pieces (the theory: Zhang et al., arXiv 2306.05857; ARCHITECTURE.md):

- eps, the loss budget (:func:`~pruning_limit.budget.loss_budget`): the standard deviation of the
  mini-batch training losses at w* (``"batch_std"``), or a number.
- R(p), the norm of what magnitude pruning removes (:func:`pruned_norm`): the square
  root of the sum of the p D smallest w*_j^2, linear in p D between integer counts
  (exact at every count, continuous in between).
- The predictors, each the root of F(p) = delta(p)/D - p (or an exact search):

  ``paper``        delta from the closed form tr g_c(C), c = R(p)^2 / (2 eps) (Zhang et al.);
  ``orthogonal``   the same with R^2 -> R^2 (1 - p) / p (kept-coordinate subspaces are
                   orthogonal to the offset; the first crossing, since p = 1 always solves it);
  ``trace_bound``  Jensen's bound 1 / (1 + c tr(C)/D): a lower bound on the paper's p*;
  ``quadratic``    the quadratic model's exact answer for the magnitude support
                   (:mod:`pruning_limit.quadratic`);
  ``statdim_exact`` the kinematic formula with the exact statistical dimension of the
                   descent cone from the pruned point (Monte Carlo; small D only).

  and, for another target (the one-shot loss-budget ONSET, not the transition):

  ``taylor_onset`` the first p at which the second-order Taylor model at w* (gradient
                   and curvature along the pruning direction) rises by eps
                   (:mod:`pruning_limit.onset`).

- Uncertainty for every estimate from a Spectrum: the probe spread carried through
  the fixed point (delta +- t s.e.), the change between m/2 and m Lanczos steps,
  and for a PSD curvature (GGN) the Gauss (lower) / Gauss-Radau (upper) quadrature
  bracket; sensitivity to eps / 10 and eps * 10.

Example
-------
>>> import numpy as np
>>> from pruning_limit.spectrum import Spectrum
>>> from pruning_limit.statdim import statistical_dimension
>>> eigs = np.linspace(0.0, 1.0, 50)
>>> s = Spectrum(nodes=eigs[None], weights=np.full((1, 50), 1 / 50), dimension=50,
...              zero_rows=0, curvature="hessian", method="exact")
>>> w = np.random.default_rng(0).standard_normal(50)
>>> pred = predict_from_spectrum(s, w, 0.05, methods=("paper", "trace_bound"))
>>> p = pred.removal_fraction("paper")
>>> bool(abs(statistical_dimension(s, pruned_norm(w, p), 0.05) - p) < 1e-8)
True
>>> pred.removal_fraction("trace_bound") <= p
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import t as student_t
from tqdm.auto import tqdm

from . import distributed
from ._version import __version__
from .baselines import EMP_LABEL, emp_removal_fraction
from .budget import check_epsilon, loss_budget
from .curvature import EXACT_LIMIT
from .descent_cone import statdim_exact
from .prediction import CLOSED_FORMS, METHODS, STATDIM_EXACT_LIMIT, MethodEstimate, Prediction
from .pruning import removed_indices
from .quadratic import QuadraticModel, as_vector
from .quadrature import bounds_at, bracket_rules, convergence_check
from .reference import GRID_STEPS, reference_limit
from .serialization import plain
from .spectrum import Spectrum
from .statdim import apply_policy, check_policy, curvature_scale

if TYPE_CHECKING:  # onset.py builds on PrunedNorm: imported by it, not the other way
    from .onset import TaylorModel


class PrunedNorm:
    """R(p) = sqrt(sum of the p D smallest w*_j^2), continuous in p.

    With s_1 <= ... <= s_D the sorted squares and S_k their partial sums, R(p)^2 is
    S_k at p = k / D and linear in p D in between. Sorting happens once; calls are
    vectorised over p.

    Example
    -------
    >>> norm = PrunedNorm([3.0, -1.0, 2.0])
    >>> float(norm(1 / 3)), norm.squared(0.5)       # |-1|; 1 + (1.5 - 1) * 2^2
    (1.0, 3.0)
    >>> norm.orthogonal_squared(0.5)                # R^2 (1 - p) / p
    3.0
    >>> norm.removed_vector(0.5).round(6).tolist()  # 2 enters scaled by sqrt(1/2)
    [0.0, -1.0, 1.414214]
    """

    def __init__(self, weights) -> None:
        flat = as_vector(weights)
        if flat.size == 0:
            raise ValueError("weights is empty")
        if not np.all(np.isfinite(flat)):
            raise ValueError("weights contain NaN or infinite values")
        self.weights = flat
        self.dimension = flat.size
        self.squares = np.sort(flat**2)
        self.partial = np.concatenate([[0.0], np.cumsum(self.squares)])

    def squared(self, removal_fraction):
        p = _check_fraction(removal_fraction)
        value = np.interp(p * self.dimension, np.arange(self.dimension + 1), self.partial)
        return value if np.ndim(value) else float(value)

    def __call__(self, removal_fraction):
        return np.sqrt(self.squared(removal_fraction))

    def orthogonal_squared(self, removal_fraction: float) -> float:
        """R(p)^2 (1 - p) / p, with its limit D s_1 at p = 0."""
        p = float(removal_fraction)
        if p * self.dimension <= 1.0:
            return float(self.dimension * self.squares[0] * (1.0 - p))
        return float(self.squared(p) * (1.0 - p) / p)

    def removed_vector(self, removal_fraction: float) -> np.ndarray:
        """w*_P(p): the removed weights in place, the boundary one scaled by sqrt(fraction).

        Its squared norm is R(p)^2 for every p (the continuous interpolation).
        """
        position = float(_check_fraction(removal_fraction)) * self.dimension
        # p = k / D in floating point lands a round-off away from the count k, which the
        # square root below would blow up to sqrt(1e-15) ~ 3e-8 of the next weight.
        if abs(position - round(position)) <= 1e-12 * max(position, 1.0):
            position = float(round(position))
        whole = int(np.floor(position))
        magnitudes = torch.from_numpy(np.abs(self.weights))
        vector = np.zeros(self.dimension)
        chosen = removed_indices(magnitudes, whole).numpy()
        vector[chosen] = self.weights[chosen]
        if whole < self.dimension and position > whole:
            # The next weight in the one magnitude order: removed at count whole + 1 but
            # not at whole (under ties the removed sets need not be nested).
            following = np.setdiff1d(removed_indices(magnitudes, whole + 1).numpy(), chosen)
            j = int(following[0])
            vector[j] = self.weights[j] * np.sqrt(position - whole)
        return vector


def pruned_norm(weights, removal_fraction):
    """R(p): the norm of the weights that magnitude pruning at fraction p removes.

    sqrt(sum of the p D smallest w_j^2), exact at every integer count p D and linear
    in R^2 between counts, so fixed points in p are solved continuously. Vectorised:
    an array of p gives an array of R.

    >>> pruned_norm([3.0, -1.0, 2.0], [0.0, 1 / 3, 2 / 3, 1.0]).round(6).tolist()
    [0.0, 1.0, 2.236068, 3.741657]
    >>> round(float(pruned_norm([3.0, -1.0, 2.0], 0.5)), 6)   # R^2 = 1 + 0.5 * 4
    1.732051
    """
    return PrunedNorm(weights)(removal_fraction)


def _check_fraction(removal_fraction):
    p = np.asarray(removal_fraction, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"removal fractions must lie in [0, 1], got {removal_fraction}")
    return p if p.ndim else float(p)


# Fine near 0 (tiny budgets give tiny p*) and uniform elsewhere: the first sign change
# of F on this grid brackets the first crossing.
_GRID = np.unique(np.concatenate([[0.0], np.geomspace(1e-9, 1e-2, 15), np.linspace(0, 1, 61)]))


def first_crossing(function: Callable[[float], float], grid: np.ndarray = _GRID) -> float:
    """The smallest p in [0, 1] where ``function`` (positive at 0) first reaches <= 0.

    The grid is scanned for the first sign change, then refined with Brent's method.
    Returns 1.0 when the function stays positive on [0, 1).

    >>> round(first_crossing(lambda p: 0.3 - p), 12)
    0.3
    >>> first_crossing(lambda p: (p - 0.2) * (p - 0.6))    # the first of two roots
    0.2
    >>> first_crossing(lambda p: 1.0)
    1.0
    """
    previous = None
    for p in grid:
        if function(float(p)) <= 0:
            if previous is None:
                return float(p)
            return float(brentq(function, previous, float(p), xtol=1e-12, rtol=1e-12))
        previous = float(p)
    return 1.0


@dataclass
class _ClosedForm:
    """tr g(C)/D per probe for the closed forms, from one quadrature rule."""

    spectrum: Spectrum
    policy: str
    nodes: np.ndarray
    weights: np.ndarray

    def delta(self, scale: float) -> np.ndarray:
        """Per-probe delta/D for c = ``scale`` (zero rows included)."""
        policy = self.policy
        return self.spectrum.per_probe(
            lambda x: 1.0 / (1.0 + scale * apply_policy(x, policy)), self.nodes, self.weights
        )

    def trace(self) -> np.ndarray:
        return self.spectrum.per_probe(
            lambda x: apply_policy(x, self.policy), self.nodes, self.weights
        )


def _combine(per_probe: np.ndarray, shift: float, clip: bool = True) -> float:
    """mean + shift * standard error over probes (shift 0: the mean), clipped to [0, 1]."""
    mean = float(per_probe.mean())
    if shift and per_probe.size > 1:
        mean += shift * float(per_probe.std(ddof=1) / math.sqrt(per_probe.size))
    return float(np.clip(mean, 0.0, 1.0)) if clip else mean


def _solve_closed_form(method: str, form, norm: PrunedNorm, epsilon: float, shift: float = 0.0):
    """p* of one closed form, with delta/D shifted by ``shift`` standard errors.

    ``form`` is a :class:`_ClosedForm`, or for ``paper`` / ``orthogonal`` a callable
    c -> per-probe delta/D (the quadrature bounds), or for ``trace_bound`` anything
    with a per-probe ``trace()``.
    """
    if method == "trace_bound":
        # delta >= 1/(1 + c t): a larger mean curvature t gives a smaller bound, so the
        # shift enters with the opposite sign.
        trace = max(_combine(form.trace(), -shift, clip=False), 0.0)

        def excess(p: float) -> float:
            return 1.0 / (1.0 + curvature_scale(norm(p), epsilon) * trace) - p

        return first_crossing(excess)
    delta = form.delta if isinstance(form, _ClosedForm) else form
    if method == "paper":

        def excess(p: float) -> float:
            return _combine(delta(curvature_scale(norm(p), epsilon)), shift) - p

    else:

        def excess(p: float) -> float:
            scale = curvature_scale(math.sqrt(norm.orthogonal_squared(p)), epsilon)
            return _combine(delta(scale), shift) - p

    return first_crossing(excess)


def closed_form_limit(
    method: str, spectrum: Spectrum, weights, epsilon: float, policy: str = "abs"
) -> float:
    """p* of one closed form (``paper``, ``orthogonal``, ``trace_bound``) alone, no interval.

    The point estimate :func:`predict_from_spectrum` reports for ``method``; for a
    reading that needs one predictor's p* without the rest (the regime's R(p*)/||w||
    is measured at ``paper``'s p*, asked for or not).

    >>> import numpy as np
    >>> from pruning_limit.spectrum import Spectrum
    >>> s = Spectrum(nodes=np.linspace(0, 1, 20)[None], weights=np.full((1, 20), 1 / 20),
    ...              dimension=20, zero_rows=0, curvature="ggn", method="exact")
    >>> w = np.linspace(-1, 1, 20)
    >>> p = closed_form_limit("paper", s, w, 0.1)
    >>> p == predict_from_spectrum(s, w, 0.1, methods=("paper",)).removal_fraction("paper")
    True
    """
    if method not in CLOSED_FORMS:
        raise ValueError(f"method must be one of {CLOSED_FORMS}, got {method!r}")
    check_policy(policy)
    form = _ClosedForm(spectrum, policy, spectrum.nodes, spectrum.weights)
    return _solve_closed_form(method, form, PrunedNorm(weights), float(check_epsilon(epsilon)))


def check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    """Validate method names; raise ``ValueError`` listing the known ones.

    >>> check_methods("paper"), check_methods(["paper", "quadratic"])
    (('paper',), ('paper', 'quadratic'))
    >>> check_methods(["papr"])   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown method(s) ['papr']; known: paper, orthogonal, trace_bound, ...
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or methods}; known: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods names one twice: {methods}")
    return methods


def statistical_dimension_curve(
    spectrum: Spectrum,
    weights,
    epsilon: float,
    removal_fractions: Sequence[float] | np.ndarray | None = None,
    *,
    form: str = "paper",
    policy: str = "abs",
) -> tuple[np.ndarray, np.ndarray]:
    """delta/D along p for plotting: the limit is where the curve crosses the diagonal.

    ``form`` is ``"paper"`` (c = R(p)^2 / (2 eps)), ``"orthogonal"`` (R^2 (1 - p)/p) or
    ``"trace_bound"``. Returns (p, delta/D), p the fraction removed.

    Example
    -------
    Eigenvalues 0, 1, 3 and weights 3, -1, 2 at eps = 1/2: at p = 1/2, R^2 = 3 = c, so
    delta/D = (1 + 1/4 + 1/10) / 3 = 0.45; the trace bound is 1 / (1 + 3 * 4/3) = 0.2.

    >>> s = Spectrum(nodes=[[0.0, 1.0, 3.0]], weights=np.full((1, 3), 1 / 3), dimension=3,
    ...              zero_rows=0, curvature="ggn", method="exact")
    >>> p, delta = statistical_dimension_curve(s, [3.0, -1.0, 2.0], 0.5, [0.0, 0.5])
    >>> p.tolist(), delta.round(6).tolist()
    ([0.0, 0.5], [1.0, 0.45])
    >>> statistical_dimension_curve(s, [3.0, -1.0, 2.0], 0.5, [0.5], form="trace_bound")[1]
    array([0.2])
    """
    check_policy(policy)
    if form not in CLOSED_FORMS:
        raise ValueError(f"form must be one of {CLOSED_FORMS}, got {form!r}")
    p = (
        np.linspace(0.0, 1.0, 101)
        if removal_fractions is None
        else np.asarray(_check_fraction(removal_fractions), dtype=np.float64).reshape(-1)
    )
    norm = PrunedNorm(weights)
    closed = _ClosedForm(spectrum, policy, spectrum.nodes, spectrum.weights)
    trace = float(closed.trace().mean())
    values = []
    for x in p:
        if form == "paper":
            values.append(float(closed.delta(curvature_scale(norm(x), epsilon)).mean()))
        elif form == "orthogonal":
            scale = curvature_scale(math.sqrt(norm.orthogonal_squared(x)), epsilon)
            values.append(float(closed.delta(scale).mean()))
        else:
            values.append(1.0 / (1.0 + curvature_scale(norm(x), epsilon) * trace))
    return p, np.asarray(values)


def _emp_estimate(norm: PrunedNorm, epsilon: float) -> MethodEstimate:
    """The curvature-free baseline: p = 1 - N_eff / N of the weights (baselines.py)."""
    p = emp_removal_fraction(norm.weights)
    radius = float(norm(p))
    return MethodEstimate(
        method="emp",
        removal_fraction=p,
        interval=(p, p),
        radius=radius,
        scale=curvature_scale(radius, epsilon),
        notes=[
            f"{EMP_LABEL}: 1 - N_eff/N, N_eff the inverse Simpson index of |w|/sum|w| "
            "(Effective Model Pruning, arXiv 2509.25606); the spectrum and eps are not used"
        ],
    )


def _check_taylor(taylor, norm: PrunedNorm) -> None:
    if taylor is None:
        raise ValueError(
            "taylor_onset needs the gradient and the curvature at w* (taylor="
            "TaylorModel(curvature, weights, gradient); through predict_limit: data= and "
            "loss_fn=)"
        )
    if taylor.dimension != norm.dimension or not np.array_equal(taylor.weights, norm.weights):
        raise ValueError(
            f"the TaylorModel was built at other weights (D = {taylor.dimension}) than the "
            f"ones given (D = {norm.dimension})"
        )


def _taylor_estimate(
    taylor: TaylorModel, norm: PrunedNorm, epsilon: float, sensitivity: bool
) -> MethodEstimate:
    """The Taylor model's one-shot loss-budget onset (onset.py): a grid cell, no spectrum."""
    p = taylor.onset(epsilon)
    low, high = taylor.bracket(epsilon)
    radius = float(norm(p))
    return MethodEstimate(
        method="taylor_onset",
        removal_fraction=p,
        interval=(min(low, p), max(high, p)),
        radius=radius,
        scale=float(curvature_scale(radius, epsilon)),
        uncertainty={"grid": (low, high), "points": taylor.points, **taylor.terms(p)},
        sensitivity=_sensitivity(taylor.onset, epsilon, sensitivity),
        notes=[
            "predicts the one-shot LOSS-BUDGET ONSET (the first p whose train loss "
            "exceeds L(w*) + eps), not the transition: the first p at which the "
            "second-order Taylor model at w*, -g^T w_P + w_P^T C w_P / 2, reaches eps "
            "(the curvature as is, no eigenvalue policy); the interval is the grid cell "
            "only, not the Taylor model's error"
        ],
    )


def predict_from_spectrum(
    spectrum: Spectrum,
    weights,
    epsilon: float,
    *,
    methods: Iterable[str] = ("paper", "orthogonal", "trace_bound"),
    policy: str = "abs",
    curvature=None,
    epsilon_source: dict | None = None,
    confidence: float = 0.95,
    sensitivity: bool = True,
    tolerance: float = 0.01,
    statdim_samples: int = 400,
    seed: int = 0,
    damping: float = 0.0,
    dense_limit: int = EXACT_LIMIT,
    curve_points: int = 101,
    parameters: Sequence | None = None,
    taylor: TaylorModel | None = None,
    progress: bool = False,
) -> Prediction:
    """Predicted limits from a Spectrum, the flat weights w* and eps (no model needed).

    Parameters
    ----------
    spectrum
        The curvature's quadrature rule; its D must equal ``len(weights)``.
    weights
        w*, flat, in the Spectrum's coordinate order.
    epsilon
        The loss budget (a positive number; see :func:`loss_budget`).
    methods
        Any of :data:`METHODS`. ``quadratic`` and ``statdim_exact`` need ``curvature``,
        ``taylor_onset`` needs ``taylor``.
    policy
        ``"abs"`` or ``"flat"`` for eigenvalues <= 0.
    curvature
        For ``quadratic`` / ``statdim_exact``: the D x D curvature matrix, a
        CurvatureOperator, or a prepared :class:`~pruning_limit.quadratic.QuadraticModel`.
    epsilon_source
        Recorded as is (default: ``{"kind": "given"}``).
    confidence
        Two-sided level of the probe intervals (Student t over probes).
    sensitivity
        Also solve at eps / 10 and eps * 10.
    tolerance
        A quadrature uncertainty on p* above this is reported as "not converged".
    statdim_samples, seed
        Monte Carlo samples and seed of ``statdim_exact``.
    damping, dense_limit
        Passed to the quadratic model.
    curve_points
        Grid size of the curves kept for plotting.
    parameters
        ``(name, shape)`` pairs to record (default: the Spectrum's).
    taylor
        For ``taylor_onset``: the :class:`~pruning_limit.onset.TaylorModel` of the same
        w* (its gradient and curvature products at w*).
    progress
        A progress bar (stderr) for the slow method, ``quadratic``: the supports its
        bisection solves.

    Example
    -------
    >>> import numpy as np
    >>> from pruning_limit.spectrum import Spectrum
    >>> s = Spectrum(nodes=np.linspace(0, 1, 20)[None], weights=np.full((1, 20), 1 / 20),
    ...              dimension=20, zero_rows=0, curvature="ggn", method="exact")
    >>> prediction = predict_from_spectrum(s, np.linspace(-1, 1, 20), 0.1, methods=("paper",))
    >>> 0.0 < prediction.removal_fraction("paper") < 1.0
    True
    """
    methods = check_methods(methods)
    check_policy(policy)
    norm = PrunedNorm(weights)
    if norm.dimension != spectrum.dimension:
        raise ValueError(
            f"the spectrum has D = {spectrum.dimension} coordinates but weights has "
            f"{norm.dimension}"
        )
    if epsilon_source is None:
        epsilon, source = loss_budget(None, epsilon)
    else:
        epsilon, source = float(check_epsilon(epsilon)), dict(epsilon_source)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    check_statdim_dimension(methods, norm.dimension)
    needs_matrix = [m for m in methods if m in ("quadratic", "statdim_exact")]
    if needs_matrix and curvature is None:
        raise ValueError(
            f"method(s) {needs_matrix} need the curvature itself (a matrix or a "
            "CurvatureOperator; through predict_limit: data= and loss_fn=)"
        )
    if "taylor_onset" in methods:
        _check_taylor(taylor, norm)

    probes = spectrum.num_probes
    quantile = float(student_t.ppf(0.5 + confidence / 2, probes - 1)) if probes > 1 else 0.0
    full = _ClosedForm(spectrum, policy, spectrum.nodes, spectrum.weights)
    half = None
    if spectrum.method != "exact" and spectrum.alphas is not None and spectrum.steps >= 2:
        nodes, weights_half = spectrum.rule(spectrum.steps // 2)
        half = _ClosedForm(spectrum, policy, nodes, weights_half)
    rules = bracket_rules(spectrum, policy)

    notes: list[str] = []
    if spectrum.curvature == "ggn":
        notes.append("GGN spectrum: PSD, so the eigenvalue policy only touches round-off")
    # Round-off negatives (a GGN's, or a Hessian's null directions) are not counted.
    floor = -1e-10 * float(np.max(np.abs(spectrum.nodes), initial=0.0))
    negative_mass = float(
        np.sum(spectrum.weights * (spectrum.nodes < floor))
        / probes
        * spectrum.active_dimension
        / spectrum.dimension
    )
    if negative_mass > 0:
        notes.append(
            f"{negative_mass:.1%} of the spectral mass lies at eigenvalues < 0 (policy {policy!r})"
        )

    estimates: dict[str, MethodEstimate] = {}
    quadratic_model = None
    for method in methods:
        if method in CLOSED_FORMS:
            estimates[method] = _closed_form_estimate(
                method, full, half, rules, norm, epsilon, quantile, sensitivity, spectrum
            )
        elif method == "emp":
            estimates[method] = _emp_estimate(norm, epsilon)
        elif method == "taylor_onset":
            estimates[method] = _taylor_estimate(taylor, norm, epsilon, sensitivity)
        elif method == "reference":
            estimates[method] = _reference_estimate(spectrum, norm, epsilon, policy)
        elif method == "quadratic":
            quadratic_model = quadratic_model or _quadratic_model(
                curvature, norm.weights, policy, damping, dense_limit
            )
            with tqdm(
                desc=f"quadratic: supports solved ({quadratic_model.solver})",
                unit="support",
                disable=not (progress and distributed.is_main()),
                leave=False,
            ) as bar:
                quadratic_model.progress = bar
                try:
                    estimates[method] = _quadratic_estimate(
                        quadratic_model, norm, epsilon, sensitivity
                    )
                finally:
                    quadratic_model.progress = None
        else:
            quadratic_model = quadratic_model or _quadratic_model(
                curvature, norm.weights, policy, damping, dense_limit
            )
            estimates[method] = _statdim_estimate(
                quadratic_model, norm, epsilon, statdim_samples, seed, sensitivity
            )

    paper_p = (
        estimates["paper"].removal_fraction
        if "paper" in estimates
        else _solve_closed_form("paper", full, norm, epsilon)
    )
    convergence = convergence_check(
        spectrum, full, half, rules, curvature_scale(norm(paper_p), epsilon), tolerance, policy
    )
    for est in estimates.values():
        if est.method in CLOSED_FORMS:
            spread = _quadrature_spread(est)
            if spread is not None and spread > tolerance:
                est.notes.append(
                    f"quadrature not converged: p* moves by {spread:.3f} between the "
                    "quadrature estimates (see convergence)"
                )

    if "reference" in estimates:
        difference = estimates["reference"].removal_fraction - paper_p
        notes.append(f"reference - paper = {difference:+.3f} (fraction removed)")

    grid = np.linspace(0.0, 1.0, curve_points)
    curves = {"removal_fraction": grid, "radius": norm(grid)}
    for form in ("paper", "orthogonal", "trace_bound"):
        curves[form] = statistical_dimension_curve(
            spectrum, norm.weights, epsilon, grid, form=form, policy=policy
        )[1]
    standard_errors = []
    for x in grid:
        per_probe = full.delta(curvature_scale(norm(x), epsilon))
        spread = per_probe.std(ddof=1) / math.sqrt(probes) if probes > 1 else 0.0
        standard_errors.append(float(spread))
    curves["paper_standard_error"] = standard_errors
    return Prediction(
        estimates=estimates,
        epsilon=epsilon,
        epsilon_source=source,
        policy=policy,
        curvature=spectrum.curvature,
        dimension=spectrum.dimension,
        zero_rows=spectrum.zero_rows,
        spectrum={
            "method": spectrum.method,
            "probes": probes,
            "steps": spectrum.steps,
            "provenance": plain(spectrum.provenance),
            "fingerprint": plain(spectrum.fingerprint),
        },
        seeds=_seeds(spectrum, methods, seed),
        parameters=[
            [str(p[0]), [int(s) for s in p[1]]]
            for p in (
                parameters
                if parameters is not None
                else [(p.name, p.shape) for p in spectrum.parameters]
            )
        ],
        convergence=convergence,
        curves=plain(curves),
        confidence=confidence,
        notes=notes,
        version=__version__,
    )


def _seeds(spectrum: Spectrum, methods: Sequence[str], seed: int) -> dict:
    """What drew random numbers, and from which seed: SLQ's probes, statdim_exact's samples."""
    seeds = {}
    if spectrum.method == "slq":
        seeds["slq_probes"] = spectrum.provenance.get("seed")
    if "statdim_exact" in methods:
        seeds["statdim_exact"] = seed
    return seeds


def check_statdim_dimension(methods: Sequence[str], dimension: int) -> None:
    """Refuse ``statdim_exact`` among ``methods`` for D above ``STATDIM_EXACT_LIMIT``.

    >>> check_statdim_dimension(("paper",), 10**6)           # no statdim_exact: no limit
    >>> check_statdim_dimension(("statdim_exact",), 10**6)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: statdim_exact needs D <= ... got D = 1000000
    """
    if "statdim_exact" in methods and dimension > STATDIM_EXACT_LIMIT:
        raise ValueError(
            f"statdim_exact needs D <= {STATDIM_EXACT_LIMIT} (one D x D eigendecomposition "
            f"per step of its search), got D = {dimension}"
        )


def _closed_form_estimate(
    method: str,
    full: _ClosedForm,
    half: _ClosedForm | None,
    rules,
    norm: PrunedNorm,
    epsilon: float,
    quantile: float,
    sensitivity: bool,
    spectrum: Spectrum,
) -> MethodEstimate:
    value = _solve_closed_form(method, full, norm, epsilon)
    uncertainty: dict = {}
    notes: list[str] = []
    candidates = [value]
    if spectrum.method != "exact":
        if spectrum.num_probes > 1:
            low = _solve_closed_form(method, full, norm, epsilon, shift=-quantile)
            high = _solve_closed_form(method, full, norm, epsilon, shift=quantile)
            uncertainty["probes"] = (low, high)
            candidates += [low, high]
        else:
            notes.append("one probe: no probe spread, the estimate's sampling error is unknown")
        if half is not None:
            uncertainty["half_steps"] = _solve_closed_form(method, half, norm, epsilon)
            candidates.append(uncertainty["half_steps"])
        bracket = None
        if rules is not None and method != "trace_bound":
            bracket = _quadrature_bracket(method, spectrum, rules, norm, epsilon, quantile)
        elif rules is not None and rules.variable == "x^2":
            bracket = _trace_bracket(spectrum, rules, norm, epsilon, quantile)
        if bracket is not None:
            uncertainty.update(bracket)
            candidates += list(bracket.get("quadrature_with_probes", bracket["quadrature"]))
    radius = float(norm(value))
    if method == "orthogonal":
        scale = curvature_scale(math.sqrt(norm.orthogonal_squared(value)), epsilon)
    else:
        scale = curvature_scale(radius, epsilon)
    return MethodEstimate(
        method=method,
        removal_fraction=value,
        interval=(float(min(candidates)), float(max(candidates))),
        radius=radius,
        scale=float(scale),
        uncertainty=uncertainty,
        sensitivity=_sensitivity(
            lambda eps: _solve_closed_form(method, full, norm, eps), epsilon, sensitivity
        ),
        notes=notes,
    )


def _reference_estimate(spectrum: Spectrum, norm: PrunedNorm, epsilon: float, policy: str):
    """The authors' pipeline (:func:`~pruning_limit.reference.reference_limit`) on the spectrum."""
    result = reference_limit(spectrum, norm.weights, epsilon)
    notes = list(result.notes)
    notes.append(
        "the reference code's pipeline: 100,000-bin Gaussian density of |lambda|, R rounded "
        "to an integer, argmin of |gw(R(p)) - p| over the 1/1000 grid"
    )
    if policy != "abs":
        notes.append(f"uses |lambda| whatever the policy ({policy!r} asked for)")
    return MethodEstimate(
        method="reference",
        removal_fraction=result.removal_fraction,
        interval=(result.removal_fraction, result.removal_fraction),
        radius=result.radius,
        scale=float(curvature_scale(result.rounded_radius, epsilon)),
        uncertainty={
            "rounded_radius": result.rounded_radius,
            "gaussian_width": result.gaussian_width,
            "mismatch": result.mismatch,
            "grid_step": 1.0 / GRID_STEPS,
        },
        notes=notes,
    )


def _sensitivity(solve: Callable[[float], float], epsilon: float, enabled: bool) -> dict:
    if not enabled or not np.isfinite(epsilon):
        return {}
    return {"epsilon/10": solve(epsilon / 10), "epsilon*10": solve(epsilon * 10)}


def _quadratic_model(curvature, weights, policy, damping, dense_limit) -> QuadraticModel:
    if isinstance(curvature, QuadraticModel):
        if curvature.dimension != weights.size:
            raise ValueError(
                f"the quadratic model has D = {curvature.dimension}, weights {weights.size}"
            )
        return curvature
    return QuadraticModel(
        curvature, weights, policy=policy, damping=damping, dense_limit=dense_limit
    )


def _quadratic_estimate(
    model: QuadraticModel, norm: PrunedNorm, epsilon: float, sensitivity: bool
) -> MethodEstimate:
    result = model.limit(epsilon)
    low = result.count / norm.dimension
    high = min(result.count + 1, norm.dimension) / norm.dimension
    return MethodEstimate(
        method="quadratic",
        removal_fraction=result.removal_fraction,
        interval=(low, high),
        radius=float(norm(result.removal_fraction)),
        scale=float(curvature_scale(norm(result.removal_fraction), epsilon)),
        uncertainty={
            "discreteness": (low, high),
            "count": result.count,
            "cost_below": result.cost_below,
            "cost_above": result.cost_above,
            "solver": result.solver,
            "evaluations": result.evaluations,
            "unconverged_solves": result.unconverged,
        },
        sensitivity=_sensitivity(
            lambda eps: model.limit(eps).removal_fraction, epsilon, sensitivity
        ),
        notes=list(result.notes),
    )


def _statdim_estimate(
    model: QuadraticModel,
    norm: PrunedNorm,
    epsilon: float,
    samples: int,
    seed: int,
    sensitivity: bool,
) -> MethodEstimate:
    if model.eigenvectors is None:
        raise ValueError("statdim_exact needs the dense curvature (eigenvectors)")
    # The quadratic model's eigenvalues already carry the policy (and its damping).
    eigen = (model.eigenvalues + model.damping, model.eigenvectors)

    def solve(eps: float, shift: float = 0.0) -> float:
        def excess(p: float) -> float:
            if p == 0.0:
                return 1.0
            result = statdim_exact(
                eigen, norm.removed_vector(p), eps, policy="abs", samples=samples, seed=seed
            )
            return result.fraction + shift * result.standard_error - p

        if excess(1.0) >= 0:
            return 1.0
        return float(brentq(excess, 0.0, 1.0, xtol=1e-4))

    value = solve(epsilon)
    low, high = solve(epsilon, -2.0), solve(epsilon, 2.0)
    return MethodEstimate(
        method="statdim_exact",
        removal_fraction=value,
        interval=(min(low, value), max(high, value)),
        radius=float(norm(value)),
        scale=float(curvature_scale(norm(value), epsilon)),
        uncertainty={"monte_carlo": (low, high), "samples": samples, "seed": seed},
        sensitivity=_sensitivity(solve, epsilon, sensitivity),
        notes=[
            "random-subspace kinematic formula with the exact statistical dimension of the "
            "descent cone from the pruned point (Monte Carlo, common random numbers)"
        ],
    )


def _quadrature_bracket(method, spectrum, rules, norm, epsilon, quantile) -> dict:
    """p* from the per-probe Gauss (lower) and Gauss-Radau (upper) bounds on delta/D."""

    def lower(scale: float) -> np.ndarray:
        return bounds_at(spectrum, rules, scale)[0]

    def upper(scale: float) -> np.ndarray:
        return bounds_at(spectrum, rules, scale)[1]

    result = {
        "quadrature": (
            _solve_closed_form(method, lower, norm, epsilon),
            _solve_closed_form(method, upper, norm, epsilon),
        ),
        "quadrature_rule": "Gauss / Gauss-Radau on the measure of "
        + ("C^2 (abs policy)" if rules.variable == "x^2" else "C (PSD)"),
    }
    if spectrum.num_probes > 1:
        result["quadrature_with_probes"] = (
            _solve_closed_form(method, lower, norm, epsilon, shift=-quantile),
            _solve_closed_form(method, upper, norm, epsilon, shift=quantile),
        )
    return result


@dataclass
class _FixedTrace:
    """Per-probe tr|C|/D values for the trace bound, bypassing the rule."""

    values: np.ndarray

    def trace(self) -> np.ndarray:
        return self.values


def _trace_bracket(spectrum, rules, norm, epsilon, quantile) -> dict:
    """p* of the trace bound from bounds on tr|C|/D (measure of C^2, abs policy).

    sqrt is a Bernstein function (f' >= 0, f'' <= 0, ...), the mirror image of a
    completely monotone one: on the measure of C^2 its Gauss rule is an *upper* bound
    and its Gauss-Radau rule (node at 0) a *lower* bound of q^T |C| q. A larger trace
    gives a smaller p*, so the upper trace bound gives the lower end.
    """

    def root(y):
        return np.sqrt(np.maximum(y, 0.0))

    high = spectrum.per_probe(root, rules.gauss_nodes, rules.gauss_weights)
    low = spectrum.per_probe(root, rules.radau_nodes, rules.radau_weights)
    low = np.where(rules.radau_valid, low, 0.0)
    result = {
        "quadrature": (
            _solve_closed_form("trace_bound", _FixedTrace(high), norm, epsilon),
            _solve_closed_form("trace_bound", _FixedTrace(low), norm, epsilon),
        ),
        "quadrature_rule": "Gauss / Gauss-Radau bounds on tr|C|/D from the measure of C^2",
    }
    if spectrum.num_probes > 1:
        result["quadrature_with_probes"] = (
            _solve_closed_form("trace_bound", _FixedTrace(high), norm, epsilon, -quantile),
            _solve_closed_form("trace_bound", _FixedTrace(low), norm, epsilon, quantile),
        )
    return result


def _quadrature_spread(estimate: MethodEstimate) -> float | None:
    u = estimate.uncertainty
    if "quadrature" in u:
        return abs(u["quadrature"][1] - u["quadrature"][0])
    if "half_steps" in u:
        return abs(u["half_steps"] - estimate.removal_fraction)
    return None
