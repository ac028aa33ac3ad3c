"""Prediction intervals calibrated on measured errors: split-conformal, per regime.

A predictor's own interval covers the spectrum's error only. Against real pruning its
error is the residual

    r = actual - predicted        (fraction REMOVED, for one method, variant, criterion),

which is large and biased, and whose size depends on the network's regime
(:mod:`pruning_limit.regime`). This module turns the residuals of calibration runs
(networks that were predicted *and* pruned) into intervals that contain the actual
limit of a new network as often as they claim, if that network is exchangeable with
the calibration networks of its regime.

Conformal, per regime (Mondrian)
--------------------------------
Calibration is done within the network's regime class only: the +4 points of a sparse
network that fits its data and the +45 of a dense one are never mixed. With n
calibration residuals r_(1) <= ... <= r_(n) of that class and alpha = 1 - coverage:

- ``"asymmetric"`` (signed residuals):
      [predicted + r_(k_lo), predicted + r_(k_hi)],
      k_lo = floor((n + 1) alpha / 2),  k_hi = ceil((n + 1) (1 - alpha / 2)).
  The new residual falls below r_(k_lo) with probability k_lo / (n + 1) <= alpha/2 and
  above r_(k_hi) with probability (n + 1 - k_hi) / (n + 1) <= alpha/2, so the
  coverage is >= 1 - alpha. It needs 1 <= k_lo and k_hi <= n, i.e. n >= 2/alpha - 1
  (19 runs at 90 %).
- ``"symmetric"`` (absolute residuals): predicted +- |r|_(k), k = ceil((n + 1)(1 - alpha)),
  coverage >= 1 - alpha; it needs k <= n, i.e. n >= 1/alpha - 1 (9 runs at 90 %).

- ``"jackknife-minmax"`` (residuals regressed on the regime features; Barber, Candes,
  Ramdas and Tibshirani 2021, "Predictive inference with the jackknife+"): within the
  class the residual still moves with the network's features
  (:data:`REGRESSION_FEATURES`), so a ridge regression f of r on them, fitted without
  unit i (f_{-i}), leaves out-of-sample errors R_i = |r_i - f_{-i}(x_i)| far smaller
  than the spread of r. For a network with features x:

      [predicted + min_i f_{-i}(x) - R_(k), predicted + max_i f_{-i}(x) + R_(k)],
      k = ceil((n + 1)(1 - alpha)),

  with coverage >= 1 - alpha for any regression, as the paper shows (its jackknife+
  sibling, narrower, guarantees only 1 - 2 alpha, and on 44 networks trained after the
  set was built it covered the one-shot accuracy onset 84 % of the time at nominal 90 %,
  this rule 88 %). It needs n >= 1/alpha - 1; ``"auto"`` takes it from
  :data:`JACKKNIFE_MIN_UNITS` units on, where a 7-coefficient ridge has data enough. On
  the shipped set (leave-one-out) it narrows the collapse centre's interval of ``paper``
  from 30 / 15 / 42 points (dense / sparse / under-fitted, asymmetric rule) to 11 / 6 /
  16 (``benchmarks/README.md`` has the leave-one-out and held-out tables).

Why asymmetric before symmetric: the residuals are strongly biased (every predictor errs on one
side in most regimes), and an interval centred on the prediction must then reach as
far on the empty side as on the full one, about twice the width. The asymmetric
interval follows the residuals' own location. ``rule="auto"`` (the default) takes
jackknife-minmax when the class has :data:`JACKKNIFE_MIN_UNITS` units, and the symmetric rule
from 1/alpha - 1 units on; the choice depends on n only, never on the residuals' values,
so the guarantee holds for whichever rule is taken. Every interval is clipped to [0, 1]
(the actual limit lies there, so clipping loses no coverage).

Fallback: there is no pooling across regimes. A class with too few runs for either rule
gives no interval, with the reason; so does a network whose features lie outside the
range spanned by its class's calibration runs (a false interval is worse than none).

The range check
---------------
A network is refused (no interval, with the reason) when its curvature or eps source
differs from every calibration run of its class, when it has no train accuracy (the
calibration networks are classifiers), or when one of :data:`RANGE_FEATURES` lies
outside the range its class's calibration runs span:

- ``small_weight_share`` and ``pruned_norm_ratio`` (R(p*)/||w||): within a class they
  are the features the residual moves with (on the 22 networks of the study, Spearman
  of the class-centred residual of ``paper`` against the one-shot collapse -0.83 with
  R(p*)/||w||; ``quadratic`` against the one-shot onset +0.69 with the share), and a
  left-out network at an extreme of either is covered less often than the others
  (leave-one-out at 90 % on the 66-run set of the first version, pooled over methods and criteria:
  82 % at an extreme of R(p*)/||w||, 85 % of the share, against 92 %);
- ``d_over_n``: the network's size relative to its data, on which the theory's error
  depends (the gap of ``paper`` shrinks as D grows) and which separates the study's
  small MLPs (D/N 0.4-1.3) from most real networks; never binding in leave-one-out
  (every data family appears more than once per class), it refuses extrapolation.

Train accuracy and train loss are not range-checked: the class already reads the fit
(accuracy >= 0.95 or not), their within-class association with the residual is weak
(|Spearman| <= 0.27), and a network at their extreme loses less coverage (88 % against
91 %). Pooled over every method, criterion and class at 90 %, checking all five
features answered 52 % of the left-out networks at 93.8 % coverage; these three answer
59 % at 93.2 % (no check: 81 % at 90.7 %). Most refusals come from small classes, where
every other network is an extreme (the share falls towards 2k/(n+1) for k features and
n units per class); ``benchmarks/README.md`` has the table.

Calibration units: runs that are the same network trained twice (same data, seed and
penalty, float32 and float64: the same ``group``) are not independent; within a class
they count as one unit whose residual is the mean of theirs, and leave-one-out leaves
out the whole unit.

Example
-------
>>> import numpy as np
>>> residuals = np.arange(1, 20) / 100             # 19 residuals, 0.01 .. 0.19
>>> conformal_offsets(residuals, coverage=0.9)     # r_(1), r_(19)
(0.01, 0.19)
>>> conformal_offsets(residuals[:9], coverage=0.9, rule="symmetric")  # |r|_(9)
(-0.09, 0.09)
>>> required_runs(0.9, "asymmetric"), required_runs(0.9, "symmetric")
(19, 9)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from .regime import CONTINUOUS_FEATURES, Regime
from .serialization import plain, read_json, write_json

FORMAT = "pruning-limit calibration set v1"
DATA_FILE = "calibration.json"  # in pruning_limit/data/, built by benchmarks/calibration_set.py
RULES = ("auto", "jackknife-minmax", "asymmetric", "symmetric")
# ``"auto"`` takes jackknife-minmax from this many units of a class on (7 ridge coefficients).
JACKKNIFE_MIN_UNITS = 19
# The regime features the residual is regressed on by the jackknife-minmax rule, as read by
# :func:`regression_features` (logarithms where a feature spans decades).
REGRESSION_FEATURES = (
    "train_accuracy", "log train_loss", "small_weight_share", "log d_over_n",
    "pruned_norm_ratio", "l1_used",
)  # fmt: skip
# The ridge penalty on the standardised features (the intercept is not penalised).
# Leave-one-out widths on the shipped set change by <= 2 points between 0.1 and 3.
RIDGE_PENALTY = 1.0
RULE_NAMES = {
    "jackknife-minmax": "ridge jackknife-minmax",
    "asymmetric": "asymmetric split-conformal",
    "symmetric": "symmetric split-conformal",
}
# The categorical features a network must share with its calibration runs.
CATEGORICAL_FEATURES = ("curvature", "epsilon_source")
# The continuous features whose calibration range a network must lie in (module
# docstring, "The range check"): those that move the residual within a regime class,
# and the network's size relative to its data.
RANGE_FEATURES = ("small_weight_share", "pruned_norm_ratio", "d_over_n")
POOLED = "all regimes (pooled)"


# -- the conformal quantiles ------------------------------------------------------------------


def _alpha(coverage: float) -> float:
    if not 0.0 < float(coverage) < 1.0:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    return 1.0 - float(coverage)


def _ranks(n: int, coverage: float, rule: str) -> tuple[int, int]:
    """1-based order statistics (low, high) of the rule; out of 1..n when n is too small."""
    alpha = _alpha(coverage)
    # The rounding guard keeps (n + 1)(1 - alpha) = 19.000000000000004 from becoming 20.
    if rule == "asymmetric":
        low = math.floor(round((n + 1) * alpha / 2, 9))
        high = math.ceil(round((n + 1) * (1 - alpha / 2), 9))
        return low, high
    if rule == "symmetric":
        k = math.ceil(round((n + 1) * (1 - alpha), 9))
        return k, k
    if rule == "jackknife-minmax":
        k = math.ceil(round((n + 1) * (1 - alpha), 9))
        return k, k
    raise ValueError(f"rule must be one of {RULES[1:]}, got {rule!r}")


def required_runs(coverage: float, rule: str) -> int:
    """The smallest n for which ``rule`` attains ``coverage`` (see the module docstring).

    >>> required_runs(0.9, "asymmetric"), required_runs(0.8, "symmetric")   # 2/a - 1, 1/a - 1
    (19, 4)
    >>> required_runs(0.9, "jackknife-minmax")   # the rank; "auto" asks for JACKKNIFE_MIN_UNITS
    9
    """
    n = 1
    while True:
        low, high = _ranks(n, coverage, rule)
        if 1 <= low and high <= n:
            return n
        n += 1


def choose_rule(n: int, coverage: float, rule: str = "auto") -> str | None:
    """The rule used with n calibration units: ``rule`` itself, or for ``"auto"``
    jackknife-minmax from :data:`JACKKNIFE_MIN_UNITS` units on, else the symmetric rule;
    ``None`` if n is too small.

    >>> choose_rule(19, 0.9), choose_rule(10, 0.9), choose_rule(19, 0.9, "asymmetric")
    ('jackknife-minmax', 'symmetric', 'asymmetric')
    >>> print(choose_rule(5, 0.9))   # the symmetric rule needs 9 at 90 %
    None
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "auto":
        if n >= max(JACKKNIFE_MIN_UNITS, required_runs(coverage, "jackknife-minmax")):
            return "jackknife-minmax"
        rule = "symmetric"
    return rule if n >= required_runs(coverage, rule) else None


