"""Small float64 models and data shared by the curvature tests, with independent ground truth.

The ground truth never goes through the package: the full-data mean loss is
written as one function of the flat prunable weights on the whole dataset at once
(no batching), differentiated with ``torch.func.hessian`` (Hessian) or
``torch.func.jacrev`` (GGN = J^T H_out J).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from pruning_limit.quadrature import gauss_rule
from pruning_limit.spectrum import Spectrum


@dataclass
class Case:
    name: str
    model: nn.Module
    loss_fn: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    batch_size: int  # chosen so that the last batch is short

    @property
    def data(self):
        return (self.inputs, self.targets)

    def prunable(self) -> list[tuple[str, torch.Tensor]]:
        return [
            (f"{name}.weight", module.weight)
            for name, module in self.model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
        ]

    def _flat_function(self):
        prunable = self.prunable()
        names = [n for n, _ in prunable]
        shapes = [p.shape for _, p in prunable]
        sizes = [p.numel() for _, p in prunable]
        fixed = {n: p.detach() for n, p in self.model.named_parameters() if n not in names}
        fixed.update({n: b for n, b in self.model.named_buffers()})

        def outputs(flat):
            state = dict(fixed)
            for name, piece, shape in zip(names, torch.split(flat, sizes), shapes):
                state[name] = piece.reshape(shape)
            return functional_call(self.model, state, (self.inputs,))

        point = torch.cat([p.detach().reshape(-1) for _, p in prunable])
        return outputs, point

    def hessian(self) -> torch.Tensor:
        outputs, point = self._flat_function()
        self.model.eval()
        return hessian(lambda w: self.loss_fn(outputs(w), self.targets))(point)

    def ggn(self) -> torch.Tensor:
        outputs, point = self._flat_function()
        self.model.eval()
        out = outputs(point)
        jacobian = jacrev(outputs)(point).reshape(out.numel(), -1)
        output_hessian = hessian(lambda o: self.loss_fn(o.reshape(out.shape), self.targets))(
            out.reshape(-1)
        )
        return jacobian.T @ output_hessian @ jacobian


def _classification(n, d, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return X, y


def mlp_tanh() -> Case:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = _classification(37, 5, 3, 11)
    return Case("mlp_tanh", model, nn.CrossEntropyLoss(), X, y, batch_size=8)


def mlp_relu() -> Case:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2))
    model = model.double()
    X, y = _classification(29, 4, 2, 12)
    return Case("mlp_relu", model, nn.CrossEntropyLoss(), X, y, batch_size=10)


def cnn() -> Case:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 12)),
        nn.Conv1d(1, 3, kernel_size=3),
        nn.Tanh(),
        nn.Conv1d(3, 2, kernel_size=3, stride=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    X, y = _classification(23, 12, 3, 13)
    return Case("cnn", model, nn.CrossEntropyLoss(), X, y, batch_size=6)


def batchnorm_regression() -> Case:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()
    batchnorm = model[1]
    batchnorm.running_mean.copy_(torch.randn(6, dtype=torch.float64))
    batchnorm.running_var.copy_(torch.rand(6, dtype=torch.float64) + 0.5)
    gen = torch.Generator().manual_seed(14)
    X = torch.randn(19, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(19, 2, generator=gen, dtype=torch.float64)
    model.train()  # the operator must switch to eval mode by itself, and switch back
    return Case("batchnorm_mse", model, nn.MSELoss(), X, y, batch_size=5)


ALL_CASES = [mlp_tanh, mlp_relu, cnn, batchnorm_regression]


def reference_lanczos(matrix: np.ndarray, start: np.ndarray, steps: int):
    """Lanczos with full re-orthogonalisation (twice) in numpy: the tests' reference."""
    basis = np.zeros((steps, start.size))
    basis[0] = start / np.linalg.norm(start)
    alphas, betas = np.zeros(steps), np.zeros(steps - 1)
    for j in range(steps):
        w = matrix @ basis[j]
        alphas[j] = basis[j] @ w
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        if j + 1 < steps:
            betas[j] = np.linalg.norm(w)
            basis[j + 1] = w / betas[j]
    return alphas, betas


def reference_slq(matrix: np.ndarray, probes: int, steps: int, rng, curvature: str):
    """An SLQ Spectrum of an explicit matrix, and its normalised Rademacher probes."""
    starts = rng.choice([-1.0, 1.0], size=(probes, matrix.shape[0]))
    pairs = [reference_lanczos(matrix, start, steps) for start in starts]
    rules = [gauss_rule(a, b) for a, b in pairs]
    spectrum = Spectrum(
        nodes=np.stack([r[0] for r in rules]),
        weights=np.stack([r[1] for r in rules]),
        dimension=matrix.shape[0],
        zero_rows=0,
        curvature=curvature,
        method="slq",
        alphas=np.array([a for a, _ in pairs]),
        betas=np.array([b for _, b in pairs]),
    )
    return spectrum, starts / np.sqrt(matrix.shape[0])
