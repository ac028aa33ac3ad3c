"""Training classifiers to checkpoints whose model card says how they were made.

:func:`train` minimises, by mini-batch Adam or SGD over shuffled epochs,

    J(w) = L(w) + l1 * sum_j |w_j|,    L(w) = (1/N) sum_i CE(f(x_i; w), y_i),

the mean cross-entropy over the training set plus an optional L1 penalty. The
penalty covers the prunable weights (the ``weight`` of every Linear and Conv layer,
:func:`pruning_limit.parameters.prunable_parameters`) or, with ``l1_biases=True``,
every parameter named ``weight`` or ``bias`` (biases and normalisation parameters
too), as the reference code of Zhang et al. does. ``weight_decay`` is the
optimizer's own (coupled) L2 term on every parameter. The L1 penalty pulls weights
towards zero, so more of them are near zero at the end; it is a subgradient term,
so they hover at about the step size rather than reaching exactly zero.

A *recipe* names a full set of training fields (:data:`RECIPES`); any argument
given explicitly overrides its field, and the card records every field and the
recipe's name:

``"default"``  Adam, lr 1e-3, 50 epochs, batch 128, no penalty (this module's
               historical defaults).
``"paper"``    The setting in which the reference code (Global-One-shot-Pruning,
               ``configs/*_l1.yml``, ``trainer.py``, ``utils.py``) checks the theory:
               SGD with momentum 0.9, constant lr 0.01 without warm-up, batch 128,
               no weight decay, L1 strength 5e-5 on every weight and bias, 78,200
               steps (200 epochs of CIFAR-10's 391 mini-batches), Kaiming-normal
               (fan-in) weights and zero biases at initialisation.

The length of a run is ``epochs`` passes or ``steps`` optimizer steps (mini-batches,
the short last one of an epoch included), whichever the call or else the recipe
gives; a run of ``steps`` may end inside an epoch.

A run is a pure function of its arguments on the CPU: the initialisation and the
order of the mini-batches are drawn from ``seed`` through private generators, so
the same call gives bit-identical weights (torch's global random state is left
as it was).

A checkpoint is a directory with

- ``model.pt``: the state_dict, written by ``torch.save``;
- ``card.json``: the model card, everything needed to rebuild and judge it: the
  architecture spec (``build_model(card["model"])``), the dataset spec
  (``load_dataset(**card["dataset"])``), the training configuration, the dtype,
  the final train/test loss and accuracy, and the versions of this package and torch.

:func:`load_checkpoint` rebuilds the model from the card and reads the weights
with ``torch.load(..., weights_only=True)``: nothing is unpickled.

Example
-------
>>> from pruning_limit.datasets import manifold
>>> from pruning_limit.models import model_spec
>>> from pruning_limit import train
>>> data = manifold(d=2, n=8, n_train=200, n_test=100)
>>> spec = model_spec("mlp", input_dim=8, classes=2, hidden=[16])
>>> result = train(spec, data, lr=1e-2, epochs=20, batch_size=50, progress=False)
>>> result.card["metrics"]["train"]["accuracy"] > 0.8
True
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._checks import check_mean_reduction
from ._version import __version__
from .datasets import Dataset
from .metrics import split_metrics
from .models import build_model, count_parameters
from .parameters import eval_mode, prunable_parameters
from .serialization import write_atomic, write_text

OPTIMIZERS = ("adam", "sgd")
INITIALISATIONS = ("default", "kaiming_normal")
RECIPES: dict[str, dict] = {
    "default": {
        "optimizer": "adam", "lr": 1e-3, "epochs": 50, "steps": None, "batch_size": 128,
        "momentum": 0.9, "l1": 0.0, "l1_biases": False, "weight_decay": 0.0,
        "warmup_steps": 0, "init": "default",
    },
    # Global-One-shot-Pruning, configs/FC_CIFAR10_l1.yml with trainer.py and utils.py.
    "paper": {
        "optimizer": "sgd", "lr": 0.01, "epochs": None, "steps": 78_200, "batch_size": 128,
        "momentum": 0.9, "l1": 5e-5, "l1_biases": True, "weight_decay": 0.0,
        "warmup_steps": 0, "init": "kaiming_normal",
    },
}  # fmt: skip
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CARD_FILE = "card.json"
WEIGHTS_FILE = "model.pt"
CARD_FORMAT = "pruning-limit model card v1"


@dataclass(frozen=True, repr=False)
class TrainResult:
    """A trained model and its model card.

    Attributes
    ----------
    model
        The trained network, in eval mode, in the training dtype.
    card
        The model card (see :mod:`pruning_limit.training`), a JSON-serialisable dict.
    path
        The checkpoint directory, if one was written.

    Example
    -------
    >>> from pruning_limit.datasets import manifold
    >>> from pruning_limit.models import model_spec
    >>> data = manifold(d=2, n=6, n_train=40, n_test=20)
    >>> spec = model_spec("mlp", input_dim=6, classes=2, hidden=[4])
    >>> result = train(spec, data, epochs=1, progress=False)
    >>> result.card["num_parameters"], result.model.training, result.path   # 6*4+4 + 4*2+2
    (38, False, None)
    """

    model: nn.Module
    card: dict
    path: Path | None = None

    def __repr__(self) -> str:
        metrics = self.card["metrics"]
        return (
            f"TrainResult({self.card['model']['kind']}, {self.card['num_parameters']} parameters, "
            f"dataset={self.card['dataset']['name']!r}, "
            f"train loss={metrics['train']['loss']:.4g} acc={metrics['train']['accuracy']:.3f}, "
            f"test loss={metrics['test']['loss']:.4g} acc={metrics['test']['accuracy']:.3f}, "
            f"path={str(self.path) if self.path else None!r})"
        )


def evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``(X, y)``, in eval mode, without gradients.

        loss = (1/N) sum_i loss_fn(f(x_i), y_i),
        accuracy = (1/N) #{i : argmax_k f(x_i)_k = y_i},

    computed over batches of :data:`~pruning_limit.metrics.EVALUATION_BATCH_SIZE` samples,
    each weighted by its size (:func:`~pruning_limit.metrics.split_metrics`). ``X`` is
    cast to the dtype and device of the model's parameters; the model's train/eval
    modes are restored afterwards.

    Parameters
    ----------
    model
        A classifier returning logits of shape ``(N, classes)``.
    X, y
        Inputs and int64 class labels.
    loss_fn
        A batch-mean loss (``reduction="mean"``); default ``nn.CrossEntropyLoss()``.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}``.

    Example
    -------
    >>> model = torch.nn.Linear(3, 2)
    >>> sorted(evaluate(model, torch.randn(10, 3), torch.randint(0, 2, (10,))))
    ['accuracy', 'loss']
    """
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    check_mean_reduction(loss_fn)
    with eval_mode(model):
        loss, accuracy = split_metrics(model, X, y, loss_fn, classification=True)
    return {"loss": loss, "accuracy": accuracy}


