"""Fingerprints of the weights and the data a result was computed at.

A Spectrum (and an interrupted SLQ run's state) records them, so that a spectrum of
other weights or other data is refused instead of silently giving another network's
limit. Cheap, and independent of how the same numbers are held:

weights
    SHA-256 of the prunable weights' values as float64 bytes, in the flattening order
    (a float32 model and its ``.double()`` copy agree), with their names and shapes.
other
    The same of every other parameter and buffer (biases, BatchNorm statistics: the
    curvature depends on them too), in ``named_parameters``/``named_buffers`` order.
data
    Every sample of X and y enters (no sub-sampling, so one changed value is seen):
    each row is hashed (its values as float64, or int64 for integer tensors,
    multiplied by fixed random 64-bit odd constants and summed, then mixed by the
    SplitMix64 finaliser), the row hashes of X and y are combined per sample and
    summed modulo 2^64, so the fingerprint does not depend on the order of the samples
    or on the batch size (a shuffling DataLoader gives the same one); the number of
    samples and the per-sample shapes are part of it. It is a check against mistakes,
    not against an adversary.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

SCHEME = "sha256 of float64 weights; order-free sum of SplitMix64 row hashes of X, y"
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def weights_fingerprint(tensors) -> str:
    """SHA-256 (hex, 16 characters) of ``(name, tensor)`` pairs' float64 values and shapes.

    >>> weights_fingerprint([("w", torch.ones(2))]) == weights_fingerprint(
    ...     [("w", torch.ones(2, dtype=torch.float64))])
    True
    """
    digest = hashlib.sha256()
    for name, tensor in tensors:
        values = tensor.detach().cpu()
        values = values.double() if values.is_floating_point() else values.long()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(batches, sum_over_ranks=None) -> str:
    """An order-free fingerprint (hex, 16 characters) of ``(X, y)`` batches.

    ``sum_over_ranks``: under ``torch.distributed``, a function that sums an int64
    tensor over the ranks (:func:`~pruning_limit.distributed.all_reduce_sum`); each
    rank then passes its shard and every rank gets the fingerprint of the whole data
    (the sum of row hashes modulo 2^64 is carried in four 16-bit limbs, so the
    int64 sum cannot overflow).

    >>> X, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    >>> whole = data_fingerprint([(X, y)])
    >>> whole == data_fingerprint([(X[3:], y[3:]), (X[:3], y[:3])])   # order, batches
    True
    >>> whole == data_fingerprint([(X.double(), y)])                    # dtype of the floats
    True
    >>> X[0, 0] = 0.5
    >>> whole == data_fingerprint([(X, y)])
    False
    """
    total = 0
    count = 0
    shapes = None
    with np.errstate(over="ignore"):
        for inputs, targets in batches:
            rows = _mix(_row_hashes(inputs) * np.uint64(0x9E3779B97F4A7C15) ^ _row_hashes(targets))
            total = (total + int(rows.sum(dtype=np.uint64))) & int(_MASK)
            count += len(inputs)
            shapes = (tuple(inputs.shape[1:]), tuple(targets.shape[1:]))
    if sum_over_ranks is not None:
        limbs = [(total >> (16 * i)) & 0xFFFF for i in range(4)]
        summed = sum_over_ranks(torch.tensor([*limbs, count], dtype=torch.int64)).tolist()
        total = sum(int(limb) << (16 * i) for i, limb in enumerate(summed[:4])) & int(_MASK)
        count = int(summed[4])
    text = f"{count};{shapes};{total:016x}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _row_hashes(tensor: torch.Tensor) -> np.ndarray:
    values = tensor.detach().cpu()
    values = values.double() if values.is_floating_point() else values.long()
    words = values.reshape(len(values), -1).contiguous().numpy().view(np.uint64)
    constants = np.random.default_rng(words.shape[1]).integers(
        0, 2**63, size=words.shape[1], dtype=np.uint64
    ) * np.uint64(2) + np.uint64(1)
    return _mix((words * constants).sum(axis=1, dtype=np.uint64))


def _mix(values: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, element-wise (uint64, wrapping)."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def describe_mismatch(recorded: dict, current: dict) -> list[str]:
    """The names of what differs between two fingerprints (keys present in both).

    >>> recorded = {"weights": "3f1a", "other": "77b0", "data": "c2d4"}
    >>> describe_mismatch(recorded, {"weights": "9e05", "other": "77b0", "data": "c2d4"})
    ['prunable weights']
    >>> describe_mismatch(recorded, {"weights": "3f1a", "data": "0000"})   # no "other"
    ['data']
    """
    names = {"weights": "prunable weights", "other": "other parameters or buffers",
             "data": "data"}  # fmt: skip
    return [
        names[key]
        for key in ("weights", "other", "data")
        if recorded.get(key) is not None
        and current.get(key) is not None
        and recorded[key] != current[key]
    ]
