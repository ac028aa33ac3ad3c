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
  :func:`~pruning_limit.limit.loss_budget`, or a number).

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

import json
import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .batches import DEFAULT_BATCH_SIZE, check_model_and_data
from .hessian import CurvatureOperator, eval_mode, resolve_parameters
from .limit import CONVENTION, Prediction, loss_budget
from .pruning import (
    DEFAULT_AMOUNTS,
    AccuracyDrop,
    AccuracyDropBound,
    LossBudget,
    SweepPoint,
    accuracy_interval,
    limit_from_sweep,
    limit_interval,
    sweep,
)
from .quadratic import DEFAULT_DENSE_LIMIT, QuadraticModel
from .serialization import plain, read_json, write_json

VARIANTS = ("one_shot", "refit", "finetune")
CRITERIA = ("accuracy", "loss_budget")
FORMAT_VERSION = 1
EVALUATION_BATCH_SIZE = 4096
_INSIDE_SLACK = 1e-12


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneBudget:
    """How the ``finetune`` variant trains the kept weights after pruning.

    Adam (betas 0.9, 0.999, eps 1e-8) on the mean training loss ``loss_fn`` (no
    penalty), ``epochs`` passes over the training set in shuffled mini-batches of
    ``batch_size``, the batch order drawn from the validation's ``seed`` (the same for
    every p). Gradients and steps are masked, so removed weights stay exactly zero;
    biases and other non-pruned parameters are held fixed, as in the theory. The
    result is the iterate (start or end of an epoch) with the lowest full training
    loss, so fine-tuning never does worse than no fine-tuning.
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"finetune {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"finetune lr must be a positive number, got {self.lr!r}")

    @classmethod
    def of(cls, value) -> FinetuneBudget:
        """A budget from None (the defaults), a FinetuneBudget or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"epochs", "lr", "batch_size"})
            if unknown:
                raise ValueError(
                    f"unknown finetune option(s) {unknown}; known: epochs, lr, batch_size"
                )
            return cls(**value)
        raise TypeError(f"finetune must be a dict or FinetuneBudget, got {type(value).__name__}")


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
        How many distinct supports were evaluated.
    seconds
        Wall time of the sweep.
    reference
        ``finetune`` only: the metrics of the unpruned network after the same
        fine-tune (p = 0 in the sweep is the dense network itself), to tell the
        fine-tune's own effect on accuracy from pruning's.
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

    def to_dict(self) -> dict:
        data = asdict(self)
        data["points"] = [_point_dict(point) for point in self.points]
        return plain(data)

    @classmethod
    def from_dict(cls, data: dict) -> VariantSweep:
        data = dict(data)
        data["points"] = [
            SweepPoint(
                amount=float(p["amount"]),
                removed=int(p["removed"]),
                dimension=int(p["dimension"]),
                metrics=dict(p["metrics"]),
            )
            for p in data["points"]
        ]
        for key in ("accuracy_interval", "accuracy_bracket", "loss_budget_bracket"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def limit(self, criterion: str) -> float | None:
        _check_criterion(criterion)
        return self.accuracy_limit if criterion == "accuracy" else self.loss_budget_limit

    def interval(self, criterion: str) -> tuple | None:
        """Accuracy: the binomial interval on the limit; loss budget: the sweep bracket."""
        _check_criterion(criterion)
        if criterion == "accuracy":
            return self.accuracy_interval
        low, high = self.loss_budget_bracket
        return (low, low if high is None else high)


@dataclass
class Validation:
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
        The loss budget and how it was obtained (:func:`~pruning_limit.limit.loss_budget`).
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

    def limit(self, variant: str = "one_shot", criterion: str = "accuracy") -> float | None:
        """The actual limit (fraction REMOVED) of ``variant`` under ``criterion``."""
        return self._variant(variant).limit(criterion)

    def interval(self, variant: str = "one_shot", criterion: str = "accuracy") -> tuple | None:
        return self._variant(variant).interval(criterion)

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

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (``.json`` added if missing), atomically."""
        return write_json(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> Validation:
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"validation format {version}, this version reads {FORMAT_VERSION}")
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
        """A readable table of the actual limits of every variant."""
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
            f"{'variant':<10}{'accuracy limit':>16}   {'95% interval':<18}"
            f"{'loss-budget limit':>18}{'evals':>7}",
        ]
        for name, result in self.variants.items():
            accuracy = "-" if result.accuracy_limit is None else f"{result.accuracy_limit:.4f}"
            interval = (
                "-"
                if result.accuracy_interval is None
                else "[{:.4f}, {:.4f}]".format(*result.accuracy_interval)
            )
            lines.append(
                f"{name:<10}{accuracy:>16}   {interval:<18}{result.loss_budget_limit:>18.4f}"
                f"{result.evaluations:>7}"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}={_fmt(sweep.accuracy_limit)}/{_fmt(sweep.loss_budget_limit)}"
            for name, sweep in self.variants.items()
        )
        return (
            f"Validation(removed, accuracy/loss-budget limits: {parts}; "
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


def _check_pair(data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        raise TypeError(
            f"{split}_data must be a pair of tensors (X, y), got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    inputs, targets = data
    if inputs.dim() < 1 or targets.dim() < 1 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{split}_data: inputs of shape {tuple(inputs.shape)} and targets of shape "
            f"{tuple(targets.shape)} disagree on the number of samples"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{split}_data holds no sample")
    return inputs, targets


def _is_classification(targets: torch.Tensor) -> bool:
    return targets.dim() == 1 and not targets.is_floating_point() and not targets.is_complex()


def _check_fits(model, loss_fn, inputs, targets, split: str, reference) -> None:
    """One forward pass on two samples: a clear error now rather than mid-sweep."""
    try:
        with eval_mode(model), torch.no_grad():
            outputs = model(inputs[:2].to(device=reference.device, dtype=reference.dtype))
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        raise ValueError(
            f"{split} inputs of shape {tuple(inputs.shape)} do not fit the model "
            f"({type(model).__name__}): {str(error).splitlines()[0]}"
        ) from error
    if _is_classification(targets):
        if outputs.dim() != 2:
            raise ValueError(
                f"{split} targets are class labels but the model returns outputs of shape "
                f"{tuple(outputs.shape)} per batch; expected (batch, classes)"
            )
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= outputs.shape[1]:
            raise ValueError(
                f"{split} labels lie in [{low}, {high}] but the model has {outputs.shape[1]} "
                "output classes"
            )
    try:
        loss_fn(outputs, _targets_like(targets[:2], reference))
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        raise ValueError(
            f"{split} targets of shape {tuple(targets.shape)} do not fit the model's outputs "
            f"of shape {tuple(outputs.shape[1:])} per sample under {type(loss_fn).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from error


def _targets_like(targets: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    if targets.is_floating_point():
        return targets.to(device=reference.device, dtype=reference.dtype)
    return targets.to(reference.device)


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


def _metrics_function(splits: dict, loss_fn, classification: bool) -> Callable:
    """model -> {split_loss, split_accuracy, n_split}: means over samples, in the model's dtype."""

    def metrics_of(model: nn.Module) -> dict[str, float]:
        reference = next(model.parameters())
        metrics: dict[str, float] = {}
        with torch.no_grad():
            for split, (inputs, targets) in splits.items():
                total, correct = 0.0, 0
                for start in range(0, inputs.shape[0], EVALUATION_BATCH_SIZE):
                    x = inputs[start : start + EVALUATION_BATCH_SIZE]
                    t = _targets_like(targets[start : start + EVALUATION_BATCH_SIZE], reference)
                    outputs = model(x.to(device=reference.device, dtype=reference.dtype))
                    total += float(loss_fn(outputs, t)) * len(t)
                    if classification:
                        correct += int((outputs.argmax(dim=1) == t).sum())
                count = int(inputs.shape[0])
                metrics[f"{split}_loss"] = total / count
                if classification:
                    metrics[f"{split}_accuracy"] = correct / count
                metrics[f"n_{split}"] = count
        return metrics

    return metrics_of


class _Weights:
    """The pruned tensors, w* (one saved copy) and the current keep-mask."""

    def __init__(self, selected) -> None:
        self.tensors = [tensor for _, tensor in selected]
        with torch.no_grad():
            self.original = [tensor.detach().clone() for tensor in self.tensors]

    def keep_masks(self) -> list[torch.Tensor]:
        # Inside pruned() the removed weights are the zeros (see the module docstring).
        return [tensor.detach() != 0 for tensor in self.tensors]

    def unchanged(self) -> bool:
        """True when pruning removed nothing that was not already zero: the dense network."""
        return all(torch.equal(t, o) for t, o in zip(self.tensors, self.original))

    def flat_pruned(self, masks) -> np.ndarray:
        return np.concatenate([(~keep).cpu().numpy().reshape(-1) for keep in masks])

    def write_flat(self, vector: np.ndarray) -> None:
        offset = 0
        with torch.no_grad():
            for tensor in self.tensors:
                piece = vector[offset : offset + tensor.numel()]
                offset += tensor.numel()
                tensor.copy_(
                    torch.as_tensor(piece).reshape(tensor.shape).to(tensor.device, tensor.dtype)
                )

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, original in zip(self.tensors, self.original):
                tensor.copy_(original)


def _refit_evaluator(weights: _Weights, quadratic: QuadraticModel, metrics_of) -> Callable:
    def evaluate(model: nn.Module) -> dict[str, float]:
        if weights.unchanged():  # p = 0: the dense network, nothing to re-fit
            return metrics_of(model)
        try:
            weights.write_flat(quadratic.refit(weights.flat_pruned(weights.keep_masks())))
            return metrics_of(model)
        finally:
            weights.restore()

    return evaluate


def _finetune_evaluator(
    weights: _Weights, budget: FinetuneBudget, train_pair, loss_fn, seed: int, metrics_of
) -> tuple[Callable, Callable]:
    """(evaluate for the sweep, fine-tune and evaluate whatever the mask).

    The sweep's evaluation leaves a network with nothing removed as it is: p = 0 is the
    dense network, the reference the criteria are defined against.
    """
    inputs, targets = train_pair
    train_loss = _metrics_function({"train": train_pair}, loss_fn, classification=False)

    def finetuned(model: nn.Module) -> dict[str, float]:
        masks = weights.keep_masks()
        flags = [tensor.requires_grad for tensor in weights.tensors]
        try:
            for tensor in weights.tensors:
                tensor.requires_grad_(True)
            _adam_on_kept(
                model, weights.tensors, masks, inputs, targets, loss_fn, budget, seed, train_loss
            )
            return metrics_of(model)
        finally:
            weights.restore()
            for tensor, flag in zip(weights.tensors, flags):
                tensor.requires_grad_(flag)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return metrics_of(model) if weights.unchanged() else finetuned(model)

    return evaluate, finetuned


def _adam_on_kept(model, tensors, masks, inputs, targets, loss_fn, budget, seed, train_loss):
    """Adam on the kept entries of ``tensors``; leaves them at the best iterate.

    The full training loss is measured before the first step and after every epoch,
    and the weights end at the iterate where it was lowest: a fresh Adam's first
    steps have size ~lr whatever the gradient, so near a minimum they can raise the
    loss, and "is there a point of V_K in S(eps)" asks for the best point found, not
    the last. No ``.grad`` attribute and no optimizer object is touched.
    """
    beta1, beta2, tiny = 0.9, 0.999, 1e-8
    reference = tensors[0]
    keeps = [keep.to(tensor.dtype) for keep, tensor in zip(masks, tensors)]
    first = [torch.zeros_like(tensor) for tensor in tensors]
    second = [torch.zeros_like(tensor) for tensor in tensors]
    best_loss = train_loss(model)["train_loss"]
    best = [tensor.detach().clone() for tensor in tensors]
    order = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(budget.epochs):
        for batch in torch.randperm(inputs.shape[0], generator=order).split(budget.batch_size):
            x = inputs[batch].to(device=reference.device, dtype=reference.dtype)
            t = _targets_like(targets[batch], reference)
            with torch.enable_grad():
                loss = loss_fn(model(x), t)
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            step += 1
            with torch.no_grad():
                for tensor, grad, keep, m, v in zip(tensors, grads, keeps, first, second):
                    if grad is None:
                        continue
                    grad = grad * keep
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + tiny)
                    tensor.sub_(budget.lr * update * keep)
        loss_now = train_loss(model)["train_loss"]
        if loss_now < best_loss:
            best_loss = loss_now
            best = [tensor.detach().clone() for tensor in tensors]
    with torch.no_grad():
        for tensor, value in zip(tensors, best):
            tensor.copy_(value)


