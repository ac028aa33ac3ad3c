"""The validator: prune for real, read the actual limits, compare them with a Prediction.

p is the fraction of prunable weights REMOVED (``amount`` in torch.nn.utils.prune);
the fraction kept is 1 - p. Pruning is global one-shot magnitude pruning with the
semantics of ``global_unstructured(..., pruning_method=L1Unstructured, amount=p)``
over the same tensors as the prediction (:func:`~pruning_limit.pruning.pruned`),
applied in place and undone exactly: the model's state_dict is bit-identical after
:func:`validate`, whatever the variants.

Three meanings of "actual" (``variants``), each a sweep over p with its own limits:

``one_shot``
    w_P = 0, nothing else changes (the reference code's definition).
``refit``
    w_P = 0 and the kept weights moved to the quadratic model's optimum, without
    training: w_K = w*_K + C_KK^{-1} C_KP w*_P (:class:`~pruning_limit.quadratic.QuadraticModel`,
    built once per validation: the matrix, or the operator for CG, is reused for every p).
    The theory's quadratic predictor speaks of exactly this point.
``finetune``
    w_P = 0, then the kept weights alone are trained for a short budget
    (:class:`FinetuneBudget`, Adam on the mean training loss, mask fixed, model in
    eval mode), ending at the iterate of lowest training loss: is there any point
    of V_K inside the sublevel set S(eps)?

For each variant the sweep (:func:`~pruning_limit.pruning.sweep`) evaluates a coarse
grid of p and bisects each break to ``resolution``. Two limits are read:

- the accuracy limit: the largest p evaluated before the first p with
  acc_test(p) < acc_test(0) - tolerance (tolerance in percentage points), with the
  interval that the binomial 95% intervals on the accuracies imply
  (:func:`~pruning_limit.pruning.limit_interval`);
- the loss-budget limit, the quantity the theory speaks of: the largest p before
  the first p with L_train(p) > L_train(0) + eps, eps as in the prediction
  (``"batch_std"``: the standard deviation of the mini-batch training losses at w*,
  :func:`~pruning_limit.budget.loss_budget`, or a number).

Each limit comes with its bracket [limit, first broken p): the break lies inside it,
up to the sweep's resolution.

Which weights count as removed inside an evaluation: those that are zero after
pruning. This is exactly the magnitude mask whenever p removes at least as many
weights as were already exactly zero; below that the already-zero weights are
treated as removed too (they are zero either way, but the refit and the fine-tune
then keep them at zero).

Example
-------
>>> import torch, pruning_limit as pl
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
>>> X, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
>>> v = pl.validate(model, train_data=(X, y), test_data=(X, y), loss_fn=torch.nn.CrossEntropyLoss(),
...                 epsilon=0.05, variants=("one_shot",), progress=False)
>>> list(v.variants), v.dense["n_test"]
(['one_shot'], 200)
>>> 0.0 <= v.limit("one_shot", "accuracy") <= 1.0
True
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from ._checks import check_mean_reduction
from ._version import __version__
from .batches import DEFAULT_BATCH_SIZE, check_model_and_data, tensor_pair
from .budget import BATCH_STD, check_epsilon, loss_budget
from .curvature import CURVATURES, EXACT_LIMIT
from .metrics import is_classification, metrics_function
from .parameters import eval_mode, resolve_parameters
from .pipeline import Pipeline
from .prediction import CONVENTION
from .pruning import (
    DEFAULT_AMOUNTS,
    AccuracyDrop,
    AccuracyDropBound,
    LossBudget,
    SweepPoint,
    accuracy_interval,
    is_measurement,
    limit_from_sweep,
    limit_interval,
)
from .quadratic import QuadraticModel
from .serialization import JsonResult, plain, read_json
from .transition import DEFAULT_REFERENCE_GRID, Transition, measure_transition
from .variants import FinetuneBudget, PrunedWeights, finetune_evaluator, refit_evaluator

VARIANTS = ("one_shot", "refit", "finetune")
DEFAULT_VARIANTS = ("one_shot", "refit")
# The curvature of the refit's quadratic model: "auto" (exact Hessian up to dense_limit,
# else the GGN), or one of CURVATURES.
VALIDATION_CURVATURES = ("auto", *CURVATURES)
# The readings of "actual" (DESIGN.md, "What actual means"). The onsets of damage:
ONSET_CRITERIA = ("accuracy", "loss_budget")
# The measured transition (transition.py): the centre of the accuracy collapse, the
# reference code's above-dense rule, the centre of the train-loss rise on a log scale.
TRANSITION_CRITERIA = ("collapse", "above_dense", "loss_collapse")
CRITERIA = ONSET_CRITERIA + TRANSITION_CRITERIA
# What each criterion's limit is, in words (tables and plots name them so).
CRITERION_LABELS = {
    "accuracy": "onset: last p with test accuracy within the tolerance of dense",
    "loss_budget": "onset: last p with train loss <= L(w*) + eps",
    "collapse": "collapse centre: test accuracy half-way from dense to p = 1",
    "above_dense": "reference code's rule: largest grid p with test accuracy > dense",
    "loss_collapse": "loss-collapse centre: log train loss half-way from L(w*) to L(p = 1)",
}
# The variants whose above_dense is read by default: a 0.001 grid is one evaluation
# per grid point, cheap for one-shot pruning, a refit or a fine-tune each for the others.
DEFAULT_REFERENCE_VARIANTS = ("one_shot",)
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # 1: onset limits only (no transition)


# -- configuration --------------------------------------------------------------------------


# -- results --------------------------------------------------------------------------------


@dataclass
class VariantSweep:
    """The sweep of one meaning of "actual" and the limits read from it.

    Attributes
    ----------
    variant
        ``"one_shot"``, ``"refit"`` or ``"finetune"``.
    points
        Every evaluated p, sorted, with ``test_accuracy`` and its binomial interval
        ``test_accuracy_low`` / ``test_accuracy_high`` (classification only),
        ``test_loss``, ``train_loss`` and the sample counts.
    accuracy_limit
        Largest p before the first p whose test accuracy fell more than the tolerance
        below the dense one; None without class labels.
    accuracy_interval
        The interval on it implied by the binomial intervals on the accuracies.
    accuracy_bracket
        (limit, first broken p); the second entry is None when nothing broke (the
        limit is then only a lower bound).
    loss_budget_limit, loss_budget_bracket
        The same for L_train(p) <= L_train(0) + eps.
    evaluations
        How many distinct supports were evaluated (the reference grid's included).
    transition
        The readings of the transition (:class:`~pruning_limit.transition.Transition`):
        collapse centre, 10-90 % width, above-dense rule, log-loss collapse; None in
        files written before they were read (format 1).
    reference_points
        The points of the ``above_dense`` grid scan that are not in ``points``: test
        metrics only (the rule reads nothing else).
    seconds
        Wall time of the sweep.
    reference
        ``finetune`` only: the metrics of the unpruned network after the same
        fine-tune (p = 0 in the sweep is the dense network itself), to tell the
        fine-tune's own effect on accuracy from pruning's.

    Example
    -------
    Least squares on w* = (1, -2, 3, -4) with inputs e_1..e_4: removing the k smallest
    weights costs 0, 1/4, 5/4, 14/4, 30/4, so with eps = 1 the loss-budget limit is 1/4.

    >>> import torch
    >>> from pruning_limit.models import least_squares
    >>> model, (X, y) = least_squares()   # the train loss of w_P = 0 is sum_P w_j^2 / 4
    >>> validation = validate(model, train_data=(X, y), test_data=(X, y),
    ...                       loss_fn=torch.nn.MSELoss(), epsilon=1.0, variants=("one_shot",),
    ...                       amounts=[0.25, 0.5, 0.75], reference_grid=None, progress=False)
    >>> sweep = validation.variants["one_shot"]
    >>> [round(point.metrics["train_loss"], 6) for point in sweep.points]
    [0.0, 0.25, 1.25, 3.5, 7.5]
    >>> sweep.limit("loss_budget"), sweep.bracket("loss_budget"), sweep.evaluations
    (0.25, (0.25, 0.5), 5)
    >>> print(sweep.limit("accuracy"), sweep.reason("accuracy"))
    None targets are not class labels: no accuracy
    """

    variant: str
    points: list
    accuracy_limit: float | None
    accuracy_interval: tuple | None
    accuracy_bracket: tuple | None
    loss_budget_limit: float
    loss_budget_bracket: tuple
    evaluations: int
    seconds: float
    notes: list = field(default_factory=list)
    reference: dict | None = None
    transition: Transition | None = None
    reference_points: list = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["points"] = [_point_dict(point) for point in self.points]
        data["reference_points"] = [_point_dict(point) for point in self.reference_points]
        data["transition"] = None if self.transition is None else self.transition.to_dict()
        return plain(data)

    @classmethod
    def from_dict(cls, data: dict) -> VariantSweep:
        data = dict(data)
        for key in ("points", "reference_points"):
            data[key] = [
                SweepPoint(
                    amount=float(p["amount"]),
                    removed=int(p["removed"]),
                    dimension=int(p["dimension"]),
                    metrics=dict(p["metrics"]),
                )
                for p in data.get(key, [])
            ]
        for key in ("accuracy_interval", "accuracy_bracket", "loss_budget_bracket"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if data.get("transition") is not None:
            data["transition"] = Transition.from_dict(data["transition"])
        return cls(**data)

    def limit(self, criterion: str) -> float | None:
        """The limit (fraction removed) under ``criterion``; None with :meth:`reason`."""
        return self._reading(criterion, "limit")

    def interval(self, criterion: str) -> tuple | None:
        """The interval on the limit under ``criterion``.

        Accuracy: the binomial interval on the onset; loss budget: the sweep bracket;
        collapse: the crossings of the ends of the binomial intervals on the
        accuracies; above_dense: (largest grid p certainly above dense, largest
        possibly above), or its bracket when an end is undetermined; loss_collapse:
        the sweep bracket. None when the limit is None.
        """
        _check_criterion(criterion)
        if criterion == "accuracy":
            return self.accuracy_interval
        if criterion == "loss_budget":
            low, high = self.loss_budget_bracket
            return (low, low if high is None else high)
        if self.transition is None or self.transition.limit(criterion) is None:
            return None
        reading = self.transition.reading(criterion)
        if reading.interval is not None and None not in reading.interval:
            return tuple(reading.interval)
        if reading.bracket is not None:
            return tuple(reading.bracket)
        return (reading.value, reading.value)

    def bracket(self, criterion: str) -> tuple | None:
        """(limit, first p past it) as evaluated; the second entry None: a lower bound."""
        return self._reading(criterion, "bracket")

    def _reading(self, criterion: str, what: str):
        """The ``what`` ("limit" or "bracket") under ``criterion``: the sweep's own
        ``<criterion>_<what>`` for an onset criterion, else the transition's (None: not
        measured)."""
        _check_criterion(criterion)
        if criterion in ONSET_CRITERIA:
            return getattr(self, f"{criterion}_{what}")
        if self.transition is None:
            return None
        return getattr(self.transition, what)(criterion)

    def reason(self, criterion: str) -> str | None:
        """Why the limit under ``criterion`` is None (or a caveat); None otherwise."""
        _check_criterion(criterion)
        if criterion == "accuracy" and self.accuracy_limit is None:
            return "targets are not class labels: no accuracy"
        if criterion in ONSET_CRITERIA:
            return None
        if self.transition is None:
            return "not measured (a validation saved before the transition was read)"
        return self.transition.reading(criterion).reason

    @property
    def collapse_width(self) -> float | None:
        """collapse_end - collapse_start: the 10 %-90 % width of the accuracy collapse."""
        return None if self.transition is None else self.transition.collapse_width


@dataclass
class Validation(JsonResult):
    """Actual pruning limits of a trained model, with how they were measured.

    ``fraction`` is ``"removed"``: every p is the fraction of prunable weights
    removed (``amount`` in torch.nn.utils.prune); kept = 1 - p.

    Attributes
    ----------
    variants
        Variant name -> :class:`VariantSweep`, in the order asked for.
    dense
        Metrics of the unpruned model (``test_accuracy``, ``test_loss``,
        ``train_loss``, ``n_test``, ...) and ``test_accuracy_interval``.
    tolerance
        Allowed test-accuracy drop, in percentage points.
    epsilon, epsilon_source
        The loss budget and how it was obtained (:func:`~pruning_limit.budget.loss_budget`).
    resolution, amounts
        Bisection resolution and the coarse grid of p.
    confidence, interval_method
        Level and method of the binomial intervals.
    parameters, dimension
        ``[name, shape]`` of each pruned tensor in flattening order; D.
    dtype
        The model's dtype (the metrics are computed in it).
    task
        ``"classification"`` (integer labels: accuracies) or ``"regression"``.
    seed
        Seeds the fine-tune's batch order.
    refit, finetune
        How those variants were run (curvature, policy, solver; the budget), or None.

    Example
    -------
    Least squares on w* = (1, -2, 3, -4) with inputs e_1..e_4 (see :class:`VariantSweep`):

    >>> import tempfile
    >>> import torch
    >>> from pruning_limit.models import least_squares
    >>> model, (X, y) = least_squares()   # the train loss of w_P = 0 is sum_P w_j^2 / 4
    >>> validation = validate(model, train_data=(X, y), test_data=(X, y),
    ...                       loss_fn=torch.nn.MSELoss(), epsilon=1.0, variants=("one_shot",),
    ...                       amounts=[0.25, 0.5, 0.75], reference_grid=None, progress=False)
    >>> validation.limit("one_shot", "loss_budget"), validation.interval("one_shot", "loss_budget")
    (0.25, (0.25, 0.5))
    >>> validation.dimension, validation.task, validation.fraction
    (4, 'regression', 'removed')
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded = Validation.load(validation.save(Path(folder) / "validation"))
    >>> loaded == validation
    True
    """

    variants: dict
    dense: dict
    tolerance: float
    epsilon: float
    epsilon_source: dict
    resolution: float
    amounts: list
    confidence: float
    interval_method: str
    parameters: list
    dimension: int
    dtype: str
    task: str
    seed: int
    refit: dict | None = None
    finetune: dict | None = None
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    fraction: str = "removed"
    convention: str = CONVENTION
    version: str = ""
    reference_grid: float | None = None
    reference_variants: list = field(default_factory=list)

    def limit(self, variant: str = "one_shot", criterion: str = "accuracy") -> float | None:
        """The actual limit (fraction REMOVED) of ``variant`` under ``criterion``."""
        return self._variant(variant).limit(criterion)

    def interval(self, variant: str = "one_shot", criterion: str = "accuracy") -> tuple | None:
        """The interval on :meth:`limit` (see :meth:`VariantSweep.interval`)."""
        return self._variant(variant).interval(criterion)

    def reason(self, variant: str = "one_shot", criterion: str = "accuracy") -> str | None:
        """Why :meth:`limit` is None, or a caveat."""
        return self._variant(variant).reason(criterion)

    def collapse_width(self, variant: str = "one_shot") -> float | None:
        """Width in p of the accuracy collapse of ``variant``: from the first p with
        10 % of the drop a(0) - a(1) to the first with 90 % of it."""
        return self._variant(variant).collapse_width

    def transition(self, variant: str = "one_shot") -> Transition | None:
        """Every reading of the transition of ``variant`` (None: not measured)."""
        return self._variant(variant).transition

    def _variant(self, variant: str) -> VariantSweep:
        if variant not in self.variants:
            raise KeyError(f"no sweep for variant {variant!r}; measured: {list(self.variants)}")
        return self.variants[variant]

    # -- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict:
        data = asdict(self)
        data["variants"] = {name: sweep.to_dict() for name, sweep in self.variants.items()}
        data["format_version"] = FORMAT_VERSION
        return plain(data)

    @classmethod
    def from_dict(cls, data: dict) -> Validation:
        data = dict(data)
        version = data.pop("format_version", None)
        if version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"validation format {version!r} is unknown to pruning-limit {__version__}, "
                f"which reads formats {', '.join(map(str, READABLE_FORMAT_VERSIONS))}: written "
                "by a newer version, or not a validation file"
            )
        data.setdefault("reference_grid", None)
        data["variants"] = {
            name: VariantSweep.from_dict(entry) for name, entry in data["variants"].items()
        }
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Validation:
        """Read a Validation written by :meth:`save`."""
        return cls.from_dict(read_json(path, "validation"))

    # -- reading -----------------------------------------------------------------------

    def summary(self) -> str:
        """A readable table of every variant's limit under every criterion, with names."""
        dense = self.dense
        lines = [
            "Actual pruning limit: p = fraction of prunable weights REMOVED "
            "(torch.nn.utils.prune amount); kept = 1 - p",
            f"D = {self.dimension} prunable weights, dtype {self.dtype}; dense: "
            + (f"test accuracy {dense['test_accuracy']:.4f}, " if "test_accuracy" in dense else "")
            + f"train loss {dense['train_loss']:.4g}",
            f"accuracy tolerance {self.tolerance:g} percentage points; loss budget eps = "
            f"{self.epsilon:.4g} ({self.epsilon_source.get('kind', '?')}); resolution "
            f"{self.resolution:g}",
            "",
            'criteria (each a reading of "actual"):',
            *(f"  {name:<14}{CRITERION_LABELS[name]}" for name in CRITERIA),
            "",
            f"{'variant':<10}"
            + "".join(f"{name:>14}" for name in CRITERIA)
            + f"{'width':>9}{'evals':>7}",
        ]
        for name, result in self.variants.items():
            width = result.collapse_width
            lines.append(
                f"{name:<10}"
                + "".join(f"{_fmt(result.limit(c)):>14}" for c in CRITERIA)
                + f"{_fmt(width):>9}{result.evaluations:>7}"
            )
        lines += ["", f"{'variant':<10}{'criterion':<15}{'interval':<20}"]
        for name, result in self.variants.items():
            for criterion in CRITERIA:
                interval = result.interval(criterion)
                text = "-" if interval is None else "[{}, {}]".format(*map(_fmt, interval))
                reason = result.reason(criterion)
                lines.append(
                    f"{name:<10}{criterion:<15}{text:<20}" + ("" if reason is None else reason)
                )
        lines += [f"note: {note}" for note in self.notes]
        for name, result in self.variants.items():
            lines += [f"note ({name}): {note}" for note in result.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}={_fmt(result.accuracy_limit)}/{_fmt(result.loss_budget_limit)}/"
            f"{_fmt(result.limit('collapse'))}"
            for name, result in self.variants.items()
        )
        return (
            f"Validation(removed, accuracy/loss-budget/collapse limits: {parts}; "
            f"tolerance={self.tolerance:g}pp, eps={self.epsilon:.3g}, D={self.dimension})"
        )

    def __str__(self) -> str:
        return self.summary()


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _point_dict(point: SweepPoint) -> dict:
    return {
        "amount": point.amount,
        "removed": point.removed,
        "dimension": point.dimension,
        "metrics": dict(point.metrics),
    }


