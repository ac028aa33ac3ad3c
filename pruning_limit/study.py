"""The study: predicted vs actual pruning limits across data of varying intrinsic dimension.

p is the fraction of prunable weights REMOVED (``amount`` in torch.nn.utils.prune);
the fraction kept is 1 - p.

For every dataset of the configuration (e.g. hidden-manifold data with latent
dimension d, digits and MNIST-1D at several PCA ranks), every L1 strength (0 is the
plain model) and every training dtype, a run

1. trains the model (:func:`~pruning_limit.training.train`) to ``checkpoint/``;
2. builds the curvature of the mean training loss (GGN by default: PSD, so its
   quadrature is bracketed, and the SLQ of the indefinite Hessian with the "abs"
   policy is not converged at the c that matters, DESIGN section 7) and its
   spectrum, exact when D <= ``exact_limit`` (else SLQ), to ``spectrum.npz``;
3. predicts with every method (:func:`~pruning_limit.limit.predict_from_spectrum`,
   the quadratic model built once from the same matrix) to ``prediction.json``;
4. validates with every variant (:func:`~pruning_limit.validation.validate`, the
   refit through the same quadratic model) to ``validation.json``;
5. compares them (:func:`~pruning_limit.validation.compare`), draws ``validation.png``,
   ``statdim.png`` and ``spectrum.png``, and writes ``run.json`` last.

A run whose ``run.json`` exists is skipped on a re-run, and a run cut short resumes
from the last file it wrote, so an interrupted study continues where it stopped.
Each run folder holds the ``config.json`` it was made with; a re-run with another
configuration for the same folder is refused rather than mixed. At the top of the
results folder: ``study.json`` (every run and the summary), ``study.md`` (tables)
and ``study.png`` (predicted vs actual vs intrinsic dimension).

The TOML configuration
----------------------
Every section and key is optional except ``[[datasets]]``; unknown keys are an error.

``[study]``
    ``name`` (str, "study"); ``out`` (str, "runs/study": the results folder,
    relative to the working directory); ``seed`` (int, 0: data split, initialisation,
    batch order, fine-tune order); ``dtypes`` (list of "float32"/"float64",
    ["float32"]: training dtypes, one run each); ``device`` (str, "cpu": where the
    curvature products run); ``threads`` (int, 0: while the study runs, limit torch
    and the BLAS libraries behind numpy/scipy to this many threads; 0 leaves them as
    they are. On a shared machine, BLAS threads that outnumber the free cores made
    the dense solves of a tiny study 3x slower).
``[model]``
    A model spec without ``input_dim`` and ``classes`` (taken from each dataset):
    ``kind`` ("mlp") and its fields (:func:`~pruning_limit.models.model_spec`), e.g.
    ``hidden = [32]``.
``[training]``
    Arguments of :func:`~pruning_limit.training.train`: ``epochs`` (50), ``lr``
    (3e-3), ``batch_size`` (128), ``optimizer`` ("adam"), ``momentum`` (0.9),
    ``weight_decay`` (0.0), ``target_train_loss`` (none); and ``l1`` (a number or a
    list, [0.0, 1e-4]: one model per value, 0 the plain model).
``[prediction]``
    ``methods`` (list, all of :data:`~pruning_limit.limit.METHODS`; ``statdim_exact``
    is skipped, with a note, where D exceeds its limit); ``curvature`` ("ggn" or
    "hessian", "ggn": used for the spectrum, the quadratic predictor and the refit);
    ``policy`` ("abs"); ``epsilon`` ("batch_std" or a number); ``batch_size`` (256:
    the curvature's batches and those of "batch_std"); ``exact_limit`` (3000: exact
    spectrum and dense quadratic model up to this D); ``slq_steps`` (100),
    ``slq_probes`` (10); ``damping`` (0.0); ``sensitivity`` (true: also solve at
    eps/10 and eps*10); ``statdim_samples`` (400).
``[validation]``
    ``variants`` (["one_shot", "refit", "finetune"]); ``tolerance`` (0.5 percentage
    points); ``resolution`` (0.005); ``amounts`` (the coarse grid of p, default 0,
    0.05, ..., 0.95, 0.99); ``confidence`` (0.95); ``refit_curvature`` ("auto": the
    exact Hessian, with the prediction's policy, when D <= ``exact_limit``, else the
    GGN by CG, as :func:`~pruning_limit.validation.validate` does; "hessian"; "ggn";
    or "prediction": the prediction's own quadratic model, which is the point the
    ``quadratic`` predictor speaks of and costs no second matrix).
``[validation.finetune]``
    ``epochs`` (3), ``lr`` (1e-3), ``batch_size`` (128).
``[[datasets]]``
    One table per dataset family: ``name`` ("manifold", "digits", "mnist1d") and the
    arguments of its builder (:func:`~pruning_limit.datasets.load_dataset`). A list
    value makes one dataset per entry (several lists: every combination), e.g.
    ``d = [2, 4, 8]`` or ``pca_rank = [4, 16, "full"]`` ("full": no PCA).

Example
-------
>>> from pruning_limit.study import load_config
>>> config = load_config({"datasets": [{"name": "manifold", "d": [2, 8]}]})
>>> config["prediction"]["curvature"], config["validation"]["tolerance"]
('ggn', 0.5)
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .datasets import load_dataset
from .hessian import CurvatureOperator, resolve_parameters
from .lanczos import exact_spectrum_of, slq
from .limit import METHODS, STATDIM_EXACT_LIMIT, Prediction, loss_budget, predict_from_spectrum
from .models import model_spec
from .quadratic import QuadraticModel
from .spectrum import Spectrum
from .training import DTYPES, load_checkpoint, train
from .validation import CRITERIA, VARIANTS, Validation, compare, validate

FORMAT_VERSION = 1
FULL_RANK = "full"

DEFAULTS: dict = {
    "study": {"name": "study", "out": "runs/study", "seed": 0, "dtypes": ["float32"],
              "device": "cpu", "threads": 0},
    "model": {"kind": "mlp", "hidden": [32]},
    "training": {"epochs": 50, "lr": 3e-3, "batch_size": 128, "optimizer": "adam",
                 "momentum": 0.9, "weight_decay": 0.0, "target_train_loss": None,
                 "l1": [0.0, 1e-4]},
    "prediction": {"methods": list(METHODS), "curvature": "ggn", "policy": "abs",
                   "epsilon": "batch_std", "batch_size": 256, "exact_limit": 3000,
                   "slq_steps": 100, "slq_probes": 10, "damping": 0.0, "sensitivity": True,
                   "statdim_samples": 400},
    "validation": {"variants": list(VARIANTS), "tolerance": 0.5, "resolution": 0.005,
                   "amounts": None, "confidence": 0.95, "refit_curvature": "auto",
                   "finetune": {"epochs": 3, "lr": 1e-3, "batch_size": 128}},
}  # fmt: skip
# Keys whose default is None, or that take more than one type: what they accept.
_ACCEPTS = {
    ("training", "target_train_loss"): (int, float),
    ("training", "l1"): (int, float, list),
    ("prediction", "epsilon"): (str, int, float),
    ("validation", "amounts"): (list,),
}


# -- the configuration -------------------------------------------------------------------------


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise RuntimeError(
                "reading a TOML study configuration needs Python >= 3.11 (tomllib) or the "
                "tomli package on Python 3.10: pip install tomli"
            ) from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from error


def load_config(config) -> dict:
    """The checked configuration with every default filled in.

    Parameters
    ----------
    config
        A path to a TOML file, or a dict of the same structure (see the module
        docstring).

    Raises
    ------
    ValueError
        An unknown section or key (named, with the known ones), a value of the
        wrong type, or no ``[[datasets]]``.
    FileNotFoundError
        If the path does not exist.
    """
    source = "the configuration"
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"no study configuration at {path}")
        source = str(path)
        raw = _read_toml(path)
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        raise TypeError(f"config must be a path or a dict, got {type(config).__name__}")

    known = set(DEFAULTS) | {"datasets"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(
            f"{source}: unknown section(s) {unknown}; known: {', '.join(sorted(known))}"
        )
    result = {}
    for section, defaults in DEFAULTS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ValueError(f"{source}: [{section}] must be a table")
        if section == "model":
            result[section] = _model_section(given, source)
            continue
        result[section] = _checked_section(section, given, defaults, source)
    result["datasets"] = _datasets_section(raw.get("datasets"), source)
    return result


def _checked_section(section: str, given: dict, defaults: dict, source: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} in [{section}]; known: "
            f"{', '.join(sorted(defaults))}"
        )
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        default = defaults[key]
        where = f"[{section}] {key}"
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {where} must be a table")
            merged[key] = _checked_section(f"{section}.{key}", value, default, source)
            continue
        if value is None and default is None:
            continue
        accepted = _ACCEPTS.get((section, key))
        if accepted is None:
            accepted = (int, float) if isinstance(default, float) else (type(default),)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, accepted):
            raise ValueError(
                f"{source}: {where} must be of type "
                f"{' or '.join(t.__name__ for t in accepted)}, got {value!r}"
            )
        merged[key] = value
    if section == "study":
        bad = [d for d in merged["dtypes"] if d not in DTYPES]
        if bad or not merged["dtypes"]:
            raise ValueError(
                f"{source}: [study] dtypes must be a non-empty list of {sorted(DTYPES)}, "
                f"got {merged['dtypes']}"
            )
    if section == "training":
        if not isinstance(merged["l1"], list):
            merged["l1"] = [merged["l1"]]
        if not merged["l1"] or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in merged["l1"]
        ):
            raise ValueError(
                f"{source}: [training] l1 must be a number >= 0 or a non-empty list of them, "
                f"got {merged['l1']}"
            )
    if section == "prediction":
        unknown_methods = [m for m in merged["methods"] if m not in METHODS]
        if unknown_methods or not merged["methods"]:
            raise ValueError(
                f"{source}: [prediction] methods {unknown_methods or '[]'} unknown; known: "
                f"{', '.join(METHODS)}"
            )
        epsilon = merged["epsilon"]
        if (isinstance(epsilon, str) and epsilon != "batch_std") or (
            not isinstance(epsilon, str) and not epsilon > 0
        ):
            raise ValueError(
                f"{source}: [prediction] epsilon must be 'batch_std' or a number > 0, got "
                f"{epsilon!r}"
            )
        if merged["curvature"] not in ("ggn", "hessian"):
            raise ValueError(
                f"{source}: [prediction] curvature must be 'ggn' or 'hessian', got "
                f"{merged['curvature']!r}"
            )
    if section == "validation":
        amounts = merged["amounts"]
        if amounts is not None and not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in amounts
        ):
            raise ValueError(
                f"{source}: [validation] amounts must be a list of fractions in [0, 1], "
                f"got {amounts}"
            )
        if merged["refit_curvature"] not in ("prediction", "auto", "hessian", "ggn"):
            raise ValueError(
                f"{source}: [validation] refit_curvature must be 'prediction', 'auto', "
                f"'hessian' or 'ggn', got {merged['refit_curvature']!r}"
            )
        bad = [v for v in merged["variants"] if v not in VARIANTS]
        if bad or not merged["variants"]:
            raise ValueError(
                f"{source}: [validation] variants {bad or '[]'} unknown; known: "
                f"{', '.join(VARIANTS)}"
            )
    return merged


def _model_section(given: dict, source: str) -> dict:
    for key in ("input_dim", "classes"):
        if key in given:
            raise ValueError(
                f"{source}: [model] {key} is taken from each dataset; remove it from the file"
            )
    merged = {**DEFAULTS["model"], **given} if "kind" not in given else dict(given)
    try:  # the model's own checks name an unknown field
        model_spec(merged["kind"], input_dim=2, classes=2, **_without(merged, "kind"))
    except ValueError as error:
        raise ValueError(f"{source}: [model]: {error}") from error
    return merged


def _datasets_section(entries, source: str) -> list:
    if not entries:
        raise ValueError(f"{source}: no [[datasets]]: give at least one dataset table")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{source}: datasets must be an array of tables ([[datasets]])")
    for entry in entries:
        if "name" not in entry:
            raise ValueError(f"{source}: a [[datasets]] table lacks its name")
    return copy.deepcopy(entries)


def _without(mapping: dict, *keys) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


# -- the runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    name: str
    dataset: dict  # load_dataset arguments
    knob: dict  # the varied dataset arguments, as given
    l1: float
    dtype: str

    @property
    def regularisation(self) -> str:
        return "plain" if self.l1 == 0 else f"l1={self.l1:g}"


def _expand_runs(config: dict) -> list[_Run]:
    runs = []
    for entry in config["datasets"]:
        varying = [key for key, value in entry.items() if isinstance(value, list)]
        for values in itertools.product(*(entry[key] for key in varying)):
            arguments = dict(entry)
            arguments.update(zip(varying, values))
            knob = dict(zip(varying, values))
            if arguments.get("pca_rank") == FULL_RANK:
                arguments["pca_rank"] = None
            label = "-".join(
                [entry["name"]] + [f"{'pca' if k == 'pca_rank' else k}{v}" for k, v in knob.items()]
            )
            for l1 in config["training"]["l1"]:
                for dtype in config["study"]["dtypes"]:
                    regularisation = "plain" if l1 == 0 else f"l1_{l1:g}"
                    runs.append(
                        _Run(f"{label}-{regularisation}-{dtype}", arguments, knob, float(l1), dtype)
                    )
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the configuration makes runs with the same name twice: {duplicated}")
    return runs


class _MatrixOnce:
    """A CurvatureOperator whose D x D matrix is built at most once.

    The exact spectrum, the quadratic predictor and the refit all need C; building
    it costs D curvature products.
    """

    def __init__(self, operator: CurvatureOperator) -> None:
        self._operator = operator
        self._matrix = None

    def __getattr__(self, name):
        return getattr(self._operator, name)

    def matrix(self, max_dimension: int, block: int = 64) -> torch.Tensor:
        if self._matrix is None:
            self._matrix = self._operator.matrix(max_dimension=max_dimension, block=block)
        return self._matrix


def _intrinsic_x(metadata: dict) -> tuple[float, str]:
    """The knob of intrinsic dimension: latent d, the PCA rank, else the ambient n."""
    if metadata.get("nominal_intrinsic_dimension") is not None:
        return float(metadata["nominal_intrinsic_dimension"]), "latent d"
    rank = metadata["spec"].get("pca_rank")
    if rank is not None:
        return float(rank), "PCA rank"
    return float(metadata["ambient_dimension"]), "PCA rank (full = n)"


def _execute(run: _Run, config: dict, run_dir: Path, datasets: dict) -> dict:
    from . import plots

    timings: dict[str, float] = {}
    notes: list[str] = []
    seed = config["study"]["seed"]
    key = json.dumps(run.dataset, sort_keys=True)
    if key not in datasets:
        started = time.perf_counter()
        datasets[key] = load_dataset(**run.dataset)
        timings["dataset"] = time.perf_counter() - started
    dataset = datasets[key]
    train_pair = (dataset.X_train, dataset.y_train)
    test_pair = (dataset.X_test, dataset.y_test)
    loss_fn = nn.CrossEntropyLoss()

    checkpoint = run_dir / "checkpoint"
    started = time.perf_counter()
    if (checkpoint / "card.json").is_file() and (checkpoint / "model.pt").is_file():
        model, card = load_checkpoint(checkpoint)
    else:
        training = _without(config["training"], "l1")
        spec = model_spec(
            config["model"]["kind"],
            input_dim=dataset.ambient_dimension,
            classes=dataset.num_classes,
            **_without(config["model"], "kind"),
        )
        result = train(
            spec, dataset, **training, l1=run.l1, dtype=DTYPES[run.dtype], seed=seed,
            progress=False, out=checkpoint,
        )  # fmt: skip
        model, card = result.model, result.card
    timings["train"] = time.perf_counter() - started

    prediction_config = config["prediction"]
    validation_config = config["validation"]
    selected = resolve_parameters(model)
    weights = np.concatenate([t.detach().double().cpu().numpy().reshape(-1) for _, t in selected])
    dimension = weights.size
    exact_limit = prediction_config["exact_limit"]
    operator = _MatrixOnce(
        CurvatureOperator(
            model,
            loss_fn,
            train_pair,
            curvature=prediction_config["curvature"],
            dtype=torch.float64,
            device=config["study"]["device"],
            batch_size=prediction_config["batch_size"],
        )
    )
    quadratic: list[QuadraticModel] = []

    def quadratic_model() -> QuadraticModel:
        if not quadratic:
            quadratic.append(
                QuadraticModel(
                    operator,
                    weights,
                    policy=prediction_config["policy"],
                    damping=prediction_config["damping"],
                    dense_limit=exact_limit,
                )
            )
        return quadratic[0]

    spectrum_path = run_dir / "spectrum.npz"
    started = time.perf_counter()
    if spectrum_path.is_file():
        spectrum = Spectrum.load(spectrum_path)
    else:
        if dimension <= exact_limit:
            spectrum = exact_spectrum_of(operator, max_dimension=exact_limit)
        else:
            spectrum = slq(
                operator,
                steps=prediction_config["slq_steps"],
                probes=prediction_config["slq_probes"],
                seed=seed,
                progress=False,
            )
        spectrum.save(spectrum_path)
    timings["spectrum"] = time.perf_counter() - started

    prediction_path = run_dir / "prediction.json"
    started = time.perf_counter()
    if prediction_path.is_file():
        prediction = Prediction.load(prediction_path)
    else:
        methods = list(prediction_config["methods"])
        if "statdim_exact" in methods and dimension > STATDIM_EXACT_LIMIT:
            methods.remove("statdim_exact")
            notes.append(f"statdim_exact skipped: D = {dimension} > {STATDIM_EXACT_LIMIT}")
        needs_curvature = {"quadratic", "statdim_exact"} & set(methods)
        eps, source = loss_budget(operator, prediction_config["epsilon"], dtype=torch.float64)
        prediction = predict_from_spectrum(
            spectrum,
            weights,
            eps,
            methods=methods,
            policy=prediction_config["policy"],
            curvature=quadratic_model() if needs_curvature else None,
            epsilon_source=source,
            sensitivity=prediction_config["sensitivity"],
            statdim_samples=prediction_config["statdim_samples"],
            seed=seed,
            damping=prediction_config["damping"],
            dense_limit=exact_limit,
            parameters=[(name, tuple(t.shape)) for name, t in selected],
        )
        prediction.save(prediction_path)
    timings["prediction"] = time.perf_counter() - started

    validation_path = run_dir / "validation.json"
    started = time.perf_counter()
    if validation_path.is_file():
        validation = Validation.load(validation_path)
    else:
        variants = validation_config["variants"]
        refit_curvature = validation_config["refit_curvature"]
        if refit_curvature == "prediction":
            refit_curvature = quadratic_model() if "refit" in variants else "auto"
        validation = validate(
            model,
            train_data=train_pair,
            test_data=test_pair,
            loss_fn=loss_fn,
            epsilon=prediction_config["epsilon"],
            variants=variants,
            tolerance=validation_config["tolerance"],
            resolution=validation_config["resolution"],
            amounts=validation_config["amounts"],
            curvature=refit_curvature,
            policy=prediction_config["policy"],
            damping=prediction_config["damping"],
            dense_limit=exact_limit,
            finetune=validation_config["finetune"],
            confidence=validation_config["confidence"],
            batch_size=prediction_config["batch_size"],
            seed=seed,
            progress=False,
        )
        validation.save(validation_path)
    timings["validation"] = time.perf_counter() - started

    comparison = compare(prediction, validation)
    plots.plot_validation(validation, run_dir / "validation.png", prediction)
    plots.plot_statistical_dimension(prediction, run_dir / "statdim.png")
    plots.plot_spectral_density(spectrum, run_dir / "spectrum.png")

    metadata = dataset.metadata()
    x, x_label = _intrinsic_x(metadata)
    dense = validation.dense
    row = {
        "run": run.name,
        "dataset": run.dataset["name"],
        "dataset_arguments": run.dataset,
        "knob": run.knob,
        "intrinsic_dimension": x,
        "intrinsic_dimension_label": x_label,
        "intrinsic_dimension_estimates": metadata["estimated_intrinsic_dimension"],
        "nominal_intrinsic_dimension": metadata["nominal_intrinsic_dimension"],
        "ambient_dimension": metadata["ambient_dimension"],
        "regularisation": run.regularisation,
        "l1": run.l1,
        "dtype": run.dtype,
        "dimension": dimension,
        "dense": {
            "train_loss": dense["train_loss"],
            "test_loss": dense["test_loss"],
            "train_accuracy": dense.get("train_accuracy"),
            "test_accuracy": dense.get("test_accuracy"),
            "test_accuracy_interval": dense.get("test_accuracy_interval"),
            "n_test": dense["n_test"],
        },
        "training": {"epochs_run": card["training"]["epochs_run"]},
        "epsilon": prediction.epsilon,
        "epsilon_source": prediction.epsilon_source,
        "curvature": prediction.curvature,
        "spectrum_method": prediction.spectrum.get("method"),
        "refit_curvature": _refit_curvature(validation, prediction),
        "predicted": {
            method: {"p": est.removal_fraction, "interval": list(est.interval)}
            for method, est in prediction.estimates.items()
        },
        "actual": {
            variant: {
                "accuracy": result.accuracy_limit,
                "accuracy_interval": result.accuracy_interval,
                "loss_budget": result.loss_budget_limit,
                "loss_budget_bracket": result.loss_budget_bracket,
            }
            for variant, result in validation.variants.items()
        },
        "comparison": comparison.to_dict()["rows"],
        "notes": notes + comparison.notes,
        "seconds": timings,
    }
    return json.loads(json.dumps(row))  # as it reads back from run.json


def _refit_curvature(validation: Validation, prediction: Prediction) -> str | None:
    if validation.refit is None:
        return None
    curvature = validation.refit["curvature"]
    # "given" here is always the prediction's own quadratic model.
    return f"{prediction.curvature} (the prediction's)" if curvature == "given" else curvature


# -- the result --------------------------------------------------------------------------------


@dataclass
class StudyResult:
    """Every run's predicted and actual limits (fraction REMOVED), and how they compare.

    Attributes
    ----------
    name, out
        The study's name and results folder.
    rows
        One dict per run: dataset, intrinsic dimension (knob and estimates), L1,
        dtype, D, dense metrics, eps, ``predicted`` (method -> p, interval),
        ``actual`` (variant -> accuracy and loss-budget limits with intervals),
        ``comparison`` (the rows of :func:`~pruning_limit.validation.compare`).
    summary
        One dict per (method, variant, criterion) over the runs: mean signed and
        absolute error in percentage points, the share of runs whose actual lies
        inside the predicted interval, and Spearman's rank correlation between
        predicted and actual.
    config
        The configuration with its defaults filled in.
    skipped
        Runs whose results were already there (resumed, not recomputed).
    """

    name: str
    out: str
    rows: list
    summary: list
    config: dict
    skipped: list = field(default_factory=list)
    seconds: float = 0.0
    fraction: str = "removed"
    version: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["format_version"] = FORMAT_VERSION
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the JSON (default: ``out/study.json``), atomically."""
        path = Path(self.out) / "study.json" if path is None else Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        data = json.loads(Path(path).read_text())
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"study format {version}, this version reads {FORMAT_VERSION}")
        return cls(**data)

    def to_markdown(self) -> str:
        """The run table and the predictor summary, in markdown."""
        methods = _ordered({m for row in self.rows for m in row["predicted"]}, METHODS)
        variants = _ordered({v for row in self.rows for v in row["actual"]}, VARIANTS)
        lines = [
            f"# Study `{self.name}`: predicted vs actual pruning limits",
            "",
            "p = fraction of prunable weights REMOVED (torch.nn.utils.prune `amount`); "
            "kept = 1 - p.",
            f"Accuracy limit: largest p with test accuracy within "
            f"{self.config['validation']['tolerance']:g} percentage points of the dense model; "
            "loss-budget limit: largest p with train loss <= L(w*) + eps. "
            f"Curvature: {self.config['prediction']['curvature']}.",
            "",
            "## Runs",
            "",
            "| run | ID knob | TwoNN | D | test acc | eps | "
            + " | ".join(f"pred {m}" for m in methods)
            + " | "
            + " | ".join(f"{v} acc" for v in variants)
            + " | "
            + " | ".join(f"{v} loss" for v in variants)
            + " |",
            "|" + "---|" * (6 + len(methods) + 2 * len(variants)),
        ]
        for row in self.rows:
            accuracy = row["dense"]["test_accuracy"]
            cells = [
                row["run"],
                f"{row['intrinsic_dimension']:g}",
                f"{row['intrinsic_dimension_estimates'].get('twonn', float('nan')):.1f}",
                str(row["dimension"]),
                "-" if accuracy is None else f"{accuracy:.3f}",
                f"{row['epsilon']:.3g}",
            ]
            cells += [_cell(row["predicted"].get(m, {}).get("p")) for m in methods]
            cells += [_cell(row["actual"].get(v, {}).get("accuracy")) for v in variants]
            cells += [_cell(row["actual"].get(v, {}).get("loss_budget")) for v in variants]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "## Predictors against each meaning of actual (over all runs)",
            "",
            "Error = predicted - actual in percentage points (positive: the predictor "
            "promised more than pruning delivered). Inside: the actual limit lies in the "
            "predictor's interval. Spearman: rank correlation of predicted and actual "
            "across runs.",
            "",
            "| method | variant | criterion | runs | mean error (pp) | mean abs error (pp) | "
            "inside | Spearman |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entry in self.summary:
            lines.append(
                f"| {entry['method']} | {entry['variant']} | {entry['criterion']} | "
                f"{entry['runs']} | {entry['mean_error_pp']:+.1f} | "
                f"{entry['mean_abs_error_pp']:.1f} | {entry['inside_fraction']:.0%} | "
                f"{_cell(entry['spearman'], '{:+.2f}')} |"
            )
        if self.skipped:
            lines += ["", f"Resumed (already computed): {len(self.skipped)} run(s)."]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return (
            f"StudyResult({self.name!r}, {len(self.rows)} runs, {len(self.skipped)} resumed, "
            f"out={self.out!r})"
        )


