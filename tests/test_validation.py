"""The validator: exact restoration, the refit against the quadratic predictor, the
bisection, compare() on hand-made results, JSON round trips and bad input.

The ground truth for the refit and the bisection is a linear model under mean squared
error, L(w) = mean (Xw - y)^2, whose loss is exactly quadratic with Hessian
2 X^T X / n: there the quadratic model is not a model but the loss itself.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

import pruning_limit.validation
from pruning_limit.comparison import compare
from pruning_limit.pipeline import predict_limit
from pruning_limit.prediction import MethodEstimate, Prediction
from pruning_limit.pruning import SweepPoint, removed_mask
from pruning_limit.quadratic import QuadraticModel
from pruning_limit.transition import Reading, Transition, read_transition
from pruning_limit.validation import CRITERIA, Validation, VariantSweep, validate
from pruning_limit.variants import FinetuneBudget

COARSE = [0.0, 0.2, 0.4, 0.6, 0.8, 0.95]


@pytest.fixture(autouse=True)
def one_blas_thread():
    # As for torch (conftest): BLAS threads that outnumber the free cores of a shared
    # machine made a single 800 x 400 QR take seconds.
    with threadpool_limits(limits=1):
        yield


def classification_problem(seed: int = 0, batchnorm: bool = True):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(240, 6, generator=generator)
    y = (X[:, :3].sum(dim=1) > 0).long() + (X[:, 3] > 1).long()
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 12)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(12))
    layers += [nn.Tanh(), nn.Linear(12, 3)]
    model = nn.Sequential(*layers)
    if batchnorm:  # non-trivial running statistics, which must survive untouched
        model.train()
        with torch.no_grad():
            model(X)
    model.eval()
    return model, (X[:160], y[:160]), (X[160:], y[160:])


def snapshot(model: nn.Module) -> dict:
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


def assert_bit_identical(before: dict, model: nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key
        if tensor.is_floating_point():
            bits = torch.int64 if tensor.dtype == torch.float64 else torch.int32
            assert torch.equal(tensor.view(bits), after[key].view(bits)), key


def linear_problem(dimension: int, samples: int, scales=None, seed: int = 0):
    """A float64 linear model at the exact least-squares optimum (zero gradient).

    y = X w* + r with X^T r = 0, so L(w) = (w - w*)^T (X^T X / n) (w - w*) + mean r^2.
    """
    rng = np.random.default_rng(seed)
    if scales is None:
        X = rng.standard_normal((samples, dimension))
    else:
        basis, _ = np.linalg.qr(rng.standard_normal((samples, dimension)))
        X = math.sqrt(samples) * basis * np.asarray(scales)
    weights = rng.standard_normal(dimension)
    noise = rng.standard_normal(samples)
    noise -= X @ np.linalg.lstsq(X, noise, rcond=None)[0]  # orthogonal to range(X)
    y = X @ weights + 0.5 * noise
    model = nn.Linear(dimension, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(weights)[None])
    data = (torch.as_tensor(X), torch.as_tensor(y)[:, None])
    return model, data, weights, X


# -- restoration --------------------------------------------------------------------------------


# validate() options that run every variant on a coarse grid, quickly.
EVERY_VARIANT = dict(
    loss_fn=nn.CrossEntropyLoss(),
    variants=("one_shot", "refit", "finetune"),
    amounts=COARSE,
    resolution=0.05,
    finetune={"epochs": 2, "lr": 1e-2, "batch_size": 32},
    batch_size=40,
    progress=False,
)


def test_state_dict_bit_identical_after_every_variant():
    model, train_pair, test_pair = classification_problem()
    model.train()  # the caller's mode must come back too
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    validation = validate(model, train_data=train_pair, test_data=test_pair, **EVERY_VARIANT)
    assert_bit_identical(before, model)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert list(validation.variants) == ["one_shot", "refit", "finetune"]
    assert validation.refit["curvature"] == "hessian" and validation.refit["solver"] == "dense"


def test_torchscript_model_validates_as_the_eager_model_and_is_restored():
    """A scripted copy of the model gives the same sweeps, point for point, in every
    variant (pruning, re-fit and fine-tune write into its slots in place), and ends
    bit-identical to before."""
    model, train_pair, test_pair = classification_problem(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        scripted = torch.jit.script(copy.deepcopy(model))
    before = snapshot(scripted)
    options = dict(train_data=train_pair, test_data=test_pair, **EVERY_VARIANT)
    eager = validate(model, **options)
    compiled = validate(scripted, **options)
    assert_bit_identical(before, scripted)
    for variant, sweep in eager.variants.items():
        other = compiled.variants[variant].points
        assert [p.removed for p in sweep.points] == [p.removed for p in other]
        for point, twin in zip(sweep.points, other):
            for key, value in point.metrics.items():
                assert twin.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (variant, key)


def test_finetune_never_ends_above_one_shot_and_restores_frozen_weights():
    """The fine-tune keeps its best iterate, so its training loss is at most one-shot's."""
    model, train_pair, test_pair = classification_problem(seed=1, batchnorm=False)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    before = snapshot(model)
    validation = validate(
        model,
        train_data=train_pair,
        test_data=test_pair,
        loss_fn=nn.CrossEntropyLoss(),
        epsilon=0.02,
        variants=("one_shot", "finetune"),
        amounts=COARSE,
        resolution=0.05,
        finetune=FinetuneBudget(epochs=2, lr=5e-2, batch_size=40),
        progress=False,
    )
    assert_bit_identical(before, model)
    assert not any(p.requires_grad for p in model.parameters())
    one_shot = {p.removed: p.metrics["train_loss"] for p in validation.variants["one_shot"].points}
    finetune = {p.removed: p.metrics["train_loss"] for p in validation.variants["finetune"].points}
    common = one_shot.keys() & finetune.keys()
    assert len(common) >= len(COARSE)
    assert all(finetune[k] <= one_shot[k] + 1e-7 for k in common)
    assert any(finetune[k] < one_shot[k] - 1e-4 for k in common if k > 0)
    # p = 0 is the dense network itself; the fine-tuned dense network is the reference.
    sweep = validation.variants["finetune"]
    assert sweep.points[0].metrics["train_loss"] == validation.dense["train_loss"]
    assert sweep.reference["train_loss"] < validation.dense["train_loss"]


