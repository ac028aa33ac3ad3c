"""Predicted vs actual pruning limits across data of varying intrinsic dimension.

Runs a study (:func:`pruning_limit.run_study`) once with float32 and once with
float64 training: for every dataset of the configuration (hidden-manifold data with
latent d in {2, 4, 8, 16, 32}; digits and MNIST-1D at several PCA ranks) and every L1
strength, train an MLP, predict the limit with every method (GGN curvature, exact
spectrum), prune for real with every meaning of "actual" (one-shot, quadratic refit,
short fine-tune) and compare. p is the fraction of prunable weights REMOVED
(``amount`` in torch.nn.utils.prune); kept = 1 - p.

Writes ``benchmarks/results/prediction_vs_actual-DEVICE.json`` (every run's predicted
and actual limits and the per-predictor summary, with machine and versions),
``prediction_vs_actual-DEVICE.md`` (the tables) and
``prediction_vs_actual-DEVICE-DTYPE.png`` (predicted vs actual vs intrinsic
dimension). A full run with the default configuration also writes
``measured_errors.json`` there: each predictor's mean error against actual pruning.
The package ships these figures in ``pruning_limit/data/measured_errors.json`` (every
printed Prediction quotes them); this script never touches the package unless asked
to, separately, with ``--update-package-data``, which copies the figures of the last
full run from the results folder into the package without running anything. The run
folders (checkpoints, spectra, predictions, validations, plots) go to ``--out``
(default ``runs/prediction_vs_actual``; a temporary folder with ``--quick``); an
interrupted run resumes there.

How it was run (results in ``benchmarks/results/``)::

    python benchmarks/prediction_vs_actual.py            # 2-core shared CPU, 1 thread
    python benchmarks/prediction_vs_actual.py --quick    # the test: a few tiny runs
    python benchmarks/prediction_vs_actual.py --update-package-data   # ship the figures

The default configuration is ``benchmarks/configs/prediction_vs_actual.toml``
(``--quick``: ``prediction_vs_actual-quick.toml``); ``--config`` takes any study
configuration, whose ``dtypes``, ``out``, ``device`` and ``threads`` this script sets.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import common

from pruning_limit import plots
from pruning_limit.prediction import DEFAULT_METHODS
from pruning_limit.serialization import write_json
from pruning_limit.study import run_study
from pruning_limit.study_config import load_config

NAME = "prediction_vs_actual"
# The actual limits the package's error figures are measured against.
MEASURED_AGAINST = (
    ("one_shot", "accuracy"),
    ("one_shot", "collapse"),
    ("refit", "loss_budget"),
    ("finetune", "loss_budget"),
)
CONFIGS = Path(__file__).resolve().parent / "configs"
REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE_ERRORS = REPOSITORY / "pruning_limit" / "data" / "measured_errors.json"
ERRORS_FILE = "measured_errors.json"
DTYPES = ("float32", "float64")
ROW_KEYS = (
    "run", "dataset", "knob", "intrinsic_dimension", "intrinsic_dimension_estimates",
    "regularisation", "dtype", "dimension", "dense", "epsilon", "epsilon_source", "regime",
    "curvature", "spectrum_method", "refit_curvature", "predicted", "actual", "notes", "seconds",
)  # fmt: skip


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--config", type=Path, default=None, help="a study TOML file")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"run folders (default: {REPOSITORY / 'runs' / NAME}; --quick: a temporary one)",
    )
    parser.add_argument(
        "--update-package-data",
        action="store_true",
        help=f"copy RESULTS_DIR/{ERRORS_FILE} (from the last full run) to {PACKAGE_ERRORS} "
        "and exit",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=DTYPES,
        default=list(DTYPES),
        help="training dtypes to run (default: both)",
    )
    args = parser.parse_args()
    if args.update_package_data:
        update_package_data(Path(args.results_dir))
        return
    device = common.configure(args)
    path = args.config or CONFIGS / (f"{NAME}-quick.toml" if args.quick else f"{NAME}.toml")
    config = load_config(path)
    config["study"]["device"] = device.type
    config["study"]["threads"] = max(args.threads, 0)

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or (Path(scratch) if args.quick else REPOSITORY / "runs" / NAME)
        studies, seconds = {}, {}
        for dtype in args.dtypes:
            config["study"]["dtypes"] = [dtype]
            print(f"\n{NAME}: {path.name}, training dtype {dtype}", flush=True)
            started = time.perf_counter()
            studies[dtype] = run_study(config, out=out / dtype, log=_log)
            seconds[dtype] = time.perf_counter() - started

        for dtype, study in studies.items():
            common.print_table(
                f"{dtype}: predictor vs actual over {len(study.rows)} runs "
                "(error = predicted - actual, percentage points)",
                ["method", "variant", "criterion", "mean error", "mean |error|", "inside",
                 "Spearman"],
                [
                    [s["method"], s["variant"], s["criterion"], s["mean_error_pp"],
                     s["mean_abs_error_pp"], s["inside_fraction"], s["spearman"]]
                    for s in study.summary
                ],
            )  # fmt: skip

        directory = Path(args.results_dir)
        directory.mkdir(parents=True, exist_ok=True)
        body = {
            "config_file": str(path.relative_to(REPOSITORY) if path.is_relative_to(REPOSITORY)
                               else path),
            "config": {k: v for k, v in config.items() if k != "study"}
            | {"study": {k: v for k, v in config["study"].items() if k not in ("out", "dtypes")}},
            "fraction": "removed",
            "studies": {
                dtype: {
                    "seconds": seconds[dtype],
                    "resumed_runs": study.skipped,
                    "summary": study.summary,
                    "runs": [{key: row.get(key) for key in ROW_KEYS} for row in study.rows],
                }
                for dtype, study in studies.items()
            },
        }  # fmt: skip
        result_path = common.write_result(NAME, args, device, body)
        markdown = directory / f"{NAME}-{device.type}.md"
        markdown.write_text(
            "\n".join(
                f"<!-- {dtype} training: {len(study.rows)} runs, {seconds[dtype]:.0f} s -->\n"
                + study.to_markdown().replace("# Study", f"# {dtype} training: study", 1)
                for dtype, study in studies.items()
            )
        )
        figures = [
            plots.plot_study(study, directory / f"{NAME}-{device.type}-{dtype}.png")
            for dtype, study in studies.items()
        ]
    print(f"\nwrote {result_path}, {markdown}, " + ", ".join(str(f) for f in figures))
    if not args.quick and args.config is None:
        errors = write_measured_errors(json.loads(result_path.read_text()), directory)
        print(f"wrote {errors}; ship it with --update-package-data")


def update_package_data(directory: Path) -> None:
    """Copy the measured errors of the last full run into the package (nothing is run)."""
    source = directory / ERRORS_FILE
    if not source.is_file():
        raise SystemExit(f"no {source}: run `python benchmarks/{NAME}.py` (full) first")
    content = json.loads(source.read_text())
    write_json(PACKAGE_ERRORS, json.dumps(content, indent=2) + "\n")
    print(f"wrote {PACKAGE_ERRORS} from {source}")


def write_measured_errors(record: dict, directory: Path) -> Path:
    """The package's measured errors: mean (predicted - actual) per predictor, over every run.

    From a result record of this script, pooled over the training dtypes run,
    against the actual limits a reader is most likely to compare with: one-shot
    pruning's accuracy limit (the onset) and collapse centre, and the re-fitted and
    fine-tuned networks' loss-budget limits.
    """
    runs = [row for study in record["studies"].values() for row in study["runs"]]
    methods = [m for m in DEFAULT_METHODS if all(m in row["predicted"] for row in runs)]
    errors = {}
    for method in methods:
        errors[method] = {}
        for variant, criterion in MEASURED_AGAINST:
            differences = [
                100.0 * (row["predicted"][method]["p"] - row["actual"][variant][criterion])
                for row in runs
                if row["actual"].get(variant, {}).get(criterion) is not None
            ]
            if not differences:
                raise ValueError(f"no run has a {variant} {criterion} limit to measure against")
            errors[method][f"{variant}/{criterion}"] = {
                "runs": len(differences),
                "mean_error_pp": sum(differences) / len(differences),
                "mean_abs_error_pp": sum(abs(d) for d in differences) / len(differences),
            }
    content = {
        "source": f"benchmarks/{NAME}.py, {record['date'][:10]}",
        "command": record["command"],
        "package": record["versions"].get("pruning-limit"),
        "git_commit": record["versions"].get("git_commit"),
        "runs": len(runs),
        "setting": (
            "one-hidden-layer MLPs (D = 816 to 1,776) trained plain and with L1 on manifold "
            "data (d = 2..32), digits and MNIST-1D at several PCA ranks, float32 and float64; "
            "exact GGN spectra; eps = batch_std"
        ).replace("float32 and float64", " and ".join(record["studies"])),
        "error": "predicted - actual, percentage points of the fraction removed",
        "methods": errors,
    }
    return write_json(directory / ERRORS_FILE, json.dumps(content, indent=2) + "\n")


def _log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    main()
