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

Measured on held-out networks (it has no fitted parameter, so every network is
held out): on the 22 float64 networks of ``benchmarks/calibration_runs.py`` (seed 1;
``benchmarks/onset.py``), mean |error| 1.1 points against the one-shot loss-budget
onset (mean +1.1, Spearman 1.00), where ``trace_bound`` is at 4.7 (Spearman 0.97).
Against the 0.5-point test-accuracy onset it is at 7.6 (Spearman 0.83; ``trace_bound``
7.6), and rescaling eps by a factor fitted by leave-one-out gets 7.2: the loss rise at
w* does not locate the accuracy onset.

Example
-------
A least-squares loss is its own Taylor model, so the onset is exact:

>>> import numpy as np
>>> C = np.diag([2.0, 2.0, 2.0, 2.0])           # L(w) = |w - w0|^2 at w* = w0: g = 0
>>> w = np.array([0.1, 0.2, 0.3, 0.4])
>>> round(taylor_onset(C, w, np.zeros(4), epsilon=0.05 + 1e-9, points=1001), 3)
0.5
"""

from __future__ import annotations

import numpy as np
import torch

from .budget import check_epsilon
from .limit import PrunedNorm

DEFAULT_POINTS = 201  # a grid step of 0.005, the validator's default resolution


def loss_rise(curvature, weights, gradient, removal_fractions) -> np.ndarray:
    """rise(p) = -g^T w_P(p) + w_P(p)^T C w_P(p) / 2 at each p (module docstring).

    Parameters
    ----------
    curvature
        C as a D x D array, or an operator with ``apply(rows)`` (C applied to each row
        of a (K, D) tensor: :class:`~pruning_limit.curvature.CurvatureOperator`).
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
    norm = PrunedNorm(weights)
    g = np.asarray(gradient.detach().cpu() if torch.is_tensor(gradient) else gradient)
    g = g.astype(np.float64).reshape(-1)
    if g.size != norm.dimension:
        raise ValueError(f"gradient has {g.size} coordinates, weights {norm.dimension}")
    removed = np.stack([norm.removed_vector(float(p)) for p in np.atleast_1d(removal_fractions)])
    if hasattr(curvature, "apply"):
        rows = torch.as_tensor(removed, dtype=torch.float64)
        products = curvature.apply(rows.to(curvature.weights().dtype)).double().cpu().numpy()
    else:
        products = removed @ np.asarray(curvature, dtype=np.float64).T
    return -removed @ g + 0.5 * np.einsum("kd,kd->k", removed, products)


def taylor_onset(
    curvature, weights, gradient, epsilon: float, *, points: int = DEFAULT_POINTS
) -> float:
    """The first p at which the Taylor model's one-shot loss rise reaches eps.

    Evaluated on a uniform grid of ``points`` values of p in [0, 1] (one block of
    curvature products) and interpolated linearly between the grid points around the
    first crossing; 1.0 when the rise stays below eps.

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
    epsilon = float(check_epsilon(epsilon))
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    grid = np.linspace(0.0, 1.0, points)
    rise = loss_rise(curvature, weights, gradient, grid)
    above = np.flatnonzero(rise >= epsilon)
    if above.size == 0:
        return 1.0
    i = int(above[0])
    if i == 0:
        return 0.0
    x0, x1, y0, y1 = grid[i - 1], grid[i], rise[i - 1], rise[i]
    return float(x0 + (epsilon - y0) * (x1 - x0) / (y1 - y0))