# -- the validator ------------------------------------------------------------------------------


def validate(
    model: nn.Module,
    *,
    train_data,
    test_data,
    loss_fn,
    epsilon: str | float | None = None,
    variants: Iterable[str] = ("one_shot", "refit"),
    tolerance: float = 0.5,
    resolution: float = 0.005,
    amounts: Sequence[float] | None = None,
    params: Iterable | None = None,
    curvature: str | QuadraticModel = "auto",
    policy: str = "abs",
    damping: float = 0.0,
    dense_limit: int = DEFAULT_DENSE_LIMIT,
    finetune: FinetuneBudget | dict | None = None,
    confidence: float = 0.95,
    interval_method: str = "wilson",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> Validation:
    """Prune ``model`` for real, over a sweep of p, and read its actual pruning limits.

    Parameters
    ----------
    model
        The trained network. It is pruned in place and restored bit-identically.
    train_data, test_data
        ``(X, y)`` pairs of tensors. Integer class labels (1-d) give accuracies; any
        other targets (e.g. float regression targets) give losses only.
    loss_fn
        A batch-mean loss, ``loss_fn(outputs, targets)``: the loss the model was
        trained on and the prediction used (e.g. ``nn.CrossEntropyLoss()``).
    epsilon
        The loss budget: ``None`` or ``"batch_std"`` (the standard deviation of the
        mini-batch training losses at w*, batches of ``batch_size``, in float64, as
        :func:`~pruning_limit.limit.predict_limit` computes it) or a positive number.
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
    """
    started = time.perf_counter()
    variants = _check_variants(variants)
    tolerance = _check_tolerance(tolerance)
    if not (isinstance(resolution, numbers.Real) and 0 < resolution < 1):
        raise ValueError(f"resolution must be a number in (0, 1), got {resolution!r}")
    if epsilon is None:
        epsilon = "batch_std"
    if not (isinstance(epsilon, str) and epsilon == "batch_std"):
        loss_budget(None, epsilon)  # refuse a bad number before any work
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if isinstance(curvature, str) and curvature not in ("auto", "hessian", "ggn"):
        raise ValueError(
            f"curvature must be 'auto', 'hessian', 'ggn' or a QuadraticModel, got {curvature!r}"
        )
    if not isinstance(curvature, (str, QuadraticModel)):
        raise TypeError(
            f"curvature must be a string or a QuadraticModel, got {type(curvature).__name__}"
        )
    budget = FinetuneBudget.of(finetune) if "finetune" in variants else None
    if getattr(loss_fn, "reduction", "mean") != "mean":
        raise ValueError(
            f"loss_fn must average over the batch (reduction='mean'), got {loss_fn.reduction!r}"
        )
    grid = sorted({0.0, *(DEFAULT_AMOUNTS if amounts is None else map(float, amounts))})

    train_pair = _check_pair(train_data, "train")
    test_pair = _check_pair(test_data, "test")
    if train_pair[0].shape[1:] != test_pair[0].shape[1:]:
        raise ValueError(
            f"test inputs of shape {tuple(test_pair[0].shape)} do not match the training "
            f"inputs of shape {tuple(train_pair[0].shape)} (samples first)"
        )
    selected = resolve_parameters(model, params)
    reference = selected[0][1]
    classification = _is_classification(train_pair[1]) and _is_classification(test_pair[1])
    for split, (inputs, targets) in (("train", train_pair), ("test", test_pair)):
        _check_fits(model, loss_fn, inputs, targets, split, reference)
        check_model_and_data(
            model,
            loss_fn,
            (inputs, targets),
            what=f"the {split} data",
            min_samples=2 if split == "train" else 1,
        )
    parameters = [[name, list(tensor.shape)] for name, tensor in selected]
    dimension = sum(tensor.numel() for _, tensor in selected)
    weights = _Weights(selected)
    w_star = np.concatenate(
        [t.detach().cpu().double().numpy().reshape(-1) for t in weights.original]
    )

    operator = None
    if epsilon == "batch_std" or ("refit" in variants and isinstance(curvature, str)):
        kind = curvature if curvature in ("hessian", "ggn") else "hessian"
        if curvature == "auto" and dimension > dense_limit:
            kind = "ggn"
        operator = CurvatureOperator(
            model,
            loss_fn,
            train_pair,
            curvature=kind,
            params=[name for name, _ in selected],
            dtype=torch.float64,
            device=reference.device,
            batch_size=batch_size,
        )
    eps, eps_source = loss_budget(operator, epsilon, dtype=torch.float64)

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
            quadratic = QuadraticModel(
                operator, w_star, policy=policy, damping=damping, dense_limit=dense_limit
            )
            kind = operator.curvature
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
    metrics_of = _metrics_function(splits, loss_fn, classification)
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
        evaluators["refit"] = _refit_evaluator(weights, quadratic, metrics_of)
    finetuned_dense = None
    if "finetune" in variants:
        evaluators["finetune"], finetune_anyway = _finetune_evaluator(
            weights, budget, train_pair, loss_fn, seed, metrics_of
        )
        with eval_mode(model):
            finetuned_dense = finetune_anyway(model)

    results = {}
    for variant in variants:
        sweep_started = time.perf_counter()
        points = sweep(
            model,
            evaluators[variant],
            is_broken=criteria,
            amounts=grid,
            resolution=resolution,
            params=[name for name, _ in selected],
            progress=progress,
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
        if variant == "finetune":
            results[variant].reference = finetuned_dense
            results[variant].notes.append(
                "p = 0 is the dense network itself; reference: the dense network after the same "
                "fine-tune (nothing removed), which shows the fine-tune's own effect"
            )
    from . import __version__

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
    )


def _bracket(points: Sequence[SweepPoint], is_broken) -> tuple[float, float | None]:
    limit = limit_from_sweep(points, is_broken)
    after = [p.amount for p in points if p.amount > limit and is_broken(p.metrics)]
    return limit, (min(after) if after else None)


def _read_limits(
    variant, points, drop, budget_criterion, confidence, interval_method, seconds
) -> VariantSweep:
    notes = []
    accuracy_limit = accuracy_bracket = accuracy_limits_interval = None
    if drop is not None:
        for point in points:
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
        points=points,
        accuracy_limit=accuracy_limit,
        accuracy_interval=accuracy_limits_interval,
        accuracy_bracket=accuracy_bracket,
        loss_budget_limit=loss_bracket[0],
        loss_budget_bracket=loss_bracket,
        evaluations=len({p.removed for p in points}),
        seconds=seconds,
        notes=notes,
    )


