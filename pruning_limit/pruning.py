"""Global one-shot magnitude pruning, pruning sweeps and the actual pruning limit.

Let w in R^D be the prunable weights (by default every Linear/Conv ``weight``, see
:func:`~pruning_limit.parameters.resolve_parameters`) concatenated in that order.
Removing the fraction p (``amount``, as in ``torch.nn.utils.prune``) means

    k = round(p * D)                      (Python's round: halves go to the even integer)
    P = indices of the k smallest |w_j|   (the pruned set; K, its complement, is kept)
    w_j <- 0 for j in P,

with P chosen by ``torch.topk(|w|, k, largest=False)`` on the concatenated vector,
exactly as ``torch.nn.utils.prune.global_unstructured(parameters,
pruning_method=prune.L1Unstructured, amount=p)`` chooses it, so that ties between
equal magnitudes are broken identically.

A sweep evaluates metrics m(p) (test accuracy, test loss, train loss, ...) of the
pruned network on a coarse grid of p, then bisects between the last unbroken and
the first broken p. The actual limit is

    p_limit = max { p evaluated : no evaluated p' <= p is broken },

the largest amount before the first break. With the accuracy criterion, broken
means acc(p) < acc(0) - tolerance; with the loss-budget criterion (the quantity
the theory speaks of), L_train(p) > L_train(0) + eps. A sweep can continue an
earlier one (``known``), and :func:`sweep_down` evaluates a grid from the top
down for rules that ask for the largest p with a property. The readings of the
collapse (centre, width, the reference code's rule) are in
:mod:`pruning_limit.transition`.

Pruning happens in place inside the :func:`pruned` context, which saves only the
values it overwrites and writes them back on exit, so the model's state is
bit-identical after any sweep.

Example
-------
>>> import torch
>>> from pruning_limit.pruning import kept_mask, pruned
>>> model = torch.nn.Linear(4, 1, bias=False)
>>> with torch.no_grad():
...     _ = model.weight.copy_(torch.tensor([[0.3, -0.1, 2.0, -0.5]]))
>>> kept_mask(model, 0.5)["weight"]
tensor([[False, False,  True,  True]])
>>> with pruned(model, 0.5):
...     model.weight
Parameter containing:
tensor([[ 0.0000,  0.0000,  2.0000, -0.5000]], requires_grad=True)
>>> model.weight
Parameter containing:
tensor([[ 0.3000, -0.1000,  2.0000, -0.5000]], requires_grad=True)
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_mean_reduction
from .batches import tensor_pair
from .metrics import metrics_function
from .parameters import eval_mode, resolve_parameters

Mask = dict[str, torch.Tensor]
Metrics = Mapping[str, float]
BreakCriterion = Callable[[Metrics], bool]

DEFAULT_AMOUNTS = tuple(round(0.05 * i, 2) for i in range(20)) + (0.99,)
# A metric an evaluation sets (to 1) when its result is no measurement of the limit, such
# as a re-fit whose solver did not converge: the point is kept and reported, not read.
UNCONVERGED = "unconverged"
INTERVAL_METHODS = {"wilson": "wilson", "clopper-pearson": "exact"}
# Accuracies are ratios of counts; a drop exactly equal to the tolerance must not
# read as larger because of rounding in the subtraction.
_COMPARISON_SLACK = 1e-12


# -- the mask -----------------------------------------------------------------------------


def number_to_prune(amount: float, dimension: int) -> int:
    """k = round(amount * D), the number of weights that ``amount`` removes out of D.

    Python's ``round`` (half to even) on ``amount * D``, as ``torch.nn.utils.prune``
    computes it: ``number_to_prune(0.5, 5) == 2``.

    ``amount`` is the fraction removed, in [0, 1]. torch also accepts an integer
    ``amount`` as a count of weights; here an integer other than 0 is refused,
    because ``amount=1`` would silently mean "one weight" rather than "all".

    Raises
    ------
    TypeError
        If ``amount`` is not a real number.
    ValueError
        If ``amount`` is outside [0, 1] (or NaN), or a non-zero integer.

    Example
    -------
    >>> number_to_prune(0.5, 5), number_to_prune(0.3, 10), number_to_prune(1.0, 10)
    (2, 3, 10)
    >>> number_to_prune(1, 10)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: amount must be a float fraction in [0, 1], got the integer 1, which ...
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a float in [0, 1], got {type(amount).__name__}")
    if isinstance(amount, numbers.Integral) and amount != 0:
        raise ValueError(
            f"amount must be a float fraction in [0, 1], got the integer {amount}, which "
            "torch.nn.utils.prune would read as a count of weights; pass e.g. 1.0 to "
            "remove everything or k / D to remove k weights"
        )
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount}")
    return int(round(amount * dimension))


