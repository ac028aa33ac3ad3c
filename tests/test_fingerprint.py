"""A result knows what it was computed at (issue 16, second part).

A Spectrum records fingerprints of the weights and the data, so that a spectrum of
other weights or data is refused; an edited Prediction file is refused on load; the
seed reaches what it seeds and is recorded.
"""

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pruning_limit as pl
from pruning_limit.fingerprint import data_fingerprint, weights_fingerprint
from pruning_limit.prediction import Prediction

LOSS = nn.CrossEntropyLoss()


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(96, 4, generator=generator)
    return model, (X, torch.randint(0, 3, (96,), generator=generator))


def spectrum_of(model, data):
    return pl.exact_spectrum(model, LOSS, data, device="cpu", batch_size=32)


def predict(model, spectrum, data=None, **options):
    return pl.predict_limit(model, spectrum, data=data, loss_fn=LOSS, epsilon=0.01,
                            methods=("paper",), batch_size=32, **options)  # fmt: skip


def test_fingerprints_ignore_order_batches_and_float_width_but_not_values():
    model, (X, y) = problem()
    whole = data_fingerprint([(X, y)])
    order = torch.randperm(len(X))
    assert data_fingerprint([(X[order][:50], y[order][:50]), (X[order][50:], y[order][50:])]) \
        == whole  # fmt: skip
    assert data_fingerprint([(X.double(), y)]) == whole
    assert data_fingerprint([(X, (y + 1) % 3)]) != whole
    assert data_fingerprint([(X[:-1], y[:-1])]) != whole
    weights = list(model.named_parameters())
    assert weights_fingerprint(weights) == weights_fingerprint(
        [(n, p.double()) for n, p in weights]
    )


def test_a_spectrum_records_its_fingerprints_and_keeps_them_on_disk(tmp_path):
    model, data = problem()
    spectrum = spectrum_of(model, data)
    assert set(spectrum.fingerprint) >= {"weights", "other", "data", "samples"}
    again = pl.Spectrum.load(spectrum.save(tmp_path / "s.npz"))
    assert again.fingerprint == spectrum.fingerprint
    slq = pl.estimate_spectrum(model, LOSS, data, steps=4, probes=2, device="cpu",
                               progress=False)  # fmt: skip
    assert slq.fingerprint == spectrum.fingerprint  # same weights, same data


def test_a_spectrum_of_other_weights_is_refused_unless_allowed():
    model, data = problem()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight[0, 0] += 0.1
    spectrum = spectrum_of(other, data)
    with pytest.raises(ValueError, match="other prunable weights.*allow_mismatch"):
        predict(model, spectrum, data)
    with pytest.raises(ValueError, match="other prunable weights"):
        predict(model, spectrum)  # without data, the weights are still checked
    allowed = predict(model, spectrum, data, allow_mismatch=True)
    assert any("other prunable weights: used as allowed" in n for n in allowed.notes)
    bias = copy.deepcopy(model)
    with torch.no_grad():
        bias[0].bias[0] += 0.1  # not pruned, but the curvature depends on it
    with pytest.raises(ValueError, match="other parameters or buffers"):
        predict(model, spectrum_of(bias, data), data)


def test_a_spectrum_of_other_data_is_refused_and_the_same_data_shuffled_is_not():
    model, (X, y) = problem()
    spectrum = spectrum_of(model, (X, y))
    with pytest.raises(ValueError, match="other data"):
        predict(model, spectrum, (X + 0.01, y))
    order = torch.randperm(len(X))
    prediction = predict(model, spectrum, (X[order], y[order]))
    assert prediction.spectrum["fingerprint"] == spectrum.fingerprint


def test_a_spectrum_without_fingerprint_loads_with_a_warning_and_a_note(tmp_path):
    model, data = problem()
    spectrum = spectrum_of(model, data)
    spectrum.fingerprint = {}  # as written before fingerprints were recorded
    old = pl.Spectrum.load(spectrum.save(tmp_path / "old.npz"))
    with pytest.warns(UserWarning, match="records no fingerprint"):
        prediction = predict(model, old, data)
    assert any("no fingerprint" in note for note in prediction.notes)


def test_the_seed_reaches_the_probes_and_is_recorded():
    model, data = problem()
    options = dict(
        data=data, loss_fn=LOSS, epsilon=0.01, methods=("paper",), batch_size=32, dense_limit=10
    )  # fmt: skip  (D = 42 > 10: SLQ, whose probes are random)
    three, four = (
        pl.predict_limit(model, seed=3, **options),
        pl.predict_limit(model, seed=4, **options),
    )
    assert three.seeds == {"slq_probes": 3} and four.seeds == {"slq_probes": 4}
    assert three.removal_fraction() != four.removal_fraction()
    exact = pl.predict_limit(model, seed=3, **{**options, "dense_limit": 3000})
    assert exact.seeds == {}  # nothing random: an exact spectrum and a closed form


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["estimates"]["paper"].update(removal_fraction=1.7), "1.7"),
        (lambda d: d["estimates"]["paper"].update(removal_fraction=math.nan), "nan"),
        (lambda d: d["estimates"]["paper"].update(removal_fraction=-0.1), "-0.1"),
        (lambda d: d["estimates"]["paper"].update(interval=[0.1]), "interval"),
        (lambda d: d.pop("estimates"), "needs 'estimates'"),
        (lambda d: d.update(estimates={}), "needs 'estimates'"),
        (lambda d: d.update(epsilon=-1.0), "epsilon"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_an_edited_prediction_file_is_refused_on_load(tmp_path, edit, words):
    model, data = problem()
    saved = json.loads(predict(model, None, data).to_json())
    edit(saved)
    path = tmp_path / "prediction.json"
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="not a valid prediction") as error:
        Prediction.load(path)
    assert words in str(error.value)


def test_a_json_list_is_no_prediction(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON list, not an object"):
        Prediction.load(path)


def test_a_valid_prediction_round_trips():
    model, data = problem()
    prediction = predict(model, None, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Prediction.from_dict(json.loads(prediction.to_json()))
    assert again.removal_fraction() == prediction.removal_fraction()
    assert np.isfinite(again.epsilon)