def conformal_offsets(
    residuals: Iterable[float], coverage: float = 0.9, rule: str = "asymmetric"
) -> tuple[float, float]:
    """(low, high) offsets such that [predicted + low, predicted + high] has the coverage.

    Parameters
    ----------
    residuals
        Calibration residuals r = actual - predicted.
    coverage
        1 - alpha, the nominal probability that a new residual lies in [low, high].
    rule
        ``"asymmetric"`` (order statistics of the signed residuals) or ``"symmetric"``
        (of their absolute values); see the module docstring.

    Raises
    ------
    ValueError
        If there are too few residuals for the coverage (:func:`required_runs`), or a
        residual is not finite.

    Example
    -------
    >>> residuals = np.arange(1, 20) / 100                          # 0.01 .. 0.19
    >>> conformal_offsets(residuals, 0.9)                           # r_(1), r_(19)
    (0.01, 0.19)
    >>> conformal_offsets(-residuals[:9], 0.9, rule="symmetric")   # |r|_(9)
    (-0.09, 0.09)
    >>> conformal_offsets(residuals[:5], 0.9)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 5 calibration residuals are too few for 90% coverage ... (it needs 19)
    """
    r = np.sort(np.asarray(list(residuals), dtype=np.float64))
    if not np.all(np.isfinite(r)):
        raise ValueError("residuals must be finite")
    n = r.size
    low, high = _ranks(n, coverage, rule)
    if low < 1 or high > n:
        raise ValueError(
            f"{n} calibration residuals are too few for {coverage:.0%} coverage with the "
            f"{rule} rule (it needs {required_runs(coverage, rule)})"
        )
    if rule == "symmetric":
        q = float(np.sort(np.abs(r))[high - 1])
        return -q, q
    return float(r[low - 1]), float(r[high - 1])