def test_weights_already_zero_leave_p0_dense_in_every_variant():
    """A model with exact zeros (e.g. already pruned): removing only zeros changes
    nothing, so no variant re-fits or fine-tunes there and p = 0 reads as dense."""
    model, train_pair, test_pair = classification_problem(seed=3, batchnorm=False)
    with torch.no_grad():
        model[0].weight[:, :2] = 0.0  # 24 of the 108 prunable weights
    before = snapshot(model)
    validation = validate(
        model,
        train_data=train_pair,
        test_data=test_pair,
        loss_fn=nn.CrossEntropyLoss(),
        epsilon=0.01,
        variants=("one_shot", "refit", "finetune"),
        amounts=[0.0, 0.1, 0.2, 0.5],
        resolution=0.1,
        finetune={"epochs": 1, "lr": 1e-2},
        progress=False,
    )
    assert_bit_identical(before, model)
    for sweep in validation.variants.values():
        by_amount = {p.amount: p.metrics for p in sweep.points}
        for amount in (0.0, 0.1, 0.2):  # 0, 11 and 22 weights: zeros only
            assert by_amount[amount]["train_loss"] == validation.dense["train_loss"], amount


# -- the refit reaches the quadratic predictor on an exactly quadratic loss ----------------------


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_refit_loss_budget_limit_equals_quadratic_prediction(solver):
    model, data, weights, X = linear_problem(dimension=60, samples=150)
    hessian = 2 * X.T @ X / X.shape[0]
    # A budget that puts p* mid-range: the quadratic cost of removing half the weights.
    epsilon = 1.3 * QuadraticModel(hessian, weights).cost(removed_mask(weights, 0.5))
    loss_fn = nn.MSELoss()
    prediction = predict_limit(
        model, data=data, loss_fn=loss_fn, epsilon=epsilon, methods=("quadratic",),
        curvature="hessian", sensitivity=False,
    )  # fmt: skip
    resolution = 0.005
    validation = validate(
        model,
        train_data=data,
        test_data=data,
        loss_fn=loss_fn,
        epsilon=epsilon,
        variants=("one_shot", "refit"),
        resolution=resolution,
        curvature="hessian" if solver == "dense" else "ggn",
        dense_limit=3000 if solver == "dense" else 10,
        progress=False,
    )
    assert validation.task == "regression"
    assert validation.refit["solver"] == solver
    predicted = prediction.removal_fraction("quadratic")
    assert 0.3 < predicted < 0.8
    actual = validation.limit("refit", "loss_budget")
    assert abs(actual - predicted) <= resolution + 1.0 / 60
    # The refit is the best point of the kept subspace: never worse than one-shot.
    assert actual >= validation.limit("one_shot", "loss_budget")
    comparison = compare(prediction, validation)
    # Without class labels: the loss criteria only (the onset and the log-loss collapse).
    assert {row.criterion for row in comparison.rows} == {"loss_budget", "loss_collapse"}
    assert validation.limit("refit", "collapse") is None
    assert "test_accuracy" in validation.reason("refit", "collapse")
    row = comparison.row("quadratic", "refit", "loss_budget")
    assert abs(row.error_pp) <= 100 * (resolution + 1.0 / 60)
    # At every evaluated p the refit's loss is L0 + q(P) exactly.
    quadratic = QuadraticModel(hessian, weights)
    dense_loss = validation.dense["train_loss"]
    for point in validation.variants["refit"].points[::4]:
        expected = dense_loss + quadratic.cost_of_count(point.removed)
        assert point.metrics["train_loss"] == pytest.approx(expected, rel=1e-7, abs=1e-12)


