"""The onset of one-shot pruning's loss budget, from the gradient and the curvature at w*.

Removing the p D smallest weights moves w* by -w_P(p) (w_P: the removed weights in
place, :meth:`~pruning_limit.limit.PrunedNorm.removed_vector`). The second-order
Taylor model of the training loss at w* gives the loss rise of one-shot pruning

    rise(p) = -g^T w_P(p) + w_P(p)^T C w_P(p) / 2,

g the full-data gradient and C the curvature (GGN or Hessian) at w*: no forward pass
at a pruned point, only products with C at w*. The *Taylor onset* is the first p at
which rise(p) reaches eps, the model's answer for the validator's one-shot
``loss_budget`` limit (the largest p whose train loss stays <= L(w*) + eps). Unlike
the closed forms it reads the curvature along the pruning direction itself, not
through the spectrum with the direction assumed isotropic (``trace_bound`` replaces
w_P^T C w_P by R(p)^2 tr(C)/D), and it keeps the gradient term, which is not zero at
a w* trained for a finite number of steps.

It is the prediction method ``taylor_onset`` (:func:`~pruning_limit.pipeline.predict_limit`,
``pruning-limit predict --method taylor_onset``, a study's ``[prediction] methods``),
labelled by its target in every table: the one-shot LOSS-BUDGET ONSET, not the
transition that ``paper`` and its kin predict. Cost: one gradient and ``points`` (201)
curvature products at w*, or a product with the dense matrix where the pipeline holds
it; it needs ``data=`` and ``loss_fn=``. It is not among the default methods (see
:data:`~pruning_limit.prediction.DEFAULT_METHODS`).

Measured on held-out networks (it has no fitted parameter, so every network is
held out): on the 88 float64 networks of ``benchmarks/calibration_runs.py`` (seeds
1-4; ``benchmarks/onset.py``, benchmarks/README.md "Onset from w* alone"), mean
|error| 1.3 points against the one-shot loss-budget onset (mean +1.1, Spearman 0.99;
1.8 on the plain networks), where ``trace_bound`` is at 4.8 (Spearman 0.98; 7.8 on
the plain networks). Against the 0.5-point test-accuracy onset it is at 8.5 (Spearman
0.82; ``trace_bound`` 8.5), and rescaling eps by a factor fitted by leave-one-out gets
8.2: the loss rise at w* does not locate the accuracy onset.

Example
-------
A least-squares loss is its own Taylor model, so the onset is exact:

>>> import numpy as np
>>> C = np.diag([2.0, 2.0, 2.0, 2.0])           # L(w) = |w - w0|^2 at w* = w0: g = 0
>>> w = np.array([0.1, 0.2, 0.3, 0.4])
>>> round(taylor_onset(C, w, np.zeros(4), epsilon=0.05 + 1e-9, points=1001), 3)
0.5

As a prediction method, from a model and its training data:

>>> import torch, pruning_limit as pl
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Linear(5, 1, bias=False).double()
>>> X = torch.randn(64, 5, dtype=torch.float64)
>>> y = model(X).detach() + 0.1 * torch.randn(64, 1, dtype=torch.float64)
>>> prediction = pl.predict_limit(model, data=(X, y), loss_fn=torch.nn.MSELoss(),
...                               epsilon=0.01, methods=("paper", "taylor_onset"))
>>> estimate = prediction.estimates["taylor_onset"]
>>> low, high = estimate.uncertainty["grid"]           # the grid cell of the crossing
>>> bool(low <= estimate.removal_fraction <= high), round(high - low, 6)
(True, 0.005)
>>> estimate.notes[0].split(" (")[0]
'predicts the one-shot LOSS-BUDGET ONSET'
"""

from __future__ import annotations

import numpy as np
import torch

from .budget import check_epsilon
from .limit import PrunedNorm

DEFAULT_POINTS = 201  # a grid step of 0.005, the validator's default resolution
# Curvature products per call: the removed vectors and their products are formed one
# block of rows at a time, so memory grows as BLOCK x D, not points x D.
BLOCK = 32
# How tables name what the method predicts: the onset of one-shot damage to the
# training loss, not the kinematic formula's transition.
TAYLOR_ONSET_LABEL = "one-shot loss-budget onset (second-order Taylor model at w*)"


