"""Global magnitude pruning against torch.nn.utils.prune, exact restoration, sweeps, intervals."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as torch_prune
from scipy import stats
from torch import nn

from pruning_limit.limit import PrunedNorm
from pruning_limit.parameters import NoPrunableParameterError
from pruning_limit.pruning import (
    DEFAULT_AMOUNTS,
    AccuracyDrop,
    AccuracyDropBound,
    LossBudget,
    SweepPoint,
    accuracy_interval,
    classification_metrics,
    kept_mask,
    limit_from_sweep,
    limit_interval,
    number_to_prune,
    pruned,
    removed_mask,
    sweep,
)
from pruning_limit.quadratic import QuadraticModel


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 3)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 5),
    )


def conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 2))


MODELS = {"mlp": mlp, "cnn": cnn, "conv1d": conv1d}
# 0 and 1, and amounts whose amount * D is not an integer for these models.
AMOUNTS = [0.0, 0.1, 0.3333, 0.5, 0.71, 0.9, 0.999, 1.0]


def make_model(name: str, seed: int, distinct_values: int | None) -> nn.Module:
    """A random model; with ``distinct_values``, weights take few values, so many tie."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    if distinct_values is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                scale = parameter.abs().max()
                parameter.copy_(torch.round(parameter / scale * distinct_values) / distinct_values)
    return model


def torch_masks(model: nn.Module, amount: float, names: list[str]) -> dict[str, torch.Tensor]:
    """Masks from torch's global_unstructured, applied to a deep copy."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    pairs = [(modules[name.rsplit(".", 1)[0]], "weight") for name in names]
    torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return {name: module.weight_mask.bool() for name, (module, _) in zip(names, pairs)}


def prunable_names(model: nn.Module) -> list[str]:
    return [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]


def dimension_of(model: nn.Module) -> int:
    return sum(model.get_parameter(name).numel() for name in prunable_names(model))


def assert_state_identical(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Every tensor equal, down to the bits (so -0.0 and 0.0 differ)."""
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key
        if tensor.is_floating_point():
            bits = torch.int64 if tensor.dtype == torch.float64 else torch.int32
            assert torch.equal(tensor.view(bits), after[key].view(bits)), key


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


# -- masks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("distinct_values", [None, 2, 4], ids=["continuous", "ties2", "ties4"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_mask_equals_torch_global_unstructured(model_name, seed, distinct_values):
    model = make_model(model_name, seed, distinct_values)
    names = prunable_names(model)
    dimension = dimension_of(model)
    for amount in AMOUNTS:
        mask = kept_mask(model, amount)
        expected = torch_masks(model, amount, names)
        assert list(mask) == names
        for name in names:
            assert mask[name].dtype == torch.bool
            assert torch.equal(mask[name], expected[name]), (amount, name)
        removed = sum(int((~m).sum()) for m in mask.values())
        assert removed == round(amount * dimension)


def test_ties_actually_decide_the_mask():
    """With few distinct values the pruning threshold falls inside a run of ties, so a
    different tie-break (e.g. a stable sort) would choose a different mask."""
    model = make_model("mlp", 0, 2)
    weights = torch.cat(
        [model.get_parameter(n).detach().reshape(-1) for n in prunable_names(model)]
    )
    count = round(0.5 * weights.numel())
    mask = torch.cat([m.reshape(-1) for m in kept_mask(model, 0.5).values()])
    stable = torch.ones_like(mask)
    stable[torch.argsort(weights.abs(), stable=True)[:count]] = False
    threshold = weights.abs().sort().values[count - 1]
    assert (weights.abs() == threshold).sum() > 1
    assert not torch.equal(mask, stable)


def test_mask_on_chosen_parameters_matches_torch():
    model = make_model("cnn", 3, 3)
    chosen = ["0.weight", "5.weight"]
    for params in (chosen, [(model[0], "weight"), (model[5], "weight")]):
        mask = kept_mask(model, 0.37, params)
        expected = torch_masks(model, 0.37, chosen)
        assert list(mask) == chosen
        for name in chosen:
            assert torch.equal(mask[name], expected[name])