def removed_indices(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the ``count`` smallest ``magnitudes``: the one magnitude order.

    ``torch.topk(largest=False)``, the call ``torch.nn.utils.prune.L1Unstructured`` makes on
    the same vector, so that equal magnitudes are broken as torch breaks them. Every
    removed set in the package comes from here: the validated masks (:func:`kept_mask`),
    the predicted supports (:func:`removed_mask`, the quadratic model) and R(p)'s
    removed vector. Under ties the sets for different counts need not be nested, so ask
    for each count rather than cutting one sorted order.

    >>> removed_indices(torch.tensor([0.3, 0.1, 0.2]), 2).sort().values.tolist()
    [1, 2]
    """
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=magnitudes.device)
    return torch.topk(magnitudes, k=count, largest=False).indices


def removed_mask(weights, removal_fraction: float) -> np.ndarray:
    """Flat boolean mask, True on the ``round(p D)`` weights magnitude pruning *removes*.

    ``weights`` is w*, flat (numpy or torch); ``removal_fraction`` p is ``amount`` in
    ``torch.nn.utils.prune``. The same weights as :func:`kept_mask` leaves out.

    >>> removed_mask([3.0, -1.0, 2.0, 0.5, -4.0], 0.4).tolist()
    [False, True, False, True, False]
    """
    p = float(removal_fraction)
    if not 0.0 <= p <= 1.0:  # also NaN
        raise ValueError(f"removal_fraction must lie in [0, 1], got {removal_fraction}")
    magnitudes = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(-1)).abs()
    mask = np.zeros(magnitudes.numel(), dtype=bool)
    count = number_to_prune(p, magnitudes.numel())
    mask[removed_indices(magnitudes, count).numpy()] = True
    return mask


def kept_mask(model: nn.Module, amount: float, params: Iterable | None = None) -> Mask:
    """The keep-mask of global magnitude pruning that removes the fraction ``amount``.

    Parameters
    ----------
    model
        The network; it is not modified.
    amount
        p, the fraction of the selected weights to remove, in [0, 1].
    params
        The tensors pruned jointly, as in :func:`~pruning_limit.parameters.resolve_parameters`;
        default: every Linear/Conv ``weight``.

    Returns
    -------
    dict
        Qualified parameter name -> boolean tensor of the parameter's shape and
        device, True where the weight is *kept*. Exactly ``round(p * D)`` entries are
        False, and they are the entries ``torch.nn.utils.prune.global_unstructured``
        with ``L1Unstructured`` prunes (same tie-breaking: :func:`removed_indices`).
        The masks can be handed to ``torch.nn.utils.prune.custom_from_mask``.

    Example
    -------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> mask = kept_mask(model, 0.5)
    >>> sorted(mask), sum(int((~m).sum()) for m in mask.values())
    (['0.weight', '1.weight'], 3)
    """
    selected = resolve_parameters(model, params)
    with torch.no_grad():
        magnitudes = torch.cat([p.detach().reshape(-1) for _, p in selected]).abs()
    count = number_to_prune(amount, magnitudes.numel())
    keep = torch.ones(magnitudes.shape, dtype=torch.bool, device=magnitudes.device)
    keep[removed_indices(magnitudes, count)] = False
    masks = {}
    for (name, parameter), piece in zip(
        selected, torch.split(keep, [p.numel() for _, p in selected])
    ):
        masks[name] = piece.reshape(parameter.shape).to(parameter.device)
    return masks


def _resolve_mask(model: nn.Module, mask: Mapping) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Check a name -> keep-mask mapping against ``model``; pair each mask with its tensor."""
    named = dict(model.named_parameters())
    resolved = []
    for name, keep in mask.items():
        if name not in named:
            raise ValueError(
                f"mask names {name!r}, which is not a parameter of {type(model).__name__}"
            )
        parameter = named[name]
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
            received = keep.dtype if isinstance(keep, torch.Tensor) else type(keep).__name__
            raise TypeError(
                f"mask[{name!r}] must be a boolean tensor (True = kept), got {received}; "
                "convert a torch.nn.utils.prune mask with mask.bool()"
            )
        if keep.shape != parameter.shape:
            raise ValueError(
                f"mask[{name!r}] has shape {tuple(keep.shape)}, the parameter "
                f"{tuple(parameter.shape)}"
            )
        resolved.append((parameter, keep.to(parameter.device)))
    return resolved


@contextlib.contextmanager
def pruned(
    model: nn.Module, mask_or_amount: Mapping | float, params: Iterable | None = None
) -> Iterator[Mask]:
    """Zero the pruned weights of ``model`` in place; restore them exactly on exit.

    Inside the block w_j = 0 for every j outside the kept set K. Only the values it
    overwrites are saved (at most one copy of the selected weights, never of the
    model) and they are written back on exit, also when the block raises, so
    every parameter and buffer is bit-identical afterwards. Changes the block makes
    to kept weights are not undone.

    Parameters
    ----------
    model
        The network to prune.
    mask_or_amount
        Either p, the fraction to remove (pruned by :func:`kept_mask`), or a
        mapping from parameter name to a boolean keep-mask of that parameter's shape.
    params
        With an amount: the tensors pruned jointly (default: every Linear/Conv
        ``weight``). With a mask, the mask names the tensors and ``params`` must be
        None.

    Yields
    ------
    dict
        The keep-masks applied, by parameter name.

    Example
    -------
    >>> model = torch.nn.Linear(4, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
    >>> with pruned(model, {"weight": torch.tensor([[True, False, True, False]])}):
    ...     inside = model.weight.tolist()
    >>> inside, model.weight.tolist()   # restored exactly on exit
    ([[1.0, 0.0, 3.0, 0.0]], [[1.0, -2.0, 3.0, -4.0]])
    >>> with pruned(model, 0.75) as masks:   # the 3 smallest |w| go
    ...     masks["weight"].tolist()
    [[False, False, False, True]]
    """
    if isinstance(mask_or_amount, Mapping):
        if params is not None:
            raise ValueError("give params only with an amount: a mask already names its tensors")
        masks = dict(mask_or_amount)
    else:
        masks = kept_mask(model, mask_or_amount, params)
    targets = _resolve_mask(model, masks)
    overwritten = []
    try:
        with torch.no_grad():
            for parameter, keep in targets:
                removed = ~keep
                overwritten.append((parameter, removed, parameter[removed]))
                parameter.masked_fill_(removed, 0)
        yield masks
    finally:
        with torch.no_grad():
            for parameter, removed, values in reversed(overwritten):
                parameter[removed] = values


# -- the sweep ----------------------------------------------------------------------------


@dataclass
class SweepPoint:
    """Metrics of the network with the fraction ``amount`` of its weights removed.

    Attributes
    ----------
    amount
        p, the requested fraction removed.
    removed
        k = round(p * D), the number of weights set to zero.
    dimension
        D, the number of prunable weights.
    metrics
        What ``evaluate_fn`` returned for the pruned network.

    Example
    -------
    >>> point = SweepPoint(amount=0.3, removed=1, dimension=4, metrics={"test_accuracy": 0.9})
    >>> point.removal_fraction   # round(0.3 * 4) = 1 of 4 weights
    0.25
    """

    amount: float
    removed: int
    dimension: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def removal_fraction(self) -> float:
        """k / D, the fraction actually removed (``amount`` up to rounding)."""
        return self.removed / self.dimension


def _validated_amounts(amounts: Iterable[float]) -> list[float]:
    amounts = list(amounts)
    if not amounts:
        raise ValueError("amounts is empty: give at least one fraction in [0, 1]")
    for amount in amounts:
        number_to_prune(amount, 1)
    return sorted({float(amount) for amount in amounts})


def _validated_criteria(is_broken) -> list[BreakCriterion]:
    criteria = [is_broken] if callable(is_broken) else list(is_broken)
    if not criteria:
        raise ValueError("is_broken is empty: give at least one criterion")
    for criterion in criteria:
        if not callable(criterion):
            raise TypeError(
                "is_broken must be a callable metrics -> bool or a sequence of them, got "
                f"{type(criterion).__name__}"
            )
    return criteria


def _as_metrics(result, amount: float) -> dict[str, float]:
    if not isinstance(result, Mapping):
        raise TypeError(
            f"evaluate_fn must return a mapping of metric name -> number, got "
            f"{type(result).__name__} at amount {amount}"
        )
    metrics = {}
    for key, value in result.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, numbers.Integral):
            metrics[str(key)] = int(value)
        elif isinstance(value, numbers.Real):
            metrics[str(key)] = float(value)
        else:
            raise TypeError(
                f"evaluate_fn returned {type(value).__name__} for metric {key!r}; expected a number"
            )
    return metrics


