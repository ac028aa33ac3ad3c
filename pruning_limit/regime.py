"""The network's regime: the features at w* that decide how far a predictor lands from pruning.

Against real pruning the predictors' errors depend on the kind of network far more
than on the spectrum's own uncertainty: on the study of ``benchmarks/prediction_vs_actual.py``
the paper's closed form misses the one-shot accuracy onset by about +4 points on
L1-trained networks that fit their data, by about +45 on plain ones, and by +15 to
+70 on networks that do not fit their data. A :class:`Regime` holds the raw features
that separate these cases and a short name for the case, so that an error figure or a
calibrated interval (:mod:`pruning_limit.calibration`) can be taken from networks like
the user's.

Features, all at the trained weights w* (D prunable weights, N training samples):

- ``train_accuracy``, ``train_loss``: mean accuracy and loss over the training set
  (:func:`pruning_limit.training.evaluate`);
- ``l1``, ``optimizer``: the L1 strength and optimiser the model card records
  (``None`` / ``"unknown"`` without a card);
- ``small_weight_share``: #{j : |w_j| < 1e-3 max_i |w_i|} / D;
- ``d_over_n``: D / N;
- ``pruned_norm_ratio``: R(p*) / ||w*||, R(p) = sqrt(sum of the p D smallest w_j^2),
  at a predicted limit p* (``removal_fraction``, from ``removal_fraction_method``);
- ``curvature``, ``epsilon_source``: what the prediction used (``"ggn"`` /
  ``"hessian"``; ``"batch_std"`` / ``"given"``).

The named class (:attr:`Regime.name`, thresholds :data:`FIT_ACCURACY` and
:data:`SPARSE_SHARE`)::

    train_accuracy <  FIT_ACCURACY                          -> "under-fitted"
    train_accuracy >= FIT_ACCURACY, share >= SPARSE_SHARE   -> "sparse, fits the data"
    train_accuracy >= FIT_ACCURACY, share <  SPARSE_SHARE   -> "dense, fits the data"

How the thresholds were chosen (the 44 runs of ``benchmarks/prediction_vs_actual.py``,
22 networks each trained in float32 and float64, features measured by
``benchmarks/calibration_set.py``): the train accuracies fall in two groups, 0.972-1.0
(manifold d <= 16, digits PCA 16 and full) and 0.425-0.918 (manifold d = 32, digits
PCA 4, every MNIST-1D); FIT_ACCURACY = 0.95 sits in that gap. The share of tiny weights
is 0.1-1.0 % after plain Adam training and 8.8-72 % with L1 (lambda = 1e-3; 27-72 %
among the networks that fit); SPARSE_SHARE = 0.05 sits in that gap, far from both
groups. The classes separate the errors: against the one-shot accuracy onset, the
paper's closed form is off by +8.7 points on average (-0.4 to +14) for "sparse, fits the
data", +43.9 (+28 to +64) for "dense, fits the data" and +36.4 (+3 to +76) for
"under-fitted". These thresholds are read off one study of small MLPs; a network near
one of them is near the edge of what was measured, which
:mod:`pruning_limit.calibration` checks feature by feature.

Example
-------
>>> import torch
>>> from pruning_limit.regime import measure_regime
>>> model = torch.nn.Linear(4, 2, bias=False)
>>> with torch.no_grad():
...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1e-4]]))
>>> X = torch.eye(4)[:2]
>>> y = torch.tensor([0, 1])
>>> regime = measure_regime(model, torch.nn.CrossEntropyLoss(), (X, y),
...                         removal_fraction=0.75)
>>> regime.train_accuracy, regime.small_weight_share, regime.d_over_n
(1.0, 0.75, 4.0)
>>> regime.pruned_norm_ratio  # R(0.75) = norm of the 6 smallest of 8 = 1e-4
7.071...e-05
>>> regime.name
'sparse, fits the data'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from ._checks import check_mean_reduction
from .batches import as_batches
from .metrics import EVALUATION_BATCH_SIZE, is_classification, split_metrics
from .parameters import eval_mode, resolve_parameters
from .serialization import plain

# Thresholds of the named class; see the module docstring for how they were chosen.
FIT_ACCURACY = 0.95
SPARSE_SHARE = 0.05
SMALL_WEIGHT_RELATIVE = 1e-3  # |w| < 1e-3 max|w| counts as a tiny weight
UNDER_FITTED = "under-fitted"
SPARSE_FITS = "sparse, fits the data"
DENSE_FITS = "dense, fits the data"
CLASSES = (SPARSE_FITS, DENSE_FITS, UNDER_FITTED)
UNKNOWN = "unknown"
# The continuous features, with how each is compared across networks.
CONTINUOUS_FEATURES = (
    "train_accuracy",
    "train_loss",
    "small_weight_share",
    "d_over_n",
    "pruned_norm_ratio",
)


@dataclass(frozen=True)
class Regime:
    """The regime of a trained network: raw features at w* and a short named class.

    Attributes
    ----------
    train_accuracy
        Mean training accuracy at w* (``None`` for a model that is not a classifier).
    train_loss
        L(w*), the mean training loss.
    l1
        The L1 strength the model card records (0 for none), ``None`` without a card.
    optimizer
        The optimiser the card records, ``"unknown"`` without one.
    small_weight_share
        The share of prunable weights with |w| < 1e-3 max|w|.
    dimension, num_train
        D prunable weights, N training samples.
    removal_fraction
        The predicted limit p* at which ``pruned_norm_ratio`` is measured (fraction REMOVED).
    removal_fraction_method
        The predictor p* came from (``None`` when given without one).
    pruned_norm_ratio
        R(p*) / ||w*||: the share of the weights' norm that pruning at p* removes.
    curvature
        ``"ggn"``, ``"hessian"`` or ``"unknown"``.
    epsilon_source
        How eps was obtained (``"batch_std"``, ``"given"`` or ``"unknown"``).

    Example
    -------
    >>> regime = Regime(train_accuracy=0.99, train_loss=0.03, l1=0.0, optimizer="adam",
    ...                 small_weight_share=0.01, dimension=816, num_train=2000,
    ...                 removal_fraction=0.97, removal_fraction_method="paper",
    ...                 pruned_norm_ratio=0.9, curvature="ggn", epsilon_source="batch_std")
    >>> regime.name, regime.l1_used, regime.d_over_n   # 1 % tiny weights < SPARSE_SHARE
    ('dense, fits the data', False, 0.408)
    >>> Regime.from_dict(regime.to_dict()) == regime
    True
    """

    train_accuracy: float | None
    train_loss: float
    l1: float | None
    optimizer: str
    small_weight_share: float
    dimension: int
    num_train: int
    removal_fraction: float
    removal_fraction_method: str | None
    pruned_norm_ratio: float
    curvature: str = UNKNOWN
    epsilon_source: str = UNKNOWN

    @property
    def l1_used(self) -> bool | None:
        """Whether the card records an L1 penalty (``None``: no card)."""
        return None if self.l1 is None else self.l1 > 0

    @property
    def d_over_n(self) -> float:
        """D / N: prunable weights per training sample."""
        return self.dimension / self.num_train

    @property
    def fits_data(self) -> bool:
        """train accuracy >= :data:`FIT_ACCURACY` (a network without accuracy does not)."""
        return self.train_accuracy is not None and self.train_accuracy >= FIT_ACCURACY

    @property
    def name(self) -> str:
        """The named class (see the module docstring for the rule and thresholds)."""
        if not self.fits_data:
            return UNDER_FITTED
        return SPARSE_FITS if self.small_weight_share >= SPARSE_SHARE else DENSE_FITS

    def feature(self, name: str) -> float | None:
        """A continuous feature by name (one of :data:`CONTINUOUS_FEATURES`)."""
        if name not in CONTINUOUS_FEATURES:
            raise KeyError(f"no continuous feature {name!r}; known: {CONTINUOUS_FEATURES}")
        return getattr(self, name)

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain dict of the features, with ``name``, ``l1_used`` and ``d_over_n`` for readers."""
        data = plain(asdict(self))
        data.update(name=self.name, l1_used=self.l1_used, d_over_n=self.d_over_n)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Regime:
        """Read :meth:`to_dict`; the derived entries (name, l1_used, d_over_n) are recomputed."""
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise ValueError(f"a regime needs the fields {missing}; got {sorted(data)}")
        return cls(**{key: value for key, value in data.items() if key in known})

    def __str__(self) -> str:
        accuracy = "-" if self.train_accuracy is None else f"{self.train_accuracy:.4f}"
        l1 = "unknown" if self.l1 is None else ("no" if self.l1 == 0 else f"yes ({self.l1:g})")
        method = f" ({self.removal_fraction_method})" if self.removal_fraction_method else ""
        return "\n".join(
            [
                f"Regime: {self.name}",
                f"  train accuracy {accuracy}, train loss {self.train_loss:.4g}",
                f"  L1 penalty: {l1}; optimiser: {self.optimizer}",
                f"  weights with |w| < {SMALL_WEIGHT_RELATIVE:g} max|w|: "
                f"{100 * self.small_weight_share:.1f} %",
                f"  D/N = {self.dimension}/{self.num_train} = {self.d_over_n:.3g}; "
                f"R(p*)/||w|| = {self.pruned_norm_ratio:.3g} at p* = "
                f"{self.removal_fraction:.4f}{method}",
                f"  curvature: {self.curvature}; eps: {self.epsilon_source}",
            ]
        )


