"""The predicted pruning limit p*: the loss budget, R(p), the fixed points, the Prediction.

Convention: p is always the fraction of prunable weights *removed* (``amount`` in
``torch.nn.utils.prune``); the fraction kept is 1 - p. Every result says so.

Pieces (DESIGN sections 2, 3 and 7):

- eps, the loss budget (:func:`loss_budget`): the standard deviation of the
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

- Uncertainty for every estimate from a Spectrum: the probe spread carried through
  the fixed point (delta +- t s.e.), the change between m/2 and m Lanczos steps,
  and for a PSD curvature (GGN) the Gauss (lower) / Gauss-Radau (upper) quadrature
  bracket; sensitivity to eps / 10 and eps * 10.

Example
-------
>>> import numpy as np
>>> from pruning_limit.spectrum import Spectrum
>>> from pruning_limit.geometry import statistical_dimension
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

import json
import math
import textwrap
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.stats import t as student_t

from .geometry import (
    apply_policy,
    check_policy,
    curvature_scale,
    quadrature_bounds,
    quadrature_rules,
    statdim_exact,
)
from .quadratic import DEFAULT_DENSE_LIMIT, QuadraticModel, _as_vector
from .serialization import plain, read_json, write_json
from .spectrum import Spectrum

METHODS = ("paper", "orthogonal", "trace_bound", "quadratic", "statdim_exact")
DEFAULT_METHODS = ("paper", "orthogonal", "quadratic", "trace_bound")
MEASURED_ERRORS_FILE = "measured_errors.json"  # written by benchmarks/prediction_vs_actual.py
CLOSED_FORMS = ("paper", "orthogonal", "trace_bound")
CONVENTION = (
    "p is the fraction of prunable weights REMOVED (amount in torch.nn.utils.prune); "
    "the fraction kept is 1 - p"
)
STATDIM_EXACT_LIMIT = 500
FORMAT_VERSION = 1
# Fine near 0 (tiny budgets give tiny p*) and uniform elsewhere: the first sign change
# of F on this grid brackets the first crossing.
_GRID = np.unique(np.concatenate([[0.0], np.geomspace(1e-9, 1e-2, 15), np.linspace(0, 1, 61)]))


# -- the loss budget ----------------------------------------------------------------------


def loss_budget(
    source=None,
    epsilon: str | float = "batch_std",
    *,
    dtype=None,
    loss: float | None = None,
) -> tuple[float, dict]:
    """The loss budget eps and a record of how it was obtained.

    Parameters
    ----------
    source
        What ``"batch_std"`` reads: a :class:`~pruning_limit.hessian.CurvatureOperator`
        (its ``batch_losses()`` at w*), a pair ``(batch_losses, batch_sizes)``, or an
        array of per-batch mean losses. May be ``None`` when ``epsilon`` is a number.
    epsilon
        ``"batch_std"``: the standard deviation (ddof = 1) of the per-batch mean
        training losses at w*, as the reference code sets it; it depends on the
        batch size, which is recorded. A finite number > 0 is taken as given.
    dtype
        The dtype the loss was computed in (numpy or torch); default: the operator's,
        else float64. Used for the resolution check.
    loss
        L(w*), if known; default: the sample-weighted mean of the batch losses.

    Returns
    -------
    (eps, source_record)

    Raises
    ------
    ValueError
        eps <= 0, inf or NaN, an unknown string, or ``"batch_std"`` with under two batches.

    Warns
    -----
    UserWarning
        When eps < 100 * machine epsilon(dtype) * |L(w*)|: the budget is below what the
        loss can resolve, so the prediction measures round-off.

    Example
    -------
    >>> eps, record = loss_budget(([0.30, 0.34, 0.32], [64, 64, 64]))
    >>> round(eps, 6), record["kind"], record["batch_size"]
    (0.02, 'batch_std', 64)
    """
    record: dict = {}
    losses = sizes = None
    if source is not None:
        if hasattr(source, "batch_losses"):
            losses, sizes = source.batch_losses()
            dtype = getattr(source, "dtype", None) if dtype is None else dtype
        elif isinstance(source, tuple) and len(source) == 2:
            losses, sizes = source
        else:
            losses = source
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64).reshape(-1)
        if sizes is not None and sizes.shape != losses.shape:
            raise ValueError(f"got {losses.size} batch losses but {sizes.size} batch sizes")
        if not np.all(np.isfinite(losses)):
            raise ValueError("the batch losses contain NaN or infinite values")
        if loss is None and losses.size:
            loss = float(np.average(losses, weights=sizes))
    if isinstance(epsilon, str):
        if epsilon != "batch_std":
            raise ValueError(f"epsilon must be 'batch_std' or a positive number, got {epsilon!r}")
        if losses is None or losses.size < 2:
            count = 0 if losses is None else losses.size
            raise ValueError(
                "epsilon='batch_std' needs the losses of at least two mini-batches at w* "
                f"(got {count}): pass data and loss_fn, or a smaller batch size, or a number"
            )
        value = float(np.std(losses, ddof=1))
        record.update(kind="batch_std", ddof=1, batches=int(losses.size))
        if sizes is not None:
            # The nominal size is the largest: only a last batch may be shorter.
            record.update(
                batch_size=int(np.max(sizes)),
                batch_sizes_vary=bool(np.unique(sizes).size > 1),
                samples=int(sizes.sum()),
            )
    else:
        try:
            value = float(epsilon)
        except (TypeError, ValueError):
            raise ValueError(
                f"epsilon must be 'batch_std' or a positive number, got {epsilon!r}"
            ) from None
        record.update(kind="given")
    if not 0 < value < math.inf:  # also NaN; an infinite budget predicts nothing (p* = 1)
        raise ValueError(f"the loss budget eps must be a finite positive number, got {value}")
    resolution_dtype = _numpy_dtype(dtype)
    record.update(value=value, dtype=str(resolution_dtype))
    if loss is not None:
        resolution = 100 * float(np.finfo(resolution_dtype).eps) * abs(float(loss))
        record.update(loss=float(loss), resolution=resolution)
        if value < resolution:
            warnings.warn(
                f"eps = {value:.3g} is below what {resolution_dtype} resolves at the loss's "
                f"scale (100 * machine epsilon * |L| = {resolution:.3g}): the prediction would "
                "measure round-off; compute the loss and curvature in float64",
                UserWarning,
                stacklevel=2,
            )
    return value, record


def _numpy_dtype(dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float64)
    name = str(dtype).replace("torch.", "")
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(np.float64)


# -- R(p) -------------------------------------------------------------------------------


class PrunedNorm:
    """R(p) = sqrt(sum of the p D smallest w*_j^2), continuous in p.

    With s_1 <= ... <= s_D the sorted squares and S_k their partial sums, R(p)^2 is
    S_k at p = k / D and linear in p D in between. Sorting happens once; calls are
    vectorised over p.
    """

    def __init__(self, weights) -> None:
        flat = _as_vector(weights)
        if flat.size == 0:
            raise ValueError("weights is empty")
        if not np.all(np.isfinite(flat)):
            raise ValueError("weights contain NaN or infinite values")
        self.weights = flat
        self.dimension = flat.size
        self.order = np.argsort(np.abs(flat), kind="stable")
        self.squares = flat[self.order] ** 2
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
        whole = int(np.floor(position))
        vector = np.zeros(self.dimension)
        chosen = self.order[:whole]
        vector[chosen] = self.weights[chosen]
        if whole < self.dimension and position > whole:
            j = self.order[whole]
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


# -- fixed points -----------------------------------------------------------------------


def first_crossing(function: Callable[[float], float], grid: np.ndarray = _GRID) -> float:
    """The smallest p in [0, 1] where ``function`` (positive at 0) first reaches <= 0.

    The grid is scanned for the first sign change, then refined with Brent's method.
    Returns 1.0 when the function stays positive on [0, 1).
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


