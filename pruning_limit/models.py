"""Classifiers built from plain, JSON-serialisable specs.

A spec is a dict that names the architecture completely, so that a model card can
rebuild the network whose weights it stores: ``build_model(card["model"])``.
Every model takes flat inputs of shape ``(batch, input_dim)`` and returns class
logits of shape ``(batch, classes)``; the CNNs reshape inside.

Kinds and fields (:func:`model_spec` fills the defaults shown):

- ``"mlp"``: ``input_dim``, ``classes``, ``hidden=[64, 64]``,
  ``activation="relu"``, ``batchnorm=False``. Linear layers of widths
  input_dim -> hidden... -> classes, each hidden one followed by (BatchNorm and)
  the activation.
- ``"cnn1d"`` (signals such as MNIST-1D, ``input_dim`` = signal length):
  ``channels=[16, 32]``, ``kernel_size=5``, ``activation``, ``batchnorm``. Each
  block is Conv1d (same padding) -> (BatchNorm) -> activation -> max-pool by 2;
  then a Linear layer from the flattened features to the classes.
- ``"cnn2d"`` (images such as the 8x8 digits, ``input_dim`` = h * w):
  ``image_shape=[h, w]`` (default: square), ``channels=[8, 16]``,
  ``kernel_size=3``, ``activation``, ``batchnorm``; blocks as for ``cnn1d`` in 2-d.

Layers are named (``fc1``, ``conv1``, ``act1``, ``out``, ...) so that the names in
a state_dict and in a pruning report say what they are. The weight of every
Linear and Conv layer is prunable (:func:`pruning_limit.parameters.prunable_parameters`).

:func:`least_squares` gives a linear network with a closed-form loss, curvature and
pruning limit, for examples and checks.

Sizes run from about a thousand weights (``mlp`` 16-32-16-2: 1,106 parameters; the
exact-Hessian path) to about a million (``mlp`` 64-1024-1024-10: 1,126,410).

Example
-------
>>> from pruning_limit.models import build_model, model_spec
>>> spec = model_spec("mlp", input_dim=8, classes=2, hidden=[16])
>>> spec["activation"], spec["batchnorm"]
('relu', False)
>>> sum(p.numel() for p in build_model(spec).parameters())   # 8*16 + 16 + 16*2 + 2
178
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}

_DEFAULTS = {
    "mlp": {"hidden": [64, 64], "activation": "relu", "batchnorm": False},
    "cnn1d": {"channels": [16, 32], "kernel_size": 5, "activation": "relu", "batchnorm": False},
    "cnn2d": {"channels": [8, 16], "kernel_size": 3, "activation": "relu", "batchnorm": False},
}
_REQUIRED = ("input_dim", "classes")
MODEL_KINDS = tuple(_DEFAULTS)


def model_spec(kind: str, *, input_dim: int, classes: int, **fields) -> dict:
    """A complete, checked spec of kind ``kind``, with defaults for the fields not given.

    For ``cnn2d`` without ``image_shape``, the image is taken as square:
    ``[sqrt(input_dim)] * 2``. Tuples are stored as lists, as they read back from JSON.

    Raises
    ------
    ValueError
        For an unknown kind, an unknown field, or a field with a bad value.

    Example
    -------
    >>> model_spec("mlp", input_dim=4, classes=3, hidden=[8])["hidden"]
    [8]
    """
    if kind not in _DEFAULTS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
    spec = {"kind": kind, "input_dim": input_dim, "classes": classes, **_DEFAULTS[kind], **fields}
    for name in ("hidden", "channels", "image_shape"):
        if isinstance(spec.get(name), tuple):
            spec[name] = list(spec[name])  # as it will read back from JSON
    if kind == "cnn2d" and "image_shape" not in fields:
        side = math.isqrt(input_dim) if isinstance(input_dim, int) and input_dim > 0 else 0
        if side * side != input_dim:
            raise ValueError(
                f"cnn2d needs image_shape=[h, w] when input_dim is not a square; got {input_dim!r}"
            )
        spec["image_shape"] = [side, side]
    _check_spec(spec)
    return spec


def build_model(spec: dict) -> nn.Module:
    """The float32 network that ``spec`` describes, freshly initialised by PyTorch's defaults.

    ``spec`` must be complete (as :func:`model_spec` returns it, or as saved in a
    model card); initialisation draws from torch's global random generator.

    Raises
    ------
    ValueError
        For a missing, unknown or bad field, naming it.

    Example
    -------
    >>> model = build_model(model_spec("mlp", input_dim=4, classes=3, hidden=[8]))
    >>> count_parameters(model)   # (4*8 + 8) + (8*3 + 3)
    67
    """
    _check_spec(spec)
    activation = ACTIVATIONS[spec["activation"]]
    if spec["kind"] == "mlp":
        return _mlp(spec, activation)
    return _cnn(spec, activation)


def _mlp(spec: dict, activation: type[nn.Module]) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = spec["input_dim"]
    for index, hidden in enumerate(spec["hidden"], start=1):
        layers[f"fc{index}"] = nn.Linear(width, hidden)
        if spec["batchnorm"]:
            layers[f"bn{index}"] = nn.BatchNorm1d(hidden)
        layers[f"act{index}"] = activation()
        width = hidden
    layers["out"] = nn.Linear(width, spec["classes"])
    return nn.Sequential(layers)


def _cnn(spec: dict, activation: type[nn.Module]) -> nn.Sequential:
    two_d = spec["kind"] == "cnn2d"
    conv, norm, pool = (
        (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        if two_d
        else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
    )
    shape = list(spec["image_shape"]) if two_d else [spec["input_dim"]]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["unflatten"] = nn.Unflatten(1, (1, *shape))
    in_channels = 1
    for index, channels in enumerate(spec["channels"], start=1):
        layers[f"conv{index}"] = conv(
            in_channels, channels, spec["kernel_size"], padding=spec["kernel_size"] // 2
        )
        if spec["batchnorm"]:
            layers[f"bn{index}"] = norm(channels)
        layers[f"act{index}"] = activation()
        layers[f"pool{index}"] = pool(2)
        in_channels = channels
        shape = [side // 2 for side in shape]
    layers["flatten"] = nn.Flatten()
    layers["out"] = nn.Linear(in_channels * math.prod(shape), spec["classes"])
    return nn.Sequential(layers)


def _check_spec(spec: dict) -> None:
    """Raise ValueError naming the first missing, unknown or bad field of ``spec``."""
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _DEFAULTS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
    expected = {"kind", *_REQUIRED, *_DEFAULTS[kind]} | (
        {"image_shape"} if kind == "cnn2d" else set()
    )
    missing = sorted(expected - set(spec))
    if missing:
        raise ValueError(f"{kind} spec lacks the field(s) {', '.join(missing)}")
    unknown = sorted(set(spec) - expected)
    if unknown:
        raise ValueError(
            f"{kind} spec has unknown field(s) {', '.join(unknown)}; "
            f"its fields are {', '.join(sorted(expected))}"
        )
    for name in _REQUIRED:
        _check_positive_int(kind, name, spec[name])
    if spec["activation"] not in ACTIVATIONS:
        raise ValueError(
            f"{kind} spec field activation must be one of {', '.join(ACTIVATIONS)}, "
            f"got {spec['activation']!r}"
        )
    if not isinstance(spec["batchnorm"], bool):
        raise ValueError(
            f"{kind} spec field batchnorm must be true or false, got {spec['batchnorm']!r}"
        )
    if kind == "mlp":
        _check_int_list(kind, "hidden", spec["hidden"], allow_empty=True)
        return
    _check_int_list(kind, "channels", spec["channels"], allow_empty=False)
    _check_positive_int(kind, "kernel_size", spec["kernel_size"])
    if spec["kernel_size"] % 2 == 0:
        raise ValueError(
            f"{kind} spec field kernel_size must be odd (same padding), got {spec['kernel_size']}"
        )
    if kind == "cnn2d":
        _check_int_list(kind, "image_shape", spec["image_shape"], allow_empty=False)
        if len(spec["image_shape"]) != 2 or math.prod(spec["image_shape"]) != spec["input_dim"]:
            raise ValueError(
                f"cnn2d spec field image_shape must be [h, w] with h * w = input_dim "
                f"({spec['input_dim']}), got {spec['image_shape']!r}"
            )
        shape = spec["image_shape"]
    else:
        shape = [spec["input_dim"]]
    blocks = len(spec["channels"])
    if min(shape) < 2**blocks:
        raise ValueError(
            f"{kind} spec: {blocks} pooling block(s) halve the input {blocks} time(s), which "
            f"needs every side >= {2**blocks}; got input shape {shape}"
        )


def _check_positive_int(kind: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{kind} spec field {name} must be a positive integer, got {value!r}")


def _check_int_list(kind: str, name: str, value, *, allow_empty: bool) -> None:
    if (
        not isinstance(value, (list, tuple))
        or (not value and not allow_empty)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(
            f"{kind} spec field {name} must be a {'' if allow_empty else 'non-empty '}list of "
            f"positive integers, got {value!r}"
        )


def count_parameters(model: nn.Module) -> int:
    """The number of scalar parameters of ``model`` (biases and normalisation included).

    >>> count_parameters(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)))
    26
    """
    return sum(parameter.numel() for parameter in model.parameters())


def least_squares(
    weights=(1.0, -2.0, 3.0, -4.0), repeats: int = 10
) -> tuple[nn.Linear, tuple[torch.Tensor, torch.Tensor]]:
    """A least-squares network at its exact minimum, with everything in closed form.

    The model is ``Linear(D, 1, bias=False)`` holding w* = ``weights``; the data are the
    unit inputs e_1..e_D, each ``repeats`` times, with targets y = X w*. Under
    ``torch.nn.MSELoss()`` (mean) the train loss of w is sum_j (w_j - w*_j)^2 / D, so

    - the Hessian (and GGN) is (2 / D) I: I / 2 for the default D = 4;
    - pruning the set P of weights costs sum_{j in P} w*_j^2 / D: for the default
      w* = (1, -2, 3, -4), removing the k smallest |w| costs 0, 1/4, 5/4, 14/4, 30/4,
      so with a loss budget eps = 1 the limit is p = 1/4;
    - the paper's p* with eps = 1 solves p = 1 / (1 + R(p)^2 / 4) with
      R^2 = 16 p - 3 on [1/4, 1/2]: p* = (sqrt(257) - 1) / 32 = 0.4697.

    Parameters
    ----------
    weights
        The minimiser w*, one entry per weight.
    repeats
        How many times each unit input occurs (N = D * repeats samples).

    Returns
    -------
    (model, (inputs, targets))
        The model, and the train data as a pair of float32 tensors of shapes (N, D)
        and (N, 1).

    Example
    -------
    >>> model, (X, y) = least_squares()
    >>> model.weight.tolist(), X.shape, y[:4].flatten().tolist()
    ([[1.0, -2.0, 3.0, -4.0]], torch.Size([40, 4]), [1.0, -2.0, 3.0, -4.0])
    >>> with torch.no_grad():
    ...     _ = model.weight[0, 0].zero_()   # prune w_1 = 1: the loss is 1^2 / 4
    >>> torch.nn.MSELoss()(model(X), y).item()
    0.25
    """
    weights = torch.tensor([list(weights)], dtype=torch.float32)
    model = nn.Linear(weights.shape[1], 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(weights)
    inputs = torch.eye(weights.shape[1]).repeat(repeats, 1)
    return model, (inputs, inputs @ weights.T)


class SelectOutput(nn.Module):
    """``model(x)[key]``: one output of a model that returns a tuple, a list or a dict.

    The loss and the curvature need one tensor of outputs; a model that returns
    several (logits and features, a dict of heads) is wrapped to pick the one the
    loss applies to. Its parameters keep their names under ``model.``.

    Example
    -------
    >>> import torch
    >>> class TwoHeads(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = nn.Linear(3, 2)
    ...     def forward(self, x):
    ...         return {"logits": self.body(x), "features": x}
    >>> SelectOutput(TwoHeads(), "logits")(torch.zeros(4, 3)).shape
    torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        if isinstance(model, torch.jit.ScriptModule):
            # The curvature substitutes weights by torch.func.functional_call, which cannot
            # reach inside a TorchScript module held by an eager one: the products would
            # silently be those of constant weights.
            raise TypeError(
                "cannot select an output of a TorchScript model: script or trace a module "
                "that returns the one output the loss applies to"
            )
        self.model = model
        self.key = key

    def forward(self, inputs):
        outputs = self.model(inputs)
        if isinstance(outputs, dict):
            if self.key not in outputs:
                raise KeyError(
                    f"the model's outputs have keys {', '.join(map(repr, outputs))}, "
                    f"not {self.key!r}"
                )
            return outputs[self.key]
        if isinstance(outputs, (tuple, list)):
            if not isinstance(self.key, int) or not -len(outputs) <= self.key < len(outputs):
                raise IndexError(
                    f"the model returns {len(outputs)} outputs; pick one by its index "
                    f"0 to {len(outputs) - 1}, not {self.key!r}"
                )
            return outputs[self.key]
        raise TypeError(
            f"the model returns one {type(outputs).__name__}: there is nothing to select"
        )