def _ordered(names: set, order: tuple) -> list:
    return [name for name in order if name in names]


def _cell(value, pattern: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)


def summarise(rows: list) -> list:
    """Mean errors, coverage and rank correlation per (method, variant, criterion)."""
    from scipy.stats import spearmanr

    groups: dict[tuple, list] = {}
    for row in rows:
        for entry in row["comparison"]:
            key = (entry["method"], entry["variant"], entry["criterion"])
            groups.setdefault(key, []).append(entry)
    summary = []
    order = {name: i for i, name in enumerate(METHODS + VARIANTS + CRITERIA)}
    for key in sorted(groups, key=lambda k: tuple(order.get(part, 99) for part in k)):
        entries = groups[key]
        errors = np.array([e["error_pp"] for e in entries])
        predicted = np.array([e["predicted"] for e in entries])
        actual = np.array([e["actual"] for e in entries])
        spearman = None
        if len(entries) >= 3 and np.ptp(predicted) > 0 and np.ptp(actual) > 0:
            spearman = float(spearmanr(predicted, actual).statistic)
        summary.append(
            {
                "method": key[0],
                "variant": key[1],
                "criterion": key[2],
                "runs": len(entries),
                "mean_error_pp": float(errors.mean()),
                "mean_abs_error_pp": float(np.abs(errors).mean()),
                "inside_fraction": float(np.mean([e["inside"] for e in entries])),
                "overlap_fraction": float(np.mean([e["overlap"] for e in entries])),
                "spearman": spearman,
            }
        )
    return summary