# -- results ------------------------------------------------------------------------------


@dataclass
class MethodEstimate:
    """One predictor's p* (fraction REMOVED) with its interval and how it was bounded.

    Attributes
    ----------
    method
        One of :data:`METHODS`.
    removal_fraction
        p*, the predicted largest fraction of prunable weights that can be removed.
    interval
        (low, high) on p*: the hull of the uncertainty components below (a point for
        exact spectra).
    radius
        R(p*), the norm of the removed weights at p*.
    scale
        c* = R(p*)^2 / (2 eps) (for ``orthogonal``: with R^2 (1 - p) / p).
    uncertainty
        Components: ``probes`` (p* with delta -+ t s.e., ``confidence`` two-sided,
        Student t over probes), ``half_steps`` (p* from the rule after m/2 Lanczos
        steps), ``quadrature`` (p* from the per-probe Gauss lower and Gauss-Radau upper
        bounds, PSD curvature only), ``quadrature_with_probes`` (the same shifted by
        -+ t s.e.), ``monte_carlo`` (statdim_exact), ``discreteness`` (quadratic: the
        counts k*/D and (k*+1)/D).
    sensitivity
        p* at eps / 10 and eps * 10 (point estimates).
    notes
        Anything a reader should know.
    """

    method: str
    removal_fraction: float
    interval: tuple[float, float]
    radius: float
    scale: float
    uncertainty: dict = field(default_factory=dict)
    sensitivity: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        """1 - p*: the fraction of prunable weights kept."""
        return 1.0 - self.removal_fraction