def small_weight_share(weights, relative: float = SMALL_WEIGHT_RELATIVE) -> float:
    """#{j : |w_j| < relative * max|w|} / D (0 when every weight is 0).

    >>> small_weight_share([1.0, 1e-4, 0.0, -0.5])
    0.5
    """
    magnitudes = np.abs(np.asarray(weights, dtype=np.float64).reshape(-1))
    if magnitudes.size == 0:
        raise ValueError("weights is empty")
    largest = magnitudes.max()
    if largest == 0:
        return 0.0
    return float(np.mean(magnitudes < relative * largest))


def card_training(card: dict | None) -> tuple[float | None, str]:
    """(L1 strength, optimiser) from a model card (:mod:`pruning_limit.training`).

    Without a card, or where the card is silent: ``(None, "unknown")``.

    >>> card_training({"training": {"l1": 5e-5, "optimizer": "sgd"}})
    (5e-05, 'sgd')
    >>> card_training(None), card_training({"format": 1})
    ((None, 'unknown'), (None, 'unknown'))
    """
    if card is None:
        return None, UNKNOWN
    if not isinstance(card, dict):
        raise TypeError(f"card must be a model card dict or None, got {type(card).__name__}")
    training = card.get("training") or {}
    l1 = training.get("l1")
    return (None if l1 is None else float(l1)), str(training.get("optimizer") or UNKNOWN)


