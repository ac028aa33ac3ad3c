"""What is done to the kept weights after magnitude pruning: re-fit or fine-tune."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import distributed
from .metrics import metrics_function, targets_like
from .pruning import UNCONVERGED
from .quadratic import QuadraticModel


@dataclass(frozen=True)
class FinetuneBudget:
    """How the ``finetune`` variant trains the kept weights after pruning.

    Adam (betas 0.9, 0.999, eps 1e-8) on the mean training loss ``loss_fn`` (no
    penalty), ``epochs`` passes over the training set in shuffled mini-batches of
    ``batch_size``, the batch order drawn from the validation's ``seed`` (the same for
    every p). Gradients and steps are masked, so removed weights stay exactly zero;
    biases and other non-pruned parameters are held fixed, as in the theory. The
    result is the iterate (start or end of an epoch) with the lowest full training
    loss, so fine-tuning never does worse than no fine-tuning.

    Under ``torch.distributed`` the mini-batches are those of one process on the
    concatenated data: epoch e draws one permutation of the N global sample indices
    (the ranks' shards in rank order, N their total) from the seeded generator, the
    same on every rank, and cuts it into batches B_i of ``batch_size``. Each rank
    differentiates the mean loss over its own samples of B_i, weighted by their
    share n_{r,i} / |B_i| (a rank with none adds zeros), and one all-reduce sums
    these into the gradient of the mean over B_i. Every rank then takes the same
    Adam step, and the trajectory is one process's up to the order of the additions.

    Example
    -------
    >>> FinetuneBudget.of({"epochs": 1})
    FinetuneBudget(epochs=1, lr=0.001, batch_size=128)
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"finetune {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"finetune lr must be a positive number, got {self.lr!r}")

    @classmethod
    def of(cls, value) -> FinetuneBudget:
        """A budget from None (the defaults), a FinetuneBudget or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"epochs", "lr", "batch_size"})
            if unknown:
                raise ValueError(
                    f"unknown finetune option(s) {unknown}; known: epochs, lr, batch_size"
                )
            return cls(**value)
        raise TypeError(f"finetune must be a dict or FinetuneBudget, got {type(value).__name__}")


class PrunedWeights:
    """The pruned tensors, w* (one saved copy) and the current keep-mask.

    Inside :func:`~pruning_limit.pruning.pruned` the removed weights are the zeros.

    >>> from pruning_limit.pruning import pruned
    >>> model = nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
    >>> weights = PrunedWeights([("weight", model.weight)])
    >>> with pruned(model, 1 / 3):
    ...     removed = weights.flat_pruned(weights.keep_masks()).tolist()
    ...     dense = weights.unchanged()
    >>> removed, dense, weights.unchanged()
    ([True, False, False], False, True)
    >>> weights.write_flat(np.array([0.0, 0.5, 0.5]))
    >>> model.weight.tolist()
    [[0.0, 0.5, 0.5]]
    >>> weights.restore()
    >>> model.weight.tolist()
    [[1.0, -2.0, 3.0]]
    """

    def __init__(self, selected) -> None:
        self.tensors = [tensor for _, tensor in selected]
        with torch.no_grad():
            self.original = [tensor.detach().clone() for tensor in self.tensors]

    def keep_masks(self) -> list[torch.Tensor]:
        # Inside pruned() the removed weights are the zeros (see the module docstring).
        return [tensor.detach() != 0 for tensor in self.tensors]

    def unchanged(self) -> bool:
        """True when pruning removed nothing that was not already zero: the dense network."""
        return all(torch.equal(t, o) for t, o in zip(self.tensors, self.original))

    def flat_pruned(self, masks) -> np.ndarray:
        return np.concatenate([(~keep).cpu().numpy().reshape(-1) for keep in masks])

    def write_flat(self, vector: np.ndarray) -> None:
        offset = 0
        with torch.no_grad():
            for tensor in self.tensors:
                piece = vector[offset : offset + tensor.numel()]
                offset += tensor.numel()
                tensor.copy_(
                    torch.as_tensor(piece).reshape(tensor.shape).to(tensor.device, tensor.dtype)
                )

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, original in zip(self.tensors, self.original):
                tensor.copy_(original)


def refit_evaluator(weights: PrunedWeights, quadratic: QuadraticModel, metrics_of) -> Callable:
    """Metrics of the re-fitted network; a re-fit whose conjugate gradients did not
    converge is no re-fit, so its point is marked ``unconverged`` (with the final
    relative residual), which keeps it out of the limits
    (:data:`~pruning_limit.pruning.UNCONVERGED`).

    Example
    -------
    C = [[2, 1, 0], [1, 2, 0], [0, 0, 1]] at w* = (1, -2, 3): removing w_0 = 1 re-fits
    w_1 to -2 + 1/2 (C_11^-1 C_10 w_0) and leaves w_2, uncoupled, at 3.

    >>> from pruning_limit.pruning import pruned
    >>> model = nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
    >>> weights = PrunedWeights([("weight", model.weight)])
    >>> curvature = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    >>> quadratic = QuadraticModel(curvature, np.array([1.0, -2.0, 3.0]))
    >>> def read_weights(model):
    ...     return {f"w{j}": w for j, w in enumerate(model.weight.flatten().tolist())}
    >>> evaluate = refit_evaluator(weights, quadratic, read_weights)
    >>> with pruned(model, 1 / 3):
    ...     evaluate(model)
    {'w0': 0.0, 'w1': -1.5, 'w2': 3.0}
    >>> evaluate(model)   # nothing removed: the dense network
    {'w0': 1.0, 'w1': -2.0, 'w2': 3.0}
    """

    def evaluate(model: nn.Module) -> dict[str, float]:
        if weights.unchanged():  # p = 0: the dense network, nothing to re-fit
            return metrics_of(model)
        try:
            weights.write_flat(quadratic.refit(weights.flat_pruned(weights.keep_masks())))
            metrics = metrics_of(model)
        finally:
            weights.restore()
        if not quadratic.last_solve["converged"]:
            metrics[UNCONVERGED] = 1
            metrics["refit_relative_residual"] = quadratic.last_solve["relative_residual"]
        return metrics

    return evaluate


def finetune_evaluator(
    weights: PrunedWeights, budget: FinetuneBudget, train_pair, loss_fn, seed: int, metrics_of
) -> tuple[Callable, Callable]:
    """(evaluate for the sweep, fine-tune and evaluate whatever the mask).

    The sweep's evaluation leaves a network with nothing removed as it is: p = 0 is the
    dense network, the reference the criteria are defined against.

    Example
    -------
    Least squares with targets y = X w*, w* = (1, -2, 3): with w_0 removed, fine-tuning
    moves only w_1 and w_2, keeps w_0 exactly 0, lowers the pruned network's loss
    (it never raises it), and leaves the model as it found it.

    >>> from pruning_limit.pruning import pruned
    >>> model = nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
    >>> weights = PrunedWeights([("weight", model.weight)])
    >>> _ = torch.manual_seed(0)
    >>> X = torch.randn(64, 3)
    >>> y = X @ torch.tensor([[1.0], [-2.0], [3.0]])
    >>> loss_fn = nn.MSELoss()
    >>> def metrics_of(model):
    ...     return {"train_loss": loss_fn(model(X), y).item(), "w0": model.weight[0, 0].item()}
    >>> evaluate, _ = finetune_evaluator(weights, FinetuneBudget(epochs=2, lr=0.05), (X, y),
    ...                                  loss_fn, seed=0, metrics_of=metrics_of)
    >>> with pruned(model, 1 / 3):
    ...     before, after = metrics_of(model), evaluate(model)
    >>> after["w0"], after["train_loss"] < before["train_loss"], model.weight.tolist()
    (0.0, True, [[1.0, -2.0, 3.0]])
    """
    inputs, targets = train_pair
    train_loss = metrics_function({"train": train_pair}, loss_fn, classification=False)
    # Where this rank's shard lies among the global sample indices (rank order).
    counts = distributed.gather_rows(
        torch.tensor([inputs.shape[0]], dtype=torch.int64), "the fine-tune's shard sizes"
    ).tolist()
    shard = (sum(counts[: distributed.rank()]), sum(counts))

    def finetuned(model: nn.Module) -> dict[str, float]:
        masks = weights.keep_masks()
        flags = [tensor.requires_grad for tensor in weights.tensors]
        try:
            for tensor in weights.tensors:
                tensor.requires_grad_(True)
            _adam_on_kept(
                model, weights.tensors, masks, train_pair, shard, loss_fn, budget, seed, train_loss
            )
            return metrics_of(model)
        finally:
            weights.restore()
            for tensor, flag in zip(weights.tensors, flags):
                tensor.requires_grad_(flag)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return metrics_of(model) if weights.unchanged() else finetuned(model)

    return evaluate, finetuned


def _adam_on_kept(model, tensors, masks, train_pair, shard, loss_fn, budget, seed, train_loss):
    """Adam on the kept entries of ``tensors``; leaves them at the best iterate.

    The full training loss is measured before the first step and after every epoch,
    and the weights end at the iterate where it was lowest: a fresh Adam's first
    steps have size ~lr whatever the gradient, so near a minimum they can raise the
    loss, and "is there a point of V_K in S(eps)" asks for the best point found, not
    the last. No ``.grad`` attribute and no optimizer object is touched. ``shard`` is
    (offset of this rank's first sample, N): the batches are cut from a permutation
    of all N samples (:class:`FinetuneBudget`).
    """
    beta1, beta2, tiny = 0.9, 0.999, 1e-8
    inputs, targets = train_pair
    offset, total = shard
    keeps = [keep.to(tensor.dtype) for keep, tensor in zip(masks, tensors)]
    first = [torch.zeros_like(tensor) for tensor in tensors]
    second = [torch.zeros_like(tensor) for tensor in tensors]
    best_loss = train_loss(model)["train_loss"]
    best = [tensor.detach().clone() for tensor in tensors]
    order = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(budget.epochs):
        for batch in torch.randperm(total, generator=order).split(budget.batch_size):
            own = batch[(batch >= offset) & (batch < offset + inputs.shape[0])] - offset
            grads = _minibatch_gradient(
                model, tensors, inputs[own], targets[own], loss_fn, len(own) / len(batch)
            )
            step += 1
            with torch.no_grad():
                for tensor, grad, keep, m, v in zip(tensors, grads, keeps, first, second):
                    grad = grad * keep
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + tiny)
                    tensor.sub_(budget.lr * update * keep)
        loss_now = train_loss(model)["train_loss"]
        if loss_now < best_loss:
            best_loss = loss_now
            best = [tensor.detach().clone() for tensor in tensors]
    with torch.no_grad():
        for tensor, value in zip(tensors, best):
            tensor.copy_(value)


def _minibatch_gradient(model, tensors, inputs, targets, loss_fn, share) -> list[torch.Tensor]:
    """share x the gradient of the mean loss over (inputs, targets), summed over ranks.

    A rank without samples in the batch adds zeros; a tensor the loss does not
    depend on gets a zero gradient (so Adam leaves it where it is).
    """
    reference = tensors[0]
    grads = [None] * len(tensors)
    if inputs.shape[0] > 0:
        x = inputs.to(device=reference.device, dtype=reference.dtype)
        t = targets_like(targets, reference)
        with torch.enable_grad():
            loss = loss_fn(model(x), t) * share
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    grads = [torch.zeros_like(tensor) if g is None else g for tensor, g in zip(tensors, grads)]
    if not distributed.is_distributed():
        return grads
    summed = distributed.all_reduce_sum(
        torch.cat([g.reshape(-1) for g in grads]), "the fine-tune's gradient"
    )
    pieces = summed.split([tensor.numel() for tensor in tensors])
    return [piece.view_as(tensor) for piece, tensor in zip(pieces, tensors)]
