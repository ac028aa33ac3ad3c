"""Can information at w* alone locate the onset of one-shot pruning's damage? (issue 13, item 4)

For every finished run folder of ``benchmarks/calibration_runs.py`` (checkpoint, eps
and the validator's actual limits in ``run.json``), compare against the one-shot
``loss_budget`` onset (train loss leaves L(w*) + eps) and ``accuracy`` onset (test
accuracy leaves 0.5 points of the dense one):

- ``trace_bound`` as the study predicted it;
- ``taylor_onset`` (:mod:`pruning_limit.onset`, the prediction method of that name, as
  ``Pipeline.taylor_model`` builds it): the first p at which the second-order Taylor
  model at w* (gradient and curvature products along the pruning direction) rises by
  eps. It has no fitted parameter, so every network is held out;
- ``taylor_onset`` at kappa eps with kappa fitted by leave-one-out (on the other
  networks, minimising mean |error|): whether a rescaled budget reaches the accuracy
  onset.

Each is also reported on the plain and the L1-trained networks apart. Nothing here
evaluates the network at a pruned point; the actual limits come from the validator's
sweeps recorded in the run folders. Writes ``results/onset-DEVICE.json``::

    python benchmarks/onset.py                      # runs/calibration_runs/seed*/
    python benchmarks/onset.py FOLDER ...
"""

from __future__ import annotations

import json
from pathlib import Path

import common
import numpy as np
from scipy.stats import spearmanr
from torch import nn

from pruning_limit.datasets import load_dataset
from pruning_limit.pipeline import Pipeline
from pruning_limit.training import load_checkpoint

NAME = "onset"
REPOSITORY = Path(__file__).resolve().parent.parent
GRID = np.linspace(0.0, 1.0, 201)
KAPPAS = np.geomspace(0.05, 200.0, 161)
TARGETS = ("loss_budget", "accuracy")


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("folders", nargs="*", type=str)
    args = parser.parse_args()
    device = common.configure(args)
    folders = args.folders or sorted((REPOSITORY / "runs" / "calibration_runs").glob("seed*"))
    runs = []
    for path in sorted(p for folder in folders for p in Path(folder).glob("*/run.json")):
        row = json.loads(path.read_text())
        model, _ = load_checkpoint(path.parent / "checkpoint")
        data = load_dataset(**row["dataset_arguments"])
        pipeline = Pipeline(model, nn.CrossEntropyLoss(), (data.X_train, data.y_train))
        rise = pipeline.taylor_model(points=GRID.size).rise
        runs.append(
            {
                "run": f"{path.parent.parent.name}/{row['run']}",
                "epsilon": row["epsilon"],
                "rise": rise.tolist(),
                "trace_bound": row["predicted"]["trace_bound"]["p"],
                "actual": {t: row["actual"]["one_shot"][t] for t in TARGETS},
            }
        )
        print(runs[-1]["run"], flush=True)
    table = []
    groups = {
        "all": runs,
        "plain": [run for run in runs if "-plain-" in run["run"]],
        "l1": [run for run in runs if "-plain-" not in run["run"]],
    }
    for target in TARGETS:
        loo = {
            run["run"]: _crossing(run, _best_kappa([r for r in runs if r is not run], target))
            for run in runs
        }
        for group, members in groups.items():
            if len(members) < 2:
                continue
            actual = np.array([run["actual"][target] for run in members], dtype=float)
            for name, predicted in [
                ("trace_bound", [run["trace_bound"] for run in members]),
                ("taylor_onset (no fitted parameter)", [_crossing(run, 1.0) for run in members]),
                ("taylor_onset at kappa eps, kappa by leave-one-out",
                 [loo[run["run"]] for run in members]),
            ]:  # fmt: skip
                error = 100 * (np.array(predicted) - actual)
                table.append(
                    {
                        "predictor": name,
                        "target": f"one_shot/{target}",
                        "networks": group,
                        "runs": len(members),
                        "mean_error_pp": float(error.mean()),
                        "mean_abs_error_pp": float(np.abs(error).mean()),
                        "spearman": float(spearmanr(predicted, actual)[0]),
                    }
                )
    common.print_table(
        f"information at w* against the one-shot onsets ({len(runs)} held-out networks)",
        ["predictor", "target", "networks", "runs", "mean error", "mean |error|", "Spearman"],
        [[t["predictor"], t["target"], t["networks"], t["runs"], t["mean_error_pp"],
          t["mean_abs_error_pp"], t["spearman"]] for t in table],
    )  # fmt: skip
    path = common.write_result(
        NAME, args, device, {"folders": [str(f) for f in folders], "table": table, "runs": runs}
    )
    print(f"wrote {path}")


def _crossing(run: dict, kappa: float) -> float:
    rise = np.asarray(run["rise"])
    level = kappa * run["epsilon"]
    above = np.flatnonzero(rise >= level)
    if above.size == 0:
        return 1.0
    i = int(above[0])
    if i == 0:
        return 0.0
    x0, x1, y0, y1 = GRID[i - 1], GRID[i], rise[i - 1], rise[i]
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))


def _best_kappa(runs: list, target: str) -> float:
    errors = [
        np.mean([abs(_crossing(run, kappa) - run["actual"][target]) for run in runs])
        for kappa in KAPPAS
    ]
    return float(KAPPAS[int(np.argmin(errors))])


if __name__ == "__main__":
    main()
