"""Which weights are pruned, and how a model is called with other weights.

The prunable parameters are the ``weight`` of every Linear and Conv layer, the
tensors ``torch.nn.utils.prune.global_unstructured`` users prune; biases and
normalisation parameters are held fixed. Also here: the device choice, eval mode, and
:func:`call_with`, which evaluates a model (eager or TorchScript) at given tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call

CONVOLUTIONS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


PRUNABLE_MODULES = (nn.Linear, *CONVOLUTIONS)


class NoPrunableParameterError(ValueError):
    """The model has no weight of a Linear or Conv layer (and none was given).

    >>> resolve_parameters(torch.nn.Sequential(torch.nn.ReLU()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning_limit.parameters.NoPrunableParameterError: Sequential has no prunable parameter: ...
    """


def prunable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``weight`` of every Linear and Conv layer, as ``(qualified name, parameter)``.

    These are the tensors that users of ``torch.nn.utils.prune.global_unstructured``
    prune; biases and normalisation parameters are left out. A weight shared by
    several modules appears once. Inside a TorchScript module the layers are
    recognised by the class name they were scripted from.

    Example
    -------
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3),
    ...                             torch.nn.Linear(3, 1))
    >>> [name for name, _ in prunable_parameters(model)]
    ['0.weight', '2.weight']
    """
    seen: set[int] = set()
    found = []
    for module_name, module in model.named_modules():
        # A loaded TorchScript module hands its parameters out as plain tensors.
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        if _is_layer(module, PRUNABLE_MODULES) and weight is not None:
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

    Example
    -------
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    >>> [name for name, _ in resolve_parameters(model, [(model[1], "weight"), "0.bias"])]
    ['1.weight', '0.bias']
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
    """``"auto"`` picks CUDA, then MPS, then the CPU; anything else is checked.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cuda", "mps", "cpu")
    True
    """
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


def _is_layer(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    """Whether ``module`` is one of ``kinds``; inside a TorchScript module, whether it
    was scripted (or traced) from one, by its ``original_name``."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", None) in {kind.__name__ for kind in kinds}
    return isinstance(module, kinds)


def has_convolution(model: nn.Module) -> bool:
    """Whether any submodule is a convolution.

    >>> has_convolution(torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten()))
    True
    >>> has_convolution(torch.nn.Linear(2, 1))
    False
    """
    return any(_is_layer(module, CONVOLUTIONS) for module in model.modules())


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

    Example
    -------
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> state = {"weight": torch.tensor([[1.0, 2.0]])}
    >>> call_with(model, state, torch.tensor([[3.0, 4.0]])).item()   # 1*3 + 2*4
    11.0
    >>> model.weight.equal(state["weight"])   # the model keeps its own weights
    False
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
    """Run ``model`` in eval mode and restore every submodule's mode afterwards.

    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    >>> _ = model[1].eval()   # one submodule already in eval mode stays so
    >>> with eval_mode(model):
    ...     inside = [m.training for m in model.modules()]
    >>> inside, [m.training for m in model.modules()]
    ([False, False, False], [True, True, False])
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