class _Evaluations:
    """Metrics of the pruned network by count of weights removed: each count once.

    Seeded with points evaluated before (on the same model and ``evaluate_fn``), whose
    metrics are reused for their counts.
    """

    def __init__(self, model, evaluate_fn, params, known, bar) -> None:
        self.model, self.evaluate_fn, self.params, self.bar = model, evaluate_fn, params, bar
        self.dimension = sum(p.numel() for _, p in resolve_parameters(model, params))
        self.by_count: dict[int, dict[str, float]] = {}
        self.points: dict[float, SweepPoint] = {}
        for point in known:
            if not isinstance(point, SweepPoint):
                raise TypeError(f"known must hold SweepPoints, got {type(point).__name__}")
            if point.dimension != self.dimension:
                raise ValueError(
                    f"a known point was evaluated on D = {point.dimension} prunable weights, "
                    f"this model has D = {self.dimension}: it comes from another model or "
                    "another choice of params"
                )
            self.by_count.setdefault(point.removed, dict(point.metrics))
            self.points[point.amount] = point

    def at(self, amount: float) -> SweepPoint:
        if amount in self.points:
            self.bar.update()
            return self.points[amount]
        removed = number_to_prune(amount, self.dimension)
        if removed not in self.by_count:
            with pruned(self.model, amount, self.params), eval_mode(self.model):
                self.by_count[removed] = _as_metrics(self.evaluate_fn(self.model), amount)
        point = SweepPoint(amount, removed, self.dimension, dict(self.by_count[removed]))
        self.points[amount] = point
        self.bar.set_postfix(amount=f"{amount:.4f}")
        self.bar.update()
        return point

    def sorted(self) -> list[SweepPoint]:
        return sorted(self.points.values(), key=lambda point: point.amount)


