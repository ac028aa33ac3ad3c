"""Every figure writes a non-empty PNG, returns its path and leaves no pyplot state."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from pruning_limit.pipeline import exact_spectrum, predict_limit
from pruning_limit.plots import (
    plot_spectral_density,
    plot_statistical_dimension,
    plot_study,
    plot_validation,
)
from pruning_limit.study import StudyResult
from pruning_limit.validation import validate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results():
    with threadpool_limits(limits=1):
        generator = torch.Generator().manual_seed(0)
        X = torch.randn(200, 5, generator=generator, dtype=torch.float64)
        y = (X[:, 0] + X[:, 1] > 0).long()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
        loss_fn = nn.CrossEntropyLoss()
        data = (X[:120], y[:120])
        prediction = predict_limit(
            model, data=data, loss_fn=loss_fn, curvature="ggn", batch_size=40, sensitivity=False
        )
        validation = validate(
            model, train_data=data, test_data=(X[120:], y[120:]), loss_fn=loss_fn,
            variants=("one_shot", "refit"), amounts=[0.0, 0.3, 0.6, 0.9], resolution=0.05,
            batch_size=40, progress=False,
        )  # fmt: skip
        spectrum = exact_spectrum(model, loss_fn, data, curvature="ggn", device="cpu")
    return prediction, validation, spectrum


def study_result() -> StudyResult:
    rows = []
    for family, knobs in (("manifold", (2, 8, 32)), ("digits", (4, 16))):
        for regularisation in ("plain", "l1=0.001"):
            for knob in knobs:
                rows.append(
                    {
                        "run": f"{family}-{knob}-{regularisation}",
                        "dataset": family,
                        "regularisation": regularisation,
                        "dtype": "float32",
                        "intrinsic_dimension": float(knob),
                        "intrinsic_dimension_label": "latent d",
                        "predicted": {
                            "paper": {"p": 0.9 - 0.01 * knob, "interval": [0.8, 0.9]},
                            "quadratic": {"p": 0.8 - 0.01 * knob, "interval": [0.7, 0.8]},
                        },
                        "actual": {
                            "one_shot": {
                                "accuracy": 0.5 - 0.01 * knob,
                                "accuracy_interval": [0.3, 0.6],
                                "loss_budget": 0.4 - 0.01 * knob,
                                "collapse": 0.8 - 0.01 * knob,
                                "collapse_start": 0.7 - 0.01 * knob,
                                "collapse_end": 0.85 - 0.01 * knob,
                                "above_dense": None,
                                "loss_collapse": 0.75,
                            },
                            "refit": {
                                "accuracy": None,
                                "accuracy_interval": None,
                                "loss_budget": 0.45,
                            },
                        },
                    }
                )
    return StudyResult(name="hand-made", out="unused", rows=rows, summary=[], config={})


def check_png(path, expected) -> None:
    assert path == expected
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


def no_open_figures() -> bool:
    import matplotlib.pyplot as plt

    return plt.get_fignums() == []


def test_validation_figure(results, tmp_path):
    prediction, validation, _ = results
    check_png(plot_validation(validation, tmp_path / "a.png", prediction), tmp_path / "a.png")
    check_png(plot_validation(validation, tmp_path / "b"), tmp_path / "b.png")
    assert no_open_figures()


def test_statistical_dimension_figure(results, tmp_path):
    prediction, _, _ = results
    target = tmp_path / "nested" / "statdim.png"
    check_png(plot_statistical_dimension(prediction, target), target)
    assert no_open_figures()


def test_spectral_density_figure(results, tmp_path):
    _, _, spectrum = results
    check_png(plot_spectral_density(spectrum, tmp_path / "s.png"), tmp_path / "s.png")
    assert no_open_figures()


def test_validation_figure_marks_the_collapse_and_its_band():
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon, Rectangle

    from pruning_limit.plots import _mark_transition
    from pruning_limit.transition import Reading, Transition

    readings = {
        "collapse": Reading(0.62, (0.6, 0.65), None, 0.5),
        "collapse_start": Reading(0.55, (0.5, 0.6), None, 0.8),
        "collapse_end": Reading(0.71, (0.7, 0.75), None, 0.2),
        "collapse_width": Reading(0.16),
        "above_dense": Reading(0.3, (0.3, 0.301), None, 0.9),
        "loss_collapse": Reading(None, reason="no rise"),
    }
    transition = Transition(readings, 0.9, 0.1, 0.1, 1.0, 0.001, None)

    class Result:  # what _mark_transition reads of a VariantSweep
        pass

    result = Result()
    result.transition = transition
    axis = Figure().subplots()
    _mark_transition(axis, result, "#123456")
    # x of an axvspan is in data coordinates (y in axes coordinates).
    to_data = axis.transData.inverted()
    corners = [
        to_data.transform(patch.get_verts())[:, 0]
        for patch in axis.patches
        if isinstance(patch, (Polygon, Rectangle))
    ]
    spans = [(float(x.min()), float(x.max())) for x in corners]
    assert any(s == pytest.approx((0.55, 0.71)) for s in spans), spans
    vertical = [line.get_xdata()[0] for line in axis.lines if line.get_linestyle() == "-."]
    assert vertical == [pytest.approx(0.62)]
    markers = [line for line in axis.lines if line.get_marker() == "v"]
    assert list(markers[0].get_xdata()) == [0.3] and list(markers[0].get_ydata()) == [0.9]
    assert "collapse 0.620" in axis.texts[0].get_text()


def test_validation_figure_with_the_transition(results, tmp_path):
    _, validation, _ = results
    assert validation.variants["one_shot"].transition is not None
    check_png(plot_validation(validation, tmp_path / "t.png"), tmp_path / "t.png")


@pytest.mark.parametrize("criterion", ["accuracy", "loss_budget", "collapse"])
def test_study_figure(tmp_path, criterion):
    target = tmp_path / f"study-{criterion}.png"
    check_png(plot_study(study_result(), target, criterion=criterion), target)
    assert no_open_figures()