def regression_features(regime: Regime) -> np.ndarray:
    """The regime's :data:`REGRESSION_FEATURES` as a vector (NaN where one is unknown).

    >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
    ...                 small_weight_share=0.3, dimension=100, num_train=200,
    ...                 removal_fraction=0.5, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
    >>> np.round(regression_features(regime), 3)   # log 0.01, log(100/200), L1 used
    array([ 1.   , -4.605,  0.3  , -0.693,  0.2  ,  1.   ])
    """

    def number(value) -> float:
        return math.nan if value is None else float(value)

    loss = number(regime.train_loss)
    return np.array(
        [
            number(regime.train_accuracy),
            math.log(loss) if loss > 0 else math.nan,
            number(regime.small_weight_share),
            math.log(regime.d_over_n),
            number(regime.pruned_norm_ratio),
            number(regime.l1_used),
        ]
    )


def jackknife_minmax_offsets(
    features: np.ndarray,
    residuals: Iterable[float],
    new_features: np.ndarray,
    coverage: float = 0.9,
    penalty: float = RIDGE_PENALTY,
) -> tuple[float, float]:
    """(low, high) offsets of the jackknife-minmax interval with a ridge regression of the
    residuals on the features (module docstring).

    Each leave-one-out fit standardises the features on its own n - 1 rows (a
    feature constant there is left at zero) and penalises every coefficient but the
    intercept by ``penalty``; the n fits are one batched solve. The result is MAPIE's
    ``CrossConformalRegressor(StandardScaler + Ridge, method="minmax",
    cv=LeaveOneOut())`` to 1e-10 (tests/test_calibration.py); ours because a
    leave-one-out table over the calibration set needs n^2 such fits per row, and a
    batched 7 x 7 solve does them in milliseconds.

    Parameters
    ----------
    features
        (n, k) features of the calibration units (finite).
    residuals
        Their n residuals r = actual - predicted.
    new_features
        (k,) features of the network the interval is for (finite).
    coverage
        1 - alpha; n must be at least 1/alpha - 1.
    penalty
        The ridge penalty on the standardised features.

    Example
    -------
    Residuals that are a line in one feature: every leave-one-out fit nearly recovers
    it, and the interval is narrow around the line's value at the new feature.

    >>> x = np.linspace(0, 1, 19)[:, None]
    >>> residuals = 0.3 * x[:, 0] + 0.01 * np.sin(40 * x[:, 0])
    >>> low, high = jackknife_minmax_offsets(x, residuals, np.array([0.5]), 0.9, penalty=1e-6)
    >>> round(low, 3), round(high, 3)   # 0.3 * 0.5 = 0.15
    (0.139, 0.162)
    >>> np.round(conformal_offsets(residuals, 0.9), 3)   # the residuals' own spread
    array([0.   , 0.307])
    """
    X = np.asarray(features, dtype=np.float64)
    r = np.asarray(list(residuals), dtype=np.float64)
    x = np.asarray(new_features, dtype=np.float64).reshape(-1)
    n = r.size
    if X.shape != (n, x.size):
        raise ValueError(f"features have shape {X.shape}, expected ({n}, {x.size})")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(r)) and np.all(np.isfinite(x))):
        raise ValueError("features and residuals must be finite")
    rank, _ = _ranks(n, coverage, "jackknife-minmax")
    if rank > n:
        raise ValueError(
            f"{n} calibration residuals are too few for {coverage:.0%} coverage with the "
            f"jackknife-minmax rule (it needs {required_runs(coverage, 'jackknife-minmax')})"
        )
    others = ~np.eye(n, dtype=bool)
    train = np.stack([X[keep] for keep in others])  # (n, n - 1, k): fit i leaves out i
    targets = np.stack([r[keep] for keep in others])
    mean = train.mean(axis=1, keepdims=True)
    scale = train.std(axis=1, keepdims=True)
    scale = np.where(scale > 1e-12, scale, np.inf)  # a constant feature contributes 0

    def design(rows: np.ndarray) -> np.ndarray:
        standardised = (rows - mean) / scale
        return np.concatenate([np.ones(standardised.shape[:-1] + (1,)), standardised], -1)

    Z = design(train)
    ridge = penalty * np.eye(Z.shape[-1])
    ridge[0, 0] = 0.0
    normal = np.einsum("nia,nib->nab", Z, Z) + ridge
    coefficients = np.linalg.solve(normal, np.einsum("nia,ni->na", Z, targets)[..., None])[..., 0]
    left_out = np.einsum("na,na->n", design(X[:, None, :])[:, 0, :], coefficients)
    errors = np.abs(r - left_out)
    at_new = np.einsum("na,na->n", design(np.broadcast_to(x, (n, 1, x.size)))[:, 0, :],
                       coefficients)  # fmt: skip
    quantile = np.sort(errors)[rank - 1]
    return float(at_new.min() - quantile), float(at_new.max() + quantile)