def test_mask_pools_mixed_dtypes_like_torch():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3).double())
    names = prunable_names(model)
    for amount in (0.2, 0.55):
        mask = kept_mask(model, amount)
        expected = torch_masks(model, amount, names)
        for name in names:
            assert torch.equal(mask[name], expected[name])


def test_number_to_prune_rounds_like_python():
    assert number_to_prune(0.5, 5) == 2  # round(2.5): halves go to the even integer
    assert number_to_prune(0.5, 7) == 4  # round(3.5)
    assert number_to_prune(0.3333, 10) == 3
    assert number_to_prune(1.0, 10) == 10
    assert number_to_prune(0, 10) == 0


@pytest.mark.parametrize("amount", [-0.1, 1.0001, math.nan, 1, 5, -1])
def test_amount_out_of_range_or_integer_count_is_refused(amount):
    with pytest.raises(ValueError, match="amount"):
        kept_mask(mlp(), amount)


@pytest.mark.parametrize("amount", ["0.5", True, None, torch.tensor(0.5)])
def test_amount_of_wrong_type_is_refused(amount):
    with pytest.raises(TypeError, match="amount"):
        kept_mask(mlp(), amount)


def test_model_without_prunable_layer_is_refused():
    with pytest.raises(NoPrunableParameterError):
        kept_mask(nn.Sequential(nn.ReLU()), 0.5)


# -- pruning in place and restoring ---------------------------------------------------------


def test_pruned_zeroes_exactly_the_mask_and_restores_bits():
    model = make_model("cnn", 4, None)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = -0.0  # restored with its sign bit
    before = snapshot(model)
    with pruned(model, 0.6) as mask:
        for name, keep in mask.items():
            weight = model.get_parameter(name)
            assert (weight[~keep] == 0).all()
            assert torch.equal(weight[keep], before[name][keep])
        for key, tensor in model.state_dict().items():
            if key not in mask:
                assert torch.equal(tensor, before[key])
    assert_state_identical(before, model)


def test_pruned_restores_after_an_exception():
    model = make_model("mlp", 5, 3)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"):
        with pruned(model, 0.8):
            assert not torch.equal(model[0].weight, before["0.weight"])
            raise RuntimeError("inside the block")
    assert_state_identical(before, model)


def test_nested_pruning_restores_the_dense_model():
    model = make_model("mlp", 6, None)
    before = snapshot(model)
    with pruned(model, 0.3):
        with pruned(model, 0.9):
            zeros = sum(int((model.get_parameter(n) == 0).sum()) for n in prunable_names(model))
            assert zeros == round(0.9 * dimension_of(model))
    assert_state_identical(before, model)


def test_pruned_with_a_mask():
    model = make_model("mlp", 7, None)
    before = snapshot(model)
    keep = torch.ones(13, 7, dtype=torch.bool)
    keep[0] = False
    with pruned(model, {"0.weight": keep}):
        assert (model[0].weight[0] == 0).all()
        assert torch.equal(model[2].weight, before["2.weight"])
    assert_state_identical(before, model)


def test_bad_masks_are_refused():
    model = mlp()
    good = torch.ones(13, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match="not a parameter"):
        with pruned(model, {"9.weight": good}):
            pass
    with pytest.raises(ValueError, match="shape"):
        with pruned(model, {"0.weight": good.T}):
            pass
    with pytest.raises(TypeError, match="boolean"):
        with pruned(model, {"0.weight": good.float()}):
            pass
    with pytest.raises(ValueError, match="params"):
        with pruned(model, {"0.weight": good}, params=["0.weight"]):
            pass


# -- sweeps ---------------------------------------------------------------------------------


def zero_fraction(model: nn.Module) -> float:
    """The fraction of prunable weights that are zero: what the pruning really did."""
    names = prunable_names(model)
    return sum(int((model.get_parameter(n) == 0).sum()) for n in names) / dimension_of(model)