def sweep(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], Metrics],
    *,
    is_broken: BreakCriterion | Sequence[BreakCriterion],
    amounts: Iterable[float] | None = None,
    resolution: float = 0.005,
    params: Iterable | None = None,
    progress: bool = True,
    known: Sequence[SweepPoint] = (),
) -> list[SweepPoint]:
    """Evaluate the magnitude-pruned network on a grid of amounts, refined at the break.

    Every grid amount p is evaluated (``evaluate_fn(model)`` with the fraction p
    of weights removed, see :func:`pruned`). Then, for each criterion, the gap
    between the last unbroken amount and the first broken one is bisected until it
    is at most ``resolution`` wide, or until the two amounts remove counts of
    weights that differ by at most one (no amount between them prunes anything
    else). The break is then located to within that gap:
    ``limit_from_sweep(points, criterion)`` is its lower end.

    ``evaluate_fn`` runs with the model in eval mode (BatchNorm on its running
    statistics, dropout off), and each set of weights k is evaluated once: amounts
    that remove the same count reuse the metrics. The model is restored
    bit-identically afterwards.

    Parameters
    ----------
    model
        The trained network.
    evaluate_fn
        ``evaluate_fn(model) -> {metric name: number}``, e.g. from
        :func:`classification_metrics`.
    is_broken
        ``is_broken(metrics) -> bool``, e.g. :class:`AccuracyDrop` or
        :class:`LossBudget`, or a sequence of them to refine around each break.
    amounts
        The coarse grid of fractions removed; default :data:`DEFAULT_AMOUNTS`
        (0, 0.05, ..., 0.95, 0.99).
    resolution
        Width in amount below which bisection stops.
    params
        The tensors pruned jointly; default: every Linear/Conv ``weight``.
    progress
        Show a tqdm progress bar.
    known
        Points evaluated before on the same model, ``evaluate_fn`` and ``params``
        (e.g. an earlier sweep, to refine it for criteria that needed its results).
        They are part of the sweep, and their metrics are reused for every amount
        that removes the same count of weights.

    Returns
    -------
    list of SweepPoint
        Every evaluated amount and every known point, sorted by amount.

    Example
    -------
    The weights 1, -2, 3, -4 and, as the metric, the mass sum |w| that stays; the
    network counts as broken below 9:

    >>> from pruning_limit.models import least_squares
    >>> model, _ = least_squares()
    >>> def kept_mass(model):
    ...     return {"kept_mass": model.weight.abs().sum().item()}
    >>> def broken(metrics):
    ...     return metrics["kept_mass"] < 9
    >>> points = sweep(model, kept_mass, is_broken=broken, amounts=[0.0, 0.25, 0.5, 0.75],
    ...                progress=False)
    >>> [(point.removed, point.metrics["kept_mass"]) for point in points]
    [(0, 10.0), (1, 9.0), (2, 7.0), (3, 4.0)]
    >>> limit_from_sweep(points, broken)
    0.25
    """
    criteria = _validated_criteria(is_broken)
    grid = _validated_amounts(DEFAULT_AMOUNTS if amounts is None else amounts)
    if not (isinstance(resolution, numbers.Real) and 0 < resolution < 1):
        raise ValueError(f"resolution must be a number in (0, 1), got {resolution!r}")
    bar = tqdm(total=len(grid), desc="pruning sweep", unit="eval", disable=not progress)
    with bar:
        evaluations = _Evaluations(model, evaluate_fn, params, known, bar)
        for amount in grid:
            evaluations.at(amount)
        for criterion in criteria:
            while (gap := _break_gap(evaluations.sorted(), criterion)) is not None:
                last_unbroken, first_broken = gap
                if (
                    first_broken.amount - last_unbroken.amount <= resolution
                    or first_broken.removed - last_unbroken.removed <= 1
                ):
                    break
                bar.total += 1
                if not is_measurement(
                    evaluations.at(0.5 * (last_unbroken.amount + first_broken.amount))
                ):
                    break  # nothing measured in the middle: the gap stays as it is
    return evaluations.sorted()


