"""The measured transition against curves whose readings are known independently.

The independent readings never go through the package's pruning or sweeps: they
evaluate the curve at every p of a uniform grid of step 0.001 (p -> k = round(p D),
the k smallest |w| removed) and apply each definition directly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from pruning_limit.pruning import SweepPoint, number_to_prune, sweep, sweep_down
from pruning_limit.transition import (
    READINGS,
    FallsBelow,
    Transition,
    measure_transition,
    read_transition,
    reference_amounts,
    transition_criteria,
)

FINE = [i / 1000 for i in range(1001)]


def wilson(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + confidence / 2)
    centre = (correct + z**2 / 2) / (n + z**2)
    half = z / (n + z**2) * math.sqrt(correct * (n - correct) / n + z**2 / 4)
    return centre - half, centre + half


def first_crossing(amounts, values, level) -> float:
    """The definition on a fine grid: the first amount with value < level, interpolated
    linearly with the amount before it."""
    for i, value in enumerate(values):
        if value < level:
            high, low = values[i - 1], value
            return amounts[i - 1] + (high - level) / (high - low) * (amounts[i] - amounts[i - 1])
    raise AssertionError("the curve never crosses the level")


# -- a linear classifier whose accuracy under pruning is known exactly ----------------------


class PlantedLinear:
    """y = 1 iff w . x > 0, with w > 0 of distinct magnitudes, on one-hot samples.

    Coordinate j (rank r by |w_j|, 0 = smallest) carries c_r samples x = e_j of label 1
    (right while w_j is kept, wrong once it is pruned: the output becomes 0) and b_r
    of label 0 (wrong while kept, right once pruned). Removing the k smallest weights:

        correct(k) = sum_{r < k} b_r + sum_{r >= k} c_r.
    """

    def __init__(self, dimension: int = 1000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dimension = dimension
        ranks = np.arange(dimension) / dimension
        # Label-1 mass concentrated near rank 0.8 (the collapse); label-0 mass on ranks
        # 0.3-0.45 (pruning those helps: the accuracy rises above dense first) and above
        # 0.9 (the curve comes back up from below a(1) at the end).
        self.c = np.round(12 * np.exp(-0.5 * ((ranks - 0.8) / 0.05) ** 2)).astype(int)
        self.b = 2 * ((ranks > 0.3) & (ranks < 0.45)) + 2 * (ranks > 0.9)
        magnitudes = np.sort(rng.uniform(0.1, 1.0, dimension))
        self.order = rng.permutation(dimension)  # coordinate of rank r
        weight = np.empty(dimension)
        weight[self.order] = magnitudes
        self.model = nn.Linear(dimension, 1, bias=False).double()
        with torch.no_grad():
            self.model.weight.copy_(torch.from_numpy(weight)[None])
        self.n = int(self.c.sum() + self.b.sum())
        by_coordinate = np.empty(dimension), np.empty(dimension)
        by_coordinate[0][self.order], by_coordinate[1][self.order] = self.c, self.b
        self.label1 = torch.from_numpy(by_coordinate[0])
        self.label0 = torch.from_numpy(by_coordinate[1])
        self.inputs = torch.eye(dimension, dtype=torch.float64)
        self.evaluations = 0

    def evaluate(self, model: nn.Module) -> dict:
        """An evaluate_fn: the forward pass on every one-hot sample, weighted by its count."""
        self.evaluations += 1
        with torch.no_grad():
            predicted_one = model(self.inputs)[:, 0] > 0
        correct = torch.where(predicted_one, self.label1, self.label0).sum()
        return {"test_accuracy": float(correct) / self.n, "n_test": self.n}

    def correct(self, amount: float) -> int:
        k = round(amount * self.dimension)
        return int(self.b[:k].sum() + self.c[k:].sum())

    def accuracy(self, amount: float) -> float:
        return self.correct(amount) / self.n


@pytest.fixture(scope="module")
def planted():
    return PlantedLinear()


def test_planted_curve_is_what_the_test_thinks(planted):
    for amount in (0.0, 0.37, 0.8, 1.0):
        torch_mask_count = round(amount * planted.dimension)
        weight = planted.model.weight.detach()[0].clone()
        weight[weight.abs().argsort()[:torch_mask_count]] = 0
        with torch.no_grad():
            model = nn.Linear(planted.dimension, 1, bias=False).double()
            model.weight.copy_(weight[None])
        assert planted.evaluate(model)["test_accuracy"] == planted.accuracy(amount)


def test_collapse_and_width_of_a_linear_classifier(planted):
    resolution = 0.002
    planted.evaluations = 0
    points, transition = measure_transition(
        planted.model,
        planted.evaluate,
        resolution=resolution,
        reference_grid=None,
        progress=False,
    )
    a0, a1 = planted.accuracy(0.0), planted.accuracy(1.0)
    assert (transition.dense_accuracy, transition.pruned_accuracy) == (a0, a1)
    fine = [planted.accuracy(p) for p in FINE]
    expected = {
        name: first_crossing(FINE, fine, a0 - fraction * (a0 - a1))
        for name, fraction in (("collapse_start", 0.1), ("collapse", 0.5), ("collapse_end", 0.9))
    }
    assert 0.7 < expected["collapse_start"] < expected["collapse"] < expected["collapse_end"] < 0.95
    for name, value in expected.items():
        reading = transition.reading(name)
        low, high = reading.bracket
        assert high - low <= resolution
        # Both the bracket here and the fine grid's hold the same jump of the curve.
        assert reading.value == pytest.approx(value, abs=resolution + 0.001), name
        assert low <= reading.value <= high
    width = expected["collapse_end"] - expected["collapse_start"]
    assert transition.collapse_width == pytest.approx(width, abs=2 * (resolution + 0.001))
    assert transition.collapse_width == pytest.approx(
        transition.limit("collapse_end") - transition.limit("collapse_start"), abs=1e-15
    )
    # The binomial interval: where the Wilson ends of the accuracies cross the level.
    level = transition.reading("collapse").level
    lows = [wilson(planted.correct(p), planted.n)[0] for p in FINE]
    highs = [wilson(planted.correct(p), planted.n)[1] for p in FINE]
    earliest, latest = transition.interval("collapse")
    assert earliest == pytest.approx(first_crossing(FINE, lows, level), abs=resolution + 0.001)
    assert latest == pytest.approx(first_crossing(FINE, highs, level), abs=resolution + 0.001)
    assert earliest < transition.collapse < latest
    assert planted.evaluations == len({p.removed for p in points})


def test_above_dense_of_a_linear_classifier(planted):
    planted.evaluations = 0
    points, transition = measure_transition(
        planted.model, planted.evaluate, resolution=0.005, reference_grid=0.001, progress=False
    )
    a0 = planted.accuracy(0.0)
    grid = FINE[:-1]  # the reference code's grid stops at 0.999
    above = [p for p in grid if planted.accuracy(p) > a0]
    assert above and max(above) < transition.limit(
        "collapse_start"
    )  # the rule reads before the fall
    assert transition.above_dense == max(above)
    assert transition.bracket("above_dense") == (max(above), max(above) + 0.001)
    certain = [p for p in grid if wilson(planted.correct(p), planted.n)[0] > a0]
    possible = [p for p in grid if wilson(planted.correct(p), planted.n)[1] > a0]
    assert transition.interval("above_dense") == (
        max(certain) if certain else None,
        max(possible),
    )
    # One evaluation per count of weights removed, whatever the number of amounts.
    assert planted.evaluations == len({p.removed for p in points})

    # Without certifying, the scan stops at the rule's answer: the lower end is unknown.
    cost, planted.evaluations = planted.evaluations, 0
    _, quick = measure_transition(
        planted.model,
        planted.evaluate,
        reference_grid=0.001,
        certify_above_dense=False,
        progress=False,
    )
    assert planted.evaluations < cost
    assert quick.above_dense == transition.above_dense
    assert quick.interval("above_dense") == (None, max(possible))
    assert any("undetermined" in note for note in quick.notes)


def test_above_dense_is_none_when_accuracy_never_exceeds_dense():
    dimension = 1000
    # Equal to dense up to 0.5 (equal is not above), then falling.
    curve = {p: 0.9 if p <= 0.5 else 0.9 - 0.8 * (p - 0.5) / 0.5 for p in FINE}
    points = [
        SweepPoint(p, number_to_prune(p, dimension), dimension, {"test_accuracy": a})
        for p, a in curve.items()
    ]
    transition = read_transition(points)
    assert transition.above_dense is None
    assert "strictly above" in transition.reading("above_dense").reason
    assert transition.collapse == pytest.approx(0.75)
    # One grid point a hair above dense decides it.
    points[321].metrics["test_accuracy"] = 0.9 + 1e-9
    assert read_transition(points).above_dense == 0.321


def test_above_dense_needs_the_grid_from_the_top():
    points = [
        SweepPoint(p, number_to_prune(p, 1000), 1000, {"test_accuracy": 0.9 - 0.8 * p})
        for p in (0.0, 0.5, 1.0)
    ]
    with pytest.raises(ValueError, match="sweep_down"):
        read_transition(points)
    assert read_transition(points, reference_grid=None).above_dense is None


# -- planted curves read through the zero fraction of a model --------------------------------


def zero_fraction(model: nn.Module) -> float:
    weights = torch.cat([m.weight.reshape(-1) for m in model if isinstance(m, nn.Linear)])
    return float((weights == 0).sum()) / weights.numel()


def planted_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 40))  # D = 14000


def logistic_accuracy(p: float, centre: float, width: float) -> float:
    return 0.1 + 0.85 / (1 + math.exp((p - centre) / width))


@pytest.mark.parametrize("resolution", [0.01, 0.002])
@pytest.mark.parametrize("centre", [0.4123, 0.87])
def test_bisection_reaches_the_resolution(resolution, centre):
    model = planted_model()
    calls = []

    def evaluate(m):
        calls.append(1)
        p = zero_fraction(m)
        return {
            "test_accuracy": logistic_accuracy(p, centre, 0.02),
            "train_loss": 0.01 * math.exp(8 * logistic_accuracy(-p, -centre, 0.02)),
        }

    points, transition = measure_transition(
        model, evaluate, resolution=resolution, reference_grid=None, progress=False
    )
    for name in ("collapse_start", "collapse", "collapse_end", "loss_collapse"):
        low, high = transition.bracket(name)
        assert 0 < high - low <= resolution, name
    a0, a1 = (logistic_accuracy(p, centre, 0.02) for p in (0.0, 1.0))

    def crossing(fraction):  # the planted curve solved for a = a0 - fraction (a0 - a1)
        level = a0 - fraction * (a0 - a1)
        return centre + 0.02 * math.log(0.85 / (level - 0.1) - 1)

    # p is the zero fraction, which is the amount up to one weight in D = 14000.
    assert transition.collapse == pytest.approx(crossing(0.5), abs=resolution)
    width = crossing(0.9) - crossing(0.1)
    assert width == pytest.approx(2 * 0.02 * math.log(9), rel=0.02)
    assert transition.collapse_width == pytest.approx(width, abs=2 * resolution)
    assert transition.interval("collapse") is None  # no sample count, no binomial interval
    # Coarse grid (21 amounts, 1.0 added) + bisections: each halving costs one evaluation.
    halvings = math.ceil(math.log2(0.05 / resolution))
    assert len(calls) == len({p.removed for p in points}) <= 22 + 4 * halvings


def test_non_monotone_curve_reports_the_first_crossing():
    # A dip below half-way at 0.28-0.33 (the coarse grid sees 0.3), a recovery, then the
    # collapse near 0.8: the first crossing is in the dip.
    model = planted_model()

    def evaluate(m):
        p = zero_fraction(m)
        dip = 0.28 <= p <= 0.33
        return {"test_accuracy": 0.05 if dip else logistic_accuracy(p, 0.8, 0.01)}

    _, transition = measure_transition(
        model, evaluate, resolution=0.001, reference_grid=None, progress=False
    )
    low, high = transition.bracket("collapse")
    assert low < 0.28 <= high and high - low <= 0.001
    assert transition.collapse == pytest.approx(0.28, abs=0.001)
    assert transition.limit("collapse_end") == pytest.approx(0.28, abs=0.001)

    # By hand on sweep points: level 0.5; the first crossing is between 0 and 0.3.
    curve = {0.0: 0.9, 0.3: 0.4, 0.4: 0.9, 0.8: 0.2, 1.0: 0.1}
    points = [SweepPoint(p, round(p * 1000), 1000, {"test_accuracy": a}) for p, a in curve.items()]
    transition = read_transition(points, reference_grid=None)
    assert transition.collapse == pytest.approx(0.3 * 0.4 / 0.5)
    assert transition.bracket("collapse") == (0.0, 0.3)


def test_loss_collapse_on_a_planted_loss_curve():
    model = planted_model()
    dense_loss, pruned_loss = 1e-4, 2.0

    def evaluate(m):  # log L linear in p from 0.5 to 0.9: half-way at p = 0.7
        g = min(max((zero_fraction(m) - 0.5) / 0.4, 0.0), 1.0)
        return {"train_loss": math.exp((1 - g) * math.log(dense_loss) + g * math.log(pruned_loss))}

    _, transition = measure_transition(model, evaluate, resolution=0.005, progress=False)
    reading = transition.reading("loss_collapse")
    assert reading.level == pytest.approx(math.sqrt(dense_loss * pruned_loss))
    assert transition.loss_collapse == pytest.approx(0.7, abs=1e-4)  # counts: 1/D = 7e-5
    assert reading.bracket[1] - reading.bracket[0] <= 0.005
    # No accuracy in the metrics: the accuracy readings say so.
    assert transition.collapse is None and transition.above_dense is None
    assert "test_accuracy" in transition.reading("collapse").reason

    # By hand: the interpolation is in log L (in L it would give 0.5 + 9/99 * 0.4).
    losses = {0.0: 1.0, 0.5: 1.0, 0.9: 100.0, 1.0: 100.0}
    points = [SweepPoint(p, round(p * 10), 10, {"train_loss": v}) for p, v in losses.items()]
    assert read_transition(points).loss_collapse == pytest.approx(0.7)


def test_a_test_only_scan_of_the_reference_grid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40))  # D = 2000
    full_calls, test_calls = [], []

    def accuracy(p):  # above dense around 0.3, collapse near 0.8
        return 0.9 + (0.02 if 0.25 < p < 0.35 else 0.0) - 0.8 / (1 + math.exp((0.8 - p) / 0.02))

    def evaluate(m):
        full_calls.append(1)
        p = zero_fraction(m)
        return {"test_accuracy": accuracy(p), "train_loss": math.exp(10 * p)}

    def evaluate_test(m):
        test_calls.append(1)
        return {"test_accuracy": accuracy(zero_fraction(m))}

    points, quick = measure_transition(
        model, evaluate, reference_evaluate_fn=evaluate_test, progress=False
    )
    assert test_calls and any("train_loss" not in p.metrics for p in points)
    _, full = measure_transition(model, evaluate, progress=False)
    assert quick.above_dense == full.above_dense == pytest.approx(0.349, abs=1e-9)
    assert quick.loss_collapse == pytest.approx(0.5, abs=0.005)
    assert (
        quick.reading("loss_collapse").bracket[1] - quick.reading("loss_collapse").bracket[0]
        <= 0.005
    )


# -- degenerate curves, criteria, saving ------------------------------------------------------


def points_of(curve: dict, dimension: int = 1000, key: str = "test_accuracy") -> list:
    return [
        SweepPoint(p, number_to_prune(p, dimension), dimension, {key: v}) for p, v in curve.items()
    ]


def test_no_collapse_when_the_pruned_network_is_not_worse():
    transition = read_transition(points_of({0.0: 0.5, 0.5: 0.3, 1.0: 0.5}), reference_grid=None)
    for name in ("collapse", "collapse_start", "collapse_end", "collapse_width"):
        assert transition.limit(name) is None
        assert "no collapse" in transition.reading(name).reason
    assert transition_criteria(points_of({0.0: 0.5, 1.0: 0.6})) == []


def test_the_ends_must_be_measured():
    with pytest.raises(ValueError, match="p = 1"):
        read_transition(points_of({0.0: 0.9, 0.99: 0.1}))
    with pytest.raises(ValueError, match="p = 0 and p = 1"):
        read_transition(points_of({0.5: 0.9}))
    with pytest.raises(ValueError, match="empty"):
        read_transition([])
    with pytest.raises(ValueError, match="reference_grid"):
        reference_amounts(0.003)


def test_criteria_bisect_what_the_reading_reads():
    points = points_of({0.0: 0.9, 1.0: 0.1})
    criteria = transition_criteria(points, n=1000)
    levels = sorted({c.level for c in criteria if isinstance(c, FallsBelow)})
    assert levels == pytest.approx([0.18, 0.5, 0.82])
    assert len(criteria) == 9  # three levels, each with its two interval sides
    assert FallsBelow(0.5)({"test_accuracy": 0.5}) is False  # on the level: not below


def test_transition_saves_and_loads(planted):
    _, transition = measure_transition(
        planted.model, planted.evaluate, amounts=[0.5, 0.9], reference_grid=0.01, progress=False
    )
    loaded = Transition.from_dict(json.loads(json.dumps(transition.to_dict())))
    assert loaded == transition
    assert set(loaded.readings) == set(READINGS)
    assert isinstance(loaded.bracket("collapse"), tuple)
    assert "collapse=" in repr(loaded)


# -- the sweep machinery the readings rely on -----------------------------------------------


def test_sweep_reuses_known_points_and_sweep_down_stops_at_the_first_hit():
    model = planted_model()
    seen = []

    def evaluate(m):
        seen.append(zero_fraction(m))
        return {"zero_fraction": seen[-1]}

    first = sweep(model, evaluate, is_broken=lambda m: False, amounts=[0.0, 1.0], progress=False)
    assert len(seen) == 2
    again = sweep(
        model,
        evaluate,
        is_broken=lambda m: False,
        amounts=[0.0, 0.5, 1.0],
        known=first,
        progress=False,
    )
    assert len(seen) == 3 and [p.amount for p in again] == [0.0, 0.5, 1.0]
    down = sweep_down(
        model,
        evaluate,
        amounts=reference_amounts(0.01),
        until=lambda m: m["zero_fraction"] < 0.9,
        known=again,
        progress=False,
    )
    assert seen[3:] == pytest.approx(
        [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.89]
    )
    assert min(p.amount for p in down if p.amount > 0.5) == 0.89
    # D = 6: the 1000 amounts of the reference grid remove 7 distinct counts.
    small = nn.Sequential(nn.Linear(3, 2, bias=False))
    seen.clear()
    down = sweep_down(
        small, evaluate, amounts=reference_amounts(), until=lambda m: False, progress=False
    )
    assert len(down) == 1000 and len(seen) == 7  # counts 0..6 (0.999 * 6 rounds to 6)
    with pytest.raises(ValueError, match="D = "):
        sweep(nn.Linear(3, 2), evaluate, is_broken=lambda m: False, known=first, progress=False)
