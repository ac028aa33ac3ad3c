"""Predicted against actual: one row per predictor, meaning of actual and criterion.

A criterion is one reading of "actual" (:data:`~pruning_limit.validation.CRITERIA`):
the onsets ``accuracy`` and ``loss_budget``, and the transition's ``collapse``,
``above_dense`` and ``loss_collapse`` (:mod:`~pruning_limit.transition`). Every
predictor of the Prediction, the curvature-free baseline ``emp`` included, is set
against each of them; the table names what each predictor predicts
(:data:`~pruning_limit.prediction.METHOD_TARGETS`) and marks the rows of its own
target where that is one of the validator's limits (``taylor_onset``: one-shot
``loss_budget``; ``quadratic``: re-fit ``loss_budget``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .prediction import METHOD_CRITERIA, METHOD_TARGETS, Prediction
from .serialization import plain
from .validation import CRITERIA, CRITERION_LABELS, ONSET_CRITERIA, Validation

# An actual limit on an interval's end, up to round-off, is inside it.
INSIDE_SLACK = 1e-12


@dataclass
class ComparisonRow:
    """One predictor against one meaning of actual under one criterion.

    ``error_pp`` = 100 (predicted - actual): positive means the predictor promised
    more than pruning delivered. ``inside``: the actual limit lies in the predictor's
    interval; ``overlap``: the predictor's interval meets the actual one (the binomial
    interval for accuracy, the sweep bracket for the loss budget; see
    :meth:`~pruning_limit.validation.VariantSweep.interval` for the transition's).
    A criterion whose limit is None (e.g. ``above_dense`` when no p is above dense)
    gives no row; the comparison's notes carry the reason.

    Example
    -------
    Least squares on w* = (1, -2, 3, -4) with inputs e_1..e_4, eps = 1
    (:func:`~pruning_limit.models.least_squares`): the GGN is I/2, so the paper's p*
    solves p = 1 / (1 + R(p)^2 / 4) with R^2 = 16 p - 3 on [1/4, 1/2],
    16 p^2 + p - 4 = 0, p* = (sqrt(257) - 1) / 32 = 0.4697; pruning meets the loss
    budget up to p = 1/4 (see :class:`~pruning_limit.validation.VariantSweep`).

    >>> import torch
    >>> from pruning_limit.models import least_squares
    >>> model, (X, y) = least_squares()   # the train loss of w_P = 0 is sum_P w_j^2 / 4
    >>> import pruning_limit as pl
    >>> prediction = pl.predict_limit(model, data=(X, y), loss_fn=torch.nn.MSELoss(),
    ...                               epsilon=1.0, methods=("paper",))
    >>> validation = pl.validate(model, train_data=(X, y), test_data=(X, y),
    ...                          loss_fn=torch.nn.MSELoss(), epsilon=1.0, variants=("one_shot",),
    ...                          amounts=[0.25, 0.5, 0.75], reference_grid=None, progress=False)
    >>> row = compare(prediction, validation).row("paper", "one_shot", "loss_budget")
    >>> round(row.predicted, 4), row.actual, row.actual_interval, round(row.error_pp, 1)
    (0.4697, 0.25, (0.25, 0.5), 22.0)
    >>> row.inside, row.overlap   # p* is outside the bracket [0.25, 0.5) but meets it
    (False, True)
    """

    method: str
    variant: str
    criterion: str
    predicted: float
    predicted_interval: tuple
    actual: float
    actual_interval: tuple
    error_pp: float
    inside: bool
    overlap: bool
    actual_is_lower_bound: bool


@dataclass
class Comparison:
    """Every predictor of a Prediction against every variant and criterion of a Validation.

    Example
    -------
    The least-squares network of :class:`ComparisonRow`:

    >>> import torch
    >>> from pruning_limit.models import least_squares
    >>> model, (X, y) = least_squares()   # the train loss of w_P = 0 is sum_P w_j^2 / 4
    >>> import pruning_limit as pl
    >>> prediction = pl.predict_limit(model, data=(X, y), loss_fn=torch.nn.MSELoss(),
    ...                               epsilon=1.0, methods=("paper",))
    >>> validation = pl.validate(model, train_data=(X, y), test_data=(X, y),
    ...                          loss_fn=torch.nn.MSELoss(), epsilon=1.0, variants=("one_shot",),
    ...                          amounts=[0.25, 0.5, 0.75], reference_grid=None, progress=False)
    >>> comparison = compare(prediction, validation)
    >>> [(row.method, row.variant, row.criterion) for row in comparison.rows]
    [('paper', 'one_shot', 'loss_budget')]
    >>> comparison.to_markdown().splitlines()[2].split(" | ")[3:]   # the row's table cells
    ['0.4697', '[0.4697, 0.4697]', '0.2500', '[0.2500, 0.5000]', '+22.0', 'no', 'yes', ' |']

    (the last cell, "its target", is empty: the loss-budget onset is not what ``paper``
    predicts.)
    >>> comparison.to_dict()["fraction"]
    'removed'
    """

    rows: list
    epsilon_predicted: float
    epsilon_actual: float
    tolerance: float
    dimension: int
    notes: list = field(default_factory=list)
    fraction: str = "removed"

    def row(self, method: str, variant: str, criterion: str) -> ComparisonRow:
        for entry in self.rows:
            if (entry.method, entry.variant, entry.criterion) == (method, variant, criterion):
                return entry
        raise KeyError(f"no row for {(method, variant, criterion)}")

    def to_dict(self) -> dict:
        return plain(asdict(self))

    def to_markdown(self) -> str:
        """A markdown table: p is the fraction REMOVED; error in percentage points."""
        lines = [
            "| method | variant | criterion | predicted p | predicted interval | actual p | "
            "actual interval | error (pp) | inside | overlap | its target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            bound = " (lower bound)" if r.actual_is_lower_bound else ""
            own = "yes" if METHOD_CRITERIA.get(r.method) == (r.variant, r.criterion) else ""
            lines.append(
                f"| {r.method} | {r.variant} | {r.criterion} | {r.predicted:.4f} | "
                f"[{r.predicted_interval[0]:.4f}, {r.predicted_interval[1]:.4f}] | "
                f"{r.actual:.4f}{bound} | [{r.actual_interval[0]:.4f}, "
                f"{r.actual_interval[1]:.4f}] | {r.error_pp:+.1f} | "
                f"{'yes' if r.inside else 'no'} | {'yes' if r.overlap else 'no'} | {own} |"
            )
        methods = list(dict.fromkeys(r.method for r in self.rows))
        lines += ["", "what each method predicts (its target: the row marked yes, if any):"]
        lines += [f"- `{m}`: {METHOD_TARGETS.get(m, '?')}" for m in methods]
        criteria = [c for c in CRITERIA if any(r.criterion == c for r in self.rows)]
        lines += ["", "criteria (readings of actual):"]
        lines += [f"- `{c}`: {CRITERION_LABELS[c]}" for c in criteria]
        lines += [f"\nnote: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def compare(prediction: Prediction, validation: Validation) -> Comparison:
    """Every predictor of ``prediction`` against every actual limit of ``validation``.

    For each method, variant and criterion (every one of
    :data:`~pruning_limit.validation.CRITERIA` when the task has class labels;
    ``"loss_budget"`` and ``"loss_collapse"`` otherwise), the predicted p (fraction
    removed) and its interval, the actual limit and its interval, the error in
    percentage points and whether the actual lies inside the predicted interval.

    Raises
    ------
    ValueError
        If the prediction was made for another model: the pruned tensors' names or
        shapes, or D, differ.

    Example
    -------
    >>> import torch, pruning_limit as pl
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> loss_fn = torch.nn.CrossEntropyLoss()
    >>> prediction = pl.predict_limit(model, data=(X, y), loss_fn=loss_fn, epsilon=0.05,
    ...                               methods=("paper",))
    >>> validation = pl.validate(model, train_data=(X, y), test_data=(X, y), loss_fn=loss_fn,
    ...                          epsilon=0.05, variants=("one_shot",), amounts=[0.0, 0.5, 0.9],
    ...                          resolution=0.1, progress=False)
    >>> comparison = compare(prediction, validation)
    >>> sorted({row.method for row in comparison.rows})
    ['paper']
    """
    if not isinstance(prediction, Prediction) or not isinstance(validation, Validation):
        raise TypeError(
            "compare(prediction, validation) takes a Prediction and a Validation, got "
            f"{type(prediction).__name__} and {type(validation).__name__}"
        )
    if prediction.dimension != validation.dimension:
        raise ValueError(
            f"the prediction was made for D = {prediction.dimension} prunable weights, the "
            f"validation pruned D = {validation.dimension}: not the same model"
        )
    theirs = [[str(name), [int(s) for s in shape]] for name, shape in prediction.parameters]
    ours = [[str(name), [int(s) for s in shape]] for name, shape in validation.parameters]
    if theirs and theirs != ours:
        raise ValueError(
            f"the prediction's parameters {theirs} differ from the validation's {ours}: "
            "not the same model (or not the same tensors)"
        )
    notes = []
    if not theirs:
        notes.append("the prediction records no parameter names: only D was checked")
    if not math.isclose(prediction.epsilon, validation.epsilon, rel_tol=1e-9):
        notes.append(
            f"the prediction's eps ({prediction.epsilon:.6g}) differs from the validation's "
            f"({validation.epsilon:.6g}): the loss-budget rows compare different budgets"
        )
    criteria = (
        list(CRITERIA) if validation.task == "classification" else ["loss_budget", "loss_collapse"]
    )
    for variant, result in validation.variants.items():
        for criterion in criteria:
            if result.limit(criterion) is None:
                notes.append(
                    f"no {variant} {criterion} limit, so no row: {result.reason(criterion)}"
                )
    rows = []
    for method, estimate in prediction.estimates.items():
        low, high = (float(x) for x in estimate.interval)
        for variant, result in validation.variants.items():
            for criterion in criteria:
                if result.limit(criterion) is None:
                    continue
                actual = float(result.limit(criterion))
                actual_low, actual_high = (float(x) for x in result.interval(criterion))
                bracket = result.bracket(criterion)
                lower_bound = criterion in ONSET_CRITERIA and bracket[1] is None
                rows.append(
                    ComparisonRow(
                        method=method,
                        variant=variant,
                        criterion=criterion,
                        predicted=float(estimate.removal_fraction),
                        predicted_interval=(low, high),
                        actual=actual,
                        actual_interval=(actual_low, actual_high),
                        error_pp=100.0 * (float(estimate.removal_fraction) - actual),
                        inside=low - INSIDE_SLACK <= actual <= high + INSIDE_SLACK,
                        overlap=low - INSIDE_SLACK <= actual_high
                        and actual_low <= high + INSIDE_SLACK,
                        actual_is_lower_bound=lower_bound,
                    )
                )
    return Comparison(
        rows=rows,
        epsilon_predicted=float(prediction.epsilon),
        epsilon_actual=float(validation.epsilon),
        tolerance=validation.tolerance,
        dimension=validation.dimension,
        notes=notes,
    )