def sweep_down(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], Metrics],
    *,
    amounts: Iterable[float],
    until: BreakCriterion,
    params: Iterable | None = None,
    progress: bool = True,
    known: Sequence[SweepPoint] = (),
) -> list[SweepPoint]:
    """Evaluate amounts from the largest down, stopping at the first that satisfies ``until``.

    For rules that ask for the *largest* p with a property (the reference code's
    "largest p whose accuracy is above the dense accuracy"): every amount above
    the answer must be evaluated to know it is the largest, and nothing below it
    is needed. With the amounts p_1 > p_2 > ..., it evaluates p_1, p_2, ... and
    stops after the first p_i with ``until(metrics(p_i))``, or at the end of the
    list. As in :func:`sweep`, each count of weights removed is evaluated once, in
    eval mode, with the model restored bit-identically afterwards.

    Parameters
    ----------
    model, evaluate_fn, params, progress, known
        As in :func:`sweep`.
    amounts
        The fractions removed, e.g. a uniform grid; any order.
    until
        ``until(metrics) -> bool``: the property whose largest amount is sought.

    Returns
    -------
    list of SweepPoint
        Every evaluated amount and every known point, sorted by amount.

    Example
    -------
    The largest p that keeps a mass sum |w| of at least 7 (weights 1, -2, 3, -4): 0.75
    keeps 4, 0.5 keeps 7, so nothing below 0.5 is evaluated.

    >>> from pruning_limit.models import least_squares
    >>> model, _ = least_squares()
    >>> def kept_mass(model):
    ...     return {"kept_mass": model.weight.abs().sum().item()}
    >>> points = sweep_down(model, kept_mass, amounts=[0.0, 0.25, 0.5, 0.75],
    ...                     until=lambda metrics: metrics["kept_mass"] >= 7, progress=False)
    >>> [(point.amount, point.metrics["kept_mass"]) for point in points]
    [(0.5, 7.0), (0.75, 4.0)]
    """
    if not callable(until):
        raise TypeError(f"until must be a callable metrics -> bool, got {type(until).__name__}")
    grid = _validated_amounts(amounts)
    bar = tqdm(total=len(grid), desc="pruning sweep, top down", unit="eval", disable=not progress)
    with bar:
        evaluations = _Evaluations(model, evaluate_fn, params, known, bar)
        for amount in reversed(grid):
            if until(evaluations.at(amount).metrics):
                break
    return evaluations.sorted()


