"""The loss budget eps: the mini-batch standard deviation of the training loss, or a number."""

from __future__ import annotations

import math
import warnings

import numpy as np

BATCH_STD = "batch_std"
REFERENCE = "reference"
EPSILON_KINDS = (BATCH_STD, REFERENCE)


def check_epsilon(epsilon) -> str | float:
    """``"batch_std"``, ``"reference"``, or eps as a finite positive float; else ValueError.

    The one check of a loss budget as the user gives it, made before any work.
    ``"reference"`` is the reference code's eps
    (:func:`~pruning_limit.reference.reference_epsilon`: np.std with ddof 0 of the
    batch-128 mean losses, eval mode).

    >>> check_epsilon("batch_std"), check_epsilon("reference"), check_epsilon(0.5)
    ('batch_std', 'reference', 0.5)
    >>> check_epsilon(0)
    Traceback (most recent call last):
    ...
    ValueError: the loss budget epsilon must be a finite positive number, got 0.0
    """
    if isinstance(epsilon, str):
        if epsilon not in EPSILON_KINDS:
            raise ValueError(
                f"epsilon must be 'batch_std', 'reference' or a positive number, got {epsilon!r}"
            )
        return epsilon
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(
            f"epsilon must be 'batch_std', 'reference' or a positive number, got {epsilon!r}"
        ) from None
    if not 0 < value < math.inf:  # also NaN; an infinite budget predicts nothing (p* = 1)
        raise ValueError(f"the loss budget epsilon must be a finite positive number, got {value}")
    return value


def loss_budget(
    source=None,
    epsilon: str | float = "batch_std",
    *,
    dtype=None,
    loss: float | None = None,
) -> tuple[float, dict]:
    """The loss budget eps and a record of how it was obtained.

    Parameters
    ----------
    source
        What ``"batch_std"`` reads: a :class:`~pruning_limit.curvature.ModelLoss` (or a
        curvature operator, which is one; its ``batch_losses()`` at w*), a pair
        ``(batch_losses, batch_sizes)``, or an array of per-batch mean losses. May be
        ``None`` when ``epsilon`` is a number.
    epsilon
        ``"batch_std"``: the standard deviation (ddof = 1) of the per-batch mean
        training losses at w*, as the reference code sets it; it depends on the
        batch size, which is recorded. A finite number > 0 is taken as given.
    dtype
        The dtype the loss was computed in (numpy or torch); default: the operator's,
        else float64. Used for the resolution check.
    loss
        L(w*), if known; default: the sample-weighted mean of the batch losses.

    Returns
    -------
    (eps, source_record)

    Raises
    ------
    ValueError
        eps <= 0, inf or NaN, an unknown string, or ``"batch_std"`` with under two batches.

    Warns
    -----
    UserWarning
        When eps < 100 * machine epsilon(dtype) * |L(w*)|: the budget is below what the
        loss can resolve, so the prediction measures round-off.

    Example
    -------
    >>> eps, record = loss_budget(([0.30, 0.34, 0.32], [64, 64, 64]))
    >>> round(eps, 6), record["kind"], record["batch_size"]
    (0.02, 'batch_std', 64)
    """
    record: dict = {}
    losses = sizes = None
    if source is not None:
        if hasattr(source, "batch_losses"):
            losses, sizes = source.batch_losses()
            dtype = getattr(source, "dtype", None) if dtype is None else dtype
        elif isinstance(source, tuple) and len(source) == 2:
            losses, sizes = source
        else:
            losses = source
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64).reshape(-1)
        if sizes is not None and sizes.shape != losses.shape:
            raise ValueError(f"got {losses.size} batch losses but {sizes.size} batch sizes")
        if not np.all(np.isfinite(losses)):
            raise ValueError("the batch losses contain NaN or infinite values")
        if loss is None and losses.size:
            loss = float(np.average(losses, weights=sizes))
    epsilon = check_epsilon(epsilon)
    if epsilon == REFERENCE:
        raise ValueError(
            "epsilon='reference' is computed from the model in eval mode: use "
            "pruning_limit.reference.reference_epsilon, or Pipeline.budget / predict_limit"
        )
    if epsilon == BATCH_STD:
        if losses is None or losses.size < 2:
            count = 0 if losses is None else losses.size
            raise ValueError(
                "epsilon='batch_std' needs the losses of at least two mini-batches at w* "
                f"(got {count}): pass data and loss_fn, or a smaller batch size, or a number"
            )
        value = float(np.std(losses, ddof=1))
        record.update(kind="batch_std", ddof=1, batches=int(losses.size))
        if sizes is not None:
            # The nominal size is the largest: only a last batch may be shorter.
            record.update(
                batch_size=int(np.max(sizes)),
                batch_sizes_vary=bool(np.unique(sizes).size > 1),
                samples=int(sizes.sum()),
            )
    else:
        value = epsilon
        record.update(kind="given")
    resolution_dtype = _numpy_dtype(dtype)
    record.update(value=value, dtype=str(resolution_dtype))
    if loss is not None:
        resolution = 100 * float(np.finfo(resolution_dtype).eps) * abs(float(loss))
        record.update(loss=float(loss), resolution=resolution)
        if value < resolution:
            warnings.warn(
                f"eps = {value:.3g} is below what {resolution_dtype} resolves at the loss's "
                f"scale (100 * machine epsilon * |L| = {resolution:.3g}): the prediction would "
                "measure round-off; compute the loss and curvature in float64",
                UserWarning,
                stacklevel=2,
            )
    return value, record


def _numpy_dtype(dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float64)
    name = str(dtype).replace("torch.", "")
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(np.float64)