def _check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


# -- input checks ---------------------------------------------------------------------------


def _check_variants(variants) -> tuple[str, ...]:
    if isinstance(variants, str):
        variants = (variants,)
    variants = tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(
            f"unknown variant(s) {unknown or list(variants)}; known: {', '.join(VARIANTS)}"
        )
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants names one twice: {variants}")
    return variants


def _check_tolerance(tolerance) -> float:
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not math.isfinite(tolerance)
        or not 0 <= tolerance <= 100
    ):
        raise ValueError(
            f"tolerance must be a number of percentage points in [0, 100], got {tolerance!r}"
        )
    return float(tolerance)


# -- evaluation -------------------------------------------------------------------------------


# -- the validator ------------------------------------------------------------------------------


@distributed.collective
def validate(
    model: nn.Module,
    *,
    train_data,
    test_data,
    loss_fn,
    epsilon: str | float | None = None,
    variants: Iterable[str] = DEFAULT_VARIANTS,
    tolerance: float = 0.5,
    resolution: float = 0.005,
    amounts: Sequence[float] | None = None,
    params: Iterable | None = None,
    curvature: str | QuadraticModel = "auto",
    policy: str = "abs",
    damping: float = 0.0,
    dense_limit: int = EXACT_LIMIT,
    finetune: FinetuneBudget | dict | None = None,
    confidence: float = 0.95,
    interval_method: str = "wilson",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    reference_grid: float | None = DEFAULT_REFERENCE_GRID,
    reference_variants: Iterable[str] = DEFAULT_REFERENCE_VARIANTS,
    certify_above_dense: bool = False,
    progress: bool = True,
) -> Validation:
    """Prune ``model`` for real, over a sweep of p, and read its actual pruning limits.

    Parameters
    ----------
    model
        The trained network. It is pruned in place and restored bit-identically.
    train_data, test_data
        ``(X, y)`` pairs of tensors. Integer class labels (1-d) give accuracies; any
        other targets (e.g. float regression targets) give losses only. Under
        ``torch.distributed``: this rank's shards; every variant then gives the
        result of one process on the concatenated shards (``finetune``: its
        mini-batches are cut from all the data, see :class:`FinetuneBudget`).
    loss_fn
        A batch-mean loss, ``loss_fn(outputs, targets)``: the loss the model was
        trained on and the prediction used (e.g. ``nn.CrossEntropyLoss()``).
    epsilon
        The loss budget: ``None`` or ``"batch_std"`` (the standard deviation of the
        mini-batch training losses at w*, batches of ``batch_size``, in float64, as
        :func:`~pruning_limit.pipeline.predict_limit` computes it), ``"reference"``
        (the reference code's, :func:`~pruning_limit.reference.reference_epsilon`) or
        a positive number.
    variants
        Any of ``"one_shot"``, ``"refit"``, ``"finetune"`` (see the module docstring).
    tolerance
        Allowed drop of test accuracy below the dense one, in percentage points.
    resolution
        Bisection stops when the break is bracketed to this width in p.
    amounts
        The coarse grid of p (default: 0, 0.05, ..., 0.95, 0.99); 0 is always added.
    params
        The tensors pruned jointly (default: every Linear/Conv ``weight``), as in the
        prediction.
    curvature
        For ``refit``: ``"auto"`` (the exact Hessian matrix when D <= ``dense_limit``,
        with ``policy`` applied to its eigenvalues; else the GGN, whose PSD operator
        conjugate gradients need), ``"hessian"``, ``"ggn"``, or a prepared
        :class:`~pruning_limit.quadratic.QuadraticModel` of this model's weights (e.g.
        the one a prediction used).
    policy, damping, dense_limit
        For the quadratic model of ``refit`` (see :class:`QuadraticModel`).
    finetune
        The :class:`FinetuneBudget` (or a dict of its fields) of ``finetune``.
    confidence, interval_method
        Binomial intervals on accuracies (:func:`~pruning_limit.pruning.accuracy_interval`).
    batch_size
        Batches of the curvature products and of ``"batch_std"``.
    seed
        Seeds the fine-tune's mini-batch order.
    reference_grid
        The step g of the ``above_dense`` rule's grid (0.001 in the reference code);
        None: the rule is not read. The rule is lenient (one lucky grid point far
        past the collapse onset decides it) and noisy on small test sets, where one
        test sample answered differently moves it.
    reference_variants
        The variants whose ``above_dense`` is read (default ``one_shot`` only: the
        grid costs up to 1/g evaluations, each a quadratic re-fit or a fine-tune on
        the other variants). Elsewhere it is None, with the reason.
    certify_above_dense
        Scan the reference grid on down to the largest p whose accuracy is certainly
        above dense (the lower end of the rule's interval; on a small test set often
        no p, and then the whole grid is evaluated). Default False: the scan stops at
        the rule's answer and the interval falls back to its grid bracket.

    The transition's crossings are bisected to ``resolution``: every crossing on
    ``one_shot``, the collapse centre and the loss-collapse centre only on
    ``refit`` and ``finetune`` (each evaluation a re-fit or a fine-tune), whose
    width and intervals are read from the points evaluated anyway.
    progress
        A progress bar per sweep.

    Returns
    -------
    Validation

    Raises
    ------
    ValueError
        A bad option (tolerance < 0, unknown variant, eps <= 0, ...), or data that do
        not fit the model (naming the shapes): all checked before anything is pruned.

    Example
    -------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> validation = validate(model, train_data=(X, y), test_data=(X, y),
    ...                       loss_fn=torch.nn.CrossEntropyLoss(), variants=("one_shot", "refit"),
    ...                       amounts=[0.0, 0.5, 0.9], resolution=0.1, batch_size=16,
    ...                       progress=False)
    >>> validation.epsilon_source["kind"], validation.refit["curvature"]
    ('batch_std', 'hessian')
    """
    started = time.perf_counter()
    variants = _check_variants(variants)
    tolerance = _check_tolerance(tolerance)
    if not (isinstance(resolution, numbers.Real) and 0 < resolution < 1):
        raise ValueError(f"resolution must be a number in (0, 1), got {resolution!r}")
    epsilon = check_epsilon(BATCH_STD if epsilon is None else epsilon)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if isinstance(curvature, str) and curvature not in VALIDATION_CURVATURES:
        raise ValueError(
            f"curvature must be 'auto', 'hessian', 'ggn' or a QuadraticModel, got {curvature!r}"
        )
    if not isinstance(curvature, (str, QuadraticModel)):
        raise TypeError(
            f"curvature must be a string or a QuadraticModel, got {type(curvature).__name__}"
        )
    if isinstance(reference_variants, str):
        reference_variants = (reference_variants,)
    reference_variants = tuple(reference_variants)
    unknown = [v for v in reference_variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown reference variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    budget = FinetuneBudget.of(finetune) if "finetune" in variants else None
    check_mean_reduction(loss_fn)
    grid = sorted({0.0, *(DEFAULT_AMOUNTS if amounts is None else map(float, amounts))})

    train_pair = tensor_pair(train_data, "train_data")
    test_pair = tensor_pair(test_data, "test_data")
    if train_pair[0].shape[1:] != test_pair[0].shape[1:]:
        raise ValueError(
            f"test inputs of shape {tuple(test_pair[0].shape)} do not match the training "
            f"inputs of shape {tuple(train_pair[0].shape)} (samples first)"
        )
    selected = resolve_parameters(model, params)
    reference = selected[0][1]
    classification = is_classification(train_pair[1]) and is_classification(test_pair[1])
    for split, (inputs, targets) in (("train", train_pair), ("test", test_pair)):
        check_model_and_data(
            model,
            loss_fn,
            (inputs, targets),
            what=f"the {split} data",
            min_samples=2 if split == "train" else 1,
        )
    parameters = [[name, list(tensor.shape)] for name, tensor in selected]
    dimension = sum(tensor.numel() for _, tensor in selected)
    weights = PrunedWeights(selected)
    w_star = np.concatenate(
        [t.detach().cpu().double().numpy().reshape(-1) for t in weights.original]
    )

    refit_operator = "refit" in variants and isinstance(curvature, str)
    kind = curvature if curvature in CURVATURES else "hessian"
    if curvature == "auto" and dimension > dense_limit:
        kind = "ggn"
    pipeline = Pipeline(
        model,
        loss_fn,
        train_pair,
        curvature=kind,
        params=[name for name, _ in selected],
        dtype=torch.float64,
        device=reference.device,
        batch_size=batch_size,
        exact_limit=dense_limit,
        policy=policy,
        damping=damping,
    )
    if isinstance(epsilon, str) or refit_operator:
        eps, eps_source = pipeline.budget(epsilon)
    else:  # a number, and no data pass needed
        eps, eps_source = loss_budget(None, epsilon, dtype=torch.float64)

    refit_record = None
    quadratic = None
    if "refit" in variants:
        built = time.perf_counter()
        if isinstance(curvature, QuadraticModel):
            quadratic = curvature
            if quadratic.dimension != dimension or not np.allclose(
                quadratic.weights, w_star, rtol=1e-6, atol=1e-12
            ):
                raise ValueError(
                    f"the QuadraticModel (D = {quadratic.dimension}) was not built at this "
                    f"model's weights (D = {dimension})"
                )
            kind = "given"
        else:
            quadratic = pipeline.quadratic_model()
        refit_record = {
            "curvature": kind,
            "policy": quadratic.policy,
            "damping": quadratic.damping,
            "solver": quadratic.solver,
            "dense_limit": dense_limit,
            "seconds_build": time.perf_counter() - built,
            "notes": list(quadratic.notes),
        }

    splits = {"test": test_pair, "train": train_pair}
    metrics_of = metrics_function(splits, loss_fn, classification)
    with eval_mode(model):
        dense = metrics_of(model)
    notes: list[str] = []
    criteria: list = []
    drop = None
    if classification:
        n_test = dense["n_test"]
        dense["test_accuracy_interval"] = list(
            accuracy_interval(dense["test_accuracy"], n_test, confidence, interval_method)
        )
        drop = AccuracyDrop(dense["test_accuracy"], tolerance / 100.0)
        criteria += [
            drop,
            AccuracyDropBound(drop, n_test, "earliest", confidence, interval_method),
            AccuracyDropBound(drop, n_test, "latest", confidence, interval_method),
        ]
    else:
        notes.append("targets are not class labels: no accuracy, loss-budget limits only")
    budget_criterion = LossBudget(dense["train_loss"], eps)
    criteria.append(budget_criterion)

    evaluators = {"one_shot": metrics_of}
    if "refit" in variants:
        evaluators["refit"] = refit_evaluator(weights, quadratic, metrics_of)
    finetuned_dense = None
    if "finetune" in variants:
        evaluators["finetune"], finetune_anyway = finetune_evaluator(
            weights, budget, train_pair, loss_fn, seed, metrics_of
        )
        with eval_mode(model):
            finetuned_dense = finetune_anyway(model)

    # The reference grid's scan reads the test accuracy alone: its points carry no
    # train metrics, and the onset readings below use the points that have them.
    test_only = metrics_function({"test": test_pair}, loss_fn, classification)
    names = [name for name, _ in selected]
    results = {}
    for variant in variants:
        sweep_started = time.perf_counter()
        grid_here = reference_grid if variant in reference_variants else None
        points, transition = measure_transition(
            model,
            evaluators[variant],
            is_broken=criteria,
            amounts=grid,
            resolution=resolution,
            reference_grid=grid_here,
            n=dense.get("n_test") if classification else None,
            confidence=confidence,
            interval_method=interval_method,
            reference_evaluate_fn=test_only if variant == "one_shot" else None,
            certify_above_dense=certify_above_dense,
            refine="all" if variant == "one_shot" else "centres",
            params=names,
            progress=progress and distributed.is_main(),
        )
        if grid_here is None and reference_grid is not None and classification:
            transition.readings["above_dense"].reason = (
                f"not read on {variant} (reference_variants = {list(reference_variants)}): "
                "the 0.001 grid would cost one "
                + ("quadratic re-fit" if variant == "refit" else "fine-tune")
                + " per grid point"
            )
        results[variant] = _read_limits(
            variant,
            points,
            drop,
            budget_criterion,
            confidence,
            interval_method,
            time.perf_counter() - sweep_started,
        )
        results[variant].transition = transition
        if variant == "finetune":
            results[variant].reference = finetuned_dense
            results[variant].notes.append(
                "p = 0 is the dense network itself; reference: the dense network after the same "
                "fine-tune (nothing removed), which shows the fine-tune's own effect"
            )
    return Validation(
        variants=results,
        dense=dense,
        tolerance=tolerance,
        epsilon=eps,
        epsilon_source=eps_source,
        resolution=float(resolution),
        amounts=grid,
        confidence=confidence,
        interval_method=interval_method,
        parameters=parameters,
        dimension=dimension,
        dtype=str(reference.dtype).replace("torch.", ""),
        task="classification" if classification else "regression",
        seed=seed,
        refit=refit_record,
        finetune=None if budget is None else asdict(budget),
        seconds=time.perf_counter() - started,
        notes=notes,
        version=__version__,
        reference_grid=None if reference_grid is None else float(reference_grid),
        reference_variants=[v for v in reference_variants if v in variants],
    )


def _bracket(points: Sequence[SweepPoint], is_broken) -> tuple[float, float | None]:
    limit = limit_from_sweep(points, is_broken)
    after = [
        p.amount for p in points if p.amount > limit and is_measurement(p) and is_broken(p.metrics)
    ]
    return limit, (min(after) if after else None)


def _read_limits(
    variant, points, drop, budget_criterion, confidence, interval_method, seconds
) -> VariantSweep:
    notes = []
    unconverged = [p for p in points if not is_measurement(p)]
    if unconverged:
        worst = max(p.metrics.get("refit_relative_residual", float("nan")) for p in unconverged)
        notes.append(
            f"{len(unconverged)} point(s) unconverged (the solver stopped short, relative "
            f"residual up to {worst:.1e}) at p = "
            + ", ".join(f"{p.amount:.4g}" for p in unconverged)
            + ": reported, but left out of the limits"
        )
    accuracy_limit = accuracy_bracket = accuracy_limits_interval = None
    every_point = points
    # The sweep's own points carry every metric; those of the above-dense grid scan
    # measure the test set alone and are kept apart.
    points = [point for point in every_point if budget_criterion.key in point.metrics]
    scan = [point for point in every_point if budget_criterion.key not in point.metrics]
    if drop is not None:
        for point in every_point:
            low, high = accuracy_interval(
                point.metrics["test_accuracy"], point.metrics["n_test"], confidence, interval_method
            )
            point.metrics.update(test_accuracy_low=low, test_accuracy_high=high)
        accuracy_bracket = _bracket(points, drop)
        accuracy_limit = accuracy_bracket[0]
        accuracy_limits_interval = limit_interval(
            points, drop, points[0].metrics["n_test"], confidence, interval_method
        )
        if accuracy_bracket[1] is None:
            notes.append("the accuracy never fell below tolerance: the limit is a lower bound")
    loss_bracket = _bracket(points, budget_criterion)
    if loss_bracket[1] is None:
        notes.append("the loss budget was never exceeded: the limit is a lower bound")
    return VariantSweep(
        variant=variant,
        reference_points=scan,
        points=points,
        accuracy_limit=accuracy_limit,
        accuracy_interval=accuracy_limits_interval,
        accuracy_bracket=accuracy_bracket,
        loss_budget_limit=loss_bracket[0],
        loss_budget_bracket=loss_bracket,
        evaluations=len({p.removed for p in every_point}),
        seconds=seconds,
        notes=notes,
    )


# -- prediction vs actual -------------------------------------------------------------------------