@pytest.mark.parametrize("hidden", [0.013, 0.4123, 0.77, 0.9871])
def test_bisection_finds_a_planted_threshold(hidden):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 40))  # D = 14000
    calls = []

    def evaluate(m):
        calls.append(1)
        return {"zero_fraction": zero_fraction(m)}

    def is_broken(metrics):
        return metrics["zero_fraction"] > hidden

    points = sweep(model, evaluate, is_broken=is_broken, resolution=0.005, progress=False)
    amounts = [p.amount for p in points]
    assert amounts == sorted(amounts)
    assert set(DEFAULT_AMOUNTS) <= set(amounts)
    limit = limit_from_sweep(points, is_broken)
    first_broken = min(p.amount for p in points if is_broken(p.metrics))
    assert limit <= hidden < first_broken
    assert first_broken - limit <= 0.005
    assert len(calls) == len(points) <= len(DEFAULT_AMOUNTS) + 5  # 0.05 -> 0.005: 4 halvings


def test_sweep_leaves_the_model_bit_identical():
    torch.manual_seed(1)
    model = cnn()
    model.train()  # BatchNorm running statistics must not move during the sweep
    X, y = torch.randn(40, 2, 6, 6), torch.randint(0, 5, (40,))
    evaluate = classification_metrics((X, y), (X, y))
    dense = evaluate(model)
    before = snapshot(model)
    points = sweep(
        model,
        evaluate,
        is_broken=AccuracyDrop(dense["test_accuracy"], 0.05),
        amounts=[0.0, 0.3, 0.6, 0.9, 1.0],
        progress=False,
    )
    assert_state_identical(before, model)
    assert model.training and model[1].training
    assert points[0].metrics == dense
    assert points[-1].removed == points[-1].dimension == dimension_of(model)


def test_sweep_restores_when_evaluate_fails():
    model = make_model("mlp", 8, None)
    before = snapshot(model)
    with pytest.raises(TypeError, match="mapping"):
        sweep(model, lambda m: 0.5, is_broken=lambda m: False, progress=False)
    assert_state_identical(before, model)


def test_sweep_refines_around_each_criterion():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(100, 100))  # D = 10000
    early, late = LossBudget(0.0, 0.31, key="zero_fraction"), LossBudget(0.0, 0.62, "zero_fraction")
    points = sweep(
        model,
        lambda m: {"zero_fraction": zero_fraction(m)},
        is_broken=[early, late],
        amounts=[0.0, 0.5, 1.0],
        resolution=0.01,
        progress=False,
    )
    assert 0.30 <= limit_from_sweep(points, early) <= 0.31
    assert 0.61 <= limit_from_sweep(points, late) <= 0.62


def test_sweep_stops_at_adjacent_counts_and_reuses_evaluations():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))  # D = 6: amounts collapse to counts
    evaluated = []

    def evaluate(m):
        evaluated.append(zero_fraction(m))
        return {"zero_fraction": evaluated[-1]}

    def is_broken(metrics):
        return metrics["zero_fraction"] > 0.4

    points = sweep(model, evaluate, is_broken=is_broken, resolution=1e-6, progress=False)
    assert len(evaluated) == len(set(evaluated)) == 7  # one evaluation per count 0..6
    assert [p.removal_fraction for p in points] == [p.metrics["zero_fraction"] for p in points]
    assert number_to_prune(limit_from_sweep(points, is_broken), 6) == 2


def test_sweep_bad_input():
    model = mlp()

    def evaluate(m):
        return {"a": 1.0}

    def never(m):
        return False

    with pytest.raises(ValueError, match="amounts is empty"):
        sweep(model, evaluate, is_broken=never, amounts=[], progress=False)
    with pytest.raises(ValueError, match="amount"):
        sweep(model, evaluate, is_broken=never, amounts=[0.0, 1.5], progress=False)
    with pytest.raises(ValueError, match="resolution"):
        sweep(model, evaluate, is_broken=never, resolution=0.0, progress=False)
    with pytest.raises(TypeError, match="is_broken"):
        sweep(model, evaluate, is_broken=[never, "accuracy"], progress=False)
    with pytest.raises(TypeError, match="metric 'a'"):
        sweep(model, lambda m: {"a": "high"}, is_broken=never, progress=False)


