"""Curvature of the full-data mean loss: Hessian- and GGN-vector products, exact matrices.

With ``w`` the prunable weights (all other parameters and buffers held fixed) and
batches b of n_b samples (N in all),

    L(w) = sum_b (n_b / N) * l(f(x_b; w), y_b),

where ``l`` is the loss function's mean over a batch. The operator multiplies

    Hessian:  C = d^2 L / dw^2,
    GGN:      C = sum_b (n_b / N) * J_b^T (d^2 l / df^2) J_b,   J_b = df(x_b; w)/dw,

onto one vector or a block of K vectors, without forming C. The GGN is positive
semi-definite whenever ``l`` is convex in the outputs (cross-entropy, squared
error) and equals the Hessian where the residuals vanish.

The model runs in eval mode (BatchNorm on running statistics, dropout off) through
``torch.func.functional_call``, so the user's module is never modified. A
TorchScript module (``torch.jit.script`` or ``torch.jit.trace``, loaded by
``torch.jit.load``) cannot be re-parametrised that way; for it the weights are
placed in its slots for the duration of one call and put back (see
:func:`call_with`).

Example
-------
>>> import torch
>>> from pruning_limit import CurvatureOperator
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Linear(3, 1, bias=False).double()
>>> X, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
>>> op = CurvatureOperator(model, torch.nn.MSELoss(), (X, y), curvature="hessian")
>>> bool(torch.allclose(op.matrix(), 2 * X.T @ X / 10))   # Hessian of mean squared error
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import distributed
from ._checks import check_mean_reduction
from .batches import DEFAULT_BATCH_SIZE, as_batches, check_model_and_data
from .fingerprint import SCHEME as FINGERPRINT_SCHEME
from .fingerprint import data_fingerprint, weights_fingerprint
from .parameters import call_with, eval_mode, has_convolution, resolve_device, resolve_parameters
from .spectrum import ParameterInfo

CURVATURES = ("hessian", "ggn")
# The GGN is the default everywhere: PSD, so no eigenvalue policy is needed, the
# quadratic model is convex and SLQ's delta/D converges fast (README, "Which curvature").
DEFAULT_CURVATURE = "ggn"
HVP_METHODS = ("auto", "loop", "batched")
# The largest D for which a dense D x D curvature is built: exact spectra, the dense
# quadratic model, and the pipeline's choice of the exact path over SLQ.
EXACT_LIMIT = 3000


class ModelLoss:
    """The full-data mean loss L(w) of a model as a function of its selected weights.

    The shared base of the curvature operators: the weights w* (a cast copy), the
    batches, L(w*), each batch's loss and the gradient. :func:`~pruning_limit.budget.loss_budget`
    reads the batch losses from it, so that eps needs no curvature. Parameters as for
    :class:`CurvatureOperator`.

    >>> import torch
    >>> X, y = torch.ones(4, 2), torch.zeros(4, 1)
    >>> objective = ModelLoss(torch.nn.Linear(2, 1), torch.nn.MSELoss(), (X, y), batch_size=2)
    >>> objective.dimension, objective.batch_losses()[1].tolist()
    (2, [2, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data,
        *,
        params: Iterable | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        check_mean_reduction(loss_fn)
        selected = resolve_parameters(model, params)
        self.device = resolve_device(device)
        self.dtype = dtype if dtype is not None else selected[0][1].dtype
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if self.device.type == "mps" and self.dtype == torch.float64:
            raise ValueError("MPS devices have no float64: use dtype=torch.float32 or device='cpu'")

        self.model = model
        self.loss_fn = loss_fn
        self.names = [name for name, _ in selected]
        self.parameters = tuple(ParameterInfo(n, tuple(p.shape)) for n, p in selected)
        self._sizes = [p.numel() for _, p in selected]
        self.dimension = int(sum(self._sizes))

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(self.device)
            return t.to(self.dtype) if t.is_floating_point() else t

        chosen = set(self.names)
        self._fixed = {n: cast(t) for n, t in model.named_parameters() if n not in chosen}
        self._fixed.update({n: cast(t) for n, t in model.named_buffers()})
        self._point = [cast(p) for _, p in selected]
        batches = check_model_and_data(model, loss_fn, as_batches(data, batch_size))
        self.batches = batches.to(self.device, self.dtype)
        # Under torch.distributed, data is this rank's shard: weights n_b / N with N the
        # count over all ranks, so that one all-reduce of the ranks' sums is the mean.
        counts = torch.tensor([self.batches.num_samples, len(self.batches)])
        self.num_samples, self.num_batches = distributed.all_reduce_sum(
            counts, "the sample counts"
        ).tolist()
        self.fingerprint = {
            "weights": weights_fingerprint(selected),
            "other": weights_fingerprint(
                [(n, t) for n, t in model.named_parameters() if n not in chosen]
                + list(model.named_buffers())
            ),
            "data": data_fingerprint(  # of the whole data, under torch.distributed too
                batches,
                sum_over_ranks=(
                    distributed.all_reduce_sum if distributed.is_distributed() else None
                ),
            ),
            "samples": self.num_samples,
            "scheme": FINGERPRINT_SCHEME,
        }
        self._weights = [n / self.num_samples for n in self.batches.sizes]
        self.loss()  # fails early, and clearly, on a NaN or infinite loss

    def _outputs(self, point: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        state = dict(self._fixed)
        state.update(zip(self.names, point))
        with eval_mode(self.model):
            return call_with(self.model, state, inputs)

    def _batch_loss(self, point, inputs, targets) -> torch.Tensor:
        return self.loss_fn(self._outputs(point, inputs), targets)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one vector of length D."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a vector of length D (or rows of shape (K, D)) into per-parameter tensors."""
        lead = vector.shape[:-1]
        pieces = torch.split(vector, self._sizes, dim=-1)
        return [p.reshape(*lead, *info.shape) for p, info in zip(pieces, self.parameters)]

    def weights(self) -> torch.Tensor:
        """w*, the selected weights as one vector of length D."""
        return self.flatten(self._point)

    def loss(self) -> float:
        """L(w*), the full-data mean loss."""
        with torch.no_grad():
            total = sum(
                w * self._batch_loss(self._point, x, y)
                for w, (x, y) in zip(self._weights, self.batches)
            )
        value = float(distributed.all_reduce_sum(total, "the loss"))
        if not np.isfinite(value):
            raise FloatingPointError("the loss at the given weights is NaN or infinite")
        return value

    def batch_losses(self) -> tuple[np.ndarray, np.ndarray]:
        """Each batch's mean loss at w* and its sample count (every rank's, in rank order)."""
        with torch.no_grad():
            losses = torch.stack([self._batch_loss(self._point, x, y) for x, y in self.batches])
        losses = distributed.gather_rows(losses.double().cpu(), "the batch losses")
        sizes = distributed.gather_rows(torch.tensor(self.batches.sizes), "the batch sizes")
        return losses.numpy(), sizes.numpy()

    def gradient(self) -> torch.Tensor:
        """Gradient of the full-data mean loss with respect to the selected weights."""
        totals = [torch.zeros_like(p) for p in self._point]
        for w, (x, y) in zip(self._weights, self.batches):
            point = [p.detach().requires_grad_(True) for p in self._point]
            grads = torch.autograd.grad(self._batch_loss(point, x, y), point, allow_unused=True)
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total.add_(grad, alpha=w)
        return distributed.all_reduce_sum(self.flatten(totals), "the gradient")


class CurvatureOperator(ModelLoss):
    """Products of the full-data Hessian (or GGN) of a model's loss with vectors.

    Parameters
    ----------
    model
        A ``torch.nn.Module``; it is evaluated in eval mode and never modified.
    loss_fn
        ``loss_fn(outputs, targets)``, a mean over the batch (e.g.
        ``nn.CrossEntropyLoss()``); modules with ``reduction != "mean"`` are refused.
    data
        A DataLoader, an iterable of ``(inputs, targets)`` batches, or a pair of
        tensors (split into batches of ``batch_size``).
    curvature
        ``"ggn"`` (default: generalised Gauss-Newton, PSD for convex losses) or
        ``"hessian"``. ``CurvatureOperator(...)`` returns the matching subclass,
        :class:`GGNOperator` or :class:`HessianOperator`.
    params
        The tensors the curvature acts on; default: every Linear/Conv ``weight``.
    dtype
        Computation dtype (``torch.float32`` or ``torch.float64``); default: the
        model's. The model is not cast: a cast copy of its tensors is used.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``. The data are moved there once.
    hvp_method
        How a block of K products is taken per batch. Hessian: after one
        create-graph backward pass, ``"loop"`` makes K backward passes through the
        gradient's graph, ``"batched"`` one vmapped pass (``is_grads_batched``).
        GGN: after one linearisation, ``"loop"`` makes K forward-mode passes,
        ``"batched"`` one vmapped pass. ``"auto"`` (default) takes ``"batched"`` for
        the GGN of a model without convolutions and ``"loop"`` otherwise, as measured
        per vector (CPU, float32; batched time / loop time, blocks of 2 to 8): GGN of
        MLPs with 1k-1M weights 0.25-0.85, of CNNs 0.32-0.76 below 2k weights but
        1.14 (17k) and 1.83 (106k); Hessian of MLPs 1.03-1.46 from 100k weights
        (0.53 at 2.4k), of CNNs 1.00-1.58 (``benchmarks/hvp_cost.py``). A rule, not a
        timing, decides, so that a run gives the same bits on every machine and on
        resume. A single vector always takes the plain path; ``matrix()`` always
        uses ``"batched"``.

    Attributes
    ----------
    dimension
        D, the number of coordinates (total size of ``params``).
    parameters
        :class:`ParameterInfo` for each tensor, in flattening order.

    Example
    -------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> X, y = torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    >>> operator = CurvatureOperator(model, torch.nn.MSELoss(), (X, y))
    >>> type(operator).__name__, operator.matrix().tolist()   # GGN of MSE: 2 X^T X / 2
    ('GGNOperator', [[1.0, 0.0], [0.0, 1.0]])
    """

    curvature: str = ""

    def __new__(cls, *args, curvature: str | None = None, **kwargs):
        if cls is CurvatureOperator:  # the public entry point: pick the curvature's class
            curvature = DEFAULT_CURVATURE if curvature is None else curvature
            if curvature not in CURVATURES:
                raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
            cls = _OPERATORS[curvature]
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data,
        *,
        curvature: str | None = None,
        params: Iterable | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        hvp_method: str = "auto",
    ) -> None:
        if curvature is not None and curvature != self.curvature:
            raise ValueError(
                f"curvature={curvature!r} asked of a {type(self).__name__} ({self.curvature!r})"
            )
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method must be 'auto', 'loop' or 'batched', got {hvp_method!r}")
        super().__init__(
            model, loss_fn, data, params=params, dtype=dtype, device=device, batch_size=batch_size
        )
        self.hvp_method = self._auto_method(model) if hvp_method == "auto" else hvp_method

    def _auto_method(self, model: nn.Module) -> str:
        return "loop"

    def _rows(self, directions, count: int, inputs, targets, method: str):
        """Yield ``(k, per-parameter products)`` for one batch; k None: all K at once."""
        raise NotImplementedError

    # -- products ------------------------------------------------------------------

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """C v for one vector of length D."""
        return self.apply(vector.reshape(1, -1)).reshape(-1)

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        """C V for V of shape (D, K) (columns are vectors, as in scipy)."""
        return self.apply(block.T).T

    def apply(self, rows: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """C applied to each row of ``rows`` (shape (K, D)); returns shape (K, D).

        ``method`` overrides the operator's ``hvp_method`` for this call.
        """
        method = self.hvp_method if method is None else method
        if rows.dim() != 2 or rows.shape[1] != self.dimension:
            raise ValueError(
                f"expected vectors of shape (K, {self.dimension}), got {tuple(rows.shape)}"
            )
        rows = rows.to(device=self.device, dtype=self.dtype)
        count = rows.shape[0]
        directions = self.unflatten(rows)
        # Accumulate per parameter and flatten once: no per-batch concatenation.
        totals = [torch.zeros_like(d) for d in directions]
        for w, (x, y) in zip(self._weights, self.batches):
            for k, pieces in self._rows(directions, count, x, y, method):
                for total, piece in zip(totals, pieces):
                    if piece is not None:  # None: the loss does not depend on this tensor
                        (total if k is None else total[k]).add_(piece, alpha=w)
        result = torch.cat([t.reshape(count, -1) for t in totals], dim=1)
        result = distributed.all_reduce_sum(result, f"the {self.curvature} products")
        if not torch.isfinite(result).all():
            raise FloatingPointError(
                f"the {self.curvature} product is NaN or infinite: check the loss and weights"
            )
        return result

    # -- derived quantities ----------------------------------------------------------

    def matrix(self, max_dimension: int = EXACT_LIMIT, block: int = 64) -> torch.Tensor:
        """The full D x D curvature matrix, from products with unit vectors, symmetrised.

        Raises ``ValueError`` when D exceeds ``max_dimension`` (memory grows as D^2
        and time as D products).
        """
        if self.dimension > max_dimension:
            raise ValueError(
                f"D = {self.dimension} exceeds the exact-path limit of {max_dimension}; "
                "use estimate_spectrum (SLQ) or raise max_dimension"
            )
        eye = torch.eye(self.dimension, dtype=self.dtype, device=self.device)
        # Blocks of unit vectors: the vmapped products are the faster ones for small models.
        columns = [
            self.apply(eye[i : i + block], method="batched")
            for i in range(0, self.dimension, block)
        ]
        full = torch.cat(columns)
        return 0.5 * (full + full.T)

    def zero_rows(self, probes: int = 4, seed: int = 0) -> torch.Tensor:
        """Boolean mask of the rows of C that are identically zero.

        For a probe v with independent entries, (Cv)_j = sum_i C_ji v_i, whose
        second moment is ||row_j||^2. Gaussian probes make an exact cancellation in
        a non-zero row an event of probability zero, so a row is declared zero
        only when (Cv)_j == 0 exactly for every probe (dead units, unused inputs).
        """
        generator = torch.Generator().manual_seed(seed)
        probe_block = torch.randn(probes, self.dimension, generator=generator, dtype=torch.float64)
        products = self.apply(probe_block.to(self.dtype))
        return (products == 0).all(dim=0)

    def provenance(self) -> dict:
        """How the products are taken, for the records of a Spectrum."""
        return {
            "curvature": self.curvature,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "hvp_method": self.hvp_method,
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "model": type(self.model).__name__,
            **distributed.record(),
        }


class HessianOperator(CurvatureOperator):
    """The Hessian C = d^2 L / dw^2 (see :class:`CurvatureOperator`).


    Example
    -------
    The product of two scalar weights, f = w2 w1 x, with squared error at w1 = w2 = 1,
    x = 1, y = 0: L = (w1 w2)^2, whose Hessian [[2 w2^2, 4 w1 w2], [4 w1 w2, 2 w1^2]] has
    an eigenvalue -2 (the GGN leaves out the residual's term; see :class:`GGNOperator`).

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False),
    ...                             torch.nn.Linear(1, 1, bias=False)).double()
    >>> for layer in model:
    ...     _ = torch.nn.init.ones_(layer.weight)
    >>> X, y = torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    >>> hessian = HessianOperator(model, torch.nn.MSELoss(), (X, y)).matrix()
    >>> hessian.tolist(), torch.linalg.eigvalsh(hessian).tolist()
    ([[2.0, 4.0], [4.0, 2.0]], [-2.0, 6.0])
    """

    curvature = "hessian"

    def _rows(self, directions, count: int, inputs, targets, method: str):
        """Yield ``(k, per-parameter products)`` for one batch; k None: all K at once."""
        point = [p.detach().requires_grad_(True) for p in self._point]
        loss = self._batch_loss(point, inputs, targets)
        grads = torch.autograd.grad(loss, point, create_graph=True, allow_unused=True)
        # A gradient that does not depend on the weights has no second derivative.
        curved = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not curved:
            return
        grads = [grads[i] for i in curved]
        curved_directions = [directions[i] for i in curved]
        if method == "batched" and count > 1:
            yield (
                None,
                torch.autograd.grad(
                    grads,
                    point,
                    grad_outputs=curved_directions,
                    is_grads_batched=True,
                    allow_unused=True,
                ),
            )
            return
        for k in range(count):
            yield (
                k,
                torch.autograd.grad(
                    grads,
                    point,
                    grad_outputs=[d[k] for d in curved_directions],
                    retain_graph=k < count - 1,
                    allow_unused=True,
                ),
            )


class GGNOperator(CurvatureOperator):
    """The generalised Gauss-Newton matrix sum_b (n_b/N) J_b^T (d^2 l/df^2) J_b
    (see :class:`CurvatureOperator`).


    Example
    -------
    For f = w2 w1 x with squared error (the model of :class:`HessianOperator`'s
    example) J = [w2 x, w1 x] and d^2 l/df^2 = 2, so at w1 = w2 = 1, x = 1 the GGN is
    2 J^T J, positive semi-definite, whatever the residual.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False),
    ...                             torch.nn.Linear(1, 1, bias=False)).double()
    >>> for layer in model:
    ...     _ = torch.nn.init.ones_(layer.weight)
    >>> X, y = torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    >>> GGNOperator(model, torch.nn.MSELoss(), (X, y)).matrix().tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """

    curvature = "ggn"

    def _auto_method(self, model: nn.Module) -> str:
        return "loop" if has_convolution(model) else "batched"

    def _rows(self, directions, count: int, inputs, targets, method: str):
        """Yield ``(k, per-parameter products)`` for one batch; k None: all K at once."""
        point = tuple(p.detach() for p in self._point)

        def network(*weights):
            return self._outputs(weights, inputs)

        outputs, pullback = torch.func.vjp(network, *point)
        # d^2 l / df^2 applied by double backward on the outputs alone (cheap: no weights).
        at_outputs = outputs.detach().requires_grad_(True)
        (output_gradient,) = torch.autograd.grad(
            self.loss_fn(at_outputs, targets), at_outputs, create_graph=True
        )
        if method == "batched" and count > 1:  # J V in one vmapped jvp, J^T by a vmapped pullback
            tangents = torch.func.vmap(lambda *d: torch.func.jvp(network, point, d)[1])(*directions)
            (curved,) = torch.autograd.grad(
                output_gradient, at_outputs, grad_outputs=tangents, is_grads_batched=True
            )
            yield None, torch.func.vmap(pullback)(curved)
            return
        for k in range(count):
            _, tangent = torch.func.jvp(network, point, tuple(d[k] for d in directions))
            (curved,) = torch.autograd.grad(
                output_gradient, at_outputs, grad_outputs=tangent, retain_graph=True
            )
            yield k, pullback(curved)


_OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}


class MatrixOperator:
    """A symmetric matrix with the operator protocol of :class:`CurvatureOperator`.

    What :func:`~pruning_limit.lanczos.slq`, :func:`~pruning_limit.lanczos.exact_spectrum_of`,
    :func:`~pruning_limit.lanczos.hutchinson_trace` and
    :func:`~pruning_limit.lanczos.top_eigenvalues` use: ``dimension``, ``dtype``,
    ``device``, ``curvature``, ``parameters``, ``apply(rows)``, ``matvec``, ``matrix()``,
    ``zero_rows()`` and ``provenance()``. For tests against a known matrix, and for
    curvatures built elsewhere.

    >>> import torch
    >>> operator = MatrixOperator(torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)))
    >>> operator.apply(torch.ones(1, 3, dtype=torch.float64)).tolist()
    [[1.0, 2.0, 0.0]]
    >>> operator.zero_rows().tolist()
    [False, False, True]
    """

    def __init__(self, matrix, *, curvature: str = "matrix") -> None:
        matrix = torch.as_tensor(matrix)
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
        if matrix.dtype not in (torch.float32, torch.float64):
            matrix = matrix.to(torch.float64)
        if not torch.equal(matrix, matrix.T):
            raise ValueError("the matrix is not symmetric")
        self._matrix = matrix
        self.dimension = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.curvature = curvature
        self.parameters: tuple[ParameterInfo, ...] = ()

    def apply(self, rows: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """C applied to each row of ``rows`` (shape (K, D))."""
        if rows.dim() != 2 or rows.shape[1] != self.dimension:
            raise ValueError(
                f"expected vectors of shape (K, {self.dimension}), got {tuple(rows.shape)}"
            )
        return rows.to(device=self.device, dtype=self.dtype) @ self._matrix

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """C v for one vector of length D."""
        return self.apply(vector.reshape(1, -1)).reshape(-1)

    def matrix(self, max_dimension: int | None = None, block: int = 64) -> torch.Tensor:
        """The matrix itself (``max_dimension`` and ``block`` are accepted and ignored)."""
        return self._matrix

    def zero_rows(self, probes: int = 4, seed: int = 0) -> torch.Tensor:
        """Boolean mask of the identically-zero rows (read off the matrix exactly)."""
        return (self._matrix == 0).all(dim=1).cpu()

    def provenance(self) -> dict:
        """The records a Spectrum keeps of its operator."""
        return {
            "curvature": self.curvature,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "model": "matrix",
        }
