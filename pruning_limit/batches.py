"""Turn what users pass as ``data`` into a fixed list of ``(inputs, targets)`` batches.

Every full-data quantity in this package (the mean loss L(w), its gradient, its
curvature) is a sample-weighted mean over batches:

    L(w) = sum_b n_b * L_b(w) / N,   N = sum_b n_b,

where ``L_b`` is the loss function's own (mean-reduced) value on batch ``b`` and
``n_b`` its sample count, so a short last batch carries exactly its share.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

DEFAULT_BATCH_SIZE = 256


class EmptyDataError(ValueError):
    """The data yielded no batch, or a batch with no sample."""


@dataclass(frozen=True)
class Batches:
    """A re-iterable list of ``(inputs, targets)`` batches and their sample counts."""

    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(x.shape[0]) for x, _ in self.batches)

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batches:
        """Move every batch to ``device``; floating-point inputs are cast to ``dtype``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return Batches(tuple((move(x), move(y)) for x, y in self.batches))


def as_batches(data, batch_size: int = DEFAULT_BATCH_SIZE) -> Batches:
    """Normalise ``data`` into :class:`Batches`.

    Parameters
    ----------
    data
        A ``torch.utils.data.DataLoader``, any iterable of ``(inputs, targets)``
        pairs, a pair of tensors ``(X, y)`` (split into batches of ``batch_size``),
        or an existing :class:`Batches`.
    batch_size
        Used only when ``data`` is a pair of tensors.

    Raises
    ------
    EmptyDataError
        If no batch, or a batch with zero samples, comes out.
    """
    if isinstance(data, Batches):
        result = data
    elif _is_tensor_pair(data):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets disagree on the number of samples: "
                f"{inputs.shape[0]} vs {targets.shape[0]}"
            )
        if inputs.shape[0] == 0:
            raise EmptyDataError("the data holds no sample")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        result = Batches(
            tuple(
                (inputs[i : i + batch_size], targets[i : i + batch_size])
                for i in range(0, inputs.shape[0], batch_size)
            )
        )
    elif isinstance(data, Iterable):
        collected = []
        for item in data:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    "each batch must be an (inputs, targets) pair, got "
                    f"{type(item).__name__}"
                    + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
                )
            collected.append((torch.as_tensor(item[0]), torch.as_tensor(item[1])))
        result = Batches(tuple(collected))
    else:
        raise TypeError(
            "data must be a DataLoader, an iterable of (inputs, targets) batches or a pair "
            f"of tensors, got {type(data).__name__}"
        )
    if len(result) == 0:
        raise EmptyDataError("the data yielded no batch")
    if any(size == 0 for size in result.sizes):
        raise EmptyDataError("the data yielded a batch with no sample")
    return result


def _is_tensor_pair(data) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].dim() >= 1
        and data[1].dim() >= 1
    )


def tensor_pair(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` as a pair of tensors ``(X, y)`` with the same number of samples, at least one.

    ``name`` names the argument in the errors.

    >>> X, y = tensor_pair((torch.zeros(3, 2), torch.zeros(3)), "train_data")
    >>> tensor_pair((torch.zeros(3, 2), torch.zeros(4)), "train_data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: train_data: inputs of shape (3, 2) and targets of shape (4,) disagree ...
    """
    if not (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        raise TypeError(
            f"{name} must be a pair of tensors (X, y), got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    inputs, targets = data
    if inputs.dim() < 1 or targets.dim() < 1 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{name}: inputs of shape {tuple(inputs.shape)} and targets of shape "
            f"{tuple(targets.shape)} disagree on the number of samples"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} holds no sample")
    return inputs, targets
