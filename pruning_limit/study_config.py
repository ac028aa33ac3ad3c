"""The study's configuration: defaults, schema, checks and the expansion into runs."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path

from .batches import DEFAULT_BATCH_SIZE
from .budget import BATCH_STD, check_epsilon
from .curvature import CURVATURES, DEFAULT_CURVATURE, EXACT_LIMIT
from .models import model_spec
from .prediction import METHODS
from .statdim import POLICIES
from .training import DTYPES, RECIPES
from .validation import VALIDATION_CURVATURES, VARIANTS

FULL_RANK = "full"
# "prediction": the prediction's own quadratic model; else as validate's curvature=.
REFIT_CURVATURES = ("prediction", *VALIDATION_CURVATURES)


DEFAULTS: dict = {
    "study": {"name": "study", "out": "runs/study", "seed": 0, "dtypes": ["float32"],
              "device": "cpu", "threads": 0},
    "model": {"kind": "mlp", "hidden": [32]},
    "training": {"recipe": "default", "epochs": 50, "steps": None, "lr": 3e-3,
                 "batch_size": 128, "optimizer": "adam", "momentum": 0.9,
                 "weight_decay": 0.0, "l1_biases": False, "warmup_steps": 0,
                 "init": "default", "target_train_loss": None, "l1": [0.0, 1e-4]},
    "prediction": {"methods": list(METHODS), "curvature": DEFAULT_CURVATURE, "policy": "abs",
                   "epsilon": BATCH_STD, "batch_size": DEFAULT_BATCH_SIZE,
                   "exact_limit": EXACT_LIMIT, "slq_steps": 100, "slq_probes": 10,
                   "damping": 0.0, "sensitivity": True, "statdim_samples": 400},
    "validation": {"variants": list(VARIANTS), "tolerance": 0.5, "resolution": 0.005,
                   "amounts": None, "confidence": 0.95, "refit_curvature": "auto",
                   "finetune": {"epochs": 3, "lr": 1e-3, "batch_size": 128}},
}  # fmt: skip


# Keys whose default is None, or that take more than one type: what they accept.
_ACCEPTS = {
    ("training", "target_train_loss"): (int, float),
    ("training", "steps"): (int,),
    ("training", "l1"): (int, float, list),
    ("prediction", "epsilon"): (str, int, float),
    ("validation", "amounts"): (list,),
}


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

    Example
    -------
    >>> config = load_config({"datasets": [{"name": "manifold", "d": [2, 8]}]})
    >>> config["prediction"]["curvature"], config["prediction"]["exact_limit"]
    ('ggn', 3000)
    >>> [run.name for run in expand_runs(config)][:2]
    ['manifold-d2-plain-float32', 'manifold-d2-l1_0.0001-float32']
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
        if section == "training":
            result[section] = _recipe_fields(result[section], given, source)
    result["datasets"] = _datasets_section(raw.get("datasets"), source)
    return result


def _recipe_fields(training: dict, given: dict, source: str) -> dict:
    """The study's training defaults apply to the ``default`` recipe only: under any other
    recipe every field the file leaves out is None, so that ``train`` takes the recipe's
    value (``l1``: the recipe's strength), never the study's Adam defaults. A file that
    gives ``steps`` and not ``epochs`` runs for ``steps``."""
    recipe = training["recipe"]
    if recipe not in RECIPES:
        raise ValueError(
            f"{source}: [training] recipe must be one of {', '.join(RECIPES)}, got {recipe!r}"
        )
    if recipe != "default":
        for key in training:
            if key not in given and key not in ("recipe", "target_train_loss", "l1"):
                training[key] = None
        if "l1" not in given:
            training["l1"] = [RECIPES[recipe]["l1"]]
    if "steps" in given and "epochs" not in given:
        training["epochs"] = None
    if training["steps"] is not None and training["epochs"] is not None:
        raise ValueError(f"{source}: [training] give epochs or steps, not both")
    return training


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
        try:
            check_epsilon(merged["epsilon"])
        except ValueError:
            raise ValueError(
                f"{source}: [prediction] epsilon must be 'batch_std', 'reference' or a number > 0, "
                f"got "
                f"{merged['epsilon']!r}"
            ) from None
        if merged["curvature"] not in CURVATURES:
            raise ValueError(
                f"{source}: [prediction] curvature must be one of {', '.join(CURVATURES)}, got "
                f"{merged['curvature']!r}"
            )
        if merged["policy"] not in POLICIES:
            raise ValueError(
                f"{source}: [prediction] policy must be one of {', '.join(POLICIES)}, got "
                f"{merged['policy']!r}"
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
        if merged["refit_curvature"] not in REFIT_CURVATURES:
            raise ValueError(
                f"{source}: [validation] refit_curvature must be one of "
                f"{', '.join(REFIT_CURVATURES)}, got {merged['refit_curvature']!r}"
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
        model_spec(merged["kind"], input_dim=2, classes=2, **without_keys(merged, "kind"))
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


def without_keys(mapping: dict, *keys) -> dict:
    """A copy of ``mapping`` without ``keys`` (the top level only).

    >>> without_keys({"kind": "mlp", "hidden": [32]}, "kind")
    {'hidden': [32]}
    """
    return {k: v for k, v in mapping.items() if k not in keys}


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: a dataset, an L1 strength and a dtype (see :func:`expand_runs`).

    >>> run = StudyRun("manifold-d2-l1_0.001-float32", {"name": "manifold", "d": 2},
    ...                {"d": 2}, l1=0.001, dtype="float32")
    >>> run.regularisation, StudyRun("r", {}, {}, 0.0, "float64").regularisation
    ('l1=0.001', 'plain')
    """

    name: str
    dataset: dict  # load_dataset arguments
    knob: dict  # the varied dataset arguments, as given
    l1: float
    dtype: str

    @property
    def regularisation(self) -> str:
        return "plain" if self.l1 == 0 else f"l1={self.l1:g}"


def expand_runs(config: dict) -> list[StudyRun]:
    """Every run of a checked configuration (:func:`load_config`): each dataset table
    once per combination of its list-valued arguments, times each L1 strength and dtype.

    >>> config = load_config({"datasets": [{"name": "manifold", "d": [2, 8], "n": 16}],
    ...                       "training": {"l1": [0.0, 1e-3]}})
    >>> [run.name for run in expand_runs(config)]   # doctest: +NORMALIZE_WHITESPACE
    ['manifold-d2-plain-float32', 'manifold-d2-l1_0.001-float32',
     'manifold-d8-plain-float32', 'manifold-d8-l1_0.001-float32']
    >>> expand_runs(config)[1].dataset, expand_runs(config)[1].knob
    ({'name': 'manifold', 'd': 2, 'n': 16}, {'d': 2})
    """
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
                    name = f"{label}-{regularisation}-{dtype}"
                    runs.append(StudyRun(name, arguments, knob, float(l1), dtype))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the configuration makes runs with the same name twice: {duplicated}")
    return runs