def measure_regime(
    model: nn.Module,
    loss_fn: nn.Module | None,
    train_data,
    *,
    removal_fraction: float,
    removal_fraction_method: str | None = None,
    card: dict | None = None,
    curvature: str = UNKNOWN,
    epsilon_source: str | dict = UNKNOWN,
    params: Iterable | None = None,
    classification: bool | None = None,
) -> Regime:
    """Measure the :class:`Regime` of a trained network at its weights w*.

    Parameters
    ----------
    model
        The trained network (not modified).
    loss_fn
        A batch-mean loss; default ``nn.CrossEntropyLoss()``.
    train_data
        The training data, as :func:`~pruning_limit.batches.as_batches` takes it
        (``(X, y)``, a DataLoader, an iterable of batches); N of D/N is its sample count.
    removal_fraction
        p*, the predicted limit (fraction REMOVED) at which R(p*)/||w*|| is read.
    removal_fraction_method
        The predictor p* comes from (recorded; the calibration compares like with like).
    card
        The model card, if any: L1 strength and optimiser are read from it.
    curvature
        The curvature the prediction used (``"ggn"`` or ``"hessian"``).
    epsilon_source
        How eps was obtained: the prediction's ``epsilon_source`` record (its
        ``kind`` is kept) or the kind as a string.
    params
        The prunable tensors (:func:`~pruning_limit.parameters.resolve_parameters`);
        default every Linear/Conv ``weight``.
    classification
        Whether ``model`` is a classifier; if not, ``train_accuracy`` is ``None``.
        Default: whether the targets are class labels (one integer per sample).

    Returns
    -------
    Regime

    Example
    -------
    W = diag(3, 4): both classes right, half the weights zero; at p* = 3/4 pruning
    removes 0, 0 and 3, so R(p*)/||w*|| = 3/5.

    >>> model = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    >>> regime = measure_regime(model, nn.CrossEntropyLoss(), (torch.eye(2), torch.tensor([0, 1])),
    ...                         removal_fraction=0.75, removal_fraction_method="paper",
    ...                         card={"training": {"l1": 1e-3, "optimizer": "sgd"}},
    ...                         epsilon_source={"kind": "batch_std", "value": 0.01})
    >>> regime.train_accuracy, regime.small_weight_share, round(regime.pruned_norm_ratio, 6)
    (1.0, 0.5, 0.6)
    >>> regime.l1, regime.optimizer, regime.epsilon_source, regime.name
    (0.001, 'sgd', 'batch_std', 'sparse, fits the data')
    """
    p = float(removal_fraction)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"removal_fraction must lie in [0, 1], got {removal_fraction}")
    batches = as_batches(train_data, EVALUATION_BATCH_SIZE)
    selected = resolve_parameters(model, params)
    with torch.no_grad():
        weights = np.concatenate(
            [t.detach().double().cpu().numpy().reshape(-1) for _, t in selected]
        )
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    check_mean_reduction(loss_fn)
    # Sample-weighted means over the batches, as every full-data quantity here.
    total_loss = total_correct = 0.0
    with eval_mode(model):
        for inputs, targets in batches:
            if classification is None:
                classification = is_classification(targets)
            loss, accuracy = split_metrics(model, inputs, targets, loss_fn, classification)
            total_loss += loss * len(targets)
            total_correct += (accuracy or 0.0) * len(targets)
    num_train = batches.num_samples
    l1, optimizer = card_training(card)
    if isinstance(epsilon_source, dict):
        epsilon_source = str(epsilon_source.get("kind", UNKNOWN))
    # Imported here: limit imports prediction, which imports this module.
    from .limit import pruned_norm

    norm = float(np.linalg.norm(weights))
    ratio = float(pruned_norm(weights, p)) / norm if norm > 0 else 0.0
    return Regime(
        train_accuracy=total_correct / num_train if classification else None,
        train_loss=total_loss / num_train,
        l1=l1,
        optimizer=optimizer,
        small_weight_share=small_weight_share(weights),
        dimension=int(weights.size),
        num_train=int(num_train),
        removal_fraction=p,
        removal_fraction_method=removal_fraction_method,
        pruned_norm_ratio=ratio,
        curvature=str(curvature),
        epsilon_source=str(epsilon_source),
    )