@dataclass
class Prediction:
    """Predicted pruning limits, with everything needed to judge and reproduce them.

    ``fraction`` is always ``"removed"``: p* is the fraction of prunable weights
    removed (``amount`` in torch.nn.utils.prune); ``kept_fraction`` gives 1 - p*.

    Attributes
    ----------
    estimates
        Method name -> :class:`MethodEstimate`, in the order asked for.
    epsilon, epsilon_source
        The budget and how it was obtained (see :func:`loss_budget`).
    policy
        Treatment of eigenvalues <= 0 (``"abs"`` or ``"flat"``).
    curvature
        ``"hessian"`` or ``"ggn"``.
    dimension, zero_rows
        D prunable weights, z identically-zero curvature rows among them.
    spectrum
        The Spectrum's method, probes, steps and provenance.
    parameters
        ``[name, shape]`` of each prunable tensor, in flattening order.
    convergence
        The quadrature diagnostics at the paper's c* (see ``convergence["message"]``).
    curves
        Arrays for plotting, keyed ``removal_fraction`` (the grid p), ``radius`` R(p),
        ``paper`` / ``orthogonal`` / ``trace_bound`` (delta/D at each p; the limits are
        where they cross p), ``paper_standard_error``.
    """

    estimates: dict
    epsilon: float
    epsilon_source: dict
    policy: str
    curvature: str
    dimension: int
    zero_rows: int
    spectrum: dict
    parameters: list
    convergence: dict
    curves: dict
    confidence: float
    notes: list = field(default_factory=list)
    fraction: str = "removed"
    convention: str = CONVENTION
    version: str = ""

    def removal_fraction(self, method: str | None = None) -> float:
        """p* (fraction REMOVED) of ``method`` (default: the first one computed)."""
        return self._estimate(method).removal_fraction

    def kept_fraction(self, method: str | None = None) -> float:
        """1 - p* (fraction KEPT) of ``method``."""
        return self._estimate(method).kept_fraction

    def interval(self, method: str | None = None) -> tuple[float, float]:
        return tuple(self._estimate(method).interval)

    def _estimate(self, method: str | None) -> MethodEstimate:
        if method is None:
            method = next(iter(self.estimates))
        if method not in self.estimates:
            raise KeyError(f"no estimate for {method!r}; computed: {list(self.estimates)}")
        return self.estimates[method]

    # -- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict:
        data = asdict(self)
        data["format_version"] = FORMAT_VERSION
        return plain(data)

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text (non-finite numbers are written as NaN / Infinity, which json reads)."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (``.json`` added if missing), atomically."""
        return write_json(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> Prediction:
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"prediction format {version}, this version reads {FORMAT_VERSION}")
        estimates = {}
        for name, entry in data.pop("estimates").items():
            entry = dict(entry)
            entry["interval"] = tuple(entry["interval"])
            estimates[name] = MethodEstimate(**entry)
        return cls(estimates=estimates, **data)

    @classmethod
    def load(cls, path: str | Path) -> Prediction:
        """Read a Prediction written by :meth:`save`."""
        return cls.from_dict(read_json(path, "prediction"))

    # -- reading -----------------------------------------------------------------------

    def summary(self) -> str:
        """A readable table of every method's p* (removed), 1 - p* (kept) and intervals."""
        source = self.epsilon_source
        how = source.get("kind", "?")
        if how == "batch_std" and "batch_size" in source:
            how += f", batch size {source['batch_size']}, {source.get('batches')} batches"
        spectrum = self.spectrum
        lines = [
            "Predicted pruning limit: p = fraction of prunable weights REMOVED "
            "(torch.nn.utils.prune amount); kept = 1 - p",
            f"eps = {self.epsilon:.4g} ({how}); policy for eigenvalues <= 0: {self.policy}; "
            f"curvature: {self.curvature}",
            f"D = {self.dimension} prunable weights ({self.zero_rows} zero curvature rows); "
            f"spectrum: {spectrum.get('method')}, {spectrum.get('probes')} probe(s) x "
            f"{spectrum.get('steps')} steps",
            "",
            f"{'method':<14}{'p* removed':>11}{'kept':>8}   {'interval':<18}{'R(p*)':>10}"
            f"{'eps/10':>9}{'eps*10':>9}",
        ]
        for name, est in self.estimates.items():
            low, high = est.interval
            sens = est.sensitivity
            lines.append(
                f"{name:<14}{est.removal_fraction:>11.4f}{est.kept_fraction:>8.4f}   "
                f"[{low:.4f}, {high:.4f}]  {est.radius:>10.4g}"
                f"{_fmt(sens.get('epsilon/10')):>9}{_fmt(sens.get('epsilon*10')):>9}"
            )
        message = self.convergence.get("message")
        if message:
            lines += ["", message]
        lines += [f"note: {n}" for n in self.notes]
        lines += _measured_error_lines(list(self.estimates))
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}={est.removal_fraction:.4f}" for name, est in self.estimates.items()
        )
        return (
            f"Prediction(removed: {parts}; eps={self.epsilon:.3g}, policy={self.policy!r}, "
            f"curvature={self.curvature!r}, D={self.dimension})"
        )

    def __str__(self) -> str:
        return self.summary()


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def measured_errors() -> dict:
    """How far each predictor landed from actual pruning where it was measured.

    The mean of (predicted - actual) p, in percentage points, over the runs of
    ``benchmarks/prediction_vs_actual.py`` (which writes this file, shipped with the
    package), against one-shot pruning's accuracy limit and the re-fitted and
    fine-tuned networks' loss-budget limits. An interval on p* covers the error of
    the spectrum only; this is the error of the model behind the prediction.
    """
    text = resources.files("pruning_limit").joinpath(MEASURED_ERRORS_FILE).read_text()
    return json.loads(text)


