"""The reference code's pipeline (eps, density, rounded R, argmin) against the tests' own."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pruning_limit.limit import predict_from_spectrum, pruned_norm
from pruning_limit.reference import (
    reference_density,
    reference_epsilon,
    reference_limit,
    reference_radii,
)
from pruning_limit.spectrum import Spectrum
from pruning_limit.statdim import statistical_dimension


def _spectrum(nodes, weights, dimension, zero_rows=0):
    return Spectrum(
        nodes=np.asarray(nodes, dtype=np.float64),
        weights=np.asarray(weights, dtype=np.float64),
        dimension=dimension,
        zero_rows=zero_rows,
        curvature="hessian",
        method="slq",
    )


def _second_implementation(nodes, weights, zero_rows, dimension, flat_weights, eps):
    """Written from the issue's description, loop by loop, without the library's code.

    Density: 100,000 bins from mean-of-mins - 0.01 to mean-of-maxes + 0.01, Gaussians of
    variance 1e-10 * max(1, range), mean over runs, normalised. Then: drop zero bins,
    |grid| as eigenvalue, a 1e-30 bin for the zero rows, gw(R) for every integer R,
    R(p) from the ceil(p D) smallest |w| (at least one, ties too), rounded; the answer
    is the first p = i/1000 minimising |gw(round R(p)) - p|.
    """
    nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
    lam_max = np.mean([row.max() for row in nodes]) + 0.01
    lam_min = np.mean([row.min() for row in nodes]) - 0.01
    grids = np.linspace(lam_min, lam_max, 100000)
    var = 1e-10 * max(1.0, lam_max - lam_min)
    per_run = np.zeros((nodes.shape[0], grids.size))
    for i in range(nodes.shape[0]):
        for j in range(nodes.shape[1]):
            per_run[i] += (
                weights[i, j]
                * np.exp(-((grids - nodes[i, j]) ** 2) / (2 * var))
                / np.sqrt(2 * np.pi * var)
            )
    density = per_run.mean(axis=0)
    density = density / (density.sum() * (grids[1] - grids[0]))

    masses = [d for d in density if d > 0]
    eigen = [abs(g) for g, d in zip(grids, density) if d > 0]
    if zero_rows:
        masses.append(zero_rows / (dimension - zero_rows) * sum(masses))
        eigen.append(1e-30)
    masses, eigen = np.array(masses), np.array(eigen)

    def gw(radius):
        r2 = 2 * eps / eigen
        return float(np.sum(masses * r2 / (radius**2 + r2)) / masses.sum())

    table = [gw(radius) for radius in range(int(np.sum(np.abs(flat_weights))) + 2)]
    magnitudes = np.abs(flat_weights)
    diffs = []
    for i in range(1000):
        p = i / 1000
        count = max(int(math.ceil(p * float(magnitudes.size))), 1)
        threshold = np.sort(magnitudes)[count - 1]
        removed = flat_weights[magnitudes <= threshold]
        radius = int(np.round(np.sqrt(np.sum(removed**2))))
        diffs.append(abs(table[radius] - p))
    return diffs.index(min(diffs)) / 1000, table


CASES = {
    # narrow (range < 1: variance 1e-10), one probe, some negative eigenvalues
    "narrow-one-probe": dict(
        nodes=np.linspace(-0.05, 0.6, 25)[None],
        weights=np.random.default_rng(1).dirichlet(np.ones(25))[None],
        zero_rows=0,
        dimension=400,
        scale=0.4,
        eps=0.02,
    ),
    # wide (range > 1: variance 1e-10 * range), two probes, zero rows
    "wide-two-probes-zero-rows": dict(
        nodes=np.sort(np.random.default_rng(2).gamma(0.5, 4.0, (2, 15)), axis=1) - 0.01,
        weights=np.random.default_rng(3).dirichlet(np.ones(15), size=2),
        zero_rows=37,
        dimension=300,
        scale=0.3,
        eps=0.05,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_reference_limit_matches_an_independent_implementation(name):
    case = CASES[name]
    spectrum = _spectrum(case["nodes"], case["weights"], case["dimension"], case["zero_rows"])
    flat = np.random.default_rng(4).standard_normal(case["dimension"]) * case["scale"]
    expected, table = _second_implementation(
        case["nodes"], case["weights"], case["zero_rows"], case["dimension"], flat, case["eps"]
    )
    result = reference_limit(spectrum, flat, case["eps"])
    assert result.removal_fraction == expected
    assert 0 < result.removal_fraction < 1
    rounded = result.curves["rounded_radius"]
    np.testing.assert_allclose(
        result.curves["gaussian_width"], [table[r] for r in rounded], rtol=1e-9, atol=1e-12
    )
    assert result.gaussian_width == pytest.approx(table[result.rounded_radius], rel=1e-9)
    assert result.to_dict()["fraction"] == "removed"
    assert result.kept_fraction == 1 - result.removal_fraction


def test_density_integrates_to_one_and_follows_the_reference_grid():
    nodes = np.array([[0.0, 0.2, 0.5], [0.1, 0.3, 0.7]])
    spectrum = _spectrum(nodes, np.full((2, 3), 1 / 3), dimension=10)
    grid, density, record = reference_density(spectrum)
    assert grid.size == 100_000
    assert record["low"] == pytest.approx(0.05 - 0.01) and record["high"] == pytest.approx(0.61)
    assert record["variance"] == 1e-10  # range < 1
    assert np.sum(density) * (grid[1] - grid[0]) == pytest.approx(1.0)
    assert (density == 0).sum() > 90_000  # Gaussians of width 1e-5: most bins are empty


def test_radii_remove_at_least_one_weight_and_every_tie():
    weights = np.array([0.5, -0.5, 2.0, 0.1, 3.0])
    radii = reference_radii(weights, np.array([0.0, 0.2, 0.3, 0.5, 0.999]))
    # p = 0 removes the smallest; p = 0.3 -> ceil(1.5) = 2 -> threshold 0.5 takes both 0.5s
    expected = [0.1, 0.1, math.sqrt(0.01 + 0.5), math.sqrt(0.01 + 0.5), math.sqrt(13.51)]
    np.testing.assert_allclose(radii, expected)


def test_reference_and_paper_agree_when_rounding_and_smoothing_do_not_matter():
    # Range < 1 (Gaussians wider than a bin) and R in the hundreds (rounding is fine):
    # the pipeline is then the paper's closed form on a 1/1000 grid.
    rng = np.random.default_rng(5)
    dimension = 2000
    eigenvalues = np.sort(rng.uniform(0.0, 0.8, dimension))
    spectrum = Spectrum(
        nodes=eigenvalues[None], weights=np.full((1, dimension), 1 / dimension),
        dimension=dimension, zero_rows=0, curvature="hessian", method="exact",
    )  # fmt: skip
    flat = rng.standard_normal(dimension) * 10
    eps = 50.0
    paper = predict_from_spectrum(spectrum, flat, eps, methods=("paper",), sensitivity=False)
    p_paper = paper.removal_fraction("paper")
    result = reference_limit(spectrum, flat, eps)
    assert abs(result.removal_fraction - p_paper) < 0.005
    delta = statistical_dimension(spectrum, pruned_norm(flat, result.removal_fraction), eps)
    assert result.gaussian_width == pytest.approx(delta, abs=0.005)


def test_reference_limit_refuses_bad_input():
    spectrum = _spectrum([[0.1, 0.2]], [[0.5, 0.5]], dimension=4)
    with pytest.raises(ValueError, match="D = 4 coordinates but weights has 3"):
        reference_limit(spectrum, np.ones(3), 0.1)
    with pytest.raises(ValueError, match="epsilon must be a positive finite number"):
        reference_limit(spectrum, np.ones(4), 0.0)


# -- eps ----------------------------------------------------------------------------------


class _DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


def _hand_losses(model, X, y, batch_size):
    W = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    X, y = X.double().numpy(), y.numpy()
    losses = []
    for start in range(0, len(y), batch_size):
        logits = X[start : start + batch_size] @ W.T + b
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        targets = y[start : start + batch_size]
        losses.append(-log_probs[np.arange(len(targets)), targets].mean())
    return np.array(losses)


def test_reference_epsilon_is_the_population_std_of_batch_losses_in_eval_mode():
    torch.manual_seed(0)
    model = _DropoutNet().double().train()
    X, y = torch.randn(300, 3, dtype=torch.float64), torch.randint(0, 4, (300,))
    losses = _hand_losses(model, X, y, 128)  # batches of 128, 128 and 44
    hand = math.sqrt(sum((value - losses.mean()) ** 2 for value in losses) / len(losses))
    eps, record = reference_epsilon(model, nn.CrossEntropyLoss(), (X, y))
    assert eps == pytest.approx(hand, rel=1e-12)
    assert eps != pytest.approx(float(np.std(losses, ddof=1)), rel=1e-3)
    assert model.training and model.drop.training  # modes restored
    assert record["kind"] == "reference" and record["value"] == eps
    assert record["ddof"] == 0 and record["mode"] == "eval"
    assert record["batch_size"] == 128 and record["batches"] == 3
    assert record["last_batch_size"] == 44 and record["last_batch_included"]
    assert record["shuffle_seed"] is None
    assert "ddof 0" in record["description"] and "eval mode" in record["description"]

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=128)
    assert reference_epsilon(model, nn.CrossEntropyLoss(), loader)[0] == pytest.approx(eps)

    order = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    shuffled = _hand_losses(model, X[order], y[order], 128)
    eps_shuffled, record = reference_epsilon(model, nn.CrossEntropyLoss(), (X, y), seed=3)
    assert eps_shuffled == pytest.approx(float(np.std(shuffled)), rel=1e-12)
    assert record["shuffle_seed"] == 3


def test_reference_epsilon_refuses_a_single_batch_and_a_sum_loss():
    model = nn.Linear(3, 2)
    X, y = torch.randn(100, 3), torch.randint(0, 2, (100,))
    with pytest.raises(ValueError, match="at least two mini-batches, got 1"):
        reference_epsilon(model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(ValueError, match="reduction='mean'"):
        reference_epsilon(model, nn.CrossEntropyLoss(reduction="sum"), (X, y), batch_size=10)


def _trained_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    inputs = torch.randn(300, 5, dtype=torch.float64)
    targets = torch.randint(0, 3, (300,))
    return model, inputs, targets


def test_epsilon_reference_through_predict_limit_is_the_hand_computed_np_std():
    import pruning_limit as pl

    model, inputs, targets = _trained_pair()
    model.train()  # the budget is read in eval mode whatever the model's mode
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        by_hand = [
            float(loss_fn(model(inputs[i : i + 128]), targets[i : i + 128]))
            for i in range(0, 300, 128)
        ]
    prediction = pl.predict_limit(
        model, data=(inputs, targets), loss_fn=loss_fn, epsilon="reference",
        methods=("paper", "reference"), curvature="hessian", batch_size=50,
    )  # fmt: skip
    assert prediction.epsilon == pytest.approx(float(np.std(by_hand, ddof=0)), rel=1e-12)
    source = prediction.epsilon_source
    assert source["kind"] == "reference" and source["ddof"] == 0 and source["mode"] == "eval"
    assert (source["batch_size"], source["batches"], source["last_batch_size"]) == (128, 3, 44)
    assert model.training


def test_reference_method_is_reference_limit_on_the_same_spectrum_with_its_difference_noted():
    import pruning_limit as pl
    from pruning_limit.budget import loss_budget

    model, inputs, targets = _trained_pair()
    loss_fn = nn.CrossEntropyLoss()
    spectrum = pl.exact_spectrum(model, loss_fn, (inputs, targets), curvature="hessian")
    prediction = pl.predict_limit(
        model, spectrum, epsilon=0.02, methods=("paper", "reference"), sensitivity=False
    )
    weights = np.concatenate(
        [p.detach().numpy().ravel() for n, p in model.named_parameters() if "weight" in n]
    )
    expected = reference_limit(spectrum, weights, 0.02)
    estimate = prediction.estimates["reference"]
    assert estimate.removal_fraction == expected.removal_fraction
    assert estimate.uncertainty["rounded_radius"] == expected.rounded_radius
    difference = expected.removal_fraction - prediction.removal_fraction("paper")
    assert f"reference - paper = {difference:+.3f} (fraction removed)" in prediction.notes
    with pytest.raises(ValueError, match="reference_epsilon"):
        loss_budget([0.1, 0.2], "reference")
    with pytest.raises(ValueError, match="'reference'"):
        loss_budget([0.1, 0.2], "population_std")
