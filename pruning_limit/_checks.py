"""Checks at the package's boundary, each written once, with messages that say what was
expected and what was received. Inside the package the data are trusted."""

from __future__ import annotations


def check_mean_reduction(loss_fn) -> None:
    """Refuse a loss module that does not average over the batch.

    >>> import torch
    >>> check_mean_reduction(torch.nn.MSELoss(reduction="sum"))
    Traceback (most recent call last):
    ...
    ValueError: loss_fn must average over the batch (reduction='mean'), got reduction='sum'
    """
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"loss_fn must average over the batch (reduction='mean'), got reduction={reduction!r}"
        )
