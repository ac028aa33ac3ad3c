"""Build the calibration set the package's calibrated intervals are computed from.

Reads result files of ``benchmarks/prediction_vs_actual.py`` (or any study benchmark
with the same run rows) and writes ``pruning_limit/data/calibration.json``: for every
run, its regime (:class:`pruning_limit.regime.Regime`), every method's predicted limit
and every actual limit (variant -> criterion), with the provenance of the source file
and of this build. p is the fraction of prunable weights REMOVED.

A benchmark never rewrites the calibration set: this script is the only writer, run
by hand after a benchmark result has been reviewed::

    python benchmarks/calibration_set.py --rebuild      # the shipped provisional set
    python benchmarks/calibration_set.py SOURCE.json ... --out FILE
    python benchmarks/calibration_set.py --table        # leave-one-out table of the shipped set
    python benchmarks/calibration_set.py --held-out NEW.json   # its intervals on new networks

A source may also be an earlier calibration set (its runs are taken as they are, with
their provenance), so that new results are added without retraining the old runs; the
shipped set of 2026-12-02 is the provisional set plus the float64 networks of
``benchmarks/calibration_runs.py`` (new seeds of the study: each its own unit)::

    python benchmarks/calibration_set.py pruning_limit/data/calibration.json \
        benchmarks/results/calibration_runs-cpu.json

Where a run row already holds ``regime`` (and the sweep-based criteria in ``actual``),
they are read as they are. Result files written before the regime was recorded lack
them; with ``--rebuild`` each such run is trained again from the recorded
configuration (training is bit-reproducible on the CPU from its seed), the dense
train loss is checked against the recorded one (relative difference <= 1e-6, else the
run is left out with a note), and then:

- the regime is measured at the recorded p* of ``paper`` (the first default method);
- the one-shot criteria that need the whole curve, where the row lacks them, are read
  from a one-shot sweep on a uniform grid of step 0.001 (test accuracy and train loss
  at each p):

  ``collapse``      the first p at which test accuracy falls below half-way between
                    the dense accuracy and that at p = 1, linearly interpolated
                    between the grid points around the crossing (issue 11's centre);
  ``loss_collapse`` the same for log train loss rising half-way from log L(w*) to
                    log L(p = 1);
  ``above_dense``   the largest grid p whose test accuracy is strictly above the dense
                    accuracy (the reference code's rule), absent when none is.

The refit and fine-tune variants keep only the criteria their rows hold (``accuracy``
and ``loss_budget``): re-sweeping them would need the re-fit and the fine-tuning again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning_limit.calibration import (
    FORMAT,
    POOLED,
    RULES,
    CalibrationRun,
    CalibrationSet,
    leave_one_out_markdown,
)
from pruning_limit.datasets import load_dataset
from pruning_limit.models import model_spec
from pruning_limit.pruning import pruned
from pruning_limit.regime import Regime, measure_regime
from pruning_limit.study_config import expand_runs, without_keys
from pruning_limit.training import DTYPES, evaluate, train

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPOSITORY / "benchmarks" / "results" / "prediction_vs_actual-cpu.json"
DEFAULT_OUT = REPOSITORY / "pruning_limit" / "data" / "calibration.json"
REGIME_METHOD = "paper"
GRID_STEP = 0.001
REPRODUCTION_TOLERANCE = 1e-6
CRITERIA = {
    "accuracy": "onset: largest p whose test accuracy stays within the tolerance (0.5 "
    "points) of the dense accuracy (the study's validator)",
    "loss_budget": "onset: largest p whose train loss stays <= L(w*) + eps (the study's validator)",
    "collapse": "one_shot only: first p with test accuracy below half-way between the dense "
    "accuracy and that at p = 1, linear between points of a 0.001 grid "
    "(benchmarks/calibration_set.py)",
    "loss_collapse": "one_shot only: first p with log train loss above half-way between "
    "log L(w*) and log L(p = 1), linear between points of a 0.001 grid "
    "(benchmarks/calibration_set.py)",
    "above_dense": "one_shot only: largest p on a 0.001 grid with test accuracy strictly "
    "above the dense accuracy (benchmarks/calibration_set.py)",
}
SWEEP_CRITERIA = ("collapse", "loss_collapse", "above_dense")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="*", type=Path, default=[DEFAULT_SOURCE])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="retrain runs whose rows lack the regime or the sweep criteria (see above)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the leave-one-out coverage and width of the set at --out; build nothing",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="take only the studies of these seeds from result files of calibration_runs.py "
        "(e.g. a held-out set)",
    )
    parser.add_argument("--coverage", type=float, default=0.9, help="nominal, for --table")
    parser.add_argument(
        "--rule",
        default="auto",
        choices=RULES,
        help="the conformal rule for --table and --held-out (default: the package's auto)",
    )
    parser.add_argument(
        "--held-out",
        type=Path,
        metavar="SET",
        help="print the coverage and width of the set at --out's intervals on the networks "
        "of the calibration set SET (built from runs the set at --out does not hold); "
        "build nothing",
    )
    args = parser.parse_args()
    if args.held_out:
        calibration, networks = CalibrationSet.load(args.out), CalibrationSet.load(args.held_out)
        shared = {run.group for run in calibration.runs} & {run.group for run in networks.runs}
        if shared:
            parser.error(f"{len(shared)} network(s) are in both sets, e.g. {sorted(shared)[0]}")
        rows = calibration.held_out_table(networks, args.coverage, args.rule, pooled=True)
        print(
            f"\n### Held out: intervals of {_relative(args.out)} on the "
            f"{len({run.group for run in networks.runs})} networks of {_relative(args.held_out)},"
            f" nominal {args.coverage:.0%}, rule {args.rule}\n"
        )
        print(summary_markdown(rows) + "\n")
        print(leave_one_out_markdown(rows).replace("LOO coverage", "coverage"))
        return
    if args.table:
        calibration = CalibrationSet.load(args.out)
        for check_range in (True, False):
            rows = calibration.leave_one_out_table(
                args.coverage, args.rule, check_range=check_range, pooled=True
            )
            print(
                f"\n### Leave-one-out at nominal {args.coverage:.0%}, rule {args.rule}, "
                + ("with" if check_range else "without")
                + " the range check\n"
            )
            print(summary_markdown(rows) + "\n")
            print(leave_one_out_markdown(rows))
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs, sources, notes = [], {}, []
    for path in args.sources:
        record = json.loads(Path(path).read_text())
        key = _relative(path)
        if record.get("format") == FORMAT:  # an earlier calibration set: its runs as they are
            earlier = CalibrationSet.from_dict(record)
            sources.update(earlier.provenance.get("sources", {}))
            notes += earlier.provenance.get("notes", [])
            runs += earlier.runs
            continue
        sources[key] = {
            "file": key,
            "benchmark": record.get("benchmark"),
            "date": record.get("date"),
            "command": record.get("command"),
            "git_commit": record.get("versions", {}).get("git_commit"),
            "config_file": record.get("config_file"),
        }
        built, skipped = runs_of(record, key, rebuild=args.rebuild, seeds=args.seeds)
        runs += built
        notes += skipped
    calibration = CalibrationSet(
        runs=runs,
        provenance={
            "sources": sources,
            "built": {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": shlex.join([Path(sys.executable).name, *sys.argv]),
                "git_commit": _git_commit(),
                "seconds": round(time.perf_counter() - started, 1),
                "regime_removal_fraction_method": REGIME_METHOD,
            },
            "notes": notes,
        },
        criteria={name: CRITERIA[name] for name in CRITERIA},
    )
    # The leave-one-out rows with the range check travel with the set (a printed
    # Prediction quotes them; computing them takes minutes on the shipped set).
    calibration.leave_one_out_table(0.9, pooled=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    calibration.save(args.out)
    assert calibration.to_dict()["format"] == FORMAT
    print(f"wrote {args.out}: {len(runs)} runs from {len(sources)} file(s)")
    for note in notes:
        print("note:", note)


def summary_markdown(rows: list[dict]) -> str:
    """Coverage and mean width per variant and criterion, pooled over the methods and
    regime classes of ``rows`` (the per-class rows only, each answered unit once)."""
    pooled: dict[tuple[str, str], list] = {}
    for row in rows:
        if row["regime"] == POOLED or not row["answered"]:
            continue
        entry = pooled.setdefault((row["variant"], row["criterion"]), [0.0, 0, 0.0])
        entry[0] += row["coverage"] * row["answered"]
        entry[1] += row["answered"]
        entry[2] += row["mean_width"] * row["answered"]
    lines = [
        "| variant | criterion | intervals (methods x networks) | coverage | mean width (points) |",
        "|---|---|---|---|---|",
    ]
    for (variant, criterion), (covered, answered, width) in sorted(pooled.items()):
        lines.append(
            f"| {variant} | {criterion} | {answered} | {100 * covered / answered:.1f} % "
            f"| {100 * width / answered:.1f} |"
        )
    covered = sum(entry[0] for entry in pooled.values())
    answered = sum(entry[1] for entry in pooled.values())
    if answered:
        lines.append(f"| all | all | {answered} | {100 * covered / answered:.1f} % | |")
    return "\n".join(lines)


def runs_of(
    record: dict, source: str, rebuild: bool, seeds: Iterable[int] | None = None
) -> tuple[list[CalibrationRun], list[str]]:
    """The calibration runs of one result record (of its studies of ``seeds`` only, when
    given: ``calibration_runs.py`` records one study per seed), and notes on the runs
    left out."""
    config = json.loads(json.dumps(record["config"]))
    config["study"]["dtypes"] = sorted(DTYPES)
    planned = {run.name: run for run in expand_runs(config)}
    datasets: dict = {}
    runs, notes = [], []
    for study in record["studies"].values():
        if seeds is not None and study.get("seed") not in set(seeds):
            continue
        for row in study["runs"]:
            actual = {
                variant: {
                    criterion: value  # limits only: not their intervals, nor the
                    for criterion, value in values.items()  # reasons a limit is None
                    if value is None or isinstance(value, (int, float))
                }
                for variant, values in row["actual"].items()
            }
            regime = row.get("regime")
            missing = [c for c in SWEEP_CRITERIA if c not in actual.get("one_shot", {})]
            if regime is None or missing:
                if not rebuild:
                    raise SystemExit(
                        f"{source}: run {row['run']} lacks the regime or {missing}; pass "
                        "--rebuild to retrain it from the recorded configuration"
                    )
                measured = _rebuild(row, planned[row["run"]], config, datasets)
                if isinstance(measured, str):
                    notes.append(measured)
                    continue
                sweep_regime, sweep_limits = measured
                regime = regime or sweep_regime.to_dict()
                for criterion in missing:
                    actual.setdefault("one_shot", {})[criterion] = sweep_limits[criterion]
            suffix = f"-{row['dtype']}"
            runs.append(
                CalibrationRun(
                    run=row["run"],
                    group=row["run"][: -len(suffix)] if row["run"].endswith(suffix) else row["run"],
                    regime=Regime.from_dict(regime),
                    predicted={m: v["p"] for m, v in row["predicted"].items()},
                    actual=actual,
                    source=source,
                )
            )
    return runs, notes


def _rebuild(row: dict, run, config: dict, datasets: dict):
    """Retrain one run; its regime and sweep limits, or a note why it was left out."""
    key = json.dumps(run.dataset, sort_keys=True)
    if key not in datasets:
        datasets[key] = load_dataset(**run.dataset)
    dataset = datasets[key]
    spec = model_spec(
        config["model"]["kind"],
        input_dim=dataset.ambient_dimension,
        classes=dataset.num_classes,
        **without_keys(config["model"], "kind"),
    )
    result = train(
        spec, dataset, **without_keys(config["training"], "l1"), l1=run.l1,
        dtype=DTYPES[run.dtype], seed=config["study"]["seed"], progress=False,
    )  # fmt: skip
    model, loss_fn = result.model, nn.CrossEntropyLoss()
    train_pair = (dataset.X_train.to(DTYPES[run.dtype]), dataset.y_train)
    test_pair = (dataset.X_test.to(DTYPES[run.dtype]), dataset.y_test)
    recorded = row["dense"]["train_loss"]
    reproduced = evaluate(model, *train_pair, loss_fn)["loss"]
    if abs(reproduced - recorded) > REPRODUCTION_TOLERANCE * abs(recorded):
        return (
            f"{row['run']} left out: retrained train loss {reproduced:.10g} differs from the "
            f"recorded {recorded:.10g}"
        )
    regime = measure_regime(
        model, loss_fn, train_pair,
        removal_fraction=row["predicted"][REGIME_METHOD]["p"],
        removal_fraction_method=REGIME_METHOD,
        card=result.card,
        curvature=row.get("curvature", "unknown"),
        epsilon_source=(row.get("epsilon_source") or {}).get("kind")
        or config["prediction"]["epsilon"],
    )  # fmt: skip
    return regime, sweep_limits(model, loss_fn, train_pair, test_pair)


def sweep_limits(model, loss_fn, train_pair, test_pair, step: float = GRID_STEP) -> dict:
    """collapse, loss_collapse and above_dense of one-shot pruning (module docstring)."""
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 10)
    accuracy, loss = np.empty(grid.size), np.empty(grid.size)
    for i, p in enumerate(grid):
        with pruned(model, float(p)):
            accuracy[i] = evaluate(model, *test_pair, loss_fn)["accuracy"]
            loss[i] = evaluate(model, *train_pair, loss_fn)["loss"]
    above = np.flatnonzero(accuracy > accuracy[0])
    return {
        "collapse": first_crossing(grid, accuracy[0] - accuracy, (accuracy[0] - accuracy[-1]) / 2),
        "loss_collapse": first_crossing(
            grid, np.log(loss) - math.log(loss[0]), (math.log(loss[-1]) - math.log(loss[0])) / 2
        ),
        "above_dense": float(grid[above[-1]]) if above.size else None,
    }


def first_crossing(grid: np.ndarray, rise: np.ndarray, level: float) -> float | None:
    """The first p at which ``rise`` (0 at p = 0) reaches ``level`` > 0, linear between points.

    >>> first_crossing(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.2, 1.0]), 0.6)
    0.75
    """
    if not level > 0:
        return None
    index = int(np.argmax(rise >= level))
    if rise[index] < level:
        return None
    if index == 0:
        return float(grid[0])
    x0, x1, y0, y1 = grid[index - 1], grid[index], rise[index - 1], rise[index]
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPOSITORY)) if path.is_relative_to(REPOSITORY) else str(path)


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=REPOSITORY,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()  # fmt: skip
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