class TaylorModel:
    """The Taylor model's one-shot loss rise at w* on a grid of p, computed once.

    rise(p) = linear(p) + quadratic(p) with linear(p) = -g^T w_P(p) (the gradient term)
    and quadratic(p) = w_P(p)^T C w_P(p) / 2 (the curvature term), at ``points``
    values of p evenly spaced in [0, 1]. The grid does not depend on eps, so the onset
    at any eps (and eps / 10, eps * 10) is then free. Cost: the gradient (given) and
    ``points`` products with C, in blocks of :data:`BLOCK` rows.

    Parameters
    ----------
    curvature
        C as a D x D array (numpy or torch), or an operator with ``apply(rows)`` (C
        applied to each row of a (K, D) tensor:
        :class:`~pruning_limit.curvature.CurvatureOperator`). Used as is: no
        eigenvalue policy (the Taylor model is an approximation, not a bound).
    weights, gradient
        w* and g = grad L(w*), flat, in the curvature's coordinate order.
    points
        Grid size (>= 2); the default's step of 0.005 is the validator's resolution.

    Example
    -------
    >>> import numpy as np
    >>> model = TaylorModel(np.eye(2), [1.0, 2.0], [0.5, 0.0], points=3)  # p = 0, 1/2, 1
    >>> model.linear.tolist(), model.quadratic.tolist()   # w_P(1/2) = (1, 0)
    ([0.0, -0.5, -0.5], [0.0, 0.5, 2.5])
    >>> model.onset(1.0), model.bracket(1.0)               # rise 0 -> 0 -> 2
    (0.75, (0.5, 1.0))
    """

    def __init__(self, curvature, weights, gradient, *, points: int = DEFAULT_POINTS) -> None:
        if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
            raise ValueError(f"points must be an integer >= 2, got {points!r}")
        self.norm = PrunedNorm(weights)
        self.weights = self.norm.weights
        self.dimension = self.norm.dimension
        self.removal_fractions = np.linspace(0.0, 1.0, int(points))
        self.linear, self.quadratic = _terms(curvature, self.norm, gradient, self.removal_fractions)

    @property
    def points(self) -> int:
        return int(self.removal_fractions.size)

    @property
    def rise(self) -> np.ndarray:
        """rise(p) on the grid :attr:`removal_fractions`."""
        return self.linear + self.quadratic

    def _first_above(self, epsilon: float) -> int | None:
        above = np.flatnonzero(self.rise >= _budget(epsilon))
        return None if above.size == 0 else int(above[0])

    def onset(self, epsilon: float) -> float:
        """The first p at which the rise reaches eps (fraction REMOVED).

        Linear between the grid points around the first crossing; 1.0 when the rise
        stays below eps on the whole grid.
        """
        i = self._first_above(epsilon)
        if i is None:
            return 1.0
        if i == 0:
            return 0.0
        x0, x1 = self.removal_fractions[i - 1], self.removal_fractions[i]
        y0, y1 = self.rise[i - 1], self.rise[i]
        return float(x0 + (_budget(epsilon) - y0) * (x1 - x0) / (y1 - y0))

    def bracket(self, epsilon: float) -> tuple[float, float]:
        """The grid cell that holds the first crossing: (last p below eps, first p at or
        above it); (1, 1) when the rise stays below eps, (0, 0) when it starts above."""
        i = self._first_above(epsilon)
        if i is None:
            return (1.0, 1.0)
        if i == 0:
            return (0.0, 0.0)
        return (float(self.removal_fractions[i - 1]), float(self.removal_fractions[i]))

    def terms(self, removal_fraction: float) -> dict:
        """The gradient and curvature terms of the rise at p, interpolated on the grid."""
        p = float(removal_fraction)
        return {
            "gradient_term": float(np.interp(p, self.removal_fractions, self.linear)),
            "curvature_term": float(np.interp(p, self.removal_fractions, self.quadratic)),
        }

    def __repr__(self) -> str:
        return f"TaylorModel(D={self.dimension}, points={self.points})"


def _budget(epsilon) -> float:
    """eps as a number (``"batch_std"`` and the like are measured by the caller)."""
    value = check_epsilon(epsilon)
    if isinstance(value, str):
        raise ValueError(f"the Taylor onset needs eps as a number, got {epsilon!r}")
    return float(value)