def is_measurement(point: SweepPoint) -> bool:
    """False for a point whose evaluation flagged itself :data:`UNCONVERGED` (e.g. a re-fit
    whose solver stopped short): reported, but no evidence about the limit.

    >>> is_measurement(SweepPoint(0.5, 2, 4, {"train_loss": 0.1}))
    True
    >>> is_measurement(SweepPoint(0.5, 2, 4, {"train_loss": 0.1, UNCONVERGED: 1}))
    False
    """
    return not point.metrics.get(UNCONVERGED)


def _break_gap(
    points: Sequence[SweepPoint], is_broken: BreakCriterion
) -> tuple[SweepPoint, SweepPoint] | None:
    """(last unbroken point, first broken point) in order of amount among the
    measurements; None if no such pair."""
    ordered = sorted(filter(is_measurement, points), key=lambda point: point.amount)
    for index, point in enumerate(ordered):
        if is_broken(point.metrics):
            return (ordered[index - 1], point) if index > 0 else None
    return None


def limit_from_sweep(points: Sequence[SweepPoint], is_broken: BreakCriterion) -> float:
    """The largest amount evaluated before the first broken one.

    With the points sorted by amount, the amount of the point just before the first
    point for which ``is_broken(point.metrics)`` holds; if none is broken, the largest
    amount evaluated (then only a lower bound on the limit). Points flagged
    :data:`UNCONVERGED` are not measurements and are skipped.

    Raises
    ------
    ValueError
        If ``points`` is empty, or the smallest amount evaluated is already broken
        (nothing is known below it).

    Example
    -------
    >>> points = [SweepPoint(p, k, 4, {"test_accuracy": a})
    ...           for k, (p, a) in enumerate([(0.0, 0.9), (0.25, 0.88), (0.5, 0.8)])]
    >>> limit_from_sweep(points, AccuracyDrop(0.9, 0.05))   # 0.8 < 0.9 - 0.05
    0.25
    >>> limit_from_sweep(points, AccuracyDrop(0.9, 0.2))    # never broken: a lower bound
    0.5
    """
    if not points:
        raise ValueError("points is empty: run sweep first")
    ordered = sorted(filter(is_measurement, points), key=lambda point: point.amount)
    if not ordered:
        raise ValueError("no point is a measurement: every evaluation was unconverged")
    if is_broken(ordered[0].metrics):
        raise ValueError(
            f"the smallest amount evaluated ({ordered[0].amount}) is already broken: "
            "the criterion rejects it, so no limit can be read (include amount 0, and "
            "check the criterion against the dense network)"
        )
    gap = _break_gap(ordered, is_broken)
    return gap[0].amount if gap is not None else ordered[-1].amount


# -- break criteria and the uncertainty of an accuracy --------------------------------------


