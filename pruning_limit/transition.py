"""The measured phase transition: readings of a pruning sweep's accuracy and loss curves.

The theory predicts a sharp transition in p, the fraction of prunable weights
removed; a sweep (:func:`~pruning_limit.pruning.sweep`) measures a curve. This
module reads the curve in the ways that locate the transition, beside the onset
readings of :mod:`pruning_limit.pruning` (``AccuracyDrop``, ``LossBudget``). With
a(p) the test accuracy and L(p) the mean training loss of the network with the
fraction p removed, a(0), L(0) the dense network's and a(1), L(1) those with
every prunable weight removed (measured, not assumed):

``collapse``
    the first p with a(p) < a(0) - 1/2 (a(0) - a(1)): the centre of the collapse.
``collapse_start``, ``collapse_end``
    the same with 1/10 and 9/10 of the drop a(0) - a(1);
    ``collapse_width`` = collapse_end - collapse_start.
``above_dense``
    the reference code's rule (``gaussian_width.py`` of Global-One-shot-Pruning):
    the largest p on the grid {i g : i = 0, ..., 1/g - 1} (g = ``reference_grid``,
    0.001 there; p = 1 is not on it) with a(p) > a(0), strictly; None when no such
    p exists. The rule is lenient (one lucky grid point far beyond the collapse
    onset decides it) and noisy on small test sets: one test sample more or less
    answered correctly moves it, and a(p) - a(0) is a difference of counts on the
    same samples.
``loss_collapse``
    the first p with log L(p) > (log L(0) + log L(1)) / 2, the centre of the
    train-loss rise on a log scale.

Each crossing ("first p with ...") is read from the evaluated points: the first
point, in order of p, that is across the level, and the point before it, which is
not; between the two the curve is interpolated linearly (in log L for the loss)
to where it meets the level. The first crossing is reported even when the curve
comes back afterwards (non-monotone curves); a dip that no evaluated point falls
in (narrower than the coarse grid's spacing) is not seen. Passing :func:`transition_criteria`
to :func:`~pruning_limit.pruning.sweep` as break criteria bisects each crossing's
bracket down to the sweep's resolution; :func:`measure_transition` does all of it.

Each reading carries its ``bracket`` (the two evaluated p around the crossing)
and, for accuracies with n test samples, an ``interval``: the crossings of the
lower and upper ends of the binomial intervals on a(p)
(:func:`~pruning_limit.pruning.accuracy_interval`) with the same level. The
level itself is held fixed, as :class:`~pruning_limit.pruning.AccuracyDropBound`
holds the dense accuracy fixed.

Example
-------
>>> from pruning_limit.pruning import SweepPoint
>>> curve = {0.0: 0.9, 0.5: 0.9, 0.7: 0.7, 0.8: 0.3, 1.0: 0.1}
>>> points = [SweepPoint(p, round(p * 1000), 1000, {"test_accuracy": a})
...           for p, a in curve.items()]
>>> t = read_transition(points, reference_grid=None)
>>> round(t.collapse, 4), t.bracket("collapse")   # level 0.5, between 0.7 and 0.8
(0.75, (0.7, 0.8))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from .pruning import (
    DEFAULT_AMOUNTS,
    INTERVAL_METHODS,
    BreakCriterion,
    Metrics,
    SweepPoint,
    accuracy_interval,
    interval_side,
    is_measurement,
    number_to_prune,
    sweep,
    sweep_down,
)
from .serialization import plain

# Fractions of the accuracy drop a(0) - a(1) that define the collapse readings.
COLLAPSE_FRACTIONS = {"collapse_start": 0.1, "collapse": 0.5, "collapse_end": 0.9}
READINGS = (
    "collapse",
    "collapse_start",
    "collapse_end",
    "collapse_width",
    "above_dense",
    "loss_collapse",
)
DEFAULT_REFERENCE_GRID = 0.001
# Accuracies are ratios of counts; a value exactly on a level must not read as across
# it because of rounding in the level's arithmetic.
_SLACK = 1e-12


# -- break criteria -----------------------------------------------------------------------


@dataclass(frozen=True)
class FallsBelow:
    """Broken when ``metrics[key] < level``: the curve has fallen below a level.

    With ``level`` = a(0) - f (a(0) - a(1)) this is "accuracy has fallen by the
    fraction f of the collapse".

    >>> half_way = FallsBelow(0.5)   # a(0) = 0.9, a(1) = 0.1, f = 1/2
    >>> half_way({"test_accuracy": 0.55}), half_way({"test_accuracy": 0.45})
    (False, True)
    """

    level: float
    key: str = "test_accuracy"

    def __call__(self, metrics: Metrics) -> bool:
        return _metric(metrics, self.key) < self.level - _SLACK


@dataclass(frozen=True)
class FallsBelowBound:
    """The decision of a :class:`FallsBelow` on an accuracy at one end of its interval.

    With [lo(a), hi(a)] the binomial interval on an accuracy measured on n samples
    (:func:`~pruning_limit.pruning.accuracy_interval`):

        side "earliest":  broken iff lo(a) < level   (could have fallen below)
        side "latest":    broken iff hi(a) < level   (must have fallen below)

    Example
    -------
    An accuracy of 0.55 on 100 samples (Wilson interval [0.452, 0.644]) could lie
    below 0.5, but need not:

    >>> earliest = FallsBelowBound(FallsBelow(0.5), n=100, side="earliest")
    >>> latest = FallsBelowBound(FallsBelow(0.5), n=100, side="latest")
    >>> metrics = {"test_accuracy": 0.55}
    >>> round(earliest.end(metrics), 3), earliest(metrics), latest(metrics)
    (0.452, True, False)
    """

    below: FallsBelow
    n: int
    side: str
    confidence: float = 0.95
    method: str = "wilson"

    def __post_init__(self) -> None:
        interval_side(0.0, self.n, self.side, self.confidence, self.method)

    def end(self, metrics: Metrics) -> float:
        """lo(a) for side "earliest", hi(a) for "latest"."""
        return interval_side(
            _metric(metrics, self.below.key), self.n, self.side, self.confidence, self.method
        )

    def __call__(self, metrics: Metrics) -> bool:
        return self.end(metrics) < self.below.level - _SLACK


@dataclass(frozen=True)
class RisesAbove:
    """Broken when ``metrics[key] > level``: the curve has risen above a level.

    With ``level`` = sqrt(L(0) L(1)) this is "log L is past half-way between
    log L(0) and log L(1)".

    >>> rises = RisesAbove(0.1)   # L(0) = 0.01, L(1) = 1
    >>> rises({"train_loss": 0.05}), rises({"train_loss": 0.2})
    (False, True)
    """

    level: float
    key: str = "train_loss"

    def __call__(self, metrics: Metrics) -> bool:
        return _metric(metrics, self.key) > self.level


def _metric(metrics: Metrics, key: str) -> float:
    if key not in metrics:
        raise KeyError(f"the metrics have no {key!r}; they hold {sorted(metrics)}")
    return metrics[key]


# -- results --------------------------------------------------------------------------------


@dataclass
class Reading:
    """One reading of the transition.

    Attributes
    ----------
    value
        The p read (fraction removed); None when the curve has no such point,
        with the reason in ``reason``.
    bracket
        The evaluated p on either side of the reading: for a crossing (last point
        not across the level, first point across it); for ``above_dense`` (the
        rule's p, the next grid point); for the width, the widths the brackets
        of its two ends allow.
    interval
        For a collapse reading, the crossings of the lower and of the upper ends of
        the binomial intervals on the accuracies (earliest, latest); 0.0 when even
        the first point's interval reaches below the level, 1.0 when even a(1)'s
        reaches above it. For ``above_dense``, (the largest grid p whose accuracy is
        certainly above dense, the largest whose accuracy could be), an end None
        when no grid p qualifies. None without sample counts, and for the loss.
    level
        The level crossed: an accuracy, or the train loss sqrt(L(0) L(1)).
    reason
        Why ``value`` is None, or a caveat.

    Example
    -------
    >>> from dataclasses import asdict
    >>> reading = Reading(0.75, bracket=(0.7, 0.8), level=0.5)
    >>> Reading.from_dict(asdict(reading)) == reading   # brackets come back as tuples
    True
    """

    value: float | None
    bracket: tuple | None = None
    interval: tuple | None = None
    level: float | None = None
    reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Reading:
        data = dict(data)
        for key in ("bracket", "interval"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def _reading_value(name: str) -> property:
    """A read-only attribute: :meth:`Transition.limit` of the reading ``name``."""
    return property(lambda transition: transition.limit(name), doc=f"The value of {name!r}.")


@dataclass
class Transition:
    """The transition of a pruning sweep's curves (see the module docstring).

    Attributes
    ----------
    readings
        Name -> :class:`Reading`, for every name in :data:`READINGS`.
    dense_accuracy, pruned_accuracy
        a(0) and a(1) (None without an accuracy metric).
    dense_loss, pruned_loss
        L(0) and L(1) (None without a loss metric).
    reference_grid
        g, the step of the ``above_dense`` grid (None: not read).
    n
        Test samples behind each accuracy (None: no intervals).
    confidence, interval_method
        Of the binomial intervals.
    accuracy_key, loss_key
        The metrics read.
    notes
        Anything a reader of the numbers should know.

    Example
    -------
    Accuracy 0.9 -> 0.1 and train loss 0.01 -> 1 (see :func:`read_transition`):

    >>> from pruning_limit.pruning import SweepPoint
    >>> curve = {0.0: (0.9, 0.01), 0.5: (0.9, 0.02), 0.7: (0.7, 0.05), 0.8: (0.3, 0.2),
    ...          1.0: (0.1, 1.0)}   # p: (test accuracy, train loss)
    >>> points = [SweepPoint(p, round(p * 1000), 1000, {"test_accuracy": a, "train_loss": loss})
    ...           for p, (a, loss) in curve.items()]
    >>> transition = read_transition(points, reference_grid=None)
    >>> transition.collapse, round(transition.collapse_width, 6), transition.loss_collapse
    (0.75, 0.34, 0.75)
    >>> print(transition.above_dense, transition.reading("above_dense").reason)
    None not read (reference_grid is None)
    >>> Transition.from_dict(transition.to_dict()) == transition
    True
    """

    readings: dict
    dense_accuracy: float | None
    pruned_accuracy: float | None
    dense_loss: float | None
    pruned_loss: float | None
    reference_grid: float | None
    n: int | None
    confidence: float = 0.95
    interval_method: str = "wilson"
    accuracy_key: str = "test_accuracy"
    loss_key: str = "train_loss"
    notes: list = field(default_factory=list)

    def reading(self, name: str) -> Reading:
        if name not in self.readings:
            raise KeyError(f"no reading {name!r}; readings: {list(READINGS)}")
        return self.readings[name]

    def limit(self, name: str) -> float | None:
        """The value of the reading ``name``."""
        return self.reading(name).value

    def interval(self, name: str) -> tuple | None:
        return self.reading(name).interval

    def bracket(self, name: str) -> tuple | None:
        return self.reading(name).bracket

    collapse = _reading_value("collapse")
    collapse_width = _reading_value("collapse_width")
    above_dense = _reading_value("above_dense")
    loss_collapse = _reading_value("loss_collapse")

    def to_dict(self) -> dict:
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> Transition:
        data = dict(data)
        data["readings"] = {name: Reading.from_dict(r) for name, r in data["readings"].items()}
        return cls(**data)

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={_fmt(self.limit(name))}" for name in READINGS)
        return f"Transition({parts})"


def _fmt(value) -> str:
    return "None" if value is None else f"{value:.4f}"


# -- reading the curves ---------------------------------------------------------------------


def transition_criteria(
    points: Sequence[SweepPoint],
    *,
    n: int | None = None,
    confidence: float = 0.95,
    interval_method: str = "wilson",
    accuracy_key: str = "test_accuracy",
    loss_key: str = "train_loss",
) -> list[BreakCriterion]:
    """The break criteria whose bisection by :func:`~pruning_limit.pruning.sweep` refines
    every crossing of :func:`read_transition`.

    For each f in 0.1, 0.5, 0.9: ``FallsBelow(a(0) - f (a(0) - a(1)))`` and, with
    ``n``, its two :class:`FallsBelowBound` sides; and ``RisesAbove(sqrt(L(0) L(1)))``
    on the train loss. Curves that do not fall (a(1) >= a(0)) or rise contribute
    none.

    Parameters
    ----------
    points
        Evaluated points that include p = 0 (nothing removed) and p = 1 (everything
        removed), e.g. ``sweep(..., amounts=[0.0, 1.0])``.
    n
        Test samples behind each accuracy (``n_test`` of
        :func:`~pruning_limit.pruning.classification_metrics`); default: the
        dense point's ``n_test`` if it has one, else no interval criteria.
    confidence, interval_method
        Of the binomial intervals.
    accuracy_key, loss_key
        The metrics read.

    Returns
    -------
    list
        Criteria ``metrics -> bool``, to pass as ``is_broken``.

    Example
    -------
    Accuracy 0.9 -> 0.1 (levels 0.82, 0.5, 0.18) and train loss 0.01 -> 1 (level 0.1):

    >>> from pruning_limit.pruning import SweepPoint
    >>> curve = {0.0: (0.9, 0.01), 0.5: (0.9, 0.02), 0.7: (0.7, 0.05), 0.8: (0.3, 0.2),
    ...          1.0: (0.1, 1.0)}   # p: (test accuracy, train loss)
    >>> points = [SweepPoint(p, round(p * 1000), 1000, {"test_accuracy": a, "train_loss": loss})
    ...           for p, (a, loss) in curve.items()]
    >>> [(type(c).__name__, round(c.level, 6)) for c in transition_criteria(points)]
    [('FallsBelow', 0.82), ('FallsBelow', 0.5), ('FallsBelow', 0.18), ('RisesAbove', 0.1)]
    >>> len(transition_criteria(points, n=1000))   # and both interval ends of each level
    10
    """
    ends = _Ends(points, accuracy_key, loss_key, n)
    criteria: list[BreakCriterion] = []
    if ends.accuracy_falls:
        for fraction in COLLAPSE_FRACTIONS.values():
            below = FallsBelow(ends.accuracy_level(fraction), accuracy_key)
            criteria.append(below)
            if ends.n is not None:
                criteria += [
                    FallsBelowBound(below, ends.n, side, confidence, interval_method)
                    for side in ("earliest", "latest")
                ]
    if ends.loss_rises:
        criteria.append(RisesAbove(ends.loss_level, loss_key))
    return criteria


def reference_amounts(reference_grid: float = DEFAULT_REFERENCE_GRID) -> list[float]:
    """The reference code's grid of p: i / E for i = 0, ..., E - 1, E = 1 / ``reference_grid``.

    p = 1 is not on it, as in the reference code. ``1 / reference_grid`` must be a
    whole number.

    >>> reference_amounts(0.25)
    [0.0, 0.25, 0.5, 0.75]
    """
    if not (isinstance(reference_grid, numbers.Real) and 0 < reference_grid < 1):
        raise ValueError(f"reference_grid must be a number in (0, 1), got {reference_grid!r}")
    steps = round(1 / reference_grid)
    if abs(steps * reference_grid - 1) > 1e-9:
        raise ValueError(
            f"reference_grid must divide 1 into a whole number of steps, got {reference_grid}"
        )
    return [i / steps for i in range(steps)]


def read_transition(
    points: Sequence[SweepPoint],
    *,
    reference_grid: float | None = DEFAULT_REFERENCE_GRID,
    n: int | None = None,
    confidence: float = 0.95,
    interval_method: str = "wilson",
    accuracy_key: str = "test_accuracy",
    loss_key: str = "train_loss",
) -> Transition:
    """Read the transition (collapse, width, above-dense rule, loss collapse) from a sweep.

    Definitions in words and formulas: the module docstring. Readings come from
    the evaluated points only: a crossing is located to within its bracket, so
    refine the sweep with :func:`transition_criteria` (or use
    :func:`measure_transition`) to locate it to the sweep's resolution.

    Parameters
    ----------
    points
        A sweep that includes p = 0 and p = 1. Points flagged unconverged
        (:func:`~pruning_limit.pruning.is_measurement`) are left out.
    reference_grid
        g of the ``above_dense`` rule; every grid p from the top down to the
        rule's answer must have been evaluated (a point removing the same count of
        weights counts; :func:`~pruning_limit.pruning.sweep_down` does it). None:
        the rule is not read.
    n
        Test samples behind each accuracy; default: the dense point's ``n_test``
        if present. None there: no intervals.
    confidence, interval_method
        Of the binomial intervals.
    accuracy_key, loss_key
        The metrics read. Each curve is read from the points that carry its
        metric; a curve absent from the ends p = 0 and p = 1 gives readings None,
        with the reason.

    Returns
    -------
    Transition

    Raises
    ------
    ValueError
        If p = 0 or p = 1 was not evaluated, or the reference grid was not
        evaluated far enough down to decide the rule.

    Example
    -------
    The accuracy falls from 0.9 to 0.1: half-way (0.5) is crossed between 0.7 (0.7)
    and 0.8 (0.3), a tenth of the way (0.82) at 0.5 + 0.2 * 0.08 / 0.2 = 0.58, nine
    tenths (0.18) at 0.92. The loss reaches sqrt(0.01 * 1) = 0.1 half-way, in log L,
    between 0.05 at 0.7 and 0.2 at 0.8.

    >>> from pruning_limit.pruning import SweepPoint
    >>> curve = {0.0: (0.9, 0.01), 0.5: (0.9, 0.02), 0.7: (0.7, 0.05), 0.8: (0.3, 0.2),
    ...          1.0: (0.1, 1.0)}   # p: (test accuracy, train loss)
    >>> points = [SweepPoint(p, round(p * 1000), 1000, {"test_accuracy": a, "train_loss": loss})
    ...           for p, (a, loss) in curve.items()]
    >>> t = read_transition(points, reference_grid=None)
    >>> [round(t.limit(name), 6) for name in ("collapse_start", "collapse", "collapse_end")]
    [0.58, 0.75, 0.92]
    >>> round(t.loss_collapse, 6), t.bracket("loss_collapse")
    (0.75, (0.7, 0.8))
    """
    # A point whose evaluation did not converge (a re-fit whose solver stopped short)
    # is no measurement: it is read neither at the ends nor at a crossing.
    points = [point for point in points if is_measurement(point)]
    ends = _Ends(points, accuracy_key, loss_key, n)
    if interval_method not in INTERVAL_METHODS:
        raise ValueError(
            f"interval_method must be one of {sorted(INTERVAL_METHODS)}, got {interval_method!r}"
        )
    ordered = sorted(points, key=lambda point: point.amount)
    # Each curve from the points that measured it (a scan of the reference grid may
    # have measured the test accuracy alone).
    accuracy_points = [point for point in ordered if accuracy_key in point.metrics]
    loss_points = [point for point in ordered if loss_key in point.metrics]
    readings: dict[str, Reading] = {}
    notes: list[str] = []

    if ends.accuracy_falls:
        for name, fraction in COLLAPSE_FRACTIONS.items():
            below = FallsBelow(ends.accuracy_level(fraction), accuracy_key)
            interval = None
            if ends.n is not None:
                interval = tuple(
                    _crossing(accuracy_points, bound, bound.end, below.level, 0.0, 1.0)[0]
                    for bound in (
                        FallsBelowBound(below, ends.n, side, confidence, interval_method)
                        for side in ("earliest", "latest")
                    )
                )
            value, bracket = _crossing(
                accuracy_points, below, lambda m: _metric(m, accuracy_key), below.level
            )
            readings[name] = Reading(value, bracket, interval, below.level)
        readings["collapse_width"] = _width(readings["collapse_start"], readings["collapse_end"])
    else:
        reason = ends.no_accuracy_fall
        for name in (*COLLAPSE_FRACTIONS, "collapse_width"):
            readings[name] = Reading(None, reason=reason)

    if reference_grid is None:
        readings["above_dense"] = Reading(None, reason="not read (reference_grid is None)")
    elif ends.dense_accuracy is None:
        readings["above_dense"] = Reading(None, reason=f"no {accuracy_key!r} in the metrics")
    else:
        readings["above_dense"] = _above_dense(
            accuracy_points, ends, reference_grid, confidence, interval_method, notes
        )

    if ends.loss_rises:
        rises = RisesAbove(ends.loss_level, loss_key)
        # -log L falls through -log(level) where L rises through level.
        value, bracket = _crossing(
            loss_points, rises, lambda m: -_log(_metric(m, loss_key)), -math.log(ends.loss_level)
        )
        readings["loss_collapse"] = Reading(value, bracket, None, ends.loss_level)
    else:
        readings["loss_collapse"] = Reading(None, reason=ends.no_loss_rise)

    return Transition(
        readings=readings,
        dense_accuracy=ends.dense_accuracy,
        pruned_accuracy=ends.pruned_accuracy,
        dense_loss=ends.dense_loss,
        pruned_loss=ends.pruned_loss,
        reference_grid=None if reference_grid is None else float(reference_grid),
        n=ends.n,
        confidence=confidence,
        interval_method=interval_method,
        accuracy_key=accuracy_key,
        loss_key=loss_key,
        notes=notes,
    )


def measure_transition(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], Metrics],
    *,
    is_broken: BreakCriterion | Sequence[BreakCriterion] = (),
    amounts: Iterable[float] | None = None,
    resolution: float = 0.005,
    reference_grid: float | None = DEFAULT_REFERENCE_GRID,
    n: int | None = None,
    confidence: float = 0.95,
    interval_method: str = "wilson",
    accuracy_key: str = "test_accuracy",
    loss_key: str = "train_loss",
    certify_above_dense: bool = True,
    refine: str = "all",
    reference_evaluate_fn: Callable[[nn.Module], Metrics] | None = None,
    params: Iterable | None = None,
    progress: bool = True,
) -> tuple[list[SweepPoint], Transition]:
    """Sweep a network and read its transition, every crossing refined to ``resolution``.

    1. Evaluate p = 0 and p = 1 (the ends the levels are defined by).
    2. :func:`~pruning_limit.pruning.sweep` over ``amounts`` with the caller's
       ``is_broken`` criteria and :func:`transition_criteria`, so that every
       crossing and its interval ends are bisected to ``resolution``.
    3. With ``reference_grid``: :func:`~pruning_limit.pruning.sweep_down` over the
       reference grid from p = 1 - g down, until the first accuracy above dense
       or, with sample counts and ``certify_above_dense``, until the first
       certainly above dense (lo(a) > a(0), the interval's lower end; on a small
       test set that is often never, and then the whole grid is evaluated). Each
       count of weights removed is evaluated once across all three steps, so the
       grid costs at most min(1/g, D + 1) evaluations, and fewer the higher the
       rule's answer.
    4. :func:`read_transition`.

    Parameters
    ----------
    model, evaluate_fn, amounts, resolution, params, progress
        As in :func:`~pruning_limit.pruning.sweep` (``amounts`` default:
        :data:`~pruning_limit.pruning.DEFAULT_AMOUNTS`; 0 and 1 are always added).
    is_broken
        Further criteria to refine in the same sweep (e.g. the onset criteria
        ``AccuracyDrop``, ``LossBudget``).
    reference_grid, n, confidence, interval_method, accuracy_key, loss_key
        As in :func:`read_transition`.
    refine
        ``"all"``: bisect every crossing of :func:`transition_criteria` (the three
        collapse levels, the ends of their intervals, the loss level);
        ``"centres"``: only the collapse centre and the loss level, for evaluations
        that cost a re-fit or a fine-tune each. The other readings are then read
        from the points evaluated anyway (the grid and the bisections), to within
        their brackets.
    certify_above_dense
        Scan the reference grid down to the lower end of the ``above_dense``
        interval (see step 3); False: stop at the rule's answer, and that end is
        left undetermined (None, with a note).
    reference_evaluate_fn
        The ``evaluate_fn`` of the reference-grid scan, e.g. one that measures the
        test accuracy (and ``n_test``) alone, to spare the train-set evaluations
        the rule does not read; default ``evaluate_fn``. Its points then carry
        only its metrics, and each curve is read from the points that measured it.

    Returns
    -------
    (points, transition)
        Every evaluated point, sorted by p, and the readings.

    Example
    -------
    The weights 1, -2, 3, -4, read through the mass sum |w| that stays (10, 9, 7, 4,
    0 at p = 0, 1/4, ..., 1): half of it, 5, is lost between p = 1/2 and 3/4, at
    1/2 + (7 - 5) / (7 - 4) / 4.

    >>> from pruning_limit.models import least_squares
    >>> model, _ = least_squares()
    >>> def kept_mass(model):
    ...     return {"kept_mass": model.weight.abs().sum().item()}
    >>> points, transition = measure_transition(
    ...     model, kept_mass, amounts=[0.25, 0.5, 0.75], accuracy_key="kept_mass",
    ...     reference_grid=None, progress=False)
    >>> [(point.amount, point.metrics["kept_mass"]) for point in points]
    [(0.0, 10.0), (0.25, 9.0), (0.5, 7.0), (0.75, 4.0), (1.0, 0.0)]
    >>> round(transition.collapse, 6), transition.reading("loss_collapse").reason
    (0.666667, "no 'train_loss' in the metrics")
    """
    extra = [is_broken] if callable(is_broken) else list(is_broken)
    options = dict(params=params, progress=progress)
    points = sweep(model, evaluate_fn, is_broken=_never, amounts=[0.0, 1.0], **options)
    keys = dict(accuracy_key=accuracy_key, loss_key=loss_key)
    readers = dict(n=n, confidence=confidence, interval_method=interval_method, **keys)
    if refine not in ("all", "centres"):
        raise ValueError(f"refine must be 'all' or 'centres', got {refine!r}")
    transition = transition_criteria(points, **readers)
    if refine == "centres":
        ends = _Ends(points, accuracy_key, loss_key, n)
        half = COLLAPSE_FRACTIONS["collapse"]
        centre = ends.accuracy_level(half) if ends.accuracy_falls else None
        transition = [
            c
            for c in transition
            if isinstance(c, RisesAbove) or (isinstance(c, FallsBelow) and c.level == centre)
        ]
    criteria = [*extra, *transition] or [_never]
    grid = {0.0, 1.0, *(DEFAULT_AMOUNTS if amounts is None else amounts)}
    points = sweep(
        model,
        evaluate_fn,
        is_broken=criteria,
        amounts=grid,
        resolution=resolution,
        known=points,
        **options,
    )
    ends = _Ends(points, accuracy_key, loss_key, n)
    if reference_grid is not None and ends.dense_accuracy is not None:
        a0 = ends.dense_accuracy
        if ends.n is None or not certify_above_dense:

            def until(metrics):
                return _metric(metrics, accuracy_key) - a0 > _SLACK
        else:

            def until(metrics):
                low, _ = accuracy_interval(
                    _metric(metrics, accuracy_key), ends.n, confidence, interval_method
                )
                return low - a0 > _SLACK

        points = sweep_down(
            model,
            evaluate_fn if reference_evaluate_fn is None else reference_evaluate_fn,
            amounts=reference_amounts(reference_grid),
            until=until,
            known=points,
            **options,
        )
    return points, read_transition(points, reference_grid=reference_grid, **readers)


def _never(metrics: Metrics) -> bool:
    return False


class _Ends:
    """a(0), a(1), L(0), L(1) from a sweep, and the levels between them."""

    def __init__(self, points, accuracy_key, loss_key, n) -> None:
        if not points:
            raise ValueError("points is empty: run sweep first")
        dense = [p for p in points if p.removed == 0]
        pruned = [p for p in points if p.removed == p.dimension]
        if not dense or not pruned:
            missing = " and ".join(
                what for what, found in (("p = 0", dense), ("p = 1", pruned)) if not found
            )
            raise ValueError(
                f"the sweep has no point at {missing}: the transition is read between the "
                "dense network and the one with every prunable weight removed, both "
                "measured (include 0.0 and 1.0 in the amounts)"
            )
        dense, pruned = dense[0].metrics, pruned[0].metrics
        self.accuracy_key = accuracy_key
        self.dense_accuracy = dense.get(accuracy_key)
        self.pruned_accuracy = pruned.get(accuracy_key)
        self.dense_loss = dense.get(loss_key)
        self.pruned_loss = pruned.get(loss_key)
        self.n = n if n is not None else dense.get("n_test")
        if self.n is not None and self.dense_accuracy is not None:
            accuracy_interval(self.dense_accuracy, self.n)  # n fits the accuracies

        self.accuracy_falls = False
        if self.dense_accuracy is None or self.pruned_accuracy is None:
            self.no_accuracy_fall = f"no {accuracy_key!r} in the metrics"
        elif self.pruned_accuracy >= self.dense_accuracy:
            self.no_accuracy_fall = (
                f"no collapse: the accuracy with every weight removed, a(1) = "
                f"{self.pruned_accuracy:.4g}, is not below the dense a(0) = "
                f"{self.dense_accuracy:.4g}"
            )
        else:
            self.accuracy_falls = True

        self.loss_rises = False
        if self.dense_loss is None or self.pruned_loss is None:
            self.no_loss_rise = f"no {loss_key!r} in the metrics"
        elif not self.dense_loss > 0:
            self.no_loss_rise = (
                f"the dense train loss L(0) = {self.dense_loss:.4g} is not positive: no log scale"
            )
        elif self.pruned_loss <= self.dense_loss:
            self.no_loss_rise = (
                f"no rise: the train loss with every weight removed, L(1) = "
                f"{self.pruned_loss:.4g}, is not above the dense L(0) = {self.dense_loss:.4g}"
            )
        else:
            self.loss_rises = True
            self.loss_level = math.sqrt(self.dense_loss * self.pruned_loss)

    def accuracy_level(self, fraction: float) -> float:
        return self.dense_accuracy - fraction * (self.dense_accuracy - self.pruned_accuracy)


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


def _crossing(
    ordered: Sequence[SweepPoint],
    crossed: Callable[[Metrics], bool],
    value_of: Callable[[Metrics], float],
    level: float,
    before_first: float | None = None,
    after_last: float | None = None,
) -> tuple[float | None, tuple | None]:
    """(interpolated p, bracket) of the first point where ``crossed`` holds.

    ``value_of`` falls through ``level`` there. When the first point evaluated is
    already across: (``before_first``, None). When no point is: (``after_last``, None).
    """
    index = next((i for i, point in enumerate(ordered) if crossed(point.metrics)), None)
    if index is None:
        return after_last, None
    if index == 0:
        return before_first, None
    previous, point = ordered[index - 1], ordered[index]
    high, low = value_of(previous.metrics), value_of(point.metrics)
    if high <= level or not math.isfinite(high):
        # On the level, or at -log 0 = +inf (a vertical segment): the crossing is at
        # the end of the segment where the value sits.
        value = previous.amount if high <= level else point.amount
    else:
        value = previous.amount + (high - level) / (high - low) * (point.amount - previous.amount)
    return value, (previous.amount, point.amount)


def _width(start: Reading, end: Reading) -> Reading:
    value = end.value - start.value
    bracket = (max(0.0, end.bracket[0] - start.bracket[1]), end.bracket[1] - start.bracket[0])
    interval = None
    if start.interval is not None and end.interval is not None:
        earliest, latest = end.interval[0] - start.interval[1], end.interval[1] - start.interval[0]
        interval = (max(0.0, earliest), latest)
    return Reading(value, bracket, interval, None, None)


def _above_dense(ordered, ends, reference_grid, confidence, interval_method, notes) -> Reading:
    """The largest grid p with a(p) > a(0); interval: the same with lo(a), hi(a) for a(p)."""
    a0 = ends.dense_accuracy
    dimension = ordered[0].dimension
    by_count = {point.removed: point.metrics for point in ordered}
    rule = certain = possible = missing = None
    for amount in reversed(reference_amounts(reference_grid)):
        count = number_to_prune(amount, dimension)
        if count not in by_count:
            missing = amount
            break
        accuracy = _metric(by_count[count], ends.accuracy_key)
        if rule is None and accuracy - a0 > _SLACK:
            rule = amount
        if ends.n is None:
            if rule is not None:
                break
            continue
        low, high = accuracy_interval(accuracy, ends.n, confidence, interval_method)
        if possible is None and high - a0 > _SLACK:
            possible = amount
        if low - a0 > _SLACK:
            certain = amount
            break
    if missing is not None and rule is None:
        raise ValueError(
            f"the reference grid (step {reference_grid}) was not evaluated at p = {missing}, "
            "above any grid p whose accuracy is above dense: evaluate the grid from the top "
            "down (pruning.sweep_down) before reading the rule"
        )
    interval = None
    if ends.n is not None:
        if missing is not None and certain is None:
            notes.append(
                f"above_dense: the grid was evaluated down to p = {missing + reference_grid:.6g} "
                "only, and no grid p there is certainly above dense: the interval's lower end "
                "is undetermined (None)"
            )
        interval = (certain, possible)
    if rule is None:
        return Reading(
            None,
            None,
            interval,
            a0,
            reason="no p on the reference grid has test accuracy strictly above the dense one",
        )
    return Reading(rule, (rule, rule + reference_grid), interval, a0)
