"""More networks for the calibration set: the study again, with other seeds, float64 only.

The calibrated intervals (:mod:`pruning_limit.calibration`) are conformal per regime;
at nominal 90 % the default rule (a ridge regression on the regime features,
jackknife-minmax) is used from 19 independent networks per regime on, the symmetric
split-conformal rule from 9. The study of ``benchmarks/prediction_vs_actual.py`` gives
6, 6 and 10 (its float32 and float64 runs are the same networks). This script runs a
study (``--config``; default ``configs/calibration_runs.toml``, one-shot validation
only; ``configs/calibration_variants.toml`` adds refit and fine-tune) once per seed,
each seed setting the training seed *and* every dataset's seed (new data, new
initialisation), in float64 only, and records for every run what the calibration set
reads:

- the row of the study (predicted and actual limits, dense metrics, eps and its
  source, curvature), renamed ``NAME-seedS-float64`` so that no two seeds share a
  calibration unit;
- ``regime``: :func:`pruning_limit.regime.measure_regime` at ``paper``'s p*, with the
  model card of the checkpoint;
- the one-shot ``collapse``, ``loss_collapse`` and ``above_dense`` read from a sweep on
  a 0.001 grid (:func:`calibration_set.sweep_limits`), where the row lacks them.

The result file (``results/CONFIG_STEM-DEVICE.json``; run folders under
``runs/CONFIG_STEM``) is rewritten after every seed (an interrupted run resumes from its
run folders), so that a partial result is usable; ``--collect`` writes it from whatever
runs finished (a seed cut short by a time limit contributes the runs it finished)::

    nohup timeout 1800 python benchmarks/calibration_runs.py --seeds 1 2 3 > runs.log &
    python benchmarks/calibration_runs.py --seeds 1 2 3 --collect
    python benchmarks/calibration_set.py benchmarks/results/prediction_vs_actual-cpu.json \
        benchmarks/results/calibration_runs-cpu.json

It never touches the package's calibration set: ``calibration_set.py`` does, by hand.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import calibration_set
import common
from torch import nn

from pruning_limit.datasets import load_dataset
from pruning_limit.regime import measure_regime
from pruning_limit.study import run_study
from pruning_limit.study_config import load_config
from pruning_limit.training import load_checkpoint

NAME = "calibration_runs"
CONFIGS = Path(__file__).resolve().parent / "configs"
REPOSITORY = Path(__file__).resolve().parent.parent
DTYPE = "float64"
ROW_KEYS = (
    "run", "seed", "dataset", "dataset_arguments", "knob", "intrinsic_dimension",
    "regularisation", "l1", "dtype", "dimension", "dense", "epsilon", "epsilon_source",
    "curvature", "spectrum_method", "predicted", "actual", "regime", "notes", "seconds",
)  # fmt: skip


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--config", type=Path, default=CONFIGS / f"{NAME}.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--out", type=Path, help="run folders (resumable; default runs/CONFIG_STEM)"
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: write the result from the runs finished in --out (a seed cut "
        "short by a time limit contributes the runs it finished)",
    )
    args = parser.parse_args()
    device = common.configure(args)
    name = args.config.stem  # the result file and run folders are named by the config
    out = args.out or REPOSITORY / "runs" / name
    studies = {}
    for seed in args.seeds:
        config = seeded_config(args.config, seed, device.type, args.threads)
        folder = out / f"seed{seed}"
        started = time.perf_counter()
        if args.collect:
            found = sorted(folder.glob("*/run.json"))
            rows, resumed = [json.loads(path.read_text()) for path in found], []
            print(f"{name}: seed {seed}: {len(rows)} finished runs in {folder}", flush=True)
        else:
            print(f"\n{name}: {args.config.name}, seed {seed}, {DTYPE}", flush=True)
            study = run_study(config, out=folder, log=_log)
            rows, resumed = study.rows, study.skipped
        if not rows:
            continue
        studies[f"seed{seed}-{DTYPE}"] = {
            "seed": seed,
            "seconds": time.perf_counter() - started,
            "resumed_runs": resumed,
            "runs": [calibration_row(row, seed, folder / row["run"]) for row in rows],
        }
        body = {
            "config_file": _relative(args.config),
            "config": {k: v for k, v in config.items() if k != "study"}
            | {"study": {k: v for k, v in config["study"].items() if k not in ("out", "dtypes")}},
            "fraction": "removed",
            "seeds": args.seeds,
            "studies": studies,
        }
        path = common.write_result(name, args, device, body)
        print(f"wrote {path} ({sum(len(s['runs']) for s in studies.values())} runs)", flush=True)


def seeded_config(path: Path, seed: int, device: str, threads: int) -> dict:
    """The configuration at ``path`` with the study's and every dataset's seed set."""
    config = load_config(path)
    config["study"].update(seed=seed, dtypes=[DTYPE], device=device, threads=max(threads, 0))
    for entry in config["datasets"]:
        entry["seed"] = seed
    return config


def calibration_row(row: dict, seed: int, run_dir: Path) -> dict:
    """The study row with its seed, the regime and the one-shot sweep criteria."""
    model, card = load_checkpoint(run_dir / "checkpoint")
    dataset = load_dataset(**row["dataset_arguments"])
    dtype = next(model.parameters()).dtype
    train_pair = (dataset.X_train.to(dtype), dataset.y_train)
    test_pair = (dataset.X_test.to(dtype), dataset.y_test)
    loss_fn = nn.CrossEntropyLoss()
    if row.get("regime") is None:
        row["regime"] = measure_regime(
            model, loss_fn, train_pair,
            removal_fraction=row["predicted"][calibration_set.REGIME_METHOD]["p"],
            removal_fraction_method=calibration_set.REGIME_METHOD,
            card=card, curvature=row["curvature"], epsilon_source=row["epsilon_source"],
        ).to_dict()  # fmt: skip
    one_shot = row["actual"]["one_shot"]
    if any(one_shot.get(c) is None for c in calibration_set.SWEEP_CRITERIA):
        limits = calibration_set.sweep_limits(model, loss_fn, train_pair, test_pair)
        for criterion in calibration_set.SWEEP_CRITERIA:
            if one_shot.get(criterion) is None:
                one_shot[criterion] = limits[criterion]
    base = row["run"].removesuffix(f"-{DTYPE}")
    row = dict(row, run=f"{base}-seed{seed}-{DTYPE}", seed=seed)
    return {key: row.get(key) for key in ROW_KEYS}


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPOSITORY)) if path.is_relative_to(REPOSITORY) else str(path)


def _log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    main()
