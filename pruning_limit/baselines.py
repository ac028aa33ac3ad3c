"""Baseline predictors of the pruning limit that need no curvature.

A curvature-based prediction (a Hessian spectrum, Lanczos, a quadratic model) must
beat these to earn its cost; they read only the weights.

``emp``: Effective Model Pruning (Wang, Guralnik, Akbari and Dixon, arXiv
2509.25606). With w in R^N the prunable weights (every Linear/Conv ``weight`` by
default, all layers pooled, as in magnitude pruning) and the normalised
magnitudes s_i = |w_i| / sum_j |w_j|, the effective number of weights is the
inverse Simpson index

    N_eff = 1 / sum_i s_i^2 = (sum_i |w_i|)^2 / sum_i w_i^2,

which is N when every |w_i| is equal and 1 when a single weight is non-zero. The
predicted removal fraction (p, the fraction removed, as everywhere here) is

    p_emp = 1 - N_eff / N.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

# How tables and plots name the method, so that it never reads as a curvature prediction.
EMP_LABEL = "emp (baseline: weights only, no curvature)"


def _flat_weights(weights) -> np.ndarray:
    """The weights as one float64 vector: an array, a tensor, or an iterable of them."""
    if isinstance(weights, (np.ndarray, torch.Tensor)):
        pieces = [weights]
    elif isinstance(weights, Iterable):
        pieces = list(weights)
    else:
        raise TypeError(
            "weights must be an array, a tensor or an iterable of them, got "
            f"{type(weights).__name__}"
        )
    flat = []
    for piece in pieces:
        if isinstance(piece, torch.Tensor):
            piece = piece.detach().cpu().double().numpy()
        array = np.asarray(piece, dtype=np.float64)
        flat.append(array.reshape(-1))
    if not flat or sum(part.size for part in flat) == 0:
        raise ValueError("weights is empty: give at least one prunable weight")
    vector = np.concatenate(flat)
    if not np.all(np.isfinite(vector)):
        raise ValueError("weights hold NaN or infinite values")
    return vector


def effective_weight_count(weights) -> float:
    """N_eff = 1 / sum_i s_i^2, s = |w| / sum |w|: the inverse Simpson index of magnitudes.

    Computed as (sum_i |w_i|)^2 / sum_i w_i^2, in float64, after dividing by
    max |w_i| so that tiny or huge weights neither underflow nor overflow.

    Parameters
    ----------
    weights
        The prunable weights: an array or tensor, or an iterable of them (e.g.
        the weight tensors of every layer), concatenated.

    Returns
    -------
    float
        N_eff, between 1 and N.

    Raises
    ------
    ValueError
        If there are no weights, any is not finite, or all are zero (s undefined).

    Example
    -------
    >>> effective_weight_count([1.0, -1.0, 2.0])   # (1 + 1 + 2)^2 / (1 + 1 + 4)
    2.6666666666666665
    """
    vector = np.abs(_flat_weights(weights))
    largest = vector.max()
    if largest == 0:
        raise ValueError(
            "every weight is zero: the normalised magnitudes |w| / sum |w| are undefined"
        )
    vector = vector / largest
    return float(vector.sum() ** 2 / np.dot(vector, vector))


def emp_removal_fraction(weights) -> float:
    """The ``emp`` baseline's predicted pruning limit: p = 1 - N_eff / N.

    Effective Model Pruning (Wang, Guralnik, Akbari and Dixon, arXiv 2509.25606):
    keep the N_eff = 1 / sum_i s_i^2 weights of largest magnitude, s_i =
    |w_i| / sum_j |w_j| over the N prunable weights, and remove the rest. A
    baseline: a function of the weights alone, with no loss, data or curvature.

    Parameters
    ----------
    weights
        The N prunable weights: an array or tensor, or an iterable of them
        (concatenated; all layers pooled, as in global magnitude pruning).

    Returns
    -------
    float
        p in [0, 1 - 1/N], the fraction removed (0 when all |w_i| are equal).

    Example
    -------
    >>> round(emp_removal_fraction([1.0, -1.0, 2.0]), 6)   # 1 - (8/3) / 3
    0.111111
    """
    vector = _flat_weights(weights)
    return 1.0 - effective_weight_count(vector) / vector.size