def test_bisection_brackets_the_break_to_the_resolution():
    """Diagonal curvature: the one-shot loss rises by sum_P s_j^2 w_j^2, monotone in p."""
    dimension = 400
    scales = np.linspace(0.2, 2.0, dimension)
    model, data, weights, _ = linear_problem(dimension, samples=800, scales=scales, seed=3)
    order = np.argsort(np.abs(weights), kind="stable")
    increase = np.concatenate([[0.0], np.cumsum((scales[order] * weights[order]) ** 2)])
    epsilon = float(increase[int(0.437 * dimension)]) * 1.0001
    first_broken = int(np.argmax(increase > epsilon))  # smallest k that breaks
    resolution = 0.005
    validation = validate(
        model,
        train_data=data,
        test_data=data,
        loss_fn=nn.MSELoss(),
        epsilon=epsilon,
        variants=("one_shot",),
        resolution=resolution,
        progress=False,
    )
    result = validation.variants["one_shot"]
    low, high = result.loss_budget_bracket
    removed = {p.amount: p.removed for p in result.points}
    assert removed[low] < first_broken <= removed[high]
    assert high - low <= resolution or removed[high] - removed[low] <= 1
    assert result.loss_budget_limit == low
    assert abs(low - first_broken / dimension) <= resolution + 1.0 / dimension


# -- compare ------------------------------------------------------------------------------


def hand_made_prediction(parameters=(("fc.weight", [4, 5]),), dimension=20, epsilon=0.01):
    estimates = {
        "paper": MethodEstimate("paper", 0.60, (0.55, 0.65), radius=1.0, scale=1.0),
        "trace_bound": MethodEstimate("trace_bound", 0.30, (0.30, 0.30), radius=0.5, scale=1.0),
    }
    return Prediction(
        estimates=estimates, epsilon=epsilon, epsilon_source={"kind": "given"}, policy="abs",
        curvature="ggn", dimension=dimension, zero_rows=0, spectrum={"method": "exact"},
        parameters=[[name, list(shape)] for name, shape in parameters], convergence={},
        curves={}, confidence=0.95,
    )  # fmt: skip


def hand_made_transition(above_dense=0.45) -> Transition:
    readings = {
        "collapse": Reading(0.80, (0.79, 0.81), (0.76, 0.83), 0.5),
        "collapse_start": Reading(0.70, (0.69, 0.71), (0.66, 0.73), 0.86),
        "collapse_end": Reading(0.88, (0.87, 0.89), (0.85, 0.91), 0.14),
        "collapse_width": Reading(0.18, (0.16, 0.20), (0.12, 0.25)),
        "above_dense": (
            Reading(above_dense, (above_dense, above_dense + 0.001), (None, 0.47), 0.9)
            if above_dense is not None
            else Reading(None, reason="no p on the reference grid has test accuracy above")
        ),
        "loss_collapse": Reading(0.75, (0.745, 0.755), None, 0.3),
    }
    return Transition(
        readings=readings, dense_accuracy=0.9, pruned_accuracy=0.1, dense_loss=0.1,
        pruned_loss=0.9, reference_grid=0.001, n=100,
    )  # fmt: skip


