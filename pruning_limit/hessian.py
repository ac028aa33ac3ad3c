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
>>> torch.manual_seed(0)
>>> model = torch.nn.Linear(3, 1, bias=False).double()
>>> X, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
>>> op = CurvatureOperator(model, torch.nn.MSELoss(), (X, y))
>>> bool(torch.allclose(op.matrix(), 2 * X.T @ X / 10))   # Hessian of mean squared error
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .batches import DEFAULT_BATCH_SIZE, as_batches, check_model_and_data
from .spectrum import ParameterInfo

CURVATURES = ("hessian", "ggn")
DEFAULT_EXACT_LIMIT = 5000
CONVOLUTIONS = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)
PRUNABLE_MODULES = (nn.Linear, *CONVOLUTIONS)


class NoPrunableParameterError(ValueError):
    """The model has no weight of a Linear or Conv layer (and none was given)."""


def prunable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``weight`` of every Linear and Conv layer, as ``(qualified name, parameter)``.

    These are the tensors that users of ``torch.nn.utils.prune.global_unstructured``
    prune; biases and normalisation parameters are left out. A weight shared by
    several modules appears once. Inside a TorchScript module the layers are
    recognised by the class name they were scripted from.
    """
    seen: set[int] = set()
    found = []
    for module_name, module in model.named_modules():
        # A loaded TorchScript module hands its parameters out as plain tensors.
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        if is_layer(module, PRUNABLE_MODULES) and weight is not None:
            if id(weight) not in seen:
                seen.add(id(weight))
                found.append((f"{module_name}.weight" if module_name else "weight", weight))
    return found


def resolve_parameters(
    model: nn.Module, params: Iterable | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` list a curvature or pruning acts on.

    ``params=None`` gives :func:`prunable_parameters`. Otherwise each entry may be
    a qualified parameter name, a parameter of the model, or a ``(module, name)``
    pair as in ``torch.nn.utils.prune``.

    Raises
    ------
    NoPrunableParameterError
        If the selection is empty.
    ValueError
        If an entry is not a parameter of ``model``, or a weight holds NaN or inf.
    """
    named = dict(model.named_parameters())
    if params is None:
        selected = prunable_parameters(model)
        if not selected:
            raise NoPrunableParameterError(
                f"{type(model).__name__} has no prunable parameter: no Linear or Conv layer "
                "with a weight (pass params= to choose tensors yourself)"
            )
    else:
        by_identity = {id(p): name for name, p in named.items()}
        selected = []
        for entry in params:
            if isinstance(entry, str):
                if entry not in named:
                    raise ValueError(f"{entry!r} is not a parameter of {type(model).__name__}")
                selected.append((entry, named[entry]))
            elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], nn.Module):
                module, attribute = entry
                tensor = getattr(module, attribute, None)
                if id(tensor) not in by_identity:
                    raise ValueError(
                        f"{type(module).__name__}.{attribute} is not part of the model"
                    )
                selected.append((by_identity[id(tensor)], tensor))
            elif isinstance(entry, torch.Tensor):
                if id(entry) not in by_identity:
                    raise ValueError(
                        f"a tensor of shape {tuple(entry.shape)} in params is not a parameter "
                        "of the model"
                    )
                selected.append((by_identity[id(entry)], entry))
            else:
                raise TypeError(f"cannot read {type(entry).__name__} as a parameter")
        if not selected:
            raise NoPrunableParameterError("params is empty")
        if len({name for name, _ in selected}) != len(selected):
            raise ValueError("params names the same tensor twice")
    for name, tensor in selected:
        if not torch.isfinite(tensor).all():
            raise ValueError(f"parameter {name} holds NaN or infinite values")
    return selected


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; anything else is checked."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' was asked for but torch sees no MPS device")
    return device


