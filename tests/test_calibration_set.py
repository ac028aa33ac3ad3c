"""benchmarks/calibration_set.py: reading result rows and the curve criteria, without training."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "calibration_set.py"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("calibration_set", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration_set"] = module
    spec.loader.exec_module(module)
    return module


def test_first_crossing_interpolates_and_reports_the_first(builder):
    grid = np.linspace(0.0, 1.0, 11)
    # falls to 0.3 at p = 0.4, recovers, then falls for good: the first crossing counts
    rise = np.array([0, 0, 0.1, 0.2, 0.6, 0.1, 0, 0.5, 0.8, 0.9, 1.0])
    assert builder.first_crossing(grid, rise, 0.5) == pytest.approx(0.375)
    assert builder.first_crossing(grid, rise, 1.5) is None
    assert builder.first_crossing(grid, rise, 0.0) is None  # no drop: no collapse


def test_sweep_limits_on_a_model_whose_curve_is_known(builder):
    # Logit of class 1 = sum of the weights (inputs all ones): pruning the k smallest
    # lowers it step by step; samples of class 1 are right while it is above 0.
    model = torch.nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, -4.5]]))
    # The four zeros go first (p <= 0.5), then 1.0 (p = 0.625: logit 0.5, still right),
    # then 2.0 (p = 0.75: logit -1.5, wrong).
    X = torch.ones(10, 4, dtype=torch.float64)
    y = torch.ones(10, dtype=torch.int64)
    limits = builder.sweep_limits(model, torch.nn.CrossEntropyLoss(), (X, y), (X, y), step=0.125)
    # dense logit 1.5 > 0: accuracy 1; at p = 1: logits tie at 0, argmax -> class 0: accuracy 0.
    # Accuracy is 1 up to p = 0.625 and 0 from 0.75: the half-way crossing at 0.6875.
    assert limits["collapse"] == pytest.approx(0.6875)
    assert limits["above_dense"] is None


def _record(with_regime: bool) -> dict:
    regime = {
        "train_accuracy": 0.99, "train_loss": 0.05, "l1": 0.0, "optimizer": "adam",
        "small_weight_share": 0.01, "dimension": 816, "num_train": 2000,
        "removal_fraction": 0.9, "removal_fraction_method": "paper",
        "pruned_norm_ratio": 0.5, "curvature": "ggn", "epsilon_source": "batch_std",
    }  # fmt: skip
    row = {
        "run": "manifold-d2-plain-float64",
        "dtype": "float64",
        "predicted": {"paper": {"p": 0.9, "interval": [0.9, 0.9]}},
        "actual": {
            "one_shot": {
                "accuracy": 0.3, "accuracy_interval": [0.2, 0.4], "loss_budget": 0.25,
                "collapse": 0.85, "loss_collapse": 0.5, "above_dense": None,
            }
        },
    }  # fmt: skip
    if with_regime:
        row["regime"] = regime
    config = {
        "model": {"kind": "mlp", "hidden": [24]},
        "training": {"l1": [0.0]},
        "study": {"seed": 0},
        "datasets": [{"name": "manifold", "d": [2]}],
    }
    return {"config": config, "studies": {"float64": {"runs": [row]}}}


def test_rows_with_a_regime_are_read_as_they_are(builder):
    runs, notes = builder.runs_of(_record(with_regime=True), "x.json", rebuild=False)
    assert notes == [] and len(runs) == 1
    run = runs[0]
    assert run.group == "manifold-d2-plain" and run.source == "x.json"
    assert run.predicted == {"paper": 0.9}
    assert run.actual["one_shot"]["collapse"] == 0.85
    assert "accuracy_interval" not in run.actual["one_shot"]
    assert run.residual("paper", "one_shot", "accuracy") == pytest.approx(-0.6)
    assert run.residual("paper", "one_shot", "above_dense") is None


def test_rows_without_a_regime_need_rebuild(builder):
    with pytest.raises(SystemExit, match="--rebuild"):
        builder.runs_of(_record(with_regime=False), "x.json", rebuild=False)


def test_another_seed_is_another_unit_and_an_earlier_set_is_a_source(builder, tmp_path):
    from pruning_limit.calibration import CalibrationSet

    record = _record(with_regime=True)
    seeded = dict(record["studies"]["float64"]["runs"][0], run="manifold-d2-plain-seed1-float64")
    record["studies"]["float64"]["runs"].append(seeded)
    runs, _ = builder.runs_of(record, "x.json", rebuild=False)
    assert [run.group for run in runs] == ["manifold-d2-plain", "manifold-d2-plain-seed1"]
    earlier = CalibrationSet(runs=runs[:1], provenance={"sources": {"x.json": {"date": "d"}}})
    earlier.save(tmp_path / "earlier.json")
    new = tmp_path / "new.json"
    new.write_text(json.dumps({**record, "studies": {"s": {"runs": [seeded]}}}))
    out = tmp_path / "merged.json"
    argv = sys.argv
    sys.argv = ["calibration_set.py", str(tmp_path / "earlier.json"), str(new), "--out", str(out)]
    try:
        builder.main()
    finally:
        sys.argv = argv
    merged = CalibrationSet.load(out)
    assert [run.group for run in merged.runs] == ["manifold-d2-plain", "manifold-d2-plain-seed1"]
    assert set(merged.provenance["sources"]) == {"x.json", str(new)}


def test_held_out_refuses_sets_that_share_a_network_and_prints_the_table(builder, tmp_path, capsys):
    from pruning_limit.calibration import CalibrationSet

    runs, _ = builder.runs_of(_record(with_regime=True), "x.json", rebuild=False)
    CalibrationSet(runs=runs).save(tmp_path / "set.json")
    CalibrationSet(runs=runs).save(tmp_path / "same.json")
    argv = sys.argv
    sys.argv = ["calibration_set.py", "--out", str(tmp_path / "set.json"),
                "--held-out", str(tmp_path / "same.json")]  # fmt: skip
    try:
        with pytest.raises(SystemExit):
            builder.main()
        assert "are in both sets" in capsys.readouterr().err
        other = [
            type(run)(
                f"{run.run}-other", f"{run.group}-other", run.regime, run.predicted, run.actual
            )  # fmt: skip
            for run in runs
        ]
        CalibrationSet(runs=other).save(tmp_path / "other.json")
        sys.argv[-1] = str(tmp_path / "other.json")
        builder.main()
    finally:
        sys.argv = argv
    printed = capsys.readouterr().out
    # One network per class is too few for an interval: every row says so.
    assert "### Held out" in printed and "| coverage |" in printed
    assert "too few calibration runs" in printed