def points_from(accuracies: dict[float, float], dimension: int = 1000) -> list[SweepPoint]:
    return [
        SweepPoint(a, number_to_prune(a, dimension), dimension, {"test_accuracy": acc})
        for a, acc in accuracies.items()
    ]


def test_limit_is_the_last_amount_before_the_first_break():
    drop = AccuracyDrop(0.9, 0.05)
    # Breaks at 0.6, recovers at 0.7: the first break counts.
    points = points_from({0.8: 0.85, 0.0: 0.9, 0.5: 0.86, 0.6: 0.8, 0.7: 0.87})
    assert limit_from_sweep(points, drop) == 0.5
    assert limit_from_sweep(points_from({0.0: 0.9, 0.5: 0.89}), drop) == 0.5  # nothing broke
    with pytest.raises(ValueError, match="already broken"):
        limit_from_sweep(points_from({0.1: 0.2, 0.5: 0.89}), drop)
    with pytest.raises(ValueError, match="empty"):
        limit_from_sweep([], drop)


# -- criteria and intervals -----------------------------------------------------------------


def test_accuracy_drop_boundary_and_errors():
    drop = AccuracyDrop(0.9, 0.1)
    assert not drop({"test_accuracy": 0.8})  # exactly the tolerance: still within it
    assert drop({"test_accuracy": 0.79})
    assert not AccuracyDrop(0.9, 0.0)({"test_accuracy": 0.9})
    with pytest.raises(ValueError, match="tolerance"):
        AccuracyDrop(0.9, -0.01)
    with pytest.raises(ValueError, match="dense_accuracy"):
        AccuracyDrop(1.2, 0.01)
    with pytest.raises(KeyError, match="test_accuracy"):
        drop({"accuracy": 0.5})


def test_loss_budget():
    budget = LossBudget(dense_loss=0.2, eps=0.05)
    assert not budget({"train_loss": 0.25})
    assert budget({"train_loss": 0.2501})
    with pytest.raises(ValueError, match="eps"):
        LossBudget(0.2, -1.0)


def wilson(correct: int, n: int, confidence: float) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + confidence / 2)
    centre = (correct + z**2 / 2) / (n + z**2)
    half = z / (n + z**2) * math.sqrt(correct * (n - correct) / n + z**2 / 4)
    return centre - half, centre + half