def hand_made_validation(parameters=(("fc.weight", [4, 5]),), dimension=20, epsilon=0.01):
    points = [
        SweepPoint(0.0, 0, dimension, {"test_accuracy": 0.9, "train_loss": 0.1, "n_test": 100}),
        SweepPoint(0.5, 10, dimension, {"test_accuracy": 0.9, "train_loss": 0.105, "n_test": 100}),
    ]
    sweeps = {
        "one_shot": VariantSweep(
            "one_shot", points, accuracy_limit=0.50, accuracy_interval=(0.40, 0.58),
            accuracy_bracket=(0.50, 0.505), loss_budget_limit=0.62,
            loss_budget_bracket=(0.62, 0.625), evaluations=2, seconds=0.0,
            transition=hand_made_transition(),
        ),
        "refit": VariantSweep(
            "refit", points, accuracy_limit=0.70, accuracy_interval=(0.60, 0.90),
            accuracy_bracket=(0.70, None), loss_budget_limit=0.25,
            loss_budget_bracket=(0.25, 0.26), evaluations=2, seconds=0.0,
        ),
    }  # fmt: skip
    return Validation(
        variants=sweeps, dense={"test_accuracy": 0.9, "train_loss": 0.1, "n_test": 100},
        tolerance=0.5, epsilon=epsilon, epsilon_source={"kind": "given"}, resolution=0.005,
        amounts=[0.0, 0.5], confidence=0.95, interval_method="wilson",
        parameters=[[name, list(shape)] for name, shape in parameters], dimension=dimension,
        dtype="float32", task="classification", seed=0,
    )  # fmt: skip


def test_compare_errors_and_intervals_by_hand():
    comparison = compare(hand_made_prediction(), hand_made_validation())
    # one_shot: five criteria; refit (a format-1 sweep, no transition): the onsets only.
    assert len(comparison.rows) == 2 * (5 + 2)
    row = comparison.row("paper", "one_shot", "accuracy")
    assert row.error_pp == pytest.approx(10.0)
    assert not row.inside and row.overlap  # 0.5 outside [0.55, 0.65]; [0.40, 0.58] meets it
    row = comparison.row("paper", "one_shot", "loss_budget")
    assert row.error_pp == pytest.approx(-2.0)
    assert row.inside and row.actual_interval == (0.62, 0.625)
    row = comparison.row("trace_bound", "refit", "loss_budget")
    assert row.error_pp == pytest.approx(5.0)
    assert not row.inside and not row.overlap
    row = comparison.row("trace_bound", "refit", "accuracy")
    assert row.error_pp == pytest.approx(-40.0) and row.actual_is_lower_bound
    # The transition's criteria, by hand: predicted - actual, in points.
    expected = {
        ("paper", "collapse"): (0.60 - 0.80, (0.76, 0.83), False, False),
        ("paper", "above_dense"): (0.60 - 0.45, (0.45, 0.451), False, False),
        ("paper", "loss_collapse"): (0.60 - 0.75, (0.745, 0.755), False, False),
        ("trace_bound", "collapse"): (0.30 - 0.80, (0.76, 0.83), False, False),
        ("trace_bound", "above_dense"): (0.30 - 0.45, (0.45, 0.451), False, False),
        ("trace_bound", "loss_collapse"): (0.30 - 0.75, (0.745, 0.755), False, False),
    }
    for (method, criterion), (error, interval, inside, overlap) in expected.items():
        row = comparison.row(method, "one_shot", criterion)
        assert row.error_pp == pytest.approx(100 * error), (method, criterion)
        assert row.actual_interval == pytest.approx(interval), (method, criterion)
        assert (row.inside, row.overlap) == (inside, overlap)
        assert not row.actual_is_lower_bound
    # An interval the prediction meets: paper's [0.55, 0.65] against collapse at 0.62.
    validation = hand_made_validation()
    validation.variants["one_shot"].transition.readings["collapse"] = Reading(
        0.62, (0.61, 0.63), (0.50, 0.70), 0.5
    )
    row = compare(hand_made_prediction(), validation).row("paper", "one_shot", "collapse")
    assert row.error_pp == pytest.approx(-2.0) and row.inside and row.overlap
    with pytest.raises(KeyError):
        comparison.row("paper", "refit", "collapse")
    # Where a reading is None, the note carries its reason.
    assert any("refit collapse" in n and "not measured" in n for n in comparison.notes)
    validation.variants["one_shot"].transition = hand_made_transition(above_dense=None)
    missing = compare(hand_made_prediction(), validation)
    assert any("above_dense" in n and "reference grid" in n for n in missing.notes)
    assert not any(r.criterion == "above_dense" for r in missing.rows)
    table = comparison.to_markdown()
    assert "| paper | one_shot | accuracy | 0.6000 |" in table and "+10.0" in table
    assert "| paper | one_shot | collapse | 0.6000 |" in table and "-20.0" in table
    assert "`collapse`: collapse centre" in table
    assert json.loads(json.dumps(comparison.to_dict()))["rows"][0]["method"] == "paper"