@dataclass(frozen=True)
class AccuracyDrop:
    """Broken when the accuracy falls more than ``tolerance`` below the dense accuracy.

    ``AccuracyDrop(a0, t)(metrics)`` is ``metrics[key] < a0 - t``: a pruned network
    whose accuracy is within t of the dense network's a0 is unbroken.

    >>> drop = AccuracyDrop(dense_accuracy=0.9, tolerance=0.05)
    >>> drop({"test_accuracy": 0.86}), drop({"test_accuracy": 0.84})
    (False, True)
    """

    dense_accuracy: float
    tolerance: float
    key: str = "test_accuracy"

    def __post_init__(self) -> None:
        if not 0.0 <= self.dense_accuracy <= 1.0:
            raise ValueError(f"dense_accuracy must be in [0, 1], got {self.dense_accuracy}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def __call__(self, metrics: Metrics) -> bool:
        return _metric(metrics, self.key) < self.dense_accuracy - self.tolerance - _COMPARISON_SLACK


@dataclass(frozen=True)
class LossBudget:
    """Broken when the loss exceeds the budget L(w*) + eps of the theory.

    ``LossBudget(L0, eps)(metrics)`` is ``metrics[key] > L0 + eps``, with L0 the
    dense network's mean training loss and eps the loss budget.

    >>> budget = LossBudget(dense_loss=0.1, eps=0.02)
    >>> budget({"train_loss": 0.115}), budget({"train_loss": 0.125})
    (False, True)
    """

    dense_loss: float
    eps: float
    key: str = "train_loss"

    def __post_init__(self) -> None:
        if not math.isfinite(self.dense_loss):
            raise ValueError(f"dense_loss must be finite, got {self.dense_loss}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    def __call__(self, metrics: Metrics) -> bool:
        return _metric(metrics, self.key) > self.dense_loss + self.eps


def _metric(metrics: Metrics, key: str) -> float:
    if key not in metrics:
        raise KeyError(f"the metrics have no {key!r}; they hold {sorted(metrics)}")
    return metrics[key]


def accuracy_interval(
    accuracy: float, n: int, confidence: float = 0.95, method: str = "wilson"
) -> tuple[float, float]:
    """Binomial confidence interval on an accuracy measured on n test samples.

    With c = accuracy * n correct answers out of n, the interval on the true
    accuracy at level ``confidence``: ``"wilson"`` (score interval,

        (c + z^2/2) / (n + z^2)  -+  z / (n + z^2) * sqrt(c (n - c) / n + z^2 / 4),

    z the normal quantile) or ``"clopper-pearson"`` (exact, from Beta quantiles),
    both by ``scipy.stats.binomtest(...).proportion_ci``.

    Raises
    ------
    ValueError
        If n < 1, ``accuracy * n`` is not a whole number of samples, ``confidence``
        is outside (0, 1) or ``method`` is unknown.

    Example
    -------
    >>> low, high = accuracy_interval(0.9, 100)
    >>> round(low, 4), round(high, 4)
    (0.8256, 0.9448)
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"method must be one of {sorted(INTERVAL_METHODS)}, got {method!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer number of samples, got {n!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    correct = round(accuracy * n)
    if abs(accuracy * n - correct) > 1e-6:
        raise ValueError(
            f"accuracy {accuracy} on n = {n} samples is not a whole number of correct "
            f"answers ({accuracy * n}); pass the n the accuracy was measured on"
        )
    interval = stats.binomtest(int(correct), int(n)).proportion_ci(
        confidence_level=confidence, method=INTERVAL_METHODS[method]
    )
    return float(interval.low), float(interval.high)


def interval_side(
    accuracy: float, n: int, side: str, confidence: float = 0.95, method: str = "wilson"
) -> float:
    """The end of :func:`accuracy_interval` that a criterion read on ``side`` compares.

    Side ``"earliest"`` takes lo(a), so the criterion breaks as soon as the accuracy
    could have fallen; side ``"latest"`` takes hi(a), so it breaks only when the
    accuracy must have fallen. Shared by :class:`AccuracyDropBound` and
    :class:`~pruning_limit.transition.FallsBelowBound`.

    Raises
    ------
    ValueError
        If ``side`` is neither "earliest" nor "latest", or as :func:`accuracy_interval`.

    Example
    -------
    >>> round(interval_side(0.88, 100, "earliest"), 3), round(interval_side(0.88, 100, "latest"), 3)
    (0.802, 0.93)
    """
    if side not in ("earliest", "latest"):
        raise ValueError(f"side must be 'earliest' or 'latest', got {side!r}")
    low, high = accuracy_interval(accuracy, n, confidence, method)
    return low if side == "earliest" else high


@dataclass(frozen=True)
class AccuracyDropBound:
    """The break decision of an :class:`AccuracyDrop` at one end of the accuracy intervals.

    With [lo(a), hi(a)] the binomial interval (:func:`accuracy_interval`) on an
    accuracy a measured on n samples, and a0, t the dense accuracy and tolerance:

        side "earliest":  broken iff lo(a) < a0 - t   (breaks as soon as it could)
        side "latest":    broken iff hi(a) < a0 - t   (breaks only when it must)

    so the limits read with the two criteria bracket every limit that the pruned
    accuracies, moved within their intervals, could give. The dense accuracy a0
    stays fixed: it is the reference the tolerance is defined against, and it comes
    from the same test samples as the pruned accuracies, so its sampling error is
    shared with theirs rather than independent of it.

    Example
    -------
    An accuracy of 0.88 on 100 samples has the Wilson interval [0.802, 0.930]: it may
    lie below the threshold 0.9 - 0.05, but need not.

    >>> drop = AccuracyDrop(dense_accuracy=0.9, tolerance=0.05)
    >>> earliest, latest = (AccuracyDropBound(drop, n=100, side=side)
    ...                     for side in ("earliest", "latest"))
    >>> earliest({"test_accuracy": 0.88}), latest({"test_accuracy": 0.88})
    (True, False)
    >>> latest({"test_accuracy": 0.75})   # [0.657, 0.825]: below for certain
    True
    """

    drop: AccuracyDrop
    n: int
    side: str
    confidence: float = 0.95
    method: str = "wilson"

    def __post_init__(self) -> None:
        interval_side(self.drop.dense_accuracy, self.n, self.side, self.confidence, self.method)

    def __call__(self, metrics: Metrics) -> bool:
        moved = interval_side(
            _metric(metrics, self.drop.key), self.n, self.side, self.confidence, self.method
        )
        return moved < self.drop.dense_accuracy - self.drop.tolerance - _COMPARISON_SLACK


def limit_interval(
    points: Sequence[SweepPoint],
    drop: AccuracyDrop,
    n: int,
    confidence: float = 0.95,
    method: str = "wilson",
) -> tuple[float, float]:
    """The interval on the accuracy limit implied by the binomial uncertainty of accuracies.

    (limit with the "earliest" :class:`AccuracyDropBound`, limit with the "latest"
    one), both read by :func:`limit_from_sweep`: the smallest and largest limits
    the sweep could give if every pruned accuracy moved within its interval at
    level ``confidence`` (n test samples). When even the point that removes no
    weight could be broken (the interval is wider than the tolerance), no amount
    is certainly within tolerance and the lower end is 0. The ends are read from
    the evaluated points only; pass the two bounds to :func:`sweep` as extra
    criteria to refine them.

    Example
    -------
    Accuracies 0.9, 0.88, 0.86, 0.5 on 1000 samples, tolerance 0.05: the limit is 0.5,
    but 0.86 (interval [0.837, 0.880]) might lie below 0.85, so it could be 0.25.

    >>> accuracies = [(0.0, 0.9), (0.25, 0.88), (0.5, 0.86), (0.75, 0.5)]
    >>> points = [SweepPoint(p, k, 4, {"test_accuracy": a})
    ...           for k, (p, a) in enumerate(accuracies)]
    >>> drop = AccuracyDrop(dense_accuracy=0.9, tolerance=0.05)
    >>> limit_from_sweep(points, drop), limit_interval(points, drop, n=1000)
    (0.5, (0.25, 0.5))
    """
    earliest = AccuracyDropBound(drop, n, "earliest", confidence, method)
    latest = AccuracyDropBound(drop, n, "latest", confidence, method)
    first = min(points, key=lambda point: point.amount) if points else None
    if first is not None and first.removed == 0 and earliest(first.metrics):
        low = 0.0
    else:
        low = limit_from_sweep(points, earliest)
    return low, limit_from_sweep(points, latest)


# -- evaluating a classifier ---------------------------------------------------------------


def classification_metrics(
    test: tuple[torch.Tensor, torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_fn: nn.Module | None = None,
) -> Callable[[nn.Module], dict[str, float]]:
    """An ``evaluate_fn`` for :func:`sweep`: loss and accuracy of a classifier.

    The returned function maps a model to ``test_loss``, ``test_accuracy``,
    ``n_test`` and, when ``train`` is given, ``train_loss``, ``train_accuracy``,
    ``n_train``, each computed by :func:`pruning_limit.metrics.split_metrics`:

        loss = (1/N) sum_i loss_fn(f(x_i), y_i),
        accuracy = (1/N) #{i : argmax_k f(x_i)_k = y_i},

    N the number of samples (``n_test``, ``n_train``: the n of
    :func:`accuracy_interval`).

    Parameters
    ----------
    test, train
        ``(X, y)``: inputs and int64 class labels.
    loss_fn
        A batch-mean loss; default ``nn.CrossEntropyLoss()``.

    Example
    -------
    W = diag(3, 4) on the inputs e1, e2: both test labels (0, 1) are right, one of the
    training labels (1, 1) is; the test loss is (log(1 + e^-3) + log(1 + e^-4)) / 2.

    >>> model = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    >>> evaluate = classification_metrics((torch.eye(2), torch.tensor([0, 1])),
    ...                                   train=(torch.eye(2), torch.tensor([1, 1])))
    >>> metrics = evaluate(model)
    >>> round(metrics["test_loss"], 4), metrics["test_accuracy"], metrics["train_accuracy"]
    (0.0334, 1.0, 0.5)
    >>> metrics["n_test"], metrics["n_train"]
    (2, 2)
    """
    splits = {"test": tensor_pair(test, "test data")}
    if train is not None:
        splits["train"] = tensor_pair(train, "train data")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    check_mean_reduction(loss_fn)
    evaluate = metrics_function(splits, loss_fn, classification=True)

    def metrics_of(model: nn.Module) -> dict[str, float]:
        with eval_mode(model):
            return evaluate(model)

    return metrics_of