def train(
    model_spec: dict,
    dataset: Dataset,
    *,
    recipe: str = "default",
    optimizer: str | None = None,
    lr: float | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    momentum: float | None = None,
    l1: float | None = None,
    l1_biases: bool | None = None,
    weight_decay: float | None = None,
    warmup_steps: int | None = None,
    init: str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    target_train_loss: float | None = None,
    progress: bool = True,
    out: str | Path | None = None,
) -> TrainResult:
    """Train the network ``model_spec`` describes on ``dataset`` (see the module docstring).

    Every training field left at ``None`` takes the value of ``recipe``
    (:data:`RECIPES`); a value given here overrides it.

    Parameters
    ----------
    model_spec
        A complete spec (:func:`pruning_limit.models.model_spec`); its ``input_dim``
        and ``classes`` must match the dataset.
    dataset
        A :class:`pruning_limit.datasets.Dataset`.
    recipe
        ``"default"`` (Adam) or ``"paper"`` (the reference code's SGD + L1 setting).
    optimizer
        ``"adam"`` or ``"sgd"`` (with ``momentum``; ignored by Adam).
    lr, batch_size
        Step size and mini-batch size (the last mini-batch of an epoch may be smaller).
    epochs, steps
        The length of the run: passes over the training set, or optimizer steps.
        Give at most one; the one given replaces the recipe's.
    l1
        Weight of the L1 penalty.
    l1_biases
        ``False``: the penalty covers the prunable weights; ``True``: every parameter
        named ``weight`` or ``bias`` (the reference code's choice).
    weight_decay
        The optimizer's L2 weight decay.
    warmup_steps
        Linear warm-up: step t (from 1) uses lr * min(1, t / warmup_steps); 0 for none.
    init
        ``"default"`` (PyTorch's initialisation) or ``"kaiming_normal"`` (the
        reference code's: N(0, 2 / fan_in) for Linear and Conv weights, zero biases).
    dtype
        ``torch.float32`` or ``torch.float64``, for the weights and the inputs.
    seed
        Seeds the initialisation and the mini-batch order.
    target_train_loss
        If given, stop after the first epoch at whose end the training loss L(w)
        (without the penalty) is at or below it.
    progress
        Show a tqdm bar over the epochs.
    out
        If given, a directory to write ``model.pt`` and ``card.json`` to (created if
        needed).

    Returns
    -------
    TrainResult
        The model (eval mode) and its card.

    Raises
    ------
    ValueError
        For a bad argument, or a spec that does not fit the dataset.
    FloatingPointError
        If the training loss becomes NaN or infinite (diverged).

    Example
    -------
    >>> from pruning_limit.datasets import digits
    >>> from pruning_limit.models import model_spec
    >>> data = digits()
    >>> spec = model_spec("mlp", input_dim=64, classes=10, hidden=[16])
    >>> result = train(spec, data, recipe="paper", steps=20, progress=False)
    >>> fields = result.card["training"]
    >>> fields["recipe"], fields["optimizer"], fields["l1"], fields["l1_biases"]
    ('paper', 'sgd', 5e-05, True)
    >>> fields["steps"], fields["steps_run"]
    (20, 20)
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if epochs is not None and steps is not None:
        raise ValueError(
            f"give the length of the run as epochs or as steps, not both (got epochs={epochs!r}, "
            f"steps={steps!r})"
        )
    given = {
        "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "momentum": momentum,
        "l1": l1, "l1_biases": l1_biases, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "init": init,
    }  # fmt: skip
    fields = dict(RECIPES[recipe])
    fields.update({name: value for name, value in given.items() if value is not None})
    if epochs is not None or steps is not None:
        fields.update(epochs=epochs, steps=steps)
    _check_training_arguments(**fields, dtype=dtype, target_train_loss=target_train_loss)
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a pruning_limit Dataset, got {type(dataset).__name__}")
    if not isinstance(model_spec, dict):
        raise ValueError(f"model_spec must be a dict, got {type(model_spec).__name__}")
    if (
        model_spec.get("input_dim") != dataset.ambient_dimension
        or model_spec.get("classes") != dataset.num_classes
    ):
        raise ValueError(
            f"model spec (input_dim={model_spec.get('input_dim')}, "
            f"classes={model_spec.get('classes')}) does not fit dataset {dataset.name!r} "
            f"(ambient_dimension={dataset.ambient_dimension}, classes={dataset.num_classes})"
        )
    batch_size = fields["batch_size"]
    if model_spec.get("batchnorm") and 1 in (batch_size, len(dataset.y_train) % batch_size):
        raise ValueError(
            f"with batchnorm, no mini-batch may hold a single sample, but {len(dataset.y_train)} "
            f"training samples in batches of {batch_size} leave one; choose another batch_size"
        )
    # A private copy, as it will read back from the card's JSON.
    model_spec = json.loads(json.dumps(model_spec))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_spec).to(dtype)
        if fields["init"] == "kaiming_normal":
            _kaiming_normal(model)
    batch_order = torch.Generator().manual_seed(seed)
    prunable = [weight for _, weight in prunable_parameters(model)]
    penalised = (
        [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in ("weight", "bias")]
        if fields["l1_biases"]
        else prunable
    )
    lr, l1, warmup = fields["lr"], fields["l1"], fields["warmup_steps"]
    if fields["optimizer"] == "adam":
        step = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=fields["weight_decay"])
    else:
        step = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=fields["momentum"],
            weight_decay=fields["weight_decay"],
        )  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()
    X_train, y_train = dataset.X_train.to(dtype), dataset.y_train
    num_train = len(y_train)
    batches_per_epoch = math.ceil(num_train / batch_size)
    total_steps = (
        fields["steps"] if fields["steps"] is not None else fields["epochs"] * batches_per_epoch
    )

    loss_history: list[float] = []
    steps_run = 0
    target_reached = None if target_train_loss is None else False
    bar = tqdm(
        range(1, math.ceil(total_steps / batches_per_epoch) + 1),
        desc="train", unit="epoch", disable=not progress,
    )  # fmt: skip
    for epoch in bar:
        model.train()
        epoch_loss, epoch_samples = 0.0, 0
        for batch in torch.randperm(num_train, generator=batch_order).split(batch_size):
            if steps_run == total_steps:
                break
            steps_run += 1
            if warmup:
                for group in step.param_groups:
                    group["lr"] = lr * min(1.0, steps_run / warmup)
            data_loss = loss_fn(model(X_train[batch]), y_train[batch])
            objective = data_loss
            if l1 > 0:
                objective = objective + l1 * sum(weight.abs().sum() for weight in penalised)
            step.zero_grad(set_to_none=True)
            objective.backward()
            step.step()
            epoch_loss += data_loss.item() * len(batch)
            epoch_samples += len(batch)
        loss_history.append(epoch_loss / epoch_samples)
        if not math.isfinite(loss_history[-1]):
            raise FloatingPointError(
                f"training diverged: mean mini-batch loss {loss_history[-1]} in epoch {epoch}; "
                f"try a smaller lr (got {lr})"
            )
        bar.set_postfix(loss=f"{loss_history[-1]:.4g}")
        if target_train_loss is not None:
            target_reached = evaluate(model, X_train, y_train)["loss"] <= target_train_loss
            if target_reached:
                break
    bar.close()
    model.eval()

    card = {
        "format": CARD_FORMAT,
        "model": model_spec,
        "num_parameters": count_parameters(model),
        "num_prunable": sum(weight.numel() for weight in prunable),
        "dataset": dict(dataset.spec),
        "dataset_properties": {
            key: value for key, value in dataset.metadata().items() if key not in ("name", "spec")
        },
        "training": {
            "recipe": recipe,
            "loss": "cross_entropy (mean over samples)",
            **fields,
            "momentum": fields["momentum"] if fields["optimizer"] == "sgd" else None,
            "epochs_run": len(loss_history),
            "steps_run": steps_run,
            "target_train_loss": target_train_loss,
            "target_reached": target_reached,
            "l1_on": (
                "every parameter named weight or bias"
                if fields["l1_biases"]
                else "weight of every Linear and Conv layer"
            ),
            "lr_schedule": (
                f"linear warm-up over {warmup} steps, then constant" if warmup else "constant"
            ),
            "seed": seed,
            "device": "cpu",
            "mean_minibatch_loss_per_epoch": loss_history,
        },
        "dtype": _dtype_name(dtype),
        "metrics": {
            "train": evaluate(model, X_train, y_train),
            "test": evaluate(model, dataset.X_test, dataset.y_test),
        },
        "pruning_limit_version": __version__,
        "torch_version": torch.__version__,
    }
    path = save_checkpoint(model, card, out) if out is not None else None
    return TrainResult(model=model, card=card, path=path)


def _kaiming_normal(model: nn.Module) -> None:
    """The reference code's initialisation: N(0, 2 / fan_in) weights, zero biases."""
    for _, weight in prunable_parameters(model):
        nn.init.kaiming_normal_(weight, a=0, mode="fan_in", nonlinearity="leaky_relu")
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias" and not _is_normalisation(model, name):
            nn.init.zeros_(parameter)