def test_compare_marks_the_row_of_each_predictors_own_target():
    prediction = hand_made_prediction()
    prediction.estimates["taylor_onset"] = MethodEstimate(
        "taylor_onset", 0.63, (0.625, 0.63), radius=1.0, scale=1.0
    )
    table = compare(prediction, hand_made_validation()).to_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| taylor_onset |")]
    assert len(rows) == 5 + 2  # next to the others: every criterion of both variants
    marked = [row for row in rows if row.endswith("| yes |")]
    assert marked == [
        "| taylor_onset | one_shot | loss_budget | 0.6300 | [0.6250, 0.6300] | 0.6200 | "
        "[0.6200, 0.6250] | +1.0 | no | yes | yes |"
    ]
    assert not any(line.endswith("| yes |") for line in table.splitlines() if "| paper |" in line)
    assert "- `taylor_onset`: one-shot loss-budget onset" in table
    assert "- `paper`: transition (kinematic formula)" in table


def test_compare_refuses_a_prediction_for_another_model():
    validation = hand_made_validation()
    with pytest.raises(ValueError, match="D = 30"):
        compare(hand_made_prediction(dimension=30), validation)
    with pytest.raises(ValueError, match="not the same model"):
        compare(hand_made_prediction(parameters=(("fc.weight", [5, 4]),)), validation)
    with pytest.raises(ValueError, match="not the same model"):
        compare(hand_made_prediction(parameters=(("other.weight", [4, 5]),)), validation)
    with pytest.raises(TypeError):
        compare(validation, hand_made_prediction())


def test_compare_notes_a_different_budget():
    comparison = compare(hand_made_prediction(epsilon=0.02), hand_made_validation())
    assert any("eps" in note for note in comparison.notes)


# -- JSON ---------------------------------------------------------------------------------------


def test_validation_json_round_trip(tmp_path):
    model, train_pair, test_pair = classification_problem(seed=2)
    validation = validate(
        model,
        train_data=train_pair,
        test_data=test_pair,
        loss_fn=nn.CrossEntropyLoss(),
        variants=("one_shot", "refit"),
        amounts=COARSE,
        resolution=0.05,
        seed=7,
        batch_size=40,
        progress=False,
    )
    path = validation.save(tmp_path / "validation")
    assert path.suffix == ".json"
    loaded = Validation.load(path)
    assert loaded.to_dict() == validation.to_dict()
    assert isinstance(loaded.variants["refit"].points[0], SweepPoint)
    assert loaded.limit("refit", "accuracy") == validation.limit("refit", "accuracy")
    assert loaded.interval("one_shot", "loss_budget") == validation.interval(
        "one_shot", "loss_budget"
    )
    record = json.loads(path.read_text())
    for key in ("tolerance", "epsilon", "epsilon_source", "resolution", "parameters", "dtype",
                "seed", "version", "dense", "variants", "fraction"):  # fmt: skip
        assert key in record, key
    assert record["epsilon_source"]["kind"] == "batch_std"
    assert record["parameters"] == [["0.weight", [12, 6]], ["3.weight", [3, 12]]]
    assert record["seed"] == 7 and record["fraction"] == "removed"
    assert "test_accuracy_interval" in record["dense"]
    assert "one_shot" in str(loaded) and "Validation(" in repr(loaded)
    with pytest.raises(ValueError, match="format 99 is unknown"):
        Validation.from_dict({**record, "format_version": 99})


