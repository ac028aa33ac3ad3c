"""The regime of a network: features against hand-computed values on a tiny model."""

import math

import pytest
import torch

from pruning_limit.regime import (
    DENSE_FITS,
    FIT_ACCURACY,
    SPARSE_FITS,
    UNDER_FITTED,
    Regime,
    card_training,
    measure_regime,
    small_weight_share,
)


def _linear(weights) -> torch.nn.Linear:
    weights = torch.tensor(weights, dtype=torch.float64)
    model = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=True).double()
    with torch.no_grad():
        model.weight.copy_(weights)
        model.bias.zero_()
    return model


# 2 classes, 3 inputs: D = 6 prunable weights (the bias is not prunable).
WEIGHTS = [[2.0, 0.0, 1e-4], [0.0, -1.0, 5e-3]]
X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 0, 1])


def _hand_cross_entropy(logits, label) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_features_against_hand_computed_values():
    model = _linear(WEIGHTS)
    card = {"training": {"l1": 1e-3, "optimizer": "sgd"}}
    regime = measure_regime(
        model,
        torch.nn.CrossEntropyLoss(),
        (X, Y),
        removal_fraction=0.5,
        removal_fraction_method="paper",
        card=card,
        curvature="ggn",
        epsilon_source={"kind": "batch_std", "batch_size": 256},
    )
    # logits (W x): x1 -> (2, 0), x2 -> (0, -1), x3 -> (1e-4, 5e-3)
    logits = [(2.0, 0.0), (0.0, -1.0), (1e-4, 5e-3)]
    loss = sum(_hand_cross_entropy(z, int(y)) for z, y in zip(logits, Y)) / 3
    assert regime.train_loss == pytest.approx(loss, rel=1e-12)
    # predictions: 0, 0, 1 -> all three right
    assert regime.train_accuracy == 1.0
    # |w| < 1e-3 * 2 = 2e-3: the two zeros and 1e-4 -> 3 of 6
    assert regime.small_weight_share == 0.5
    assert regime.dimension == 6 and regime.num_train == 3
    assert regime.d_over_n == 2.0
    # p = 0.5 removes the 3 smallest: 0, 0, 1e-4 -> R = 1e-4; ||w||^2 = 4 + 1 + 1e-8 + 2.5e-5
    norm = math.sqrt(4 + 1 + 1e-8 + 25e-6)
    assert regime.pruned_norm_ratio == pytest.approx(1e-4 / norm, rel=1e-12)
    assert regime.l1 == 1e-3 and regime.l1_used is True and regime.optimizer == "sgd"
    assert regime.curvature == "ggn" and regime.epsilon_source == "batch_std"
    assert regime.name == SPARSE_FITS


def test_pruned_norm_ratio_between_counts_interpolates_like_R_of_p():
    model = _linear(WEIGHTS)
    # p D = 4.5: the 4 smallest (0, 0, 1e-4, 5e-3) and half the square of the fifth (1).
    regime = measure_regime(model, None, (X, Y), removal_fraction=0.75)
    removed = math.sqrt(1e-8 + 25e-6 + 0.5 * 1.0)
    norm = math.sqrt(4 + 1 + 1e-8 + 25e-6)
    assert regime.pruned_norm_ratio == pytest.approx(removed / norm, rel=1e-12)


def test_without_card_l1_and_optimiser_are_unknown():
    regime = measure_regime(_linear(WEIGHTS), None, (X, Y), removal_fraction=0.0)
    assert regime.l1 is None and regime.l1_used is None and regime.optimizer == "unknown"
    assert regime.pruned_norm_ratio == 0.0
    assert card_training({"training": {"l1": 0.0, "optimizer": "adam"}}) == (0.0, "adam")


def test_classes_follow_the_documented_thresholds():
    base = measure_regime(_linear(WEIGHTS), None, (X, Y), removal_fraction=0.5)
    dense = Regime.from_dict({**base.to_dict(), "small_weight_share": 0.0})
    under = Regime.from_dict({**base.to_dict(), "train_accuracy": FIT_ACCURACY - 1e-9})
    assert dense.name == DENSE_FITS
    assert under.name == UNDER_FITTED
    assert Regime.from_dict({**base.to_dict(), "train_accuracy": None}).name == UNDER_FITTED


