"""The study: predicted vs actual pruning limits across data of varying intrinsic dimension.

p is the fraction of prunable weights REMOVED (``amount`` in torch.nn.utils.prune);
the fraction kept is 1 - p.

For every dataset of the configuration (e.g. hidden-manifold data with latent
dimension d, digits and MNIST-1D at several PCA ranks), every L1 strength (0 is the
plain model) and every training dtype, a run

1. trains the model (:func:`~pruning_limit.training.train`) to ``checkpoint/``;
2. builds the curvature of the mean training loss (GGN by default: PSD, so its
   quadrature is bracketed, and the SLQ of the indefinite Hessian with the "abs"
   policy is not converged at the c that matters: benchmarks/delta_accuracy.py) and its
   spectrum, exact when D <= ``exact_limit`` (else SLQ), to ``spectrum.npz``;
3. predicts with every method (:class:`~pruning_limit.pipeline.Pipeline`, as
   :func:`~pruning_limit.pipeline.predict_limit` does,
   the quadratic model built once from the same matrix) to ``prediction.json``;
4. validates with every variant (:func:`~pruning_limit.validation.validate`, the
   refit through the same quadratic model) to ``validation.json``;
5. compares them (:func:`~pruning_limit.comparison.compare`), draws ``validation.png``,
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
    Arguments of :func:`~pruning_limit.training.train`: ``recipe`` ("default"),
    ``epochs`` (50), ``steps`` (none; giving it alone replaces the epochs), ``lr``
    (3e-3), ``batch_size`` (128), ``optimizer`` ("adam"), ``momentum`` (0.9),
    ``weight_decay`` (0.0), ``l1_biases`` (false), ``warmup_steps`` (0), ``init``
    ("default"), ``target_train_loss`` (none); and ``l1`` (a number or a list,
    [0.0, 1e-4]: one model per value, 0 the plain model). These defaults are the
    study's own for the ``default`` recipe; under another recipe (``"paper"``)
    every field the file leaves out takes the recipe's value (``l1``: [5e-5]).
``[prediction]``
    ``methods`` (list, all of :data:`~pruning_limit.prediction.METHODS`; ``statdim_exact``
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

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .comparison import compare
from .datasets import load_dataset
from .models import model_spec
from .pipeline import Pipeline
from .prediction import (
    BASELINES,
    METHOD_CRITERIA,
    METHOD_TARGETS,
    METHODS,
    STATDIM_EXACT_LIMIT,
    Prediction,
)
from .serialization import write_json, write_text
from .spectrum import Spectrum
from .study_config import StudyRun, expand_runs, load_config, without_keys
from .training import DTYPES, load_checkpoint, train
from .validation import (
    CRITERIA,
    CRITERION_LABELS,
    TRANSITION_CRITERIA,
    VARIANTS,
    Validation,
    validate,
)

FORMAT_VERSION = 1


# -- the configuration -------------------------------------------------------------------------


# -- the runs ----------------------------------------------------------------------------------


def _intrinsic_x(metadata: dict) -> tuple[float, str]:
    """The knob of intrinsic dimension: latent d, the PCA rank, else the ambient n."""
    if metadata.get("nominal_intrinsic_dimension") is not None:
        return float(metadata["nominal_intrinsic_dimension"]), "latent d"
    rank = metadata["spec"].get("pca_rank")
    if rank is not None:
        return float(rank), "PCA rank"
    return float(metadata["ambient_dimension"]), "PCA rank (full = n)"


def _execute(run: StudyRun, config: dict, run_dir: Path, datasets: dict) -> dict:
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
        training = without_keys(config["training"], "l1")
        spec = model_spec(
            config["model"]["kind"],
            input_dim=dataset.ambient_dimension,
            classes=dataset.num_classes,
            **without_keys(config["model"], "kind"),
        )
        result = train(
            spec, dataset, **training, l1=run.l1, dtype=DTYPES[run.dtype], seed=seed,
            progress=False, out=checkpoint,
        )  # fmt: skip
        model, card = result.model, result.card
    timings["train"] = time.perf_counter() - started

    prediction_config = config["prediction"]
    validation_config = config["validation"]
    pipeline = Pipeline(
        model,
        loss_fn,
        train_pair,
        curvature=prediction_config["curvature"],
        dtype=torch.float64,
        device=config["study"]["device"],
        batch_size=prediction_config["batch_size"],
        exact_limit=prediction_config["exact_limit"],
        policy=prediction_config["policy"],
        damping=prediction_config["damping"],
    )
    dimension = pipeline.dimension

    spectrum_path = run_dir / "spectrum.npz"
    started = time.perf_counter()
    if spectrum_path.is_file():
        spectrum = Spectrum.load(spectrum_path)
    else:
        spectrum = pipeline.spectrum(
            steps=prediction_config["slq_steps"], probes=prediction_config["slq_probes"], seed=seed
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
        prediction = pipeline.predict(
            spectrum,
            epsilon=prediction_config["epsilon"],
            methods=methods,
            sensitivity=prediction_config["sensitivity"],
            statdim_samples=prediction_config["statdim_samples"],
            seed=seed,
            card=card,
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
            refit_curvature = pipeline.quadratic_model() if "refit" in variants else "auto"
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
            dense_limit=prediction_config["exact_limit"],
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
        "regime": prediction.regime,
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
                **{
                    key: value
                    for criterion in TRANSITION_CRITERIA
                    for key, value in (
                        (criterion, result.limit(criterion)),
                        (f"{criterion}_interval", result.interval(criterion)),
                        (f"{criterion}_reason", result.reason(criterion)),
                    )
                },
                "collapse_start": _reading(result, "collapse_start"),
                "collapse_end": _reading(result, "collapse_end"),
                "collapse_width": result.collapse_width,
            }
            for variant, result in validation.variants.items()
        },
        "comparison": comparison.to_dict()["rows"],
        "notes": notes + comparison.notes,
        "seconds": timings,
    }
    return json.loads(json.dumps(row))  # as it reads back from run.json


def _reading(result, name: str) -> float | None:
    return None if result.transition is None else result.transition.limit(name)


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
        ``comparison`` (the rows of :func:`~pruning_limit.comparison.compare`).
    summary
        One dict per (method, variant, criterion) over the runs: mean signed and
        absolute error in percentage points, the share of runs whose actual lies
        inside the predicted interval, and Spearman's rank correlation between
        predicted and actual.
    config
        The configuration with its defaults filled in.
    skipped
        Runs whose results were already there (resumed, not recomputed).

    Example
    -------
    :func:`run_study` fills one; it saves to ``out/study.json`` and loads back:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     result = StudyResult(name="empty", out=folder, rows=[], summary=[], config={})
    ...     loaded = StudyResult.load(result.save())
    ...     written = sorted(path.name for path in Path(folder).iterdir())
    >>> loaded == result, written, loaded.fraction
    (True, ['study.json'], 'removed')
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
        """Write the JSON (default: ``out/study.json``), atomically; under
        ``torch.distributed`` rank 0 alone writes and every rank returns the path."""
        path = Path(self.out) / "study.json" if path is None else Path(path)
        return write_json(path, self.to_json())

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
            f'Criteria, each a reading of "actual" (the accuracy tolerance is '
            f"{self.config['validation']['tolerance']:g} percentage points; "
            f"curvature: {self.config['prediction']['curvature']}):",
            "",
            *(f"- `{name}`: {CRITERION_LABELS[name]}" for name in CRITERIA),
            "- `width`: collapse width, from 10 % to 90 % of the accuracy drop a(0) - a(1)",
            "",
            "`emp` is a baseline: it reads the weights alone (1 - N_eff/N, Effective Model "
            "Pruning), no loss, data or curvature.",
            "",
            "What each predictor predicts (`*` in the summary marks the criterion that is "
            "its own target): "
            + "; ".join(f"`{m}`: {METHOD_TARGETS.get(m, '?')}" for m in methods)
            + ".",
            "",
            "## Runs",
            "",
        ]
        columns = [(v, c) for v in variants for c in (*CRITERIA, "collapse_width")]
        columns = [
            (v, c)
            for v, c in columns
            if any(row["actual"].get(v, {}).get(c) is not None for row in self.rows)
        ]
        names = {"collapse_width": "width"}
        lines += [
            "| run | ID knob | TwoNN | D | test acc | eps | "
            + " | ".join(f"pred {m}" for m in methods)
            + " | "
            + " | ".join(f"{v} {names.get(c, c)}" for v, c in columns)
            + " |",
            "|" + "---|" * (6 + len(methods) + len(columns)),
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
            cells += [_cell(row["actual"].get(v, {}).get(c)) for v, c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines += _collapse_band(self.rows, methods)
        lines += [
            "",
            "## Predictors against each meaning of actual (over all runs)",
            "",
            "Error = predicted - actual in percentage points (positive: the predictor "
            "promised more than pruning delivered). Inside: the actual limit lies in the "
            "predictor's interval. Spearman: rank correlation of predicted and actual "
            "across runs. Runs: those where the criterion has a limit.",
            "",
            "| method | variant | criterion | runs | mean error (pp) | mean abs error (pp) | "
            "inside | Spearman |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entry in self.summary:
            own = METHOD_CRITERIA.get(entry["method"]) == (entry["variant"], entry["criterion"])
            lines.append(
                f"| {entry['method']}{' (baseline)' if entry['method'] in BASELINES else ''} | "
                f"{entry['variant']} | {entry['criterion']}{' *' if own else ''} | "
                f"{entry['runs']} | {entry['mean_error_pp']:+.1f} | "
                f"{entry['mean_abs_error_pp']:.1f} | {entry['inside_fraction']:.0%} | "
                f"{_cell(entry['spearman'], '{:+.2f}')} |"
            )
        lines += _against_baseline(self.summary)
        if self.skipped:
            lines += ["", f"Resumed (already computed): {len(self.skipped)} run(s)."]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return (
            f"StudyResult({self.name!r}, {len(self.rows)} runs, {len(self.skipped)} resumed, "
            f"out={self.out!r})"
        )


def _collapse_band(rows: list, methods: list, variant: str = "one_shot") -> list:
    """Markdown: per run, the one-shot collapse (centre, 10-90 % band) and who lands in it."""
    chosen = [r for r in rows if r["actual"].get(variant, {}).get("collapse") is not None]
    if not chosen:
        return []
    lines = [
        "",
        f"## Where {variant} pruning collapses, and which predictors land there",
        "",
        "Collapse: test accuracy half-way from dense to every weight removed; band: from "
        "10 % to 90 % of that drop. In band: predictors whose p lies inside it; nearest: "
        "the predictor closest to the centre.",
        "",
        "| run | collapse | band | width | in band | nearest (error, pp) |",
        "|---|---|---|---|---|---|",
    ]
    for row in chosen:
        actual = row["actual"][variant]
        centre, low, high = (
            actual["collapse"],
            actual.get("collapse_start"),
            actual.get("collapse_end"),
        )
        predicted = {m: row["predicted"][m]["p"] for m in methods if m in row["predicted"]}
        inside = [
            m for m, p in predicted.items() if low is not None and high is not None
            and low <= p <= high
        ]  # fmt: skip
        nearest = min(predicted, key=lambda m: abs(predicted[m] - centre)) if predicted else None
        lines.append(
            f"| {row['run']} | {centre:.3f} | [{_cell(low)}, {_cell(high)}] | "
            f"{_cell(actual.get('collapse_width'))} | {', '.join(inside) or 'none'} | "
            + (
                "-"
                if nearest is None
                else f"{nearest} ({100 * (predicted[nearest] - centre):+.1f})"
            )
            + " |"
        )
    return lines


def _against_baseline(summary: list, baseline: str = "emp") -> list:
    """Markdown: per (variant, criterion), which predictors beat the baseline, and how."""
    by_key: dict = {}
    for entry in summary:
        by_key.setdefault((entry["variant"], entry["criterion"]), {})[entry["method"]] = entry
    keys = [key for key, entries in by_key.items() if baseline in entries]
    if not keys:
        return []
    lines = [
        "",
        f"## Against the baseline `{baseline}` (weights only, no curvature)",
        "",
        f"A predictor beats `{baseline}` on a criterion when its mean |error| is smaller "
        "and its Spearman larger. Cells: mean |error| (pp) / Spearman.",
        "",
        f"| variant | criterion | {baseline} | beaten by | not beaten by |",
        "|---|---|---|---|---|",
    ]
    for variant, criterion in keys:
        entries = by_key[(variant, criterion)]
        base = entries[baseline]
        beaten, not_beaten = [], []
        for method, entry in entries.items():
            if method == baseline:
                continue
            cell = (
                f"{method} ({entry['mean_abs_error_pp']:.1f} / "
                f"{_cell(entry['spearman'], '{:+.2f}')})"
            )
            wins = entry["mean_abs_error_pp"] < base["mean_abs_error_pp"] and (
                entry["spearman"] is not None
                and (base["spearman"] is None or entry["spearman"] > base["spearman"])
            )
            (beaten if wins else not_beaten).append(cell)
        lines.append(
            f"| {variant} | {criterion} | {base['mean_abs_error_pp']:.1f} / "
            f"{_cell(base['spearman'], '{:+.2f}')} | {', '.join(beaten) or '-'} | "
            f"{', '.join(not_beaten) or '-'} |"
        )
    return lines


def _ordered(names: set, order: tuple) -> list:
    return [name for name in order if name in names]


def _cell(value, pattern: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)


def _summarise(rows: list) -> list:
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

    Example
    -------
    >>> import tempfile
    >>> config = {
    ...     "model": {"kind": "mlp", "hidden": [4]},
    ...     "training": {"epochs": 2, "l1": 0.0},
    ...     "prediction": {"methods": ["paper", "trace_bound"], "sensitivity": False,
    ...                    "batch_size": 16},
    ...     "validation": {"variants": ["one_shot"], "amounts": [0.0, 0.5, 0.9],
    ...                    "resolution": 0.1},
    ...     "datasets": [{"name": "manifold", "d": 2, "n": 4, "n_train": 64, "n_test": 32}],
    ... }
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     result = run_study(config, out=folder)
    >>> len(result.rows), result.rows[0]["curvature"]
    (1, 'ggn')
    """
    config = load_config(config)
    out = Path(config["study"]["out"] if out is None else out)
    config["study"]["out"] = str(out)
    runs = expand_runs(config)
    datasets = _load_datasets(runs)  # every run's data checked before any run starts
    out.mkdir(parents=True, exist_ok=True)
    threads = config["study"]["threads"]
    if threads > 0:
        from threadpoolctl import threadpool_limits

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with threadpool_limits(limits=threads):
                return _run_all(config, runs, out, log, datasets)
        finally:
            torch.set_num_threads(previous)
    return _run_all(config, runs, out, log, datasets)