def run_study(
    config,
    *,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """Train, predict, validate and compare over every dataset of ``config``.

    Parameters
    ----------
    config
        A TOML path or a dict (see the module docstring).
    out
        The results folder (default: the configuration's ``[study] out``).
    log
        Called with one line per run (e.g. ``print``); default: silent.

    Returns
    -------
    StudyResult
        Also written to ``out/study.json``, with ``study.md`` and ``study.png``.

    Raises
    ------
    ValueError
        A bad configuration (before any run starts), or a run folder made with
        another configuration.
    """
    config = load_config(config)
    out = Path(config["study"]["out"] if out is None else out)
    config["study"]["out"] = str(out)
    runs = _expand_runs(config)
    out.mkdir(parents=True, exist_ok=True)
    threads = config["study"]["threads"]
    if threads > 0:
        from threadpoolctl import threadpool_limits

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with threadpool_limits(limits=threads):
                return _run_all(config, runs, out, log)
        finally:
            torch.set_num_threads(previous)
    return _run_all(config, runs, out, log)


def _run_all(config: dict, runs: list, out: Path, log) -> StudyResult:
    from . import __version__, plots

    log = log or (lambda line: None)
    started = time.perf_counter()
    datasets: dict = {}
    rows, skipped = [], []
    for index, run in enumerate(runs, start=1):
        run_dir = out / run.name
        own_config = _run_config(run, config)
        config_path = run_dir / "config.json"
        if config_path.is_file():
            stored = json.loads(config_path.read_text())
            if stored != own_config:
                raise ValueError(
                    f"{run_dir} holds a run made with another configuration; delete it or "
                    "choose another results folder"
                )
        record_path = run_dir / "run.json"
        if record_path.is_file():
            rows.append(json.loads(record_path.read_text()))
            skipped.append(run.name)
            log(f"[{index}/{len(runs)}] {run.name}: already done, skipped")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(own_config, indent=2) + "\n")
        run_started = time.perf_counter()
        row = _execute(run, config, run_dir, datasets)
        row["seconds"]["total"] = time.perf_counter() - run_started
        tmp = record_path.with_name("run.json.tmp")
        tmp.write_text(json.dumps(row, indent=2) + "\n")
        tmp.replace(record_path)
        rows.append(row)
        log(_run_line(index, len(runs), row))

    result = StudyResult(
        name=config["study"]["name"],
        out=str(out),
        rows=rows,
        summary=summarise(rows),
        config=config,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        version=__version__,
    )
    result.save()
    (out / "study.md").write_text(result.to_markdown())
    plots.plot_study(result, out / "study.png")
    return result


def _run_config(run: _Run, config: dict) -> dict:
    """Everything that determines a run's results (not where or on what device it ran)."""
    return json.loads(
        json.dumps(
            {
                "run": run.name,
                "dataset": run.dataset,
                "l1": run.l1,
                "dtype": run.dtype,
                "seed": config["study"]["seed"],
                "model": config["model"],
                "training": _without(config["training"], "l1"),
                "prediction": config["prediction"],
                "validation": config["validation"],
            }
        )
    )


def _run_line(index: int, total: int, row: dict) -> str:
    predicted = ", ".join(f"{m} {v['p']:.3f}" for m, v in row["predicted"].items())
    actual = ", ".join(
        f"{v} {_cell(a['accuracy'])}/{_cell(a['loss_budget'])}" for v, a in row["actual"].items()
    )
    return (
        f"[{index}/{total}] {row['run']}: D={row['dimension']}, "
        f"{row['seconds']['total']:.1f} s; predicted {predicted}; actual (acc/loss) {actual}"
    )