def test_validate_reads_and_saves_every_criterion(tmp_path):
    model, train_pair, test_pair = classification_problem(seed=3, batchnorm=False)
    validation = validate(
        model, train_data=train_pair, test_data=test_pair, loss_fn=nn.CrossEntropyLoss(),
        variants=("one_shot", "refit"), amounts=COARSE, resolution=0.02, reference_grid=0.01,
        batch_size=40, progress=False,
    )  # fmt: skip
    one_shot = validation.variants["one_shot"]
    points = one_shot.points + one_shot.reference_points
    assert all("train_loss" in p.metrics for p in one_shot.points)
    assert {p.amount for p in points} >= {0.0, 1.0}
    for variant in ("one_shot", "refit"):
        for criterion in CRITERIA:
            value = validation.limit(variant, criterion)
            if value is None:
                assert validation.reason(variant, criterion), (variant, criterion)
            else:
                assert 0.0 <= value <= 1.0
                low, high = validation.interval(variant, criterion)
                assert low <= high
        transition = validation.transition(variant)
        start, centre, end = (
            transition.limit(n) for n in ("collapse_start", "collapse", "collapse_end")
        )
        assert start <= centre <= end
        assert validation.collapse_width(variant) == pytest.approx(end - start)
    assert validation.limit("refit", "above_dense") is None
    assert "not read on refit" in validation.reason("refit", "above_dense")
    # The collapse is where the measured accuracy crosses half-way from a(0) to a(1):
    # the two points around it straddle the level, at most the resolution apart.
    by_amount = {p.amount: p.metrics["test_accuracy"] for p in points}
    a0, a1 = by_amount[0.0], by_amount[1.0]
    level = a0 - 0.5 * (a0 - a1)
    before, after = one_shot.transition.bracket("collapse")
    assert by_amount[before] >= level > by_amount[after] and after - before <= 0.02 + 1e-9
    assert all(by_amount[p] >= level for p in by_amount if p < before)
    # The rule: the largest grid p whose accuracy is above dense, every grid p above it not.
    above = validation.limit("one_shot", "above_dense")
    if above is not None:
        assert by_amount[above] > a0
        grid = [p for p in by_amount if abs(100 * p - round(100 * p)) < 1e-9 and p < 1.0]
        assert all(by_amount[p] <= a0 for p in grid if p > above + 1e-9)
    # Reading the stored points again gives the stored readings.
    again = read_transition(points, reference_grid=0.01)
    assert again.to_dict()["readings"] == one_shot.transition.to_dict()["readings"]
    summary = validation.summary()
    for criterion in CRITERIA:
        assert criterion in summary
    assert "width" in summary

    loaded = Validation.load(validation.save(tmp_path / "v.json"))
    assert loaded.to_dict() == validation.to_dict()
    for variant in ("one_shot", "refit"):
        for criterion in CRITERIA:
            assert loaded.limit(variant, criterion) == validation.limit(variant, criterion)
            assert loaded.interval(variant, criterion) == validation.interval(variant, criterion)
        assert loaded.collapse_width(variant) == validation.collapse_width(variant)
    # A format-1 file (onsets only) still loads; the transition's criteria say why None.
    old = json.loads((tmp_path / "v.json").read_text())
    old["format_version"] = 1
    for key in ("reference_grid", "reference_variants"):
        old.pop(key)
    for entry in old["variants"].values():
        entry.pop("transition")
        entry.pop("reference_points")
    legacy = Validation.from_dict(old)
    assert legacy.limit("one_shot", "accuracy") == validation.limit("one_shot", "accuracy")
    assert legacy.limit("one_shot", "collapse") is None
    assert "not measured" in legacy.reason("one_shot", "collapse")
    assert legacy.collapse_width("one_shot") is None
    with pytest.raises(ValueError, match="criterion must be one of"):
        validation.limit("one_shot", "median")


# -- bad input ----------------------------------------------------------------------------


@pytest.fixture
def no_sweep(monkeypatch):
    """Fail loudly if validate gets as far as pruning."""

    def refuse(*args, **kwargs):
        raise AssertionError("validate reached the pruning sweep")

    monkeypatch.setattr(pruning_limit.validation, "measure_transition", refuse)


def call(model, train_pair, test_pair, **options):
    return validate(
        model,
        train_data=train_pair,
        test_data=test_pair,
        loss_fn=nn.CrossEntropyLoss(),
        progress=False,
        **options,
    )