def clopper_pearson(correct: int, n: int, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    low = 0.0 if correct == 0 else stats.beta.ppf(alpha / 2, correct, n - correct + 1)
    high = 1.0 if correct == n else stats.beta.ppf(1 - alpha / 2, correct + 1, n - correct)
    return low, high


@pytest.mark.parametrize("correct,n", [(0, 10), (7, 10), (10, 10), (912, 1000), (1, 3)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_accuracy_interval_by_hand(correct, n, confidence):
    low, high = accuracy_interval(correct / n, n, confidence)
    assert (low, high) == pytest.approx(wilson(correct, n, confidence), abs=1e-12)
    low, high = accuracy_interval(correct / n, n, confidence, method="clopper-pearson")
    assert (low, high) == pytest.approx(clopper_pearson(correct, n, confidence), abs=1e-10)
    assert low <= correct / n <= high


def test_accuracy_interval_bad_input():
    with pytest.raises(ValueError, match="whole number"):
        accuracy_interval(0.55, 10)
    with pytest.raises(ValueError, match="n must"):
        accuracy_interval(0.5, 0)
    with pytest.raises(ValueError, match="confidence"):
        accuracy_interval(0.5, 10, confidence=1.0)
    with pytest.raises(ValueError, match="method"):
        accuracy_interval(0.5, 10, method="normal")
    with pytest.raises(ValueError, match="side"):
        AccuracyDropBound(AccuracyDrop(0.9, 0.01), 100, "middle")


def test_limit_interval_brackets_the_limit():
    n = 1000
    drop = AccuracyDrop(0.9, 0.03)
    curve = {0.0: 0.9, 0.2: 0.9, 0.4: 0.895, 0.5: 0.887, 0.6: 0.875, 0.7: 0.85, 0.8: 0.8, 0.9: 0.5}
    points = points_from(curve)
    low, high = limit_interval(points, drop, n)
    assert low <= limit_from_sweep(points, drop) == 0.6 <= high

    # By hand: "earliest" breaks when lo(a) < 0.9 - 0.03, "latest" when hi(a) < 0.9 - 0.03.
    def first_break(end: int) -> float:
        return min(a for a, acc in curve.items() if wilson(round(acc * n), n, 0.95)[end] < 0.87)

    ordered = sorted(curve)
    assert low == ordered[ordered.index(first_break(0)) - 1] == 0.4
    assert high == ordered[ordered.index(first_break(1)) - 1] == 0.7

    # A huge test set leaves no doubt: the interval collapses onto the limit.
    assert limit_interval(points, drop, 10**9) == (0.6, 0.6)
    # A tolerance finer than the interval cannot certify any pruning.
    assert limit_interval(points, AccuracyDrop(0.9, 0.001), n)[0] == 0.0


def test_limit_interval_bounds_refine_in_a_sweep():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(100, 100))
    n = 200

    def evaluate(m):  # an accuracy falling linearly with the zeroed fraction, in steps of 1/n
        return {"test_accuracy": round((0.95 - 0.5 * zero_fraction(m)) * n) / n}

    drop = AccuracyDrop(0.95, 0.05)
    bounds = [AccuracyDropBound(drop, n, side) for side in ("earliest", "latest")]
    points = sweep(
        model, evaluate, is_broken=[drop, *bounds], amounts=[0, 0.5, 1.0], progress=False
    )
    low, high = limit_interval(points, drop, n)
    assert 0 < low < limit_from_sweep(points, drop) < high
    for bound, end in zip(bounds, (low, high)):
        after = min((p for p in points if p.amount > end), key=lambda p: p.amount)
        assert bound(after.metrics)
        assert after.amount - end <= 0.005


# -- evaluating classifiers -----------------------------------------------------------------


def test_classification_metrics():
    torch.manual_seed(4)
    X, y = torch.randn(50, 7), torch.randint(0, 3, (50,))
    model = mlp()
    metrics = classification_metrics((X, y), (X[:20], y[:20]))(model)
    with torch.no_grad():
        out = model(X)
    assert metrics["test_loss"] == pytest.approx(float(nn.CrossEntropyLoss()(out, y)), rel=1e-6)
    assert metrics["test_accuracy"] == int((out.argmax(1) == y).sum()) / 50
    assert metrics["train_accuracy"] == int((out[:20].argmax(1) == y[:20]).sum()) / 20
    assert (metrics["n_test"], metrics["n_train"]) == (50, 20)
    with pytest.raises(TypeError, match="test data must be a pair"):
        classification_metrics([(X, y)])


@pytest.mark.parametrize("distinct_values", [2, 4], ids=["ties2", "ties4"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_predicted_support_equals_validated_mask_under_ties(model_name, distinct_values):
    """The quadratic predictor's removed set, R(p)'s removed vector and the mask that
    validation prunes with all come from one magnitude order, also when ties decide."""
    model = make_model(model_name, 0, distinct_values)
    names = prunable_names(model)
    weights = torch.cat([model.get_parameter(n).detach().reshape(-1) for n in names])
    flat = weights.double().numpy()  # what the prediction sees: w* in float64
    quadratic = QuadraticModel(np.eye(flat.size), flat)
    norm = PrunedNorm(flat)
    for amount in AMOUNTS:
        validated = ~torch.cat([m.reshape(-1) for m in kept_mask(model, amount).values()])
        predicted = quadratic.support(number_to_prune(amount, flat.size))
        assert predicted.tolist() == validated.tolist(), amount
        assert removed_mask(flat, amount).tolist() == validated.tolist(), amount
        removed = norm.removed_vector(number_to_prune(amount, flat.size) / flat.size) != 0
        assert not (removed & ~validated.numpy()).any(), amount
