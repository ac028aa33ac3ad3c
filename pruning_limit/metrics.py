"""Loss and accuracy of a model over tensor pairs: the one evaluation loop.

For a split (X, y) of N samples, in batches of :data:`EVALUATION_BATCH_SIZE`, each
batch's mean loss weighted by its size,

    loss = (1/N) sum_i loss_fn(f(x_i), y_i),
    accuracy = (1/N) #{i : argmax_k f(x_i)_k = y_i}   (integer class labels only),

in the dtype and on the device of the model's parameters, without gradients. Under
``torch.distributed``, :func:`metrics_function` reads each split as this rank's shard
and adds the ranks' sums (N is the count over all ranks). The
model's train/eval mode is the caller's: :func:`~pruning_limit.training.evaluate`
and the sweeps of :mod:`~pruning_limit.validation` set eval mode around it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import distributed

EVALUATION_BATCH_SIZE = 4096


def is_classification(targets: torch.Tensor) -> bool:
    """Whether ``targets`` are class labels: one integer per sample.

    >>> is_classification(torch.tensor([0, 2, 1])), is_classification(torch.zeros(3, 1))
    (True, False)
    """
    return targets.dim() == 1 and not targets.is_floating_point() and not targets.is_complex()


def targets_like(targets: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``targets`` on the device of ``reference``; floating targets also in its dtype.

    >>> reference = torch.zeros(3, dtype=torch.float64)
    >>> targets_like(torch.tensor([0.5]), reference).dtype   # regression targets: its dtype
    torch.float64
    >>> targets_like(torch.tensor([2, 0]), reference).dtype  # class labels stay integers
    torch.int64
    """
    if targets.is_floating_point():
        return targets.to(device=reference.device, dtype=reference.dtype)
    return targets.to(reference.device)


def split_metrics(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn, classification: bool
) -> tuple[float, float | None]:
    """The mean loss over ``(inputs, targets)`` and, for class labels, the accuracy.

    >>> model = torch.nn.Linear(2, 2)
    >>> loss, accuracy = split_metrics(model, torch.randn(10, 2), torch.randint(0, 2, (10,)),
    ...                                torch.nn.CrossEntropyLoss(), classification=True)
    >>> loss > 0 and 0.0 <= accuracy <= 1.0
    True
    """
    total, correct, count = _split_sums(model, inputs, targets, loss_fn, classification)
    return total / count, (correct / count if classification else None)


def _split_sums(model, inputs, targets, loss_fn, classification) -> tuple[float, int, int]:
    """(sum of the samples' losses, number correct, number of samples)."""
    reference = next(model.parameters())
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], EVALUATION_BATCH_SIZE):
            x = inputs[start : start + EVALUATION_BATCH_SIZE]
            t = targets_like(targets[start : start + EVALUATION_BATCH_SIZE], reference)
            outputs = model(x.to(device=reference.device, dtype=reference.dtype))
            total += float(loss_fn(outputs, t)) * len(t)
            if classification:
                correct += int((outputs.argmax(dim=1) == t).sum())
    return total, correct, int(inputs.shape[0])


def metrics_function(splits: dict, loss_fn, classification: bool) -> Callable:
    """model -> ``{split}_loss``, ``{split}_accuracy`` (class labels) and ``n_{split}``
    for each ``split: (X, y)`` of ``splits``.

    >>> metrics_of = metrics_function({"test": (torch.ones(3, 2), torch.zeros(3, 1))},
    ...                               torch.nn.MSELoss(), classification=False)
    >>> sorted(metrics_of(torch.nn.Linear(2, 1)))
    ['n_test', 'test_loss']
    """

    def metrics_of(model: nn.Module) -> dict[str, float]:
        sums = torch.tensor(
            [
                _split_sums(model, inputs, targets, loss_fn, classification)
                for inputs, targets in splits.values()
            ],
            dtype=torch.float64,
        )
        sums = distributed.all_reduce_sum(sums, "the metrics")  # one per call, all splits
        metrics: dict[str, float] = {}
        for split, (total, correct, count) in zip(splits, sums.tolist()):
            metrics[f"{split}_loss"] = total / count
            if classification:
                metrics[f"{split}_accuracy"] = correct / count
            metrics[f"n_{split}"] = int(count)
        return metrics

    return metrics_of