# -- prediction vs actual -------------------------------------------------------------------------


@dataclass
class ComparisonRow:
    """One predictor against one meaning of actual under one criterion.

    ``error_pp`` = 100 (predicted - actual): positive means the predictor promised
    more than pruning delivered. ``inside``: the actual limit lies in the predictor's
    interval; ``overlap``: the predictor's interval meets the actual one (the binomial
    interval for accuracy, the sweep bracket for the loss budget).
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
    """Every predictor of a Prediction against every variant and criterion of a Validation."""

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
            "actual interval | error (pp) | inside | overlap |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            bound = " (lower bound)" if r.actual_is_lower_bound else ""
            lines.append(
                f"| {r.method} | {r.variant} | {r.criterion} | {r.predicted:.4f} | "
                f"[{r.predicted_interval[0]:.4f}, {r.predicted_interval[1]:.4f}] | "
                f"{r.actual:.4f}{bound} | [{r.actual_interval[0]:.4f}, "
                f"{r.actual_interval[1]:.4f}] | {r.error_pp:+.1f} | "
                f"{'yes' if r.inside else 'no'} | {'yes' if r.overlap else 'no'} |"
            )
        lines += [f"\nnote: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def compare(prediction: Prediction, validation: Validation) -> Comparison:
    """Every predictor of ``prediction`` against every actual limit of ``validation``.

    For each method, variant and criterion (``"accuracy"`` when the task has labels,
    and ``"loss_budget"``), the predicted p (fraction removed) and its interval, the
    actual limit and its interval, the error in percentage points and whether the
    actual lies inside the predicted interval.

    Raises
    ------
    ValueError
        If the prediction was made for another model: the pruned tensors' names or
        shapes, or D, differ.
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
    criteria = ["loss_budget"] if validation.task != "classification" else list(CRITERIA)
    rows = []
    for method, estimate in prediction.estimates.items():
        low, high = (float(x) for x in estimate.interval)
        for variant, result in validation.variants.items():
            for criterion in criteria:
                actual = float(result.limit(criterion))
                actual_low, actual_high = (float(x) for x in result.interval(criterion))
                bracket = (
                    result.accuracy_bracket
                    if criterion == "accuracy"
                    else result.loss_budget_bracket
                )
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
                        inside=low - _INSIDE_SLACK <= actual <= high + _INSIDE_SLACK,
                        overlap=low - _INSIDE_SLACK <= actual_high
                        and actual_low <= high + _INSIDE_SLACK,
                        actual_is_lower_bound=bracket[1] is None,
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