def _terms(curvature, norm: PrunedNorm, gradient, removal_fractions) -> tuple:
    """(-g^T w_P, w_P^T C w_P / 2) at each p, one block of curvature products at a time."""
    g = gradient.detach().cpu().double().numpy() if torch.is_tensor(gradient) else gradient
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if g.size != norm.dimension:
        raise ValueError(f"gradient has {g.size} coordinates, weights {norm.dimension}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gradient contains NaN or infinite values")
    operator = hasattr(curvature, "apply")
    if not operator:
        matrix = curvature.detach().cpu() if torch.is_tensor(curvature) else curvature
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (norm.dimension, norm.dimension):
            raise ValueError(
                f"curvature must be {norm.dimension} x {norm.dimension} to match the weights, "
                f"got {matrix.shape}"
            )
    elif getattr(curvature, "dimension", norm.dimension) != norm.dimension:
        raise ValueError(
            f"the operator acts on D = {curvature.dimension} coordinates but weights has "
            f"{norm.dimension}"
        )
    fractions = np.atleast_1d(np.asarray(removal_fractions, dtype=np.float64))
    linear, quadratic = [], []
    for start in range(0, fractions.size, BLOCK):
        removed = np.stack(
            [norm.removed_vector(float(p)) for p in fractions[start : start + BLOCK]]
        )
        if operator:
            rows = torch.as_tensor(removed, dtype=torch.float64)
            products = curvature.apply(rows).detach().double().cpu().numpy()
        else:
            products = removed @ matrix.T
        linear.append(-removed @ g)
        quadratic.append(0.5 * np.einsum("kd,kd->k", removed, products))
    return np.concatenate(linear), np.concatenate(quadratic)


def loss_rise(curvature, weights, gradient, removal_fractions) -> np.ndarray:
    """rise(p) = -g^T w_P(p) + w_P(p)^T C w_P(p) / 2 at each p (module docstring).

    Parameters
    ----------
    curvature
        C as a D x D array, or an operator with ``apply(rows)`` (see :class:`TaylorModel`).
    weights, gradient
        w* and g, flat, in the curvature's coordinate order.
    removal_fractions
        The p at which to evaluate (fractions REMOVED).

    Example
    -------
    >>> C, w = np.diag([2.0, 2.0, 2.0, 2.0]), np.array([0.1, 0.2, 0.3, 0.4])
    >>> loss_rise(C, w, np.zeros(4), [0.25, 0.5, 1.0]).round(6).tolist()   # |w_P|^2
    [0.01, 0.05, 0.3]
    >>> loss_rise(C, w, np.array([1.0, 0.0, 0.0, 0.0]), [0.25]).round(6).tolist()   # -0.1 + 0.01
    [-0.09]
    """
    linear, quadratic = _terms(curvature, PrunedNorm(weights), gradient, removal_fractions)
    return linear + quadratic


def taylor_onset(
    curvature, weights, gradient, epsilon: float, *, points: int = DEFAULT_POINTS
) -> float:
    """The first p at which the Taylor model's one-shot loss rise reaches eps.

    Evaluated on a uniform grid of ``points`` values of p in [0, 1] (one gradient, given,
    and ``points`` curvature products) and interpolated linearly between the grid points
    around the first crossing; 1.0 when the rise stays below eps
    (:meth:`TaylorModel.onset`).

    Example
    -------
    With C = 2 I and w* = (0.1, 0.2, 0.3, 0.4) the rise on the grid 0, 1/4, ..., 1 is
    0, 0.01, 0.05, 0.14, 0.3; eps = 0.03 is crossed half-way between 1/4 and 1/2:

    >>> C, w = np.diag([2.0, 2.0, 2.0, 2.0]), np.array([0.1, 0.2, 0.3, 0.4])
    >>> round(taylor_onset(C, w, np.zeros(4), 0.03, points=5), 6)
    0.375
    >>> taylor_onset(C, w, np.zeros(4), 1.0)   # the rise stays below eps
    1.0
    """
    epsilon = _budget(epsilon)
    return TaylorModel(curvature, weights, gradient, points=points).onset(epsilon)