def _measured_error_lines(methods: list[str]) -> list[str]:
    measured = measured_errors()
    known = [m for m in methods if m in measured["methods"]]
    if not known:
        return []
    against = list(measured["methods"][known[0]])
    heading = (
        f"Measured error against real pruning, mean (mean |.|) of {measured['error']}, "
        f"over {measured['runs']} runs of {measured['setting']} ({measured['source']}). "
        "Your network may differ: `pruning-limit validate` measures it."
    )
    lines = ["", *textwrap.wrap(heading, width=92)]
    lines.append(f"{'method':<14}" + "".join(f"{a:>26}" for a in against))
    for method in known:
        cells = measured["methods"][method]
        lines.append(
            f"{method:<14}"
            + "".join(
                f"{cells[a]['mean_error_pp']:>+17.1f} ({cells[a]['mean_abs_error_pp']:.1f})"
                for a in against
            )
        )
    return lines


# -- the predictors --------------------------------------------------------------------------


def check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    """Validate method names; raise ``ValueError`` listing the known ones."""
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
    dense_limit: int = DEFAULT_DENSE_LIMIT,
    curve_points: int = 101,
    parameters: Sequence | None = None,
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
        Any of :data:`METHODS`. ``quadratic`` and ``statdim_exact`` need ``curvature``.
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
        epsilon, source = _checked_epsilon(epsilon), dict(epsilon_source)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    _check_statdim_dimension(methods, norm.dimension)
    needs_matrix = [m for m in methods if m in ("quadratic", "statdim_exact")]
    if needs_matrix and curvature is None:
        raise ValueError(
            f"method(s) {needs_matrix} need the curvature itself (a matrix or a "
            "CurvatureOperator; through predict_limit: data= and loss_fn=)"
        )

    probes = spectrum.num_probes
    quantile = float(student_t.ppf(0.5 + confidence / 2, probes - 1)) if probes > 1 else 0.0
    full = _ClosedForm(spectrum, policy, spectrum.nodes, spectrum.weights)
    half = None
    if spectrum.method != "exact" and spectrum.alphas is not None and spectrum.steps >= 2:
        nodes, weights_half = spectrum.rule(spectrum.steps // 2)
        half = _ClosedForm(spectrum, policy, nodes, weights_half)
    rules = _bracket_rules(spectrum, policy)

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
        elif method == "quadratic":
            quadratic_model = quadratic_model or _quadratic_model(
                curvature, norm.weights, policy, damping, dense_limit
            )
            estimates[method] = _quadratic_estimate(quadratic_model, norm, epsilon, sensitivity)
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
    convergence = _convergence(
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
    from . import __version__

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
        },
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


def _check_statdim_dimension(methods: Sequence[str], dimension: int) -> None:
    if "statdim_exact" in methods and dimension > STATDIM_EXACT_LIMIT:
        raise ValueError(
            f"statdim_exact needs D <= {STATDIM_EXACT_LIMIT} (one D x D eigendecomposition "
            f"per step of its search), got D = {dimension}"
        )


def _checked_epsilon(epsilon) -> float:
    value = float(epsilon)
    if not value > 0:
        raise ValueError(f"the loss budget eps must be positive, got {value}")
    return value


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


def _bracket_rules(spectrum: Spectrum, policy: str, steps: int | None = None):
    """Gauss / Gauss-Radau rules that bound tr g_c/D, or None where no bound holds.

    GGN (PSD): rules of the measure of C. Hessian with the ``"abs"`` policy: rules of
    the measure of C^2 (f_c(|x|) = f_c(sqrt(x^2))), with half the nodes. Hessian with
    ``"flat"``: none (f_c(max(x, 0)) is not completely monotone in x or in x^2).
    """
    if spectrum.method == "exact" or spectrum.alphas is None:
        return None
    steps = spectrum.steps if steps is None else steps
    if spectrum.curvature == "ggn" and steps >= 2:
        return quadrature_rules(spectrum, steps)
    if policy == "abs" and steps >= 4:
        return quadrature_rules(spectrum, steps, absolute=True)
    return None


def _bounds_at(spectrum: Spectrum, rules, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe (lower, upper) bounds on delta/D at c = ``scale``, upper clipped to 1."""
    lower, upper = quadrature_bounds(spectrum, lambda x: 1.0 / (1.0 + scale * x), rules=rules)
    # With the Radau node a hair below 0, f_c is completely monotone there only for
    # c |node| < 1; past 1/2 fall back to the trivial bound delta/D <= 1.
    if rules.variable == "x" and scale * -rules.lower_node >= 0.5:
        upper = np.ones_like(upper)
    return lower, np.minimum(upper, 1.0)


def _quadrature_bracket(method, spectrum, rules, norm, epsilon, quantile) -> dict:
    """p* from the per-probe Gauss (lower) and Gauss-Radau (upper) bounds on delta/D."""

    def lower(scale: float) -> np.ndarray:
        return _bounds_at(spectrum, rules, scale)[0]

    def upper(scale: float) -> np.ndarray:
        return _bounds_at(spectrum, rules, scale)[1]

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


def _convergence(spectrum, full, half, rules, scale, tolerance, policy) -> dict:
    """How well the quadrature resolves tr g_c(C)/D at the paper's c*."""
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

    lower, upper = _bounds_at(spectrum, rules, scale)
    gauss, radau = float(lower.mean()), float(upper.mean())
    if gauss > radau:
        # A Gauss node below zero (round-off on a PSD curvature) puts f_c above 1 there:
        # the Gauss value is then no lower bound, and a negative "width" no convergence.
        converged = report.get("relative_change", np.inf) <= tolerance
        message += (
            f"; no Gauss/Gauss-Radau bracket: the Gauss value {gauss:.4g} exceeds the "
            f"Gauss-Radau bound {radau:.4g} (quadrature nodes below zero)"
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
    half_rules = _bracket_rules(spectrum, policy, steps // 2)
    if half_rules is not None and half_rules.gauss_nodes.shape[1] >= 2:
        lo_h, hi_h = _bounds_at(spectrum, half_rules, scale)
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


# -- from a model ----------------------------------------------------------------------------


def predict_limit(
    model,
    spectrum: Spectrum | None = None,
    *,
    epsilon: str | float = "batch_std",
    methods: Iterable[str] = DEFAULT_METHODS,
    policy: str = "abs",
    data=None,
    loss_fn=None,
    curvature: str | None = None,
    params: Iterable | None = None,
    dtype=None,
    device: str = "cpu",
    batch_size: int | None = None,
    damping: float = 0.0,
    dense_limit: int = DEFAULT_DENSE_LIMIT,
    **options,
) -> Prediction:
    """Predict how large a fraction p of a model's prunable weights can be removed.

    Parameters
    ----------
    model
        The trained ``torch.nn.Module``; its prunable weights (default: every Linear and
        Conv ``weight``, or the Spectrum's tensors) are w*.
    spectrum
        A Spectrum of the same tensors (checked: D and every name and shape). ``None``:
        computed here from ``data`` and ``loss_fn`` (exact for D <= 5000, else SLQ).
    epsilon
        ``"batch_std"`` (needs ``data`` and ``loss_fn``) or a positive number.
    methods
        Any of :data:`METHODS`; ``quadratic`` and ``statdim_exact`` need ``data`` and
        ``loss_fn`` (they use the curvature itself, not only its spectrum).
    policy
        ``"abs"`` or ``"flat"``, for eigenvalues <= 0.
    data, loss_fn
        As for :class:`~pruning_limit.hessian.CurvatureOperator`.
    curvature
        ``"hessian"`` or ``"ggn"``; default: the Spectrum's (a mismatch is an error),
        else ``"ggn"``: PSD, so no eigenvalue policy is needed, the quadratic model is
        convex, and SLQ's delta/D converges by m = 50 at the c of the predicted limit
        where the Hessian's (policy ``abs``) needed m = 200
        (``benchmarks/delta_accuracy.py``).
    params
        The tensors to prune (default: the Spectrum's, else the prunable weights).
    dtype, device, batch_size
        For the operator built here (default dtype: float64, which budgets near
        zero loss need).
    damping, dense_limit
        For the quadratic model (see :class:`~pruning_limit.quadratic.QuadraticModel`).
    options
        Passed to :func:`predict_from_spectrum` (``confidence``, ``sensitivity``,
        ``tolerance``, ``statdim_samples``, ``seed``, ``curve_points``).

    Raises
    ------
    ValueError
        Unknown method, a Spectrum that does not match the model, missing data for a
        method or for ``"batch_std"``, eps <= 0 or NaN.
    """
    import torch

    from .batches import DEFAULT_BATCH_SIZE
    from .hessian import DEFAULT_EXACT_LIMIT, CurvatureOperator, resolve_parameters

    methods = check_methods(methods)
    check_policy(policy)
    if not (isinstance(epsilon, str) and epsilon == "batch_std"):
        loss_budget(None, epsilon)  # refuse a bad number before any work
    if curvature is not None and curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    if spectrum is not None:
        if curvature is not None and curvature != spectrum.curvature:
            raise ValueError(
                f"curvature={curvature!r} but the spectrum is of the {spectrum.curvature!r}"
            )
        curvature = spectrum.curvature
    curvature = curvature or "ggn"
    if params is None and spectrum is not None and spectrum.parameters:
        params = [p.name for p in spectrum.parameters]
    try:
        selected = resolve_parameters(model, params)
    except ValueError as error:
        raise ValueError(f"the spectrum does not match the model: {error}") from error
    weights = np.concatenate([p.detach().cpu().double().numpy().reshape(-1) for _, p in selected])
    parameters = [(name, tuple(p.shape)) for name, p in selected]
    _check_statdim_dimension(methods, weights.size)
    if spectrum is not None:
        if spectrum.dimension != weights.size:
            raise ValueError(
                f"the spectrum has D = {spectrum.dimension} but the model's prunable weights "
                f"number {weights.size}"
            )
        if spectrum.parameters:
            theirs = [(p.name, tuple(p.shape)) for p in spectrum.parameters]
            if theirs != parameters:
                raise ValueError(
                    f"the spectrum's parameters {theirs} do not match the model's {parameters}"
                )

    needs_data = [m for m in methods if m in ("quadratic", "statdim_exact")]
    if epsilon == "batch_std":
        needs_data.append("epsilon='batch_std'")
    if spectrum is None:
        needs_data.append("spectrum=None")
    if needs_data and (data is None or loss_fn is None):
        raise ValueError(f"{', '.join(needs_data)} need data= and loss_fn= (the training data)")

    operator = None
    if data is not None and loss_fn is not None:
        operator = _MatrixOnce(
            CurvatureOperator(
                model,
                loss_fn,
                data,
                curvature=curvature,
                params=[name for name, _ in selected],
                dtype=torch.float64 if dtype is None else dtype,
                device=device,
                batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            )
        )
    if spectrum is None:
        from . import lanczos

        if operator.dimension <= DEFAULT_EXACT_LIMIT:
            spectrum = lanczos.exact_spectrum_of(operator)
        else:
            spectrum = lanczos.slq(operator, progress=False)
    eps, source = loss_budget(operator, epsilon, dtype=None if operator is None else operator.dtype)
    return predict_from_spectrum(
        spectrum,
        weights,
        eps,
        methods=methods,
        policy=policy,
        curvature=operator,
        epsilon_source=source,
        damping=damping,
        dense_limit=dense_limit,
        parameters=parameters,
        **options,
    )


class _MatrixOnce:
    """A CurvatureOperator whose dense matrix is built at most once.

    The exact spectrum and the quadratic model both need C; building it costs D
    curvature products, so the second request reuses the first.
    """

    def __init__(self, operator) -> None:
        self._operator = operator
        self._matrix = None

    def __getattr__(self, name):
        return getattr(self._operator, name)

    def matrix(self, max_dimension: int = DEFAULT_DENSE_LIMIT, block: int = 64):
        if self._matrix is None or self._matrix.shape[0] != self._operator.dimension:
            self._matrix = self._operator.matrix(max_dimension=max_dimension, block=block)
        return self._matrix
