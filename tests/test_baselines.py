"""The emp baseline (Effective Model Pruning) against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pruning_limit.baselines import effective_weight_count, emp_removal_fraction


def test_emp_by_hand():
    # s = (3, 4, 0, 1) / 8; sum s^2 = (9 + 16 + 0 + 1) / 64 = 26/64; N_eff = 64/26; N = 4.
    weights = [3.0, -4.0, 0.0, 1.0]
    assert effective_weight_count(weights) == pytest.approx(64 / 26, rel=1e-15)
    assert emp_removal_fraction(weights) == pytest.approx(1 - 64 / 26 / 4, rel=1e-15)


def test_emp_extremes_and_scale():
    assert emp_removal_fraction(np.full(10, -0.3)) == pytest.approx(0.0, abs=1e-15)
    one_hot = np.zeros(8)
    one_hot[5] = 2.0
    assert emp_removal_fraction(one_hot) == pytest.approx(1 - 1 / 8)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1000)
    # Magnitudes only, whatever the scale (also far beyond float64's range for w^2).
    assert emp_removal_fraction(1e-200 * w) == pytest.approx(emp_removal_fraction(w), rel=1e-12)
    assert emp_removal_fraction(1e200 * w) == pytest.approx(emp_removal_fraction(w), rel=1e-12)
    # Gaussian weights: N_eff / N -> (E|w|)^2 / E w^2 = 2 / pi.
    big = rng.standard_normal(200_000)
    assert emp_removal_fraction(big) == pytest.approx(1 - 2 / np.pi, abs=0.01)


def test_emp_pools_the_layers_of_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    layers = [model[0].weight, model[2].weight]
    flat = torch.cat([w.detach().reshape(-1) for w in layers]).double().numpy()
    a = np.abs(flat)
    expected = 1 - (a.sum() ** 2 / (a**2).sum()) / a.size
    assert emp_removal_fraction(layers) == pytest.approx(expected, rel=1e-12)
    assert emp_removal_fraction(torch.from_numpy(flat)) == pytest.approx(expected, rel=1e-12)


def test_emp_bad_input():
    with pytest.raises(ValueError, match="zero"):
        emp_removal_fraction(np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        emp_removal_fraction([])
    with pytest.raises(ValueError, match="NaN"):
        emp_removal_fraction([1.0, np.nan])
    with pytest.raises(TypeError, match="weights"):
        emp_removal_fraction(3.0)


def test_emp_is_a_method_of_the_predictors():
    from pruning_limit.limit import predict_from_spectrum
    from pruning_limit.pipeline import predict_limit
    from pruning_limit.prediction import BASELINES, DEFAULT_METHODS, METHODS
    from pruning_limit.spectrum import Spectrum

    assert "emp" in METHODS and "emp" in DEFAULT_METHODS and BASELINES == ("emp",)
    weights = np.linspace(-1.0, 2.0, 20)
    spectrum = Spectrum(
        nodes=np.linspace(0, 1, 20)[None], weights=np.full((1, 20), 1 / 20), dimension=20,
        zero_rows=0, curvature="ggn", method="exact",
    )  # fmt: skip
    prediction = predict_from_spectrum(spectrum, weights, 0.1, methods=("paper", "emp"))
    estimate = prediction.estimates["emp"]
    assert estimate.removal_fraction == pytest.approx(emp_removal_fraction(weights), rel=1e-15)
    assert estimate.interval == (estimate.removal_fraction, estimate.removal_fraction)
    assert "baseline" in estimate.notes[0]
    # The eps does not move it; the spectrum does not either.
    other = predict_from_spectrum(spectrum, weights, 10.0, methods=("emp",))
    assert other.removal_fraction("emp") == estimate.removal_fraction

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    prediction = predict_limit(
        model, data=(X, y), loss_fn=nn.CrossEntropyLoss(), methods=("emp",), batch_size=20
    )
    expected = emp_removal_fraction([model[0].weight, model[2].weight])
    assert prediction.removal_fraction("emp") == pytest.approx(expected, rel=1e-12)