def _is_normalisation(model: nn.Module, name: str) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def save_checkpoint(model: nn.Module, card: dict, directory: str | Path) -> Path:
    """Write ``model.pt`` (the state_dict) and ``card.json`` into ``directory``.

    The directory is created if needed; files already there are replaced, each
    atomically. Under ``torch.distributed`` rank 0 alone writes, and every rank returns
    the same directory (:mod:`~pruning_limit.serialization`).

    Returns
    -------
    Path
        The checkpoint directory.

    Example
    -------
    >>> import tempfile
    >>> from pruning_limit.datasets import manifold
    >>> from pruning_limit.models import model_spec
    >>> data = manifold(d=2, n=6, n_train=40, n_test=20)
    >>> result = train(model_spec("mlp", input_dim=6, classes=2, hidden=[4]), data, epochs=1,
    ...                progress=False)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_checkpoint(result.model, result.card, Path(folder) / "m")
    ...     files = sorted(p.name for p in path.iterdir())
    ...     model, card = load_checkpoint(path)
    >>> files, card == result.card
    (['card.json', 'model.pt'], True)
    >>> all(a.equal(b) for a, b in zip(model.parameters(), result.model.parameters()))
    True
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint path {directory} exists and is not a directory")
    if distributed.is_main():
        directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    write_atomic(directory / WEIGHTS_FILE, lambda handle: torch.save(state, handle))
    write_text(directory / CARD_FILE, json.dumps(card, indent=2) + "\n")
    return directory


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a checkpointed model from its card and load its weights.

    Parameters
    ----------
    path
        The checkpoint directory, or its ``card.json``.

    Returns
    -------
    (model, card)
        The model in eval mode and in the card's dtype, and the card.

    Raises
    ------
    FileNotFoundError
        If the directory, ``card.json`` or ``model.pt`` is missing (naming the path).
    ValueError
        If the card is not valid JSON or lacks a field, if ``model.pt`` is not a
        state_dict that ``torch.load(weights_only=True)`` can read, or if the
        state_dict does not fit the card's architecture (naming the missing,
        unexpected and mismatching keys).

    Example
    -------
    >>> import tempfile
    >>> from pruning_limit.datasets import manifold
    >>> from pruning_limit.models import model_spec
    >>> data = manifold(d=2, n=4, n_train=32, n_test=16, seed=0)
    >>> spec = model_spec("mlp", input_dim=4, classes=data.num_classes, hidden=[4])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     trained = train(spec, data, epochs=1, progress=False, out=folder)
    ...     model, card = load_checkpoint(folder)
    >>> card["num_parameters"] == trained.card["num_parameters"]
    True
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    card_path = path / CARD_FILE if path.is_dir() else path
    weights_path = card_path.parent / WEIGHTS_FILE
    for required in (card_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {required}")
    if card_path.stat().st_size == 0:
        raise ValueError(f"{card_path} is empty (0 bytes): the checkpoint was not written")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{card_path} is not a valid JSON model card: {error}") from error
    if not isinstance(card, dict) or "model" not in card or "dtype" not in card:
        raise ValueError(
            f"{card_path} is not a model card: it needs the fields 'model' and 'dtype'"
        )
    if card["dtype"] not in DTYPES:
        raise ValueError(
            f"{card_path}: dtype must be one of {', '.join(DTYPES)}, got {card['dtype']!r}"
        )
    dtype = DTYPES[card["dtype"]]
    try:
        model = build_model(card["model"]).to(dtype)
    except ValueError as error:
        raise ValueError(f"{card_path}: {error}") from error
    if weights_path.stat().st_size == 0:
        raise ValueError(f"{weights_path} is empty (0 bytes): the checkpoint was not written")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except EOFError as error:
        raise ValueError(
            f"{weights_path} ends early: truncated ({weights_path.stat().st_size} bytes)"
        ) from error
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{weights_path} is not a readable state_dict (truncated or corrupt?): {reason}"
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ValueError(f"{weights_path} does not hold a state_dict (a dict of tensors)")
    problems = _state_dict_mismatches(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"the weights in {weights_path} do not fit the architecture in {card_path}: "
            + "; ".join(problems)
        )
    model.load_state_dict(state)
    model.eval()
    return model, card


def _state_dict_mismatches(expected: dict, found: dict) -> list[str]:
    """Missing and unexpected keys, and keys whose shape or dtype differs."""
    problems = []
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key in expected.keys() & found.keys():
        want, have = expected[key], found[key]
        if want.shape != have.shape:
            problems.append(
                f"{key} has shape {tuple(have.shape)}, the architecture needs {tuple(want.shape)}"
            )
        elif want.dtype != have.dtype:
            problems.append(f"{key} has dtype {have.dtype}, the card says {want.dtype}")
    return problems


def _check_training_arguments(
    *,
    optimizer,
    lr,
    epochs,
    steps,
    batch_size,
    momentum,
    l1,
    l1_biases,
    weight_decay,
    warmup_steps,
    init,
    dtype,
    target_train_loss,
) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if init not in INITIALISATIONS:
        raise ValueError(f"init must be one of {', '.join(INITIALISATIONS)}, got {init!r}")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    for name, value in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size)):
        if value is None and name != "batch_size":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    if not isinstance(l1_biases, bool):
        raise ValueError(f"l1_biases must be True or False, got {l1_biases!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    for name, value in (("momentum", momentum), ("l1", l1), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    if target_train_loss is not None and not target_train_loss >= 0:
        raise ValueError(f"target_train_loss must be None or non-negative, got {target_train_loss}")


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)