def test_a_dense_model_reads_dense():
    model = _linear([[2.0, 0.5, 1.0], [0.3, -1.0, 0.7]])
    assert small_weight_share(model.weight.detach()) == 0.0
    regime = measure_regime(model, None, (X, Y), removal_fraction=0.5)
    assert regime.small_weight_share == 0.0
    assert regime.name in (DENSE_FITS, UNDER_FITTED)


def test_save_load_and_print():
    regime = measure_regime(
        _linear(WEIGHTS), None, (X, Y), removal_fraction=0.5, card={"training": {"l1": 0.0}}
    )
    data = regime.to_dict()
    assert data["name"] == regime.name and data["d_over_n"] == 2.0 and data["l1_used"] is False
    assert Regime.from_dict(data) == regime
    text = str(regime)
    assert regime.name in text and "D/N" in text and "L1 penalty: no" in text
    with pytest.raises(ValueError, match="needs the fields"):
        Regime.from_dict({"train_loss": 1.0})


def test_bad_input_is_refused():
    model = _linear(WEIGHTS)
    with pytest.raises(ValueError, match="removal_fraction"):
        measure_regime(model, None, (X, Y), removal_fraction=1.5)
    with pytest.raises(TypeError, match="data must be"):
        measure_regime(model, None, 3, removal_fraction=0.5)


def test_batches_give_the_sample_weighted_means():
    model = _linear(WEIGHTS)
    whole = measure_regime(model, None, (X, Y), removal_fraction=0.5)
    loader = [(X[:2], Y[:2]), (X[2:], Y[2:])]  # unequal batches
    batched = measure_regime(model, None, loader, removal_fraction=0.5)
    assert batched.num_train == 3
    assert batched.train_loss == pytest.approx(whole.train_loss, rel=1e-12)
    assert batched.train_accuracy == whole.train_accuracy


def test_a_prediction_holds_the_regime_at_papers_limit_saved_loaded_and_printed(tmp_path):
    import numpy as np

    import pruning_limit as pl
    from pruning_limit.limit import closed_form_limit

    model, loss_fn = _linear(WEIGHTS), torch.nn.CrossEntropyLoss()
    card = {"training": {"l1": 1e-3, "optimizer": "sgd"}}
    # paper is not asked for: the regime still reads R at paper's p*.
    prediction = pl.predict_limit(
        model, data=(X, Y), loss_fn=loss_fn, methods=("trace_bound",), epsilon=0.1, card=card
    )
    regime = prediction.network_regime()
    spectrum = pl.exact_spectrum(model, loss_fn, (X, Y), dtype=torch.float64, device="cpu")
    weights = np.array(WEIGHTS).reshape(-1)
    p = closed_form_limit("paper", spectrum, weights, 0.1)
    assert regime.removal_fraction == pytest.approx(p, abs=1e-12)
    expected = measure_regime(
        model, loss_fn, (X, Y), removal_fraction=p, removal_fraction_method="paper", card=card,
        curvature="ggn", epsilon_source="given",
    )  # fmt: skip
    assert regime == Regime.from_dict({**expected.to_dict(), "removal_fraction": p})
    assert regime.l1_used and regime.optimizer == "sgd" and regime.epsilon_source == "given"
    loaded = pl.Prediction.load(prediction.save(tmp_path / "prediction.json"))
    assert loaded.regime == prediction.regime
    assert f"Regime: {regime.name}" in loaded.summary()
    assert "spectrum only" in loaded.summary() and "calibrated" in loaded.summary()
    old = loaded.to_dict()
    del old["regime"]  # a file written before regimes were recorded
    assert pl.Prediction.from_dict(old).regime is None


def test_a_regression_model_has_no_train_accuracy():
    model = torch.nn.Linear(3, 1, bias=False).double()
    targets = torch.zeros(3, 1, dtype=torch.float64)
    regime = measure_regime(model, torch.nn.MSELoss(), (X, targets), removal_fraction=0.5)
    assert regime.train_accuracy is None and regime.name == UNDER_FITTED
