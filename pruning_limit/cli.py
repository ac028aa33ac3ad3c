"""The ``pruning-limit`` command line: the only place that parses strings and prints.

Exit codes: 0 on success, 2 on a user error (one line on stderr saying what is
wrong, no traceback), 1 on an internal error (``--debug`` shows the traceback),
130 on Ctrl-C. With ``--json`` the result goes to stdout as JSON and everything else
to stderr.

Inputs are checked before anything is written: the model against the data
(:func:`pruning_limit.batches.check_model_and_data`, one forward pass on a few
rows), the arguments, and ``--out``. An ``--out`` folder or file is created only
when there is something to write in it, and its parent folder must already exist:
a typo in a path is refused rather than silently created (the folders above a
default results folder, the demo's or a study configuration's, are created, and
removed again if the command fails before writing in them). While a command writes
to ``--out`` it holds an exclusive lock (``fcntl.flock`` on ``OUT.lock``, removed
at the end), so a second run on the same ``--out`` is refused instead of racing.
``spectrum`` refuses to start over an interrupted run's ``OUT.state`` unless told
``--resume`` (continue it) or ``--overwrite`` (discard it).

``module:function`` (``--data``) and ``module:factory`` (``--model``) import from
the installed packages and then from the current directory, as ``python -m`` would.

Under ``torchrun --nproc_per_node=N -m pruning_limit spectrum|predict|validate ...`` the
command joins the process group that torchrun's variables describe, each rank takes
its shard of the data (whole batches, contiguous: :func:`~pruning_limit.distributed.shard`),
and rank 0 alone checks and writes ``--out`` (holding its lock) and prints; a failure
on one rank ends every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from ._version import __version__
from .batches import DEFAULT_BATCH_SIZE, EmptyDataError, check_model_and_data
from .budget import EPSILON_KINDS, check_epsilon
from .comparison import compare
from .curvature import CURVATURES, DEFAULT_CURVATURE, EXACT_LIMIT
from .datasets import DATASETS, Dataset, load_dataset
from .lanczos import remove_state, state_size
from .models import SelectOutput, model_spec
from .parameters import NoPrunableParameterError, resolve_device, resolve_parameters
from .pipeline import (
    AUTO,
    AUTO_MAX_STEPS,
    AUTO_START,
    AUTO_TOLERANCE,
    estimate_spectrum,
    exact_spectrum,
    predict_limit,
)
from .plots import plot_validation
from .prediction import DEFAULT_METHODS, METHODS, SLOW_METHODS, Prediction
from .spectrum import Spectrum
from .statdim import POLICIES
from .study import run_study
from .study_config import load_config
from .training import DTYPES, INITIALISATIONS, OPTIMIZERS, RECIPES, load_checkpoint, train
from .validation import DEFAULT_VARIANTS, VALIDATION_CURVATURES, VARIANTS, validate

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "mse": nn.MSELoss,
}


class _UserError(Exception):
    """Something the user can fix: printed as one line, exit code 2."""


USER_ERRORS = (
    _UserError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    EmptyDataError,
    NoPrunableParameterError,
    FloatingPointError,
    ValueError,
)


# -- parsing of specs ------------------------------------------------------------------


def _parse_value(text: str):
    """``"8"`` -> 8, ``"1e-3"`` -> 0.001, ``"true"`` -> True, ``"32x32"`` stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_spec(text: str) -> tuple[str, dict]:
    """``"manifold:d=8,n=100"`` -> ``("manifold", {"d": 8, "n": 100})``."""
    name, _, arguments = text.partition(":")
    options = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise _UserError(f"cannot read {item!r} in {text!r}: expected key=value")
        options[key.strip()] = _parse_value(value.strip())
    return name.strip(), options


DATA_ALIASES = {"pca": "pca_rank"}
DEMO_OUT = "results/demo"


def load_data(text: str, seed: int | None = None) -> Dataset | dict:
    """Data from a built-in spec, an .npz/.pt file, or ``module:function``.

    Returns a :class:`Dataset` for built-in data, otherwise a dict with ``X``, ``y``
    and optionally ``X_test``, ``y_test``. ``seed`` is the built-in data's seed
    unless the spec gives one.

    Example
    -------
    >>> data = load_data("manifold:d=2,n=6,n_train=40,n_test=20", seed=0)
    >>> type(data).__name__, tuple(data.X_train.shape), data.nominal_intrinsic_dimension
    ('Dataset', (40, 6), 2)
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "data.npz"
    ...     np.savez(path, X=np.zeros((5, 3), dtype=np.float32), y=np.arange(5))
    ...     pair = load_data(str(path))
    >>> sorted(pair), tuple(pair["X"].shape), pair["y"].tolist()
    (['X', 'y'], (5, 3), [0, 1, 2, 3, 4])
    """
    path = Path(text)
    if path.suffix in (".npz", ".pt", ".pth"):
        if not path.exists():
            raise FileNotFoundError(f"no data file at {path}")
        return _data_from_file(path)
    module_name, _, function_name = text.partition(":")
    if module_name.strip() not in DATASETS and function_name.strip().isidentifier():
        return _data_from_function(module_name.strip(), function_name.strip())
    name, options = _parse_spec(text)
    options = {DATA_ALIASES.get(k, k): v for k, v in options.items()}
    if seed is not None:
        options.setdefault("seed", seed)
    try:
        return load_dataset(name, **options)
    except TypeError as error:
        raise _UserError(f"bad option for dataset {name!r}: {error}") from error