def is_layer(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    """Whether ``module`` is one of ``kinds``; inside a TorchScript module, whether it
    was scripted (or traced) from one, by its ``original_name``."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", None) in {kind.__name__ for kind in kinds}
    return isinstance(module, kinds)


def has_convolution(model: nn.Module) -> bool:
    """Whether any submodule is a convolution."""
    return any(is_layer(module, CONVOLUTIONS) for module in model.modules())


def call_with(model: nn.Module, state: dict[str, torch.Tensor], inputs: torch.Tensor):
    """``model(inputs)`` with its parameters and buffers replaced by ``state`` (by name).

    For an eager module this is ``torch.func.functional_call``. A TorchScript module
    keeps its tensors in C++ slots that ``functional_call`` cannot re-parametrise:
    the given tensors are written into the slots for this one call and the original
    tensors written back afterwards, even on an error, so the module is left as it
    was. Autograd and the ``torch.func`` transforms see the substituted tensors, as
    for an eager module. Optimised execution is off during the call: its fused
    differentiable subgraphs do not support the double backward that Hessian
    products take.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return functional_call(model, state, (inputs,))
    originals = dict(model.named_parameters())
    originals.update(model.named_buffers())
    _set_script_slots(model, state)
    try:
        with torch.jit.optimized_execution(False):
            return model(inputs)
    finally:
        _set_script_slots(model, {name: originals[name] for name in state})


def _set_script_slots(model: torch.jit.ScriptModule, state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        *path, leaf = name.split(".")
        owner = model
        for part in path:
            owner = getattr(owner, part)
        owner._c.setattr(leaf, tensor)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode and restore every submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class CurvatureOperator:
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
        ``"hessian"`` or ``"ggn"`` (generalised Gauss-Newton, PSD for convex losses).
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
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data,
        *,
        curvature: str = "hessian",
        params: Iterable | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        hvp_method: str = "auto",
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if hvp_method not in ("auto", "loop", "batched"):
            raise ValueError(
                f"hvp_method must be 'auto', 'loop' or 'batched', got {hvp_method!r}"
            )
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction != "mean":
            raise ValueError(
                "loss_fn must average over the batch (reduction='mean'), "
                f"got reduction={reduction!r}"
            )
        selected = resolve_parameters(model, params)
        self.device = resolve_device(device)
        self.dtype = dtype if dtype is not None else selected[0][1].dtype
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if self.device.type == "mps" and self.dtype == torch.float64:
            raise ValueError("MPS devices have no float64: use dtype=torch.float32 or device='cpu'")

        self.model = model
        self.loss_fn = loss_fn
        self.curvature = curvature
        self.hvp_method = (
            ("batched" if curvature == "ggn" and not has_convolution(model) else "loop")
            if hvp_method == "auto"
            else hvp_method
        )
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
        self._weights = [n / self.batches.num_samples for n in self.batches.sizes]
        self.loss()  # fails early, and clearly, on a NaN or infinite loss

    # -- the loss as a function of the selected weights ----------------------------

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
        value = float(total)
        if not np.isfinite(value):
            raise FloatingPointError("the loss at the given weights is NaN or infinite")
        return value

    def batch_losses(self) -> tuple[np.ndarray, np.ndarray]:
        """Each batch's mean loss at w* and its sample count."""
        with torch.no_grad():
            losses = torch.stack([self._batch_loss(self._point, x, y) for x, y in self.batches])
        return losses.double().cpu().numpy(), np.asarray(self.batches.sizes)

    def gradient(self) -> torch.Tensor:
        """Gradient of the full-data mean loss with respect to the selected weights."""
        totals = [torch.zeros_like(p) for p in self._point]
        for w, (x, y) in zip(self._weights, self.batches):
            point = [p.detach().requires_grad_(True) for p in self._point]
            grads = torch.autograd.grad(self._batch_loss(point, x, y), point, allow_unused=True)
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total.add_(grad, alpha=w)
        return self.flatten(totals)

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
        product = self._hessian_rows if self.curvature == "hessian" else self._ggn_rows
        # Accumulate per parameter and flatten once: no per-batch concatenation.
        totals = [torch.zeros_like(d) for d in directions]
        for w, (x, y) in zip(self._weights, self.batches):
            for k, pieces in product(directions, count, x, y, method):
                for total, piece in zip(totals, pieces):
                    if piece is not None:  # None: the loss does not depend on this tensor
                        (total if k is None else total[k]).add_(piece, alpha=w)
        result = torch.cat([t.reshape(count, -1) for t in totals], dim=1)
        if not torch.isfinite(result).all():
            raise FloatingPointError(
                f"the {self.curvature} product is NaN or infinite: check the loss and weights"
            )
        return result

    def _hessian_rows(self, directions, count: int, inputs, targets, method: str):
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

    def _ggn_rows(self, directions, count: int, inputs, targets, method: str):
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

    # -- derived quantities ----------------------------------------------------------

    def matrix(self, max_dimension: int = DEFAULT_EXACT_LIMIT, block: int = 64) -> torch.Tensor:
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