# -- the calibration set ----------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationRun:
    """One network that was both predicted and pruned.

    Attributes
    ----------
    run
        Its name in the source study.
    group
        Runs of the same network trained again (another dtype) share a group.
    regime
        Its :class:`~pruning_limit.regime.Regime`.
    predicted
        Method -> p* (fraction REMOVED).
    actual
        Variant -> criterion -> the actual limit (``None`` where the criterion has no value).
    source
        The key of its source file in the set's provenance.

    Example
    -------
    >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
    ...                 small_weight_share=0.3, dimension=100, num_train=200,
    ...                 removal_fraction=0.5, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
    >>> runs = [CalibrationRun(f"net{i}", f"net{i}", regime, {"paper": 0.5},
    ...                        {"one_shot": {"accuracy": 0.5 + i / 100}}) for i in range(1, 20)]
    >>> round(runs[0].residual("paper", "one_shot", "accuracy"), 6)   # 0.51 - 0.5
    0.01
    >>> print(runs[0].residual("paper", "refit", "accuracy"))          # never measured
    None
    >>> CalibrationRun.from_dict(runs[0].to_dict()) == runs[0]
    True
    """

    run: str
    group: str
    regime: Regime
    predicted: dict
    actual: dict
    source: str = ""

    def residual(self, method: str, variant: str, criterion: str) -> float | None:
        """actual - predicted, or ``None`` when either is missing."""
        predicted = self.predicted.get(method)
        actual = self.actual.get(variant, {}).get(criterion)
        if predicted is None or actual is None:
            return None
        return float(actual) - float(predicted)

    def to_dict(self) -> dict:
        return plain(
            {
                "run": self.run,
                "group": self.group,
                "regime": self.regime.to_dict(),
                "predicted": self.predicted,
                "actual": self.actual,
                "source": self.source,
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationRun:
        return cls(
            run=data["run"],
            group=data.get("group", data["run"]),
            regime=Regime.from_dict(data["regime"]),
            predicted=dict(data["predicted"]),
            actual={variant: dict(values) for variant, values in data["actual"].items()},
            source=data.get("source", ""),
        )


@dataclass(frozen=True)
class CalibratedInterval:
    """A calibrated interval on the actual limit, or the reason there is none.

    Attributes
    ----------
    low, high
        The interval on the actual limit (fraction REMOVED), clipped to [0, 1];
        ``None`` when no interval is given.
    reason
        Why no interval is given (``None`` when one is).
    method, variant, criterion
        What the interval is for.
    predicted
        The prediction it is built around.
    coverage
        The nominal coverage asked for.
    regime
        The regime class calibrated within.
    runs
        Calibration units of that class with a residual for this method, variant
        and criterion.
    rule
        ``"jackknife-minmax"``, ``"asymmetric"`` or ``"symmetric"`` (``None`` without an
        interval).
    measured
        The leave-one-out coverage and mean width of such intervals over the
        calibration networks of the regime (:meth:`CalibrationSet.leave_one_out`:
        ``units``, ``answered``, ``coverage``, ``mean_width``), when attached with
        :meth:`with_measured`.

    Example
    -------
    19 calibration networks whose residuals are 0.01 .. 0.19 (see
    :class:`CalibrationSet`), all with the same features: the ridge of jackknife-minmax is
    then the leave-one-out mean (0.095 .. 0.105), the 18th smallest error is 0.095, and
    around p* = 0.6 the interval is [0.600, 0.800] (the asymmetric rule's:
    [0.6 + r_(1), 0.6 + r_(19)] = [0.61, 0.79]).

    >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
    ...                 small_weight_share=0.3, dimension=100, num_train=200,
    ...                 removal_fraction=0.5, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
    >>> runs = [CalibrationRun(f"net{i}", f"net{i}", regime, {"paper": 0.5},
    ...                        {"one_shot": {"accuracy": 0.5 + i / 100}}) for i in range(1, 20)]
    >>> result = CalibrationSet(runs).interval("paper", "one_shot", "accuracy", regime, 0.6)
    >>> print(result)   # doctest: +NORMALIZE_WHITESPACE
    paper vs one_shot accuracy: [0.600, 0.800] at 90% (ridge jackknife-minmax,
    19 calibration units, regime 'sparse, fits the data')
    >>> round(result.width, 6), result.with_reason("not asked").bounds
    (0.2, None)
    """

    low: float | None
    high: float | None
    reason: str | None
    method: str
    variant: str
    criterion: str
    predicted: float
    coverage: float
    regime: str | None
    runs: int
    rule: str | None = None
    measured: dict | None = None

    @property
    def bounds(self) -> tuple[float, float] | None:
        """``(low, high)``, or ``None`` when no interval is given."""
        return None if self.low is None else (self.low, self.high)

    @property
    def width(self) -> float | None:
        return None if self.low is None else self.high - self.low

    def to_dict(self) -> dict:
        return plain(
            {
                "low": self.low,
                "high": self.high,
                "reason": self.reason,
                "method": self.method,
                "variant": self.variant,
                "criterion": self.criterion,
                "predicted": self.predicted,
                "coverage": self.coverage,
                "regime": self.regime,
                "runs": self.runs,
                "rule": self.rule,
                "measured": self.measured,
            }
        )

    def with_reason(self, reason: str) -> CalibratedInterval:
        """This result without an interval, for ``reason``."""
        return replace(self, low=None, high=None, rule=None, reason=reason)

    def with_measured(self, calibration: CalibrationSet) -> CalibratedInterval:
        """This interval with its leave-one-out coverage and width on ``calibration``
        (unchanged when there is no interval)."""
        if self.bounds is None:
            return self
        row = calibration.leave_one_out(
            self.method, self.variant, self.criterion, self.regime, self.coverage
        )
        measured = {key: row[key] for key in ("units", "answered", "coverage", "mean_width")}
        return replace(self, measured=measured)

    def measured_text(self) -> str:
        """The measured coverage and width in words (for printing)."""
        if not self.measured or self.measured["coverage"] is None:
            return f"{self.coverage:.0%} nominal, {self.runs} calibration networks; not measured"
        m = self.measured
        return (
            f"{self.coverage:.0%} nominal, {self.runs} calibration networks; leave-one-out: "
            f"{100 * m['coverage']:.0f} % covered of {m['answered']} answered (of {m['units']}), "
            f"mean width {100 * m['mean_width']:.1f} points"
        )

    def __str__(self) -> str:
        what = f"{self.method} vs {self.variant} {self.criterion}"
        if self.low is None:
            return f"{what}: no calibrated interval ({self.reason})"
        return (
            f"{what}: [{self.low:.3f}, {self.high:.3f}] at {self.coverage:.0%} "
            f"({RULE_NAMES[self.rule]}, {self.runs} calibration units, regime {self.regime!r})"
        )


@dataclass
class CalibrationSet:
    """Calibration runs with their provenance; intervals and leave-one-out coverage.

    Load the shipped set with :meth:`load` (no argument), or any file written by
    ``benchmarks/calibration_set.py``.

    Example
    -------
    19 networks of one regime, each predicted at 0.5 and pruned at 0.5 + i/100:

    >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
    ...                 small_weight_share=0.3, dimension=100, num_train=200,
    ...                 removal_fraction=0.5, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
    >>> runs = [CalibrationRun(f"net{i}", f"net{i}", regime, {"paper": 0.5},
    ...                        {"one_shot": {"accuracy": 0.5 + i / 100}}) for i in range(1, 20)]
    >>> calibration = CalibrationSet(runs)
    >>> calibration.methods(), calibration.targets(), calibration.regime_classes()
    (['paper'], [('one_shot', 'accuracy')], ['sparse, fits the data'])
    >>> np.round(calibration.interval("paper", "one_shot", "accuracy", regime, 0.6).bounds, 6)
    array([0.6, 0.8])
    >>> calibration.leave_one_out("paper", "one_shot", "accuracy", regime.name)["answered"]
    19
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded = CalibrationSet.load(calibration.save(Path(folder) / "calibration"))
    >>> loaded.runs == calibration.runs
    True
    """

    runs: list
    provenance: dict = field(default_factory=dict)
    criteria: dict = field(default_factory=dict)
    # leave_one_out's answers, each with the digest of the runs it was measured on: a
    # printed Prediction asks for the same ones again, and a saved set carries those
    # with the range check (a leave-one-out row of the shipped set takes seconds).
    _measured: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _digest: tuple = field(default=(), init=False, repr=False, compare=False)

    # -- reading --------------------------------------------------------------------------

    def methods(self) -> list[str]:
        return sorted({m for run in self.runs for m in run.predicted})

    def targets(self) -> list[tuple[str, str]]:
        """Every (variant, criterion) with at least one actual value."""
        return sorted(
            {
                (variant, criterion)
                for run in self.runs
                for variant, values in run.actual.items()
                for criterion, value in values.items()
                if value is not None
            }
        )

    def regime_classes(self) -> list[str]:
        return sorted({run.regime.name for run in self.runs})

    def units(
        self, method: str, variant: str, criterion: str, regime_class: str | None = None
    ) -> list[tuple[str, float, list[CalibrationRun]]]:
        """Calibration units ``(group, residual, runs)`` of a class (``None``: every class).

        A unit is the runs of one group in one class that have a residual; its residual
        is their mean (see the module docstring).
        """
        by_group: dict[tuple[str, str], list] = {}
        for run in self.runs:
            if regime_class is not None and run.regime.name != regime_class:
                continue
            if run.residual(method, variant, criterion) is None:
                continue
            by_group.setdefault((run.group, run.regime.name), []).append(run)
        return [
            (
                group,
                float(np.mean([r.residual(method, variant, criterion) for r in members])),
                members,
            )
            for (group, _), members in sorted(by_group.items())
        ]

    # -- the interval ---------------------------------------------------------------------

    def interval(
        self,
        method: str,
        variant: str,
        criterion: str,
        regime: Regime | None,
        predicted: float,
        coverage: float = 0.9,
        rule: str = "auto",
        *,
        mondrian: bool = True,
        check_range: bool = True,
        exclude_group: str | None = None,
        range_features: Iterable[str] = RANGE_FEATURES,
    ) -> CalibratedInterval:
        """The calibrated interval on the actual limit, or the reason there is none.

        Parameters
        ----------
        method, variant, criterion
            The predictor, the kind of pruning (``"one_shot"``, ``"refit"``,
            ``"finetune"``) and the reading of "actual" (``"accuracy"``,
            ``"loss_budget"``, ``"collapse"``, ...; see :attr:`criteria`).
        regime
            The network's :class:`~pruning_limit.regime.Regime`.
        predicted
            The method's p* for the network (fraction REMOVED).
        coverage
            Nominal coverage, in (0, 1).
        rule
            ``"auto"``, ``"jackknife-minmax"``, ``"asymmetric"`` or ``"symmetric"`` (module
            docstring).
        mondrian
            Calibrate within the network's regime class (the default). ``False``
            pools every class: the coverage then holds on average over the
            calibration set's mix of regimes, not for a network of a given regime.
        check_range
            Refuse networks outside the calibration range (the default). ``False``
            is for diagnostics of the conformal step alone (leave-one-out).
        exclude_group
            Leave this group's runs out (leave-one-out).
        range_features
            The continuous features of the range check (default
            :data:`RANGE_FEATURES`; any of
            :data:`~pruning_limit.regime.CONTINUOUS_FEATURES`).

        Returns
        -------
        CalibratedInterval
            ``bounds`` is ``None``, with ``reason``, when the method, variant or
            criterion was never calibrated; when the regime is unknown; when the
            network's curvature or eps source differs from every calibration run of
            its class, or one of its features lies outside their range; or when the
            class has too few units for the coverage.
        """
        _alpha(coverage)
        predicted = float(predicted)

        def none(reason: str, runs: int = 0, name: str | None = None) -> CalibratedInterval:
            return CalibratedInterval(
                None, None, reason, method, variant, criterion, predicted, coverage, name, runs
            )

        if method not in self.methods():
            return none(f"method {method!r} is not in the calibration set ({self.methods()})")
        if (variant, criterion) not in self.targets():
            known = ", ".join(f"{v}/{c}" for v, c in self.targets())
            return none(f"{variant}/{criterion} is not in the calibration set ({known})")
        if regime is None and (mondrian or check_range):
            return none("the network's regime is unknown; intervals are calibrated per regime")
        name = regime.name if mondrian else POOLED
        units = [
            unit
            for unit in self.units(method, variant, criterion, name if mondrian else None)
            if unit[0] != exclude_group
        ]
        if not units:
            return none(
                f"no calibration run of regime {name!r} for {method} vs {variant}/{criterion}",
                0,
                name,
            )
        if check_range:
            members = [run for _, _, group in units for run in group]
            outside = _outside_range(regime, [run.regime for run in members], range_features)
            if outside:
                return none(
                    f"outside the calibration range of regime {name!r}: " + "; ".join(outside),
                    len(units),
                    name,
                )
        chosen = choose_rule(len(units), coverage, rule)
        if chosen is None:
            needed = required_runs(coverage, "symmetric" if rule == "auto" else rule)
            return none(
                f"too few calibration runs: {len(units)} unit(s) of regime {name!r} for "
                f"{method} vs {variant}/{criterion}, {coverage:.0%} coverage needs {needed}",
                len(units),
                name,
            )
        residuals = [r for _, r, _ in units]
        if chosen == "jackknife-minmax" and regime is None:  # pooled, unchecked: no features
            if rule != "auto":
                reason = "the jackknife-minmax rule needs the network's regime features"
                return none(reason, len(units), name)
            chosen = "asymmetric"
        if chosen == "jackknife-minmax":
            calibrated = np.array([regression_features(group[0].regime) for _, _, group in units])
            features = regression_features(regime)
            known = np.all(np.isfinite(calibrated), axis=0)  # features every unit has
            missing = [
                feature
                for feature, in_units, value in zip(REGRESSION_FEATURES, known, features)
                if in_units and not np.isfinite(value)
            ]
            if missing:
                reason = f"the network's {', '.join(missing)} unknown (the rule regresses on it)"
                return none(reason, len(units), name)
            low, high = jackknife_minmax_offsets(
                calibrated[:, known], residuals, features[known], coverage
            )
        else:
            low, high = conformal_offsets(residuals, coverage, chosen)
        return CalibratedInterval(
            low=float(np.clip(predicted + low, 0.0, 1.0)),
            high=float(np.clip(predicted + high, 0.0, 1.0)),
            reason=None,
            method=method,
            variant=variant,
            criterion=criterion,
            predicted=predicted,
            coverage=coverage,
            regime=name,
            runs=len(units),
            rule=chosen,
        )

    # -- leave-one-out ---------------------------------------------------------------------

    def leave_one_out(
        self,
        method: str,
        variant: str,
        criterion: str,
        regime_class: str | None,
        coverage: float = 0.9,
        rule: str = "auto",
        check_range: bool = True,
        range_features: Iterable[str] = RANGE_FEATURES,
    ) -> dict:
        """Coverage and mean width, leaving each calibration unit of a class out in turn.

        Each unit is predicted from the other units of its class (``regime_class=None``:
        from every other unit, pooled); it is covered when its mean actual limit lies
        in the interval built around its mean prediction (the quantity its residual is
        calibrated on). With ``check_range`` the range check applies as for a new
        network; without it only the conformal step is measured.

        Returns
        -------
        dict
            ``units`` (n), ``answered`` (units given an interval), ``coverage`` (share
            of answered units covered; ``None`` if none was answered), ``mean_width``,
            ``rules`` (rule -> count) and ``reasons`` (reason -> count) for the rest.
        """
        range_features = tuple(range_features)
        key = (method, variant, criterion, regime_class, coverage, rule, check_range,
               range_features)  # fmt: skip
        digest = self.runs_digest()
        if self._measured.get(key, (None,))[0] != digest:
            units = self.units(method, variant, criterion, regime_class)
            self._measured[key] = (digest, self._coverage(units, *key, leave_out=True))
        return dict(self._measured[key][1])

    def runs_digest(self) -> str:
        """SHA-256 of the runs (what a stored leave-one-out row was measured on)."""
        identity = tuple(map(id, self.runs))
        if not self._digest or self._digest[0] != identity:
            text = json.dumps([run.to_dict() for run in self.runs], sort_keys=True)
            self._digest = (identity, hashlib.sha256(text.encode()).hexdigest())
        return self._digest[1]

    def held_out(
        self,
        networks: CalibrationSet,
        method: str,
        variant: str,
        criterion: str,
        regime_class: str | None,
        coverage: float = 0.9,
        rule: str = "auto",
        check_range: bool = True,
        range_features: Iterable[str] = RANGE_FEATURES,
    ) -> dict:
        """Coverage and mean width of this set's intervals on ``networks``, predicted
        and pruned but not in this set (the test the leave-one-out only imitates).

        Returns the dict of :meth:`leave_one_out`, over the units of ``networks``.

        Example
        -------
        >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
        ...                 small_weight_share=0.3, dimension=100, num_train=200,
        ...                 removal_fraction=0.5, removal_fraction_method="paper",
        ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
        >>> def networks(first):
        ...     return CalibrationSet([CalibrationRun(f"net{i}", f"net{i}", regime, {"paper": 0.5},
        ...                            {"one_shot": {"accuracy": 0.5 + i / 100}})
        ...                            for i in range(first, first + 19)])
        >>> row = networks(1).held_out(networks(10), "paper", "one_shot", "accuracy", regime.name)
        >>> row["answered"], round(row["coverage"], 3)   # [0.5, 0.7] holds 11 of 0.60 .. 0.78
        (19, 0.579)
        """
        units = networks.units(method, variant, criterion, regime_class)
        return self._coverage(
            units, method, variant, criterion, regime_class, coverage, rule, check_range,
            tuple(range_features), leave_out=False,
        )  # fmt: skip

    def _coverage(
        self, units, method, variant, criterion, regime_class, coverage, rule, check_range,
        range_features, leave_out,
    ) -> dict:  # fmt: skip
        """Coverage of ``units`` by intervals built from this set (each unit's own group
        left out with ``leave_out``)."""
        covered, widths, rules, reasons = [], [], {}, {}
        for group, residual, members in units:
            predicted = float(np.mean([run.predicted[method] for run in members]))
            result = self.interval(
                method, variant, criterion, members[0].regime, predicted, coverage, rule,
                mondrian=regime_class is not None, check_range=check_range,
                exclude_group=group if leave_out else None, range_features=range_features,
            )  # fmt: skip
            if result.bounds is None:
                key = result.reason.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
                continue
            actual = predicted + residual
            covered.append(result.low - 1e-12 <= actual <= result.high + 1e-12)
            widths.append(result.width)
            rules[result.rule] = rules.get(result.rule, 0) + 1
        return {
            "method": method,
            "variant": variant,
            "criterion": criterion,
            "regime": POOLED if regime_class is None else regime_class,
            "nominal": coverage,
            "rule": rule,
            "check_range": check_range,
            "range_features": list(range_features) if check_range else [],
            "units": len(units),
            "answered": len(covered),
            "coverage": float(np.mean(covered)) if covered else None,
            "mean_width": float(np.mean(widths)) if widths else None,
            "rules": rules,
            "reasons": reasons,
        }

    def leave_one_out_table(
        self,
        coverage: float = 0.9,
        rule: str = "auto",
        check_range: bool = True,
        pooled: bool = False,
        range_features: Iterable[str] = RANGE_FEATURES,
    ) -> list[dict]:
        """:meth:`leave_one_out` for every method, variant, criterion and regime class
        (and, with ``pooled``, for all classes pooled)."""
        classes = [*self.regime_classes(), *([None] if pooled else [])]
        range_features = tuple(range_features)
        return [
            self.leave_one_out(
                method, variant, criterion, name, coverage, rule, check_range, range_features
            )
            for method in self.methods()
            for variant, criterion in self.targets()
            for name in classes
            if self.units(method, variant, criterion, name)
        ]

    def held_out_table(
        self,
        networks: CalibrationSet,
        coverage: float = 0.9,
        rule: str = "auto",
        pooled: bool = False,
    ) -> list[dict]:
        """:meth:`held_out` on ``networks`` for every method, variant, criterion and
        regime class both sets hold (and, with ``pooled``, for all classes pooled)."""
        classes = [*networks.regime_classes(), *([None] if pooled else [])]
        return [
            self.held_out(networks, method, variant, criterion, name, coverage, rule)
            for method in self.methods()
            if method in networks.methods()
            for variant, criterion in self.targets()
            for name in classes
            if networks.units(method, variant, criterion, name)
        ]

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return plain(
            {
                "format": FORMAT,
                "residual": "actual - predicted, fraction of prunable weights REMOVED",
                "provenance": self.provenance,
                "criteria": self.criteria,
                "runs": [run.to_dict() for run in self.runs],
                "leave_one_out": self._stored_leave_one_out(),
            }
        )

    def _stored_leave_one_out(self) -> dict:
        """The leave-one-out rows measured so far with the range check, on these runs."""
        digest = self.runs_digest()
        rows = [
            row
            for key, (measured_on, row) in sorted(self._measured.items(), key=lambda k: str(k[0]))
            if measured_on == digest and key[6]  # key[6]: check_range
        ]
        return {"runs_digest": digest, "rows": rows}

    def save(self, path: str | Path) -> Path:
        """Write the set as JSON (``.json`` added if missing), atomically; under
        ``torch.distributed`` rank 0 alone writes and every rank returns the path."""
        return write_json(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationSet:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a calibration set: format {data.get('format')!r}, expected {FORMAT!r}"
            )
        calibration = cls(
            runs=[CalibrationRun.from_dict(run) for run in data["runs"]],
            provenance=dict(data.get("provenance", {})),
            criteria=dict(data.get("criteria", {})),
        )
        stored = data.get("leave_one_out") or {}
        digest = calibration.runs_digest()
        if stored.get("runs_digest") == digest:  # rows of other runs are measured again
            for row in stored.get("rows", []):
                key = (
                    row["method"], row["variant"], row["criterion"],
                    None if row["regime"] == POOLED else row["regime"], row["nominal"],
                    row["rule"], True, tuple(row["range_features"]),
                )  # fmt: skip
                calibration._measured[key] = (digest, row)
        return calibration

    @classmethod
    def load(cls, path: str | Path | None = None) -> CalibrationSet:
        """Read a calibration set; default: the one shipped in ``pruning_limit/data/``."""
        if path is None:
            text = resources.files("pruning_limit").joinpath("data", DATA_FILE).read_text()
            return cls.from_dict(json.loads(text))
        return cls.from_dict(read_json(path, "calibration set"))


def _outside_range(
    regime: Regime, calibration: list[Regime], features: Iterable[str] = RANGE_FEATURES
) -> list[str]:
    """Why ``regime`` lies outside what ``calibration`` spans (empty list: inside)."""
    features = tuple(features)
    unknown = [name for name in features if name not in CONTINUOUS_FEATURES]
    if unknown:
        raise ValueError(f"unknown range features {unknown}; known: {CONTINUOUS_FEATURES}")
    problems = []
    for name in CATEGORICAL_FEATURES:
        seen = sorted({getattr(r, name) for r in calibration})
        if getattr(regime, name) not in seen:
            problems.append(f"{name} {getattr(regime, name)!r} not among {seen}")
    if regime.train_accuracy is None and any(r.train_accuracy is not None for r in calibration):
        problems.append("no train accuracy (not a classifier); the calibration networks are")
    methods = sorted({str(r.removal_fraction_method) for r in calibration})
    same_method = str(regime.removal_fraction_method) in methods
    for name in features:
        if name == "pruned_norm_ratio" and not same_method:
            problems.append(
                f"R(p*)/||w|| is measured at p* of {regime.removal_fraction_method!r}, "
                f"the calibration runs at p* of {methods}"
            )
            continue
        values = [r.feature(name) for r in calibration if r.feature(name) is not None]
        value = regime.feature(name)
        if value is None or not values:
            if value is None and values:
                problems.append(f"{name} unknown")
            continue
        low, high = min(values), max(values)
        if not low <= value <= high:
            problems.append(f"{name} = {value:.4g} not in [{low:.4g}, {high:.4g}]")
    return problems


_SHIPPED: list[CalibrationSet] = []


def shipped() -> CalibrationSet:
    """The calibration set shipped with the package (read once).

    >>> shipped() is shipped(), "paper" in shipped().methods()
    (True, True)
    """
    if not _SHIPPED:
        _SHIPPED.append(CalibrationSet.load())
    return _SHIPPED[0]


def interval(
    method: str,
    variant: str,
    criterion: str,
    regime: Regime | None,
    predicted: float,
    coverage: float = 0.9,
    calibration: CalibrationSet | None = None,
) -> CalibratedInterval:
    """:meth:`CalibrationSet.interval` on the shipped set (or ``calibration``).

    >>> print(interval("paper", "one_shot", "accuracy", regime=None, predicted=0.6).reason)
    the network's regime is unknown; intervals are calibrated per regime
    >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
    ...                 small_weight_share=0.3, dimension=100, num_train=200,
    ...                 removal_fraction=0.5, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
    >>> runs = [CalibrationRun(f"net{i}", f"net{i}", regime, {"paper": 0.5},
    ...                        {"one_shot": {"accuracy": 0.5 + i / 100}}) for i in range(1, 20)]
    >>> result = interval("paper", "one_shot", "accuracy", regime, 0.6,
    ...                   calibration=CalibrationSet(runs))
    >>> result.rule, round(result.low, 6), round(result.high, 6)
    ('jackknife-minmax', 0.6, 0.8)
    """
    calibration = shipped() if calibration is None else calibration
    return calibration.interval(method, variant, criterion, regime, predicted, coverage)


def leave_one_out_markdown(rows: list[dict]) -> str:
    """A markdown table of :meth:`CalibrationSet.leave_one_out` rows (widths in points).

    >>> regime = Regime(train_accuracy=1.0, train_loss=0.01, l1=1e-3, optimizer="adam",
    ...                 small_weight_share=0.3, dimension=100, num_train=200,
    ...                 removal_fraction=0.5, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.2, curvature="ggn", epsilon_source="batch_std")
    >>> runs = [CalibrationRun(f"net{i}", f"net{i}", regime, {"paper": 0.5},
    ...                        {"one_shot": {"accuracy": 0.5 + i / 100}}) for i in range(1, 20)]
    >>> table = leave_one_out_markdown(CalibrationSet(runs).leave_one_out_table())
    >>> print(table.splitlines()[-1])
    | paper | one_shot | accuracy | sparse, fits the data | 19 | 19 | 95 % | 37.9 | - |
    """
    lines = [
        "| method | variant | criterion | regime | units | answered | LOO coverage "
        "| mean width (points) | refused because |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        coverage = "-" if row["coverage"] is None else f"{100 * row['coverage']:.0f} %"
        width = "-" if row["mean_width"] is None else f"{100 * row['mean_width']:.1f}"
        refused = ", ".join(
            f"{count} {reason.split(' of regime')[0]}" for reason, count in row["reasons"].items()
        )
        lines.append(
            f"| {row['method']} | {row['variant']} | {row['criterion']} | {row['regime']} "
            f"| {row['units']} | {row['answered']} | {coverage} | {width} | {refused or '-'} |"
        )
    return "\n".join(lines)