def _data_from_file(path: Path) -> dict:
    if path.stat().st_size == 0:
        raise _UserError(f"cannot read data file {path}: the file is empty (0 bytes)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {k: archive[k] for k in archive.files}
        else:
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except (
        OSError,
        ValueError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as error:
        raise _UserError(f"cannot read data file {path}: {_reason(error)}") from error
    if not isinstance(raw, dict) or "X" not in raw or "y" not in raw:
        raise _UserError(
            f"data file {path} must hold arrays named X and y (and optionally X_test, y_test)"
        )
    return _tensors(raw, f"data file {path}")


def _tensors(raw: dict, source: str) -> dict:
    """The arrays X, y (and X_test, y_test) as tensors; strings and objects are refused."""
    tensors = {}
    for key in ("X", "y", "X_test", "y_test"):
        if key not in raw:
            continue
        value = raw[key]
        try:
            tensors[key] = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            kind = getattr(getattr(value, "dtype", None), "name", type(value).__name__)
            raise _UserError(
                f"{source}: {key} must be an array of numbers, got {kind} ({_reason(error)})"
            ) from error
    return tensors


def _reason(error: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _import_user_module(module_name: str, what: str):
    """Import ``module_name`` from the installed packages, else from the current folder.

    ``python -m`` puts the current folder first on ``sys.path``; the installed
    ``pruning-limit`` script does not, so it is appended here (last, so that it
    cannot shadow an installed package).
    """
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # ImportError, or any error the module raises on import
        raise _UserError(
            f"cannot import {what} module {module_name!r}: {_reason(error)}"
        ) from error


def _call_user_function(module_name: str, function_name: str, what: str):
    """``module:function`` imported and called with no argument; its errors named."""
    module = _import_user_module(module_name, what)
    function = getattr(module, function_name, None)
    if function is None:
        raise _UserError(f"module {module_name!r} has no {what} {function_name!r}")
    if not callable(function):
        raise _UserError(
            f"{module_name}:{function_name} is a {type(function).__name__}, not a function: "
            f"give the {what} to call"
        )
    try:
        return function()
    except Exception as error:  # the user's code: say where it failed, in one line
        raise _UserError(
            f"{module_name}:{function_name}() raised {type(error).__name__}: {_reason(error)}"
        ) from error


def _data_from_function(module_name: str, function_name: str) -> dict | Dataset:
    result = _call_user_function(module_name, function_name, "data function")
    source = f"{module_name}:{function_name}()"
    if isinstance(result, Dataset):
        return result
    if isinstance(result, dict) and "X" in result and "y" in result:
        return _tensors(result, source)
    if isinstance(result, (tuple, list)) and len(result) in (2, 4):
        keys = ("X", "y", "X_test", "y_test")[: len(result)]
        return _tensors(dict(zip(keys, result)), source)
    raise _UserError(
        f"{source} must return a Dataset, a dict with X and y, "
        "or a tuple (X, y[, X_test, y_test]); got " + type(result).__name__
    )


def _split(data: Dataset | dict) -> tuple[tuple, tuple | None]:
    """(train pair, test pair or None)."""
    if isinstance(data, Dataset):
        return (data.X_train, data.y_train), (data.X_test, data.y_test)
    test = (data["X_test"], data["y_test"]) if "X_test" in data else None
    return (data["X"], data["y"]), test


def _rank_shards(
    train_pair: tuple, test_pair: tuple | None, batch_size: int
) -> tuple[tuple, tuple | None]:
    """This rank's shards of (train pair, test pair or None); all of it in one process.

    The pairs are the whole data, already checked against the model
    (:func:`_load_model_and_data`), so every rank refuses the same bad input. The
    training shard is whole batches of ``batch_size``, so that the ranks' batches
    are the ones a single process forms (eps = batch_std is the same).
    """
    if not distributed.is_distributed():
        return train_pair, test_pair
    train_pair = distributed.shard(train_pair, batch_size)
    return train_pair, (None if test_pair is None else distributed.shard(test_pair))


def _parse_model_spec(text: str, input_dim: int, classes: int) -> dict:
    """``"mlp:64x64"``, ``"mlp:64x64,activation=tanh"``, ``"cnn1d"``, ``"cnn2d:8x16"``."""
    kind, _, rest = text.partition(":")
    head, _, options_text = rest.partition(",")
    _, options = _parse_spec(f"{kind}:{options_text}")
    if head:
        if "=" in head:
            options.update(_parse_spec(f"{kind}:{head}")[1])
        else:
            try:
                widths = [int(w) for w in head.split("x")]
            except ValueError as error:
                raise _UserError(f"cannot read layer widths {head!r} in {text!r}") from error
            options["hidden" if kind == "mlp" else "channels"] = widths
    return model_spec(kind, input_dim=input_dim, classes=classes, **options)


# -- checkpoints -----------------------------------------------------------------------


def _load_model(path_text: str, *, model_factory: str | None, trust_pickle: bool):
    """A model and its card (``{}`` when the checkpoint has none).

    Accepts the project's checkpoint folders, a plain state_dict with
    ``--model module:factory``, a TorchScript file, and (only with
    ``--trust-pickle``) a fully pickled model.
    """
    path = Path(path_text)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir() or path.name == "card.json":
        return load_checkpoint(path)
    if path.stat().st_size == 0:
        raise _UserError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return _load_torchscript(path), {"format": "torchscript"}
    try:
        content = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error) and "Unsupported class" not in str(error):
            raise _UserError(
                f"cannot read checkpoint {path}: not a torch file, or truncated ({_reason(error)})"
            ) from error
        if not trust_pickle:
            raise _UserError(
                f"{path} holds pickled Python objects, which can run code when loaded; refusing "
                "(torch.load weights_only=True). Pass --trust-pickle only if you trust the file"
            ) from error
        content = torch.load(path, weights_only=False, map_location="cpu")
    except EOFError as error:
        raise _UserError(
            f"cannot read checkpoint {path}: the file ends early (truncated, "
            f"{path.stat().st_size} bytes)"
        ) from error
    except (RuntimeError, OSError, zipfile.BadZipFile) as error:
        raise _UserError(
            f"cannot read checkpoint {path}: not a torch file, or truncated ({_reason(error)})"
        ) from error
    if isinstance(content, nn.Module):
        return content, {"format": "pickled module"}
    if (
        isinstance(content, dict)
        and "state_dict" in content
        and isinstance(content["state_dict"], dict)
    ):
        content = content["state_dict"]
    if isinstance(content, dict) and all(isinstance(v, torch.Tensor) for v in content.values()):
        if model_factory is None:
            raise _UserError(
                f"{path} is a plain state_dict: say which model it belongs to with "
                "--model module:factory"
            )
        model = _model_from_factory(model_factory)
        try:
            model.load_state_dict(content)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            raise _UserError(
                f"the state_dict in {path} does not fit {model_factory}: "
                + " ".join(line.strip() for line in first[:3])
            ) from error
        return model, {"format": "state_dict", "factory": model_factory}
    raise _UserError(f"{path} holds neither a model nor a state_dict")


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _load_torchscript(path: Path) -> nn.Module:
    """A TorchScript module; its code is TorchScript, not pickled Python, so no trust is needed."""
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notices are not the user's
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError) as error:
        raise _UserError(
            f"cannot read TorchScript checkpoint {path} (truncated or corrupt?): {_reason(error)}"
        ) from error


def _model_from_factory(text: str) -> nn.Module:
    module_name, _, factory_name = text.partition(":")
    if not factory_name:
        raise _UserError(f"--model must read module:factory, got {text!r}")
    model = _call_user_function(module_name, factory_name, "model factory")
    if not isinstance(model, nn.Module):
        raise _UserError(f"{text} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_model_and_data(args, *, need_test: bool = False) -> tuple[nn.Module, dict, tuple, tuple]:
    """The checkpoint, its card, and ``--data`` as (train pair, test pair or None),
    checked against each other and ``--loss``; built-in data default to the card's seed."""
    model, card = _load_model(
        args.checkpoint, model_factory=args.model, trust_pickle=args.trust_pickle
    )
    if args.output is not None:
        try:
            model = SelectOutput(model, _parse_value(args.output))
        except TypeError as error:
            raise _UserError(f"--output: {error}") from error
    seed = args.data_seed
    if seed is None:
        seed = card.get("dataset", {}).get("seed")
    train_pair, test_pair = _split(load_data(args.data, seed=seed))
    if need_test and test_pair is None:
        raise _UserError("validate needs test data: give X_test and y_test, or built-in data")
    loss_fn = LOSSES[args.loss]()
    for what, pair in (("the training data", train_pair), ("the test data", test_pair)):
        if pair is not None:
            _check_fit(model, loss_fn, pair, what)
    return model, card, train_pair, test_pair


def _check_fit(model: nn.Module, loss_fn: nn.Module, pair: tuple, what: str) -> None:
    """The model, the loss and the data fit, or a :class:`_UserError` that says how not."""
    try:
        check_model_and_data(
            model, loss_fn, pair, what=f"{what} (--data)", min_samples=2 if "train" in what else 1
        )
    except (TypeError, ValueError, FloatingPointError) as error:
        raise _UserError(str(error)) from error


# -- output ----------------------------------------------------------------------------


class _Output:
    """Where results and logs go: the result to stdout (as JSON with --json), logs to
    stdout (stderr with --json) unless --quiet."""

    def __init__(self, args) -> None:
        self.quiet = args.quiet
        self.json = args.json

    def log(self, text: str) -> None:
        if not self.quiet and distributed.is_main():
            print(text, file=sys.stderr if self.json else sys.stdout)

    def result(self, payload: dict, human: str) -> None:
        if not distributed.is_main():
            return
        if self.json:
            print(json.dumps(payload, indent=2, default=_json_default))
        else:
            print(human)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _output_folder(path_text: str) -> Path:
    """``--out`` as a folder that can be written, checked before any work and not created.

    The folder itself is created when results are written to it; its parent must
    exist already (a mistyped path is refused rather than silently created). A default
    path (the demo's, a study configuration's) goes through :func:`_default_folder`.
    Under torch.distributed only rank 0 writes, so only rank 0 checks.
    """
    path = Path(path_text)
    if not distributed.is_main():
        return path
    if path.exists():
        if not path.is_dir():
            raise _UserError(f"--out {path} exists and is not a folder")
        _check_writable(path, path)
    else:
        _check_parent(path)
    return path


@contextlib.contextmanager
def _default_folder(path_text: str) -> Iterator[Path]:
    """A default results folder (the demo's, a study configuration's), as
    :func:`_output_folder`, with the missing folders above it created for the command
    and removed again, while still empty, if it fails (a refused configuration, Ctrl-C)."""
    path = Path(path_text)
    missing = [folder for folder in path.parents if not folder.exists()]  # deepest first
    if missing and distributed.is_main():
        try:
            path.parent.mkdir(parents=True)
        except OSError as error:
            raise _UserError(f"cannot create {path.parent}: {error.strerror or error}") from error
    try:
        yield _output_folder(path_text)
    except BaseException:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:  # not empty: results of runs that finished are kept
                break
        raise


def _output_file(path_text: str, suffix: str) -> Path:
    """``--out`` as a file with ``suffix`` (added if missing) in an existing, writable folder."""
    path = Path(path_text)
    if path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    if not distributed.is_main():
        return path
    if path.is_dir():
        raise _UserError(f"--out {path} is a folder; give a file name")
    _check_parent(path)
    return path


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise _UserError(
            f"the folder {parent} of --out {path} does not exist: create it first "
            "(it is not created for you, so that a mistyped path is caught)"
        )
    _check_writable(parent, path)


def _check_writable(folder: Path, target: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _UserError(f"cannot write {target}: no write permission in {folder}")


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (through ``TARGET.lock``) while writing it.

    A second run on the same ``--out`` is refused instead of racing the first. The
    lock is ``fcntl.flock``: the kernel releases it when the process dies, so a killed
    run leaves at most a stale ``.lock`` file, which the next run takes over. Under
    torch.distributed only rank 0 (the rank that writes) takes it.
    """
    if not distributed.is_main():  # under torch.distributed rank 0 alone writes
        yield
        return
    lock_path = target.with_name(target.name + ".lock")
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _UserError(f"cannot write {lock_path}: {error.strerror or error}") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise _UserError(
                f"another pruning-limit run is writing {target} (it holds {lock_path}): "
                "wait for it to finish, or choose another --out"
            ) from None
        # The holder before us may have removed the file after we opened it: lock again.
        if lock_path.exists() and os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)


# -- subcommands -----------------------------------------------------------------------


def _command_train(args, out: _Output) -> int:
    folder = _output_folder(args.out)
    dataset = load_data(args.data, seed=args.seed)
    if not isinstance(dataset, Dataset):
        raise _UserError("train needs built-in data (e.g. manifold:d=8, digits:pca=8, mnist1d)")
    spec = _parse_model_spec(args.model, dataset.ambient_dimension, dataset.num_classes)
    out.log(f"training {spec['kind']} on {dataset.name} ({dataset.ambient_dimension} features)")
    with _locked(folder):
        result = train(
            spec,
            dataset,
            recipe=args.recipe,
            optimizer=args.optimizer,
            lr=args.lr,
            epochs=args.epochs,
            steps=args.steps,
            batch_size=args.batch_size,
            momentum=args.momentum,
            l1=args.l1,
            l1_biases=args.l1_biases,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            init=args.init,
            dtype=DTYPES[args.dtype],
            seed=args.seed,
            target_train_loss=args.target_loss,
            progress=not args.quiet,
            out=folder,
        )
    metrics = result.card.get("metrics", {})
    out.result(
        {"checkpoint": str(folder), "card": result.card},
        f"checkpoint written to {folder}\n" + json.dumps(metrics, indent=2, default=_json_default),
    )
    return 0


def _command_spectrum(args, out: _Output) -> int:
    target = _output_file(args.out, ".npz")
    state_path = target.with_name(target.name + ".state")
    if args.resume and args.overwrite:
        raise _UserError(
            "--resume continues the interrupted run and --overwrite discards it: give one"
        )
    model, _, train_pair, _ = _load_model_and_data(args)
    train_pair, _ = _rank_shards(train_pair, None, args.batch_size)
    loss_fn = LOSSES[args.loss]()
    dtype = DTYPES[args.dtype] if args.dtype else None
    with _locked(target):
        main = distributed.is_main()  # rank 0 alone reads, writes and discards the state
        if main and state_path.exists() and not args.exact and not (args.resume or args.overwrite):
            raise _UserError(
                f"an interrupted run left {state_path}: continue it with --resume, or discard "
                "it with --overwrite"
            )
        if args.overwrite and main:
            remove_state(state_path)
        args.state_path = None if args.exact else state_path  # for the Ctrl-C message
        if not args.exact:
            selected = resolve_parameters(model)
            dimension = sum(p.numel() for _, p in selected)
            block = min(args.block_size or args.probes, args.probes)
            most_steps = args.auto_max_steps if args.steps == AUTO else args.steps
            steps = min(most_steps, dimension)  # Lanczos is exact, and stops, by D steps
            size = state_size(dimension, steps, block, dtype or selected[0][1].dtype)
            every = (
                f"every {args.checkpoint_every} steps" if args.checkpoint_every else "every minute"
            )
            out.log(
                f"checkpoints in {state_path} {every}: the Lanczos basis is appended as it grows "
                f"(each row written once), at most {size / 1e6:.3g} MB on disk ({block} probes x "
                f"{steps} steps x D = {dimension}); removed when the run completes"
            )
        if args.exact:
            spectrum = exact_spectrum(
                model,
                loss_fn,
                train_pair,
                curvature=args.curvature,
                dtype=dtype,
                device=args.device,
                batch_size=args.batch_size,
            )
        else:
            spectrum = estimate_spectrum(
                model,
                loss_fn,
                train_pair,
                steps=args.steps,
                probes=args.probes,
                curvature=args.curvature,
                dtype=dtype,
                device=args.device,
                seed=args.seed,
                batch_size=args.batch_size,
                block_size=args.block_size,
                state_path=state_path,
                resume=args.resume,
                checkpoint_every=args.checkpoint_every,
                progress=not args.quiet,
                **_auto_options(args),
            )
            used = spectrum.provenance.get("steps", args.steps)
            auto = spectrum.provenance.get("auto_steps")
            if auto is not None:
                out.log(
                    f"--steps auto: m = {auto['steps']} "
                    + ("(p* settled)" if auto["converged"] else "(the cap; p* had not settled)")
                )
            elif used < args.steps:
                out.log(
                    f"note: --steps {args.steps} capped at {used}, the number of non-zero rows "
                    "of the curvature: Lanczos is exact by then, more steps add nothing"
                )
        spectrum.save(target)
    trace, trace_error = spectrum.trace_function(lambda x: x)
    out.result(
        {
            "spectrum": str(target),
            "summary": repr(spectrum),
            "trace_per_coordinate": trace,
            "trace_standard_error": trace_error,
            "provenance": spectrum.provenance,
        },
        f"{spectrum!r}\ntr(C)/D = {trace:.6g} +/- {trace_error:.2g}\nwritten to {target}",
    )
    return 0


def _parse_steps(text: str) -> int | str:
    """``--steps``: a positive number of Lanczos steps, or ``auto``."""
    if text == AUTO:
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return steps


def _auto_options(args) -> dict:
    """The ``--steps auto`` settings: the cap on m and the budget p* is read at."""
    if args.steps != AUTO:
        return {}
    return {
        "auto_start": min(AUTO_START, args.auto_max_steps),
        "auto_max_steps": args.auto_max_steps,
        "auto_tolerance": args.auto_tolerance,
        "epsilon": _parse_epsilon(args.epsilon),
    }


def _parse_auto_max_steps(text: str) -> int:
    """``--auto-max-steps``: at least 2 (m doubles from min(50, this))."""
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return steps


def _parse_epsilon(text: str) -> str | float:
    if text in EPSILON_KINDS:
        return text
    try:
        value = float(text)
    except ValueError as error:
        raise _UserError(
            f"--epsilon must be batch_std, reference or a number, got {text!r}"
        ) from error
    try:
        return check_epsilon(value)  # the library's one check: finite and > 0
    except ValueError as error:
        raise _UserError(f"--epsilon {text}: {error}") from error


def _command_predict(args, out: _Output) -> int:
    target = _output_file(args.out, ".json") if args.out else None
    epsilon = _parse_epsilon(args.epsilon)
    model, card, train_pair, _ = _load_model_and_data(args)
    train_pair, _ = _rank_shards(train_pair, None, args.batch_size)
    spectrum = Spectrum.load(args.spectrum) if args.spectrum else None
    if spectrum is not None and (args.steps is not None or args.probes is not None):
        raise _UserError("--steps and --probes compute a spectrum: give them or --spectrum")
    methods = tuple(args.method) if args.method else DEFAULT_METHODS
    slow = [m for m in methods if m in SLOW_METHODS]
    if slow:
        out.log("; ".join(f"{m}: {SLOW_METHODS[m]}" for m in slow))
    with warnings.catch_warnings():  # the Prediction's notes say it, in the summary
        warnings.filterwarnings("ignore", message="the spectrum records no fingerprint")
        prediction = predict_limit(
            model,
            spectrum,
            epsilon=epsilon,
            methods=methods,
            policy=args.policy,
            data=train_pair,
            loss_fn=LOSSES[args.loss](),
            curvature=args.curvature,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            device=args.device,
            batch_size=args.batch_size,
            seed=args.seed,
            allow_mismatch=args.allow_spectrum_mismatch,
            progress=not args.quiet,
            card=card or None,
            steps=100 if args.steps is None else args.steps,
            probes=10 if args.probes is None else args.probes,
            **({"auto_max_steps": args.auto_max_steps} if args.steps == AUTO else {}),
        )
    if args.steps is not None and prediction.spectrum.get("method") == "exact":
        out.log(
            f"note: --steps {args.steps} has no effect here: D = {prediction.dimension} <= "
            f"{EXACT_LIMIT}, the spectrum is exact"
        )
    if args.seed_given and not prediction.seeds:
        out.log(
            f"note: --seed {args.seed} has no effect here: the spectrum is exact and no "
            "method asked for draws random numbers"
        )
    elif args.seed_given and spectrum is not None and "statdim_exact" not in methods:
        out.log(
            f"note: --seed {args.seed} has no effect here: the given spectrum was computed "
            f"with seed {prediction.seeds.get('slq_probes')} (recorded), and no method asked "
            "for draws random numbers"
        )
    if target is not None and distributed.is_main():
        with _locked(target):
            target = prediction.save(target)
    payload = json.loads(prediction.to_json())
    payload["calibrated_intervals"] = [c.to_dict() for c in prediction.calibrated_intervals()]
    out.result(
        payload,
        prediction.summary() + (f"\nwritten to {target}" if target else ""),
    )
    return 0


def _command_validate(args, out: _Output) -> int:
    folder = _output_folder(args.out)
    epsilon = _parse_epsilon(args.epsilon) if args.epsilon else None
    model, _, train_pair, test_pair = _load_model_and_data(args, need_test=True)
    train_pair, test_pair = _rank_shards(train_pair, test_pair, args.batch_size)
    prediction = None
    if args.prediction:
        prediction = Prediction.load(args.prediction)
    if epsilon is None:
        epsilon = prediction.epsilon if prediction is not None else "batch_std"
    with _locked(folder):
        validation = validate(
            model,
            train_data=train_pair,
            test_data=test_pair,
            loss_fn=LOSSES[args.loss](),
            epsilon=epsilon,
            variants=tuple(args.variant) if args.variant else DEFAULT_VARIANTS,
            tolerance=args.tolerance,
            resolution=args.resolution,
            curvature=args.curvature,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.quiet,
        )
        comparison = compare(prediction, validation) if prediction is not None else None
        if not distributed.is_main():
            return 0
        folder.mkdir(exist_ok=True)
        validation.save(folder / "validation.json")
        figure = plot_validation(validation, folder / "validation.png", prediction=prediction)
        human = [validation.summary()]
        payload = {"validation": json.loads(validation.to_json()), "files": [str(figure)]}
        if comparison is not None:
            (folder / "comparison.md").write_text(comparison.to_markdown() + "\n")
            human += ["", comparison.to_markdown()]
            payload["comparison"] = comparison.to_dict()
    human.append(f"\nwritten to {folder}")
    out.result(payload, "\n".join(human))
    return 0


def _report_study(result, out: _Output) -> int:
    """Print a study's tables (study.md) or, with --json, the whole result."""
    markdown = Path(result.out) / "study.md"
    out.result(
        json.loads(result.to_json()),
        (markdown.read_text() if markdown.exists() else "") + f"\nresults in {result.out}",
    )
    return 0


def _command_study(args, out: _Output) -> int:
    config = load_config(args.config)
    if args.out is None:
        folders = _default_folder(config["study"]["out"])
    else:
        folders = contextlib.nullcontext(_output_folder(args.out))
    args.rerun_continues = True
    with folders as folder, _locked(folder):
        result = run_study(config, out=folder, log=None if args.quiet else out.log)
    return _report_study(result, out)


def _command_demo(args, out: _Output) -> int:
    if args.out is None:
        folders = _default_folder(DEMO_OUT)
    else:
        folders = contextlib.nullcontext(_output_folder(args.out))
    config = load_config(str(resources.files("pruning_limit") / "data" / "demo.toml"))
    config["study"]["seed"] = args.seed
    if args.quick:  # a first look in seconds: one small dataset, plain and L1, a smaller model
        config["model"]["hidden"] = [16]
        config["training"]["epochs"] = 20
        config["validation"]["variants"] = ["one_shot", "refit"]
        config["datasets"] = [
            {**config["datasets"][0], "d": [8], "n": 16, "n_train": 400, "n_test": 400}
        ]
        config = load_config(config)
    out.log(
        "demo: small MLPs, plain and L1-trained, on hidden-manifold data of intrinsic "
        "dimension 2, 8 and 32; exact GGN spectra, every predictor (emp: a baseline without "
        "curvature), one-shot / refit / fine-tune pruning sweeps, read as the onset of damage "
        "and as the transition (collapse centre and 10-90 % width)"
    )
    args.rerun_continues = True
    with folders as folder, _locked(folder):
        result = run_study(config, out=folder, log=None if args.quiet else out.log)
    return _report_study(result, out)


# -- the parser ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line that ends with where to read the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parse_device(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and available."""
    if text != "auto":
        try:
            device = torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(
                f"unknown device {text!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise argparse.ArgumentTypeError(
                f"device {text!r} is not supported: use auto, cpu, cuda, cuda:N or mps"
            )
        try:
            resolve_device(device)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _add_auto_max_steps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auto-max-steps",
        type=_parse_auto_max_steps,
        default=AUTO_MAX_STEPS,
        metavar="M",
        help=f"--steps auto: the largest m (default {AUTO_MAX_STEPS}; the paper's Hessian "
        "needed m = 200 at the predicted limit)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``pruning-limit``: one subcommand each for train, spectrum,
    predict, validate, study and demo; each sets ``handler``, the function that runs it.

    Example
    -------
    >>> args = build_parser().parse_args(
    ...     ["predict", "runs/m8", "--data", "manifold:d=8", "--method", "paper"]
    ... )
    >>> args.command, args.checkpoint, args.method, args.epsilon, args.policy, args.device
    ('predict', 'runs/m8', ['paper'], 'batch_std', 'abs', 'auto')
    """
    common = _Parser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no logs or progress bars")
    common.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    common.add_argument(
        "--device",
        type=_parse_device,
        default="auto",
        help="auto, cpu, cuda, cuda:N or mps (default: auto)",
    )
    common.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default: 0): SLQ probes, statdim_exact samples, fine-tune order, data",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    common.add_argument(
        "--backend",
        choices=("gloo", "nccl"),
        default=None,
        help="under torchrun: the torch.distributed backend (default: nccl with CUDA, else gloo)",
    )

    checkpoint = _Parser(add_help=False)
    checkpoint.add_argument(
        "checkpoint", help="checkpoint folder, state_dict, TorchScript or pickle"
    )
    checkpoint.add_argument(
        "--data",
        required=True,
        help="manifold:d=8,n=64 | digits:pca=8 | mnist1d | FILE.npz | module:function",
    )
    checkpoint.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of built-in data (default: the one in the checkpoint's card)",
    )
    checkpoint.add_argument("--model", default=None, help="module:factory for a plain state_dict")
    checkpoint.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a fully pickled model (can run code)",
    )
    checkpoint.add_argument(
        "--output",
        default=None,
        metavar="KEY",
        help="for a model that returns a tuple or a dict: the index or key of the output the "
        "loss applies to",
    )
    checkpoint.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="cross_entropy",
        help="cross_entropy (int64 class labels) or mse (float targets of the outputs' shape)",
    )
    checkpoint.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)

    parser = _Parser(
        prog="pruning-limit",
        description="Predict how large a fraction of a network's weights global one-shot "
        "magnitude pruning can remove (the fraction REMOVED, as torch's `amount`), "
        "and check it by pruning.",
    )
    parser.add_argument("--version", action="version", version=f"pruning-limit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", parents=[common], help="train a small model to a checkpoint")
    p.add_argument("--data", required=True, help="manifold:d=8 | digits:pca=8 | mnist1d")
    p.add_argument("--model", required=True, help="mlp:64x64 | cnn1d:16x32 | cnn2d:8x16")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="default",
        help="default: Adam, lr 1e-3, 50 epochs; paper: the reference code's SGD (momentum "
        "0.9, lr 0.01, batch 128) with L1 5e-5 on weights and biases, 78,200 steps, Kaiming "
        "init. Every option below left out takes the recipe's value",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (instead of epochs)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    p.add_argument("--l1", type=float, default=None, help="L1 penalty strength")
    p.add_argument(
        "--l1-biases",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the L1 penalty also on every bias (the paper recipe's choice)",
    )
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None, help="linear lr warm-up steps")
    p.add_argument("--init", choices=INITIALISATIONS, default=None, help="weight initialisation")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--target-loss", type=float, default=None, help="stop at this train loss")
    p.set_defaults(handler=_command_train)

    p = commands.add_parser(
        "spectrum",
        parents=[common, checkpoint],
        help="SLQ (or exact) spectrum of the loss curvature",
    )
    p.add_argument(
        "--steps",
        type=_parse_steps,
        default=100,
        help="Lanczos steps per probe, or auto: m doubles from 50 until the paper p* (at "
        "--epsilon) moves by <= --auto-tolerance between m/2 and m, up to --auto-max-steps",
    )
    p.add_argument("--probes", type=int, default=10)
    p.add_argument(
        "--epsilon",
        default="batch_std",
        help="--steps auto: the loss budget p* is read at (batch_std, reference or a number)",
    )
    _add_auto_max_steps(p)
    p.add_argument(
        "--auto-tolerance",
        type=float,
        default=AUTO_TOLERANCE,
        metavar="DP",
        help=f"--steps auto: stop when p* moves by at most DP between m/2 and m (default "
        f"{AUTO_TOLERANCE}, fraction removed)",
    )
    p.add_argument("--block-size", type=int, default=None, help="probes run together")
    p.add_argument("--curvature", choices=CURVATURES, default=DEFAULT_CURVATURE)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--exact", action="store_true", help="full matrix + eigvalsh (small D)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from OUT.state"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an interrupted run's OUT.state and start again",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="write OUT.state every STEPS Lanczos steps (default: every 60 s)",
    )
    p.add_argument("--out", default="spectrum.npz")
    p.set_defaults(handler=_command_spectrum)

    p = commands.add_parser(
        "predict",
        parents=[common, checkpoint],
        help="the predicted pruning limit of a checkpoint, with intervals",
    )
    p.add_argument(
        "--spectrum",
        default=None,
        help="a spectrum.npz from `pruning-limit spectrum` (default: exact for "
        f"D <= {EXACT_LIMIT}, else SLQ); it must be of this checkpoint's weights and --data",
    )
    p.add_argument(
        "--steps",
        type=_parse_steps,
        default=None,
        help="without --spectrum, for D > the exact limit: Lanczos steps per probe, or auto "
        "(as for `spectrum`; default 100)",
    )
    p.add_argument(
        "--probes", type=int, default=None, help="without --spectrum: SLQ probes (default 10)"
    )
    _add_auto_max_steps(p)
    p.add_argument(
        "--allow-spectrum-mismatch",
        action="store_true",
        help="use a --spectrum computed at other weights or data (noted in the result)",
    )
    p.add_argument(
        "--epsilon",
        default="batch_std",
        help="loss budget: batch_std (std of mini-batch losses at w*), reference (the "
        "reference code's: np.std, ddof 0, of batch-128 losses in eval mode) or a number > 0",
    )
    p.add_argument(
        "--method",
        action="append",
        choices=METHODS,
        help="repeat for several (default: " + ", ".join(DEFAULT_METHODS) + ")",
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="abs",
        help="eigenvalues <= 0: |lambda| (paper) or flat (each adds 1)",
    )
    p.add_argument(
        "--curvature",
        choices=CURVATURES,
        default=None,
        help=f"default: the spectrum's, else {DEFAULT_CURVATURE}",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--out", default=None, help="write the Prediction as JSON here")
    p.set_defaults(handler=_command_predict)

    p = commands.add_parser(
        "validate",
        parents=[common, checkpoint],
        help="prune for real: actual limits, comparison and plots",
    )
    p.add_argument("--prediction", default=None, help="a prediction.json to compare with")
    p.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS,
        help="repeat for several (default: " + ", ".join(DEFAULT_VARIANTS) + ")",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="accuracy drop allowed, in percentage points (default 0.5)",
    )
    p.add_argument("--resolution", type=float, default=0.005, help="bisection resolution in p")
    p.add_argument(
        "--epsilon", default=None, help="loss budget (default: the prediction's, else batch_std)"
    )
    p.add_argument(
        "--curvature",
        choices=VALIDATION_CURVATURES,
        default="auto",
        help="curvature of the refit's quadratic model",
    )
    p.add_argument("--out", default="validation", help="results folder")
    p.set_defaults(handler=_command_validate)

    p = commands.add_parser(
        "study", parents=[common], help="the full experiment from a TOML configuration"
    )
    p.add_argument("config", help="study configuration (TOML); see pruning_limit.study")
    p.add_argument("--out", default=None, help="results folder (default: the config's)")
    p.set_defaults(handler=_command_study)

    p = commands.add_parser(
        "demo", parents=[common], help="the main job on built-in data (a few minutes on a CPU)"
    )
    p.add_argument("--out", default=None, help=f"results folder (default: {DEMO_OUT})")
    p.add_argument("--quick", action="store_true", help="smaller models and data (seconds)")
    p.set_defaults(handler=_command_demo)
    return parser


DISTRIBUTED_COMMANDS = ("spectrum", "predict", "validate")


def _run_command(args, out: _Output) -> int:
    """The subcommand, across the ranks of torchrun when its variables are set."""
    if not distributed.init_from_environment(args.backend):
        return args.handler(args, out)
    if args.command not in DISTRIBUTED_COMMANDS:
        raise _UserError(
            f"{args.command} runs in one process; under torchrun only "
            + ", ".join(DISTRIBUTED_COMMANDS)
            + " are spread over the ranks"
        )
    with distributed.failure_barrier(f"pruning-limit {args.command}"):
        code = args.handler(args, out)
    torch.distributed.destroy_process_group()
    return code


def _where() -> str:
    """``[rank r/N] `` under torch.distributed, else nothing."""
    if not distributed.is_distributed():
        return ""
    return f"[rank {distributed.rank()}/{distributed.world_size()}] "


def main(argv: list[str] | None = None) -> int:
    """Run ``pruning-limit`` on ``argv`` (default: ``sys.argv[1:]``); the exit code.

    0 on success, 2 on a user error (one line on stderr), 1 on an internal error, 130
    on Ctrl-C; a command line that argparse cannot read exits 2 (``SystemExit``).

    Example
    -------
    >>> main(["predict", "no/such/checkpoint", "--data", "manifold:d=2"])  # one line on stderr
    2
    >>> main(["predict", "--data", "manifold:d=2"])  # no checkpoint given
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.seed_given = args.seed is not None
    if args.seed is None:
        args.seed = 0
    out = _Output(args)
    try:
        return _run_command(args, out)
    except distributed.RankFailedError as error:
        print(f"pruning-limit: error: {_where()}{error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pruning-limit: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if getattr(args, "debug", False):
            raise
        print(f"pruning-limit: error: {_where()}{_reason(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # an internal error: say so, and how to see more
        if getattr(args, "debug", False):
            raise
        print(
            f"pruning-limit: {_where()}internal error ({type(error).__name__}: {error}); "
            "rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return 1


def _after_interrupt(args) -> str:
    """What an interrupted command left, and how to go on."""
    state_path = getattr(args, "state_path", None)
    if state_path is not None:
        if Path(state_path).exists():
            return f"run the same command with --resume to continue from {state_path}"
        return "stopped before the first checkpoint (OUT.state): nothing to resume"
    if getattr(args, "rerun_continues", False):
        return "run the same command again to continue: finished runs are kept"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())