def _load_datasets(runs: list) -> dict:
    """Every distinct dataset of the study, loaded once: a bad entry (``d = -3``, an
    unknown name) is refused before the first run, and before anything is written."""
    datasets: dict = {}
    for run in runs:
        key = json.dumps(run.dataset, sort_keys=True)
        if key not in datasets:
            try:
                datasets[key] = load_dataset(**run.dataset)
            except (TypeError, ValueError) as error:
                raise ValueError(f"[[datasets]] of run {run.name}: {error}") from error
    return datasets


def _run_all(config: dict, runs: list, out: Path, log, datasets: dict) -> StudyResult:
    from . import plots

    log = log or (lambda line: None)
    started = time.perf_counter()
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
        write_text(config_path, json.dumps(own_config, indent=2) + "\n")
        run_started = time.perf_counter()
        row = _execute(run, config, run_dir, datasets)
        row["seconds"]["total"] = time.perf_counter() - run_started
        write_json(record_path, json.dumps(row, indent=2) + "\n")
        rows.append(row)
        log(_run_line(index, len(runs), row))

    result = StudyResult(
        name=config["study"]["name"],
        out=str(out),
        rows=rows,
        summary=_summarise(rows),
        config=config,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        version=__version__,
    )
    result.save()
    write_text(out / "study.md", result.to_markdown())
    plots.plot_study(result, out / "study.png")
    return result


def _run_config(run: StudyRun, config: dict) -> dict:
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
                "training": without_keys(config["training"], "l1"),
                "prediction": config["prediction"],
                "validation": config["validation"],
            }
        )
    )


def _run_line(index: int, total: int, row: dict) -> str:
    predicted = ", ".join(f"{m} {v['p']:.3f}" for m, v in row["predicted"].items())
    actual = ", ".join(
        f"{v} {_cell(a['accuracy'])}/{_cell(a['loss_budget'])}/{_cell(a.get('collapse'))}"
        for v, a in row["actual"].items()
    )
    return (
        f"[{index}/{total}] {row['run']}: D={row['dimension']}, "
        f"{row['seconds']['total']:.1f} s; predicted {predicted}; actual "
        f"(accuracy onset/loss-budget onset/collapse centre) {actual}"
    )
