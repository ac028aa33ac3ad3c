"""Turn what users pass as ``data`` into a fixed list of ``(inputs, targets)`` batches.

Every full-data quantity in this package (the mean loss L(w), its gradient, its
curvature) is a sample-weighted mean over batches:

    L(w) = sum_b n_b * L_b(w) / N,   N = sum_b n_b,

where ``L_b`` is the loss function's own (mean-reduced) value on batch ``b`` and
``n_b`` its sample count, so a short last batch carries exactly its share.

This is also where user data meet the model: :func:`check_model_and_data` checks a
(model, loss, data) combination once, with one forward pass on a few rows, and names
what does not fit; everything downstream trusts the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch

DEFAULT_BATCH_SIZE = 256


class EmptyDataError(ValueError):
    """The data yielded no batch, or a batch with no sample.

    >>> as_batches([])
    Traceback (most recent call last):
    ...
    pruning_limit.batches.EmptyDataError: the data yielded no batch
    """


@dataclass(frozen=True)
class Batches:
    """A re-iterable list of ``(inputs, targets)`` batches and their sample counts.

    >>> batches = as_batches((torch.zeros(5, 2), torch.zeros(5)), batch_size=2)
    >>> batches.sizes, batches.num_samples, len(batches)
    ((2, 2, 1), 5, 3)
    >>> batches.to("cpu", torch.float64).batches[0][0].dtype   # floating inputs cast
    torch.float64
    """

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

    Example
    -------
    >>> X, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    >>> as_batches((X, y), batch_size=2).sizes              # the last batch is short
    (2, 2, 1)
    >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
    >>> [targets.tolist() for _, targets in as_batches(loader)]
    [[0, 1, 2, 3], [4]]
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


# -- does this data fit this model and this loss? ------------------------------------

CHECK_ROWS = 4


def check_model_and_data(
    model: torch.nn.Module,
    loss_fn,
    data,
    *,
    what: str = "the data",
    min_samples: int = 2,
    rows: int = CHECK_ROWS,
) -> Batches:
    """Check that ``model`` and ``loss_fn`` accept ``data``, and name the problem if not.

    Scans every batch (without running the model) for non-finite inputs or targets
    and for class labels outside the model's outputs, then runs one forward pass and
    the loss on the first ``rows`` samples. This is the boundary where user data meet
    the model: after it, the package trusts them. The checks, each a ``ValueError``
    or ``TypeError`` whose message says what was expected and what was received:

    - at least ``min_samples`` samples (a curvature averaged over one sample is a
      single rank-deficient term, not an estimate of the loss's);
    - inputs ``X`` are not strings or booleans, and float inputs and targets are finite
      (NaN or inf in the data is the data's fault, and would otherwise surface later as
      a NaN loss or curvature);
    - the model accepts the inputs (the feature count, the dtype) and returns one
      tensor (a tuple or a dict must be reduced to one output first,
      :class:`pruning_limit.models.SelectOutput`);
    - the model is a fixed function in eval mode: two passes agree and its buffers do
      not change (a TorchScript module traced in train mode fails this; the buffers
      are restored);
    - cross-entropy (or NLL) gets int64 class labels ``0 .. C-1`` (ignoring
      ``ignore_index``) for a model of C outputs, or class probabilities of the
      outputs' shape; float labels are refused with a pointer to MSE;
    - an element-wise loss (MSE, L1, Huber, ...) gets float targets of exactly the
      outputs' shape per sample: targets ``(N,)`` against outputs ``(N, 1)`` would be
      broadcast to ``(N, N)`` by torch and give a wrong loss without an error;
    - the loss on those rows is a finite scalar.

    Parameters
    ----------
    model
        The network; run once in eval mode (modes restored), without gradients, on
        the device and in the dtype of its first parameter.
    loss_fn
        ``loss_fn(outputs, targets)``, as given to the curvature.
    data
        Anything :func:`as_batches` reads.
    what
        How the messages name the data (``"the training data"``).
    min_samples
        The fewest samples accepted.

    Returns
    -------
    Batches
        The data as :class:`Batches`.

    Example
    -------
    >>> from torch import nn
    >>> model = nn.Linear(3, 1)
    >>> X, y = torch.randn(10, 3), torch.randn(10)
    >>> try:
    ...     check_model_and_data(model, nn.MSELoss(), (X, y))
    ... except ValueError as error:
    ...     print(str(error)[:71])
    the data: targets of shape (10,) against model outputs of shape (10, 1)
    """
    batches = as_batches(data)
    if batches.num_samples < min_samples:
        raise ValueError(
            f"{what} hold {batches.num_samples} sample(s); at least {min_samples} are needed "
            "(the loss's curvature is a mean over samples)"
        )
    for name, index in (("inputs X", 0), ("targets y", 1)):
        _check_finite(batches, index, name, what)
    first_inputs = batches.batches[0][0]
    if first_inputs.dtype == torch.bool:
        raise TypeError(f"{what}: the inputs X are booleans; give numbers (X.float())")
    reference = next(iter(model.parameters()), None)
    inputs, targets = _first_rows(batches, rows)
    if reference is not None:
        inputs = inputs.to(reference.device)
        targets = targets.to(reference.device)
        if inputs.is_floating_point():
            inputs = inputs.to(reference.dtype)
    outputs = _forward(model, inputs, what, first_inputs)
    kind = _loss_kind(loss_fn)
    if kind == "classification":
        _check_labels(batches, outputs, targets, loss_fn, what)
    elif kind == "elementwise":
        _check_regression_targets(batches, outputs, targets, loss_fn, what)
    if targets.is_floating_point() and reference is not None:
        targets = targets.to(reference.dtype)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch warns, and broadcasts, when the shapes differ: here that is an error
            warnings.filterwarnings("error", message=".*target size", category=UserWarning)
            value = loss_fn(outputs, targets)
    except (RuntimeError, ValueError, TypeError, IndexError, UserWarning) as error:
        raise ValueError(
            f"{what}: {type(loss_fn).__name__} refuses targets of shape "
            f"{tuple(targets.shape)} ({targets.dtype}) against model outputs of shape "
            f"{tuple(outputs.shape)}: {_first_line(error)}"
        ) from error
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{type(loss_fn).__name__} returned {shape}, not a scalar: the loss must average "
            "over the batch"
        )
    if not torch.isfinite(value):
        raise FloatingPointError(
            f"the loss on the first {len(targets)} samples of {what} is {float(value)} though "
            "the data are finite: check the model's weights"
        )
    return batches


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _first_rows(batches: Batches, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batches.batches[0]
    return inputs[:rows], targets[:rows]


def _check_finite(batches: Batches, index: int, name: str, what: str) -> None:
    bad, first, seen = 0, None, 0
    for batch in batches:
        tensor = batch[index]
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                rows_bad = (~finite).reshape(len(tensor), -1).any(dim=1).nonzero()
                bad += int((~finite).sum())
                if first is None:
                    first = seen + int(rows_bad[0])
        seen += len(tensor)
    if bad:
        raise ValueError(
            f"{what}: the {name} hold {bad} NaN or infinite value(s), the first in sample "
            f"{first}; the data are at fault, not the model: clean or drop those samples"
        )


def _forward(model, inputs: torch.Tensor, what: str, sample: torch.Tensor) -> torch.Tensor:
    modes = [(m, m.training) for m in model.modules()]
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        model.eval()
        with torch.no_grad():
            outputs = model(inputs)
            again = model(inputs)
    except Exception as error:  # the user's model: any failure means "does not fit"
        hint = ""
        if not sample.is_floating_point():
            hint = f" (the inputs X are {sample.dtype}: most models need float inputs, X.float())"
        raise ValueError(
            f"{what}: the model refuses inputs of shape {tuple(sample.shape[1:])} per sample "
            f"({sample.dtype}){hint}: {_first_line(error)}"
        ) from error
    finally:
        for module, training in modes:
            module.training = training
        changed = _restore_buffers(model, buffers)
    if changed or (
        isinstance(outputs, torch.Tensor)
        and not torch.equal(torch.nan_to_num(outputs), torch.nan_to_num(again))
    ):
        what_happened = (
            f"a forward pass changed its buffers ({', '.join(changed[:3])})"
            if changed
            else "two forward passes on the same inputs differ"
        )
        raise ValueError(
            f"the model is not a fixed function in eval mode: {what_happened}; a TorchScript "
            "module traced in train mode keeps BatchNorm and Dropout training: trace it after "
            "model.eval()"
        )
    if not isinstance(outputs, torch.Tensor):
        kind = type(outputs).__name__
        keys = f" with keys {', '.join(map(repr, outputs))}" if isinstance(outputs, dict) else ""
        raise TypeError(
            f"the model returns a {kind}{keys}, not one tensor: the loss needs one output; "
            "wrap the model to return it (the command line: --output KEY or INDEX)"
        )
    if not outputs.is_floating_point():
        raise TypeError(f"the model returns {outputs.dtype} outputs; they must be floating-point")
    return outputs


def _loss_kind(loss_fn) -> str:
    if isinstance(loss_fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)):
        return "classification"
    elementwise = (
        torch.nn.MSELoss,
        torch.nn.L1Loss,
        torch.nn.SmoothL1Loss,
        torch.nn.HuberLoss,
        torch.nn.BCEWithLogitsLoss,
        torch.nn.BCELoss,
    )
    return "elementwise" if isinstance(loss_fn, elementwise) else "other"


def _check_labels(batches: Batches, outputs, targets, loss_fn, what: str) -> None:
    name = type(loss_fn).__name__
    if targets.is_floating_point():
        if targets.shape == outputs.shape and outputs.dim() == 2 and outputs.shape[1] > 1:
            sums = targets.sum(dim=1)
            if bool((targets >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums))):
                return  # class probabilities, which cross-entropy accepts
        raise TypeError(
            f"{what}: the targets y are floating-point ({targets.dtype}, shape "
            f"{tuple(targets.shape[1:])} per sample) but {name} needs int64 class labels; "
            "convert labels with y.long(), or for regression targets use the MSE loss "
            "(--loss mse)"
        )
    if targets.dtype in (torch.bool,) or targets.is_complex():
        raise TypeError(f"{what}: the targets y are {targets.dtype}; {name} needs int64 labels")
    if outputs.dim() != 2:
        raise ValueError(
            f"{what}: {name} with class labels needs model outputs of shape (batch, classes), "
            f"got {tuple(outputs.shape)}"
        )
    if targets.dim() != 1:
        raise ValueError(f"{what}: class labels must have shape (N,), got {tuple(targets.shape)}")
    classes = outputs.shape[1]
    ignore = getattr(loss_fn, "ignore_index", None)
    low = high = None
    for _, labels in batches:
        kept = labels if ignore is None else labels[labels != ignore]
        if kept.numel():
            low = int(kept.min()) if low is None else min(low, int(kept.min()))
            high = int(kept.max()) if high is None else max(high, int(kept.max()))
    if low is not None and (low < 0 or high >= classes):
        raise ValueError(
            f"{what}: the labels lie in [{low}, {high}] but the model has {classes} outputs, "
            f"so labels must lie in [0, {classes - 1}]"
        )


def _check_regression_targets(batches: Batches, outputs, targets, loss_fn, what: str) -> None:
    name, count = type(loss_fn).__name__, batches.num_samples
    if not targets.is_floating_point():
        raise TypeError(
            f"{what}: the targets y are {targets.dtype} (class labels?) but {name} compares "
            "float targets with the outputs; for class labels use cross-entropy "
            "(--loss cross_entropy), for regression give float targets"
        )
    if tuple(targets.shape[1:]) != tuple(outputs.shape[1:]):
        hint = ""
        if targets.dim() == 1 and tuple(outputs.shape[1:]) == (1,):
            hint = "; reshape them to (N, 1) with y.reshape(-1, 1)"
        raise ValueError(
            f"{what}: targets of shape {(count, *targets.shape[1:])} against model outputs of "
            f"shape {(count, *outputs.shape[1:])}: {name} needs the same shape per sample "
            f"(torch would broadcast them and compute a wrong loss){hint}"
        )


def _restore_buffers(model, saved: dict[str, torch.Tensor]) -> list[str]:
    """Write the saved buffers back; the names of those that had changed."""
    changed = []
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in saved and not torch.equal(buffer, saved[name]):
                changed.append(name)
                buffer.copy_(saved[name])
    return changed