@pytest.mark.usefixtures("no_sweep")
def test_bad_options_are_refused_before_pruning():
    model, train_pair, test_pair = classification_problem()
    for tolerance in (-0.5, float("nan"), 101, True):
        with pytest.raises(ValueError, match="tolerance"):
            call(model, train_pair, test_pair, tolerance=tolerance)
    with pytest.raises(ValueError, match="unknown variant"):
        call(model, train_pair, test_pair, variants=("one_shot", "retrain"))
    with pytest.raises(ValueError, match="resolution"):
        call(model, train_pair, test_pair, resolution=0)
    with pytest.raises(ValueError, match="eps"):
        call(model, train_pair, test_pair, epsilon=-1.0)
    with pytest.raises(ValueError, match="curvature"):
        call(model, train_pair, test_pair, curvature="fisher")
    with pytest.raises(ValueError, match="finetune"):
        call(model, train_pair, test_pair, variants=("finetune",), finetune={"epochs": 0})
    with pytest.raises(ValueError, match="unknown finetune"):
        call(model, train_pair, test_pair, variants=("finetune",), finetune={"steps": 3})


@pytest.mark.usefixtures("no_sweep")
def test_data_that_does_not_fit_the_model_is_refused_naming_the_shapes():
    model, train_pair, test_pair = classification_problem()
    before = snapshot(model)
    X, y = test_pair
    with pytest.raises(ValueError, match=r"\(80, 5\).*\(160, 6\)"):
        call(model, train_pair, (X[:, :5], y))
    with pytest.raises(ValueError, match=r"train data: the model refuses inputs of shape \(5,\)"):
        call(model, (train_pair[0][:, :5], train_pair[1]), (X[:, :5], y))
    with pytest.raises(ValueError, match=r"test data: the labels lie in \[\d, 7\] but .* 3 out"):
        call(model, train_pair, (X, torch.where(y == 0, 7, y)))
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        call(model, train_pair, (X, y[:10]))
    with pytest.raises(TypeError, match="pair of tensors"):
        call(model, train_pair, X)
    assert_bit_identical(before, model)


def test_a_refit_whose_solver_did_not_converge_is_no_measurement():
    """CG with one iteration cannot solve the re-fit: every such point is marked
    unconverged, reported, and left out of the limits (issue 16: the refit sweep that
    reported a limit from points where CG had stopped short)."""
    from pruning_limit.curvature import CurvatureOperator
    from pruning_limit.pruning import UNCONVERGED

    model, train_pair, test_pair = classification_problem(batchnorm=False)
    operator = CurvatureOperator(
        model, nn.CrossEntropyLoss(), train_pair, curvature="ggn", dtype=torch.float64, device="cpu"
    )
    stuck = QuadraticModel(operator, operator.weights().numpy(), dense_limit=0, cg_max_iterations=1)
    validation = call(
        model,
        train_pair,
        test_pair,
        variants=("refit",),
        curvature=stuck,
        amounts=[0.0, 0.2, 0.4, 0.6],
        resolution=0.1,
        batch_size=32,
    )
    refit = validation.variants["refit"]
    marked = [p for p in refit.points if p.metrics.get(UNCONVERGED)]
    # every re-fit with weights left to fit: the grid and the transition's bisections
    assert [p.amount for p in marked] == sorted(p.amount for p in refit.points if 0 < p.amount < 1)
    assert {0.2, 0.4, 0.6} <= {p.amount for p in marked}
    assert all(p.metrics["refit_relative_residual"] > stuck.cg_tolerance for p in marked)
    # only p = 0 and p = 1 (nothing left to re-fit) are measurements; the limits read them
    # alone: this barely trained network's loss at p = 1 may even stay within its budget
    ends = {p.amount: p.metrics for p in refit.points if p.amount in (0.0, 1.0)}
    within = ends[1.0]["train_loss"] <= ends[0.0]["train_loss"] + validation.epsilon
    assert refit.loss_budget_limit == (1.0 if within else 0.0)
    assert refit.accuracy_limit == 0.0
    # the transition is read from measurements only: p = 0 and p = 1 bracket the collapse
    collapse = refit.transition.reading("collapse")
    assert collapse.bracket is None or tuple(collapse.bracket) == (0.0, 1.0)
    assert any("unconverged" in note and "left out of the limits" in note for note in refit.notes)
    assert Validation.from_dict(json.loads(validation.to_json())).variants["refit"].notes
