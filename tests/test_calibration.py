"""Calibrated intervals: conformal coverage on known distributions, per regime, and refusals."""

import math

import numpy as np
import pytest

from pruning_limit.calibration import (
    CalibrationRun,
    CalibrationSet,
    choose_rule,
    conformal_offsets,
    required_runs,
)
from pruning_limit.regime import DENSE_FITS, SPARSE_FITS, UNDER_FITTED, Regime

DRAWS = 4000


def _exact_coverage(n: int, coverage: float, rule: str) -> float:
    """P(new residual inside) for continuous exchangeable residuals: rank counting."""
    alpha = 1 - coverage
    if rule == "asymmetric":
        low = math.floor(round((n + 1) * alpha / 2, 9))
        high = math.ceil(round((n + 1) * (1 - alpha / 2), 9))
        return (high - low) / (n + 1)
    return math.ceil(round((n + 1) * (1 - alpha), 9)) / (n + 1)


@pytest.mark.parametrize(
    "rule, n, coverage",
    [("asymmetric", 19, 0.9), ("asymmetric", 29, 0.9), ("asymmetric", 49, 0.8),
     ("symmetric", 9, 0.9), ("symmetric", 14, 0.9), ("symmetric", 30, 0.75)],
)  # fmt: skip
def test_coverage_on_a_known_distribution_matches_the_nominal(rule, n, coverage):
    # Skewed and biased, like the measured residuals: 0.3 + Gamma(2, 0.05).
    rng = np.random.default_rng(n)
    residuals = 0.3 + rng.gamma(2.0, 0.05, size=(DRAWS, n + 1))
    inside = np.empty(DRAWS, dtype=bool)
    for i, draw in enumerate(residuals):
        low, high = conformal_offsets(draw[:n], coverage, rule)
        inside[i] = low <= draw[n] <= high
    expected = _exact_coverage(n, coverage, rule)
    error = 4 * math.sqrt(expected * (1 - expected) / DRAWS)
    assert expected >= coverage
    assert abs(inside.mean() - expected) <= error
    assert inside.mean() >= coverage - error


def test_the_asymmetric_interval_is_narrower_on_biased_residuals():
    rng = np.random.default_rng(0)
    residuals = 0.4 + 0.05 * rng.standard_normal(39)
    low, high = conformal_offsets(residuals, 0.9, "asymmetric")
    s_low, s_high = conformal_offsets(residuals, 0.9, "symmetric")
    assert high - low < 0.5 * (s_high - s_low)
    assert low > 0  # the interval lies wholly above the prediction, as the residuals do


def test_required_runs_is_where_the_order_statistic_first_exists():
    assert required_runs(0.9, "asymmetric") == 19
    assert required_runs(0.9, "symmetric") == 9
    assert required_runs(0.8, "asymmetric") == 9
    assert choose_rule(8, 0.9) is None
    assert choose_rule(9, 0.9) == "symmetric"
    assert choose_rule(19, 0.9) == "asymmetric"
    with pytest.raises(ValueError, match="too few"):
        conformal_offsets(np.zeros(18), 0.9, "asymmetric")
    with pytest.raises(ValueError, match="coverage"):
        conformal_offsets(np.zeros(30), 1.0)


# -- a calibration set of synthetic networks ------------------------------------------------


def _regime(name: str, **changes) -> Regime:
    values = {
        SPARSE_FITS: dict(train_accuracy=0.99, small_weight_share=0.3),
        DENSE_FITS: dict(train_accuracy=0.99, small_weight_share=0.01),
        UNDER_FITTED: dict(train_accuracy=0.6, small_weight_share=0.01),
    }[name]
    fields = dict(
        train_loss=0.05, l1=0.0, optimizer="adam", dimension=1000, num_train=2000,
        removal_fraction=0.8, removal_fraction_method="paper", pruned_norm_ratio=0.1,
        curvature="ggn", epsilon_source="batch_std",
    )  # fmt: skip
    fields.update(values)
    fields.update(changes)
    return Regime(**fields)


def _calibration(residuals_by_class: dict, rng, twins: bool = False) -> CalibrationSet:
    runs = []
    for name, residuals in residuals_by_class.items():
        for i, r in enumerate(residuals):
            predicted = 0.5 + 0.02 * (i % 10)
            spread = dict(
                train_loss=0.04 + 0.02 * rng.random(),
                pruned_norm_ratio=0.05 + 0.1 * rng.random(),
                small_weight_share=_regime(name).small_weight_share * (0.8 + 0.4 * rng.random()),
                train_accuracy=_regime(name).train_accuracy + 0.005 * (rng.random() - 0.5),
                num_train=int(1500 + 1000 * rng.random()),
            )
            copies = ("float32", "float64") if twins else ("float64",)
            for dtype in copies:
                runs.append(
                    CalibrationRun(
                        run=f"{name}-{i}-{dtype}",
                        group=f"{name}-{i}",
                        regime=_regime(name, **spread),
                        predicted={"paper": predicted},
                        actual={"one_shot": {"collapse": predicted + float(r)}},
                    )
                )
    return CalibrationSet(runs=runs)


def test_mondrian_intervals_cover_each_regime_where_pooled_ones_do_not():
    rng = np.random.default_rng(1)
    shifts = {SPARSE_FITS: 0.03, DENSE_FITS: -0.35}
    covered = {name: [] for name in shifts}
    for _ in range(300):
        residuals = {name: shift + 0.03 * rng.standard_normal(19) for name, shift in shifts.items()}
        calibration = _calibration(residuals, rng)
        for name, shift in shifts.items():
            predicted = 0.9
            result = calibration.interval(
                "paper", "one_shot", "collapse", _regime(name), predicted, 0.9
            )
            assert result.bounds is not None and result.rule == "asymmetric"
            actual = predicted + shift + 0.03 * rng.standard_normal()
            covered[name].append(result.low <= actual <= result.high)
    for name in shifts:
        # exact coverage 18/20 = 0.9; 4 sigma over 300 draws is 0.07
        assert np.mean(covered[name]) >= 0.9 - 0.07
    # Pooling both classes gives every network the same offsets, reaching from about
    # -0.4 to +0.1: far wider than either class's own interval.
    network = _regime(SPARSE_FITS)
    own = calibration.interval("paper", "one_shot", "collapse", network, 0.9)
    pooled = calibration.interval("paper", "one_shot", "collapse", network, 0.9, mondrian=False)
    assert own.width < 0.2 < 0.35 < pooled.width
    assert pooled.regime == "all regimes (pooled)" and pooled.runs == 38


def test_outside_the_calibration_range_gives_no_interval_with_the_reason():
    rng = np.random.default_rng(2)
    calibration = _calibration({SPARSE_FITS: 0.05 + 0.02 * rng.standard_normal(25)}, rng)
    inside = calibration.interval("paper", "one_shot", "collapse", _regime(SPARSE_FITS), 0.8)
    assert inside.bounds is not None
    network = _regime(SPARSE_FITS, num_train=100)  # D/N = 10, calibrated on 0.4 .. 0.67
    result = calibration.interval("paper", "one_shot", "collapse", network, 0.8)
    assert result.bounds is None
    assert "outside the calibration range" in result.reason and "d_over_n" in result.reason
    hessian = _regime(SPARSE_FITS, curvature="hessian")
    result = calibration.interval("paper", "one_shot", "collapse", hessian, 0.8)
    assert result.bounds is None and "curvature 'hessian'" in result.reason
    elsewhere = _regime(SPARSE_FITS, removal_fraction_method="quadratic")
    result = calibration.interval("paper", "one_shot", "collapse", elsewhere, 0.8)
    assert result.bounds is None and "R(p*)/||w||" in result.reason
    assert "no calibrated interval" in str(result)


def test_too_few_runs_give_no_interval_with_the_reason():
    rng = np.random.default_rng(3)
    calibration = _calibration({DENSE_FITS: -0.3 + 0.02 * rng.standard_normal(8)}, rng)
    network = _regime(DENSE_FITS, train_loss=0.05, pruned_norm_ratio=0.1)
    result = calibration.interval("paper", "one_shot", "collapse", network, 0.8, coverage=0.9)
    assert result.bounds is None and result.runs == 8
    assert "too few calibration runs" in result.reason and "needs 9" in result.reason
    # 80 % needs only 4 units with the symmetric rule, 9 with the asymmetric one.
    result = calibration.interval("paper", "one_shot", "collapse", network, 0.8, coverage=0.8)
    assert result.bounds is not None and result.rule == "symmetric"
    unknown = calibration.interval("paper", "one_shot", "collapse", None, 0.8)
    assert unknown.bounds is None and "regime is unknown" in unknown.reason
    other = calibration.interval("paper", "one_shot", "collapse", _regime(UNDER_FITTED), 0.8)
    assert other.bounds is None and "no calibration run of regime" in other.reason
    missing = calibration.interval("paper", "one_shot", "accuracy", network, 0.8)
    assert missing.bounds is None and "one_shot/accuracy is not in" in missing.reason


def test_twins_are_one_unit_and_leave_one_out_leaves_both():
    rng = np.random.default_rng(4)
    residuals = {SPARSE_FITS: 0.05 + 0.02 * rng.standard_normal(19)}
    calibration = _calibration(residuals, rng, twins=True)
    assert len(calibration.runs) == 38
    units = calibration.units("paper", "one_shot", "collapse", SPARSE_FITS)
    assert len(units) == 19
    np.testing.assert_allclose(sorted(r for _, r, _ in units), sorted(residuals[SPARSE_FITS]))
    table = calibration.leave_one_out(
        "paper", "one_shot", "collapse", SPARSE_FITS, coverage=0.8, check_range=False
    )
    # 18 units remain after leaving one out: the asymmetric rule at 80 % needs 9.
    assert table["units"] == 19 and table["answered"] == 19
    assert table["rules"] == {"asymmetric": 19}
    # Exchangeable units: a left-out one is outside only when it is the smallest or largest.
    assert table["coverage"] == pytest.approx(17 / 19)


def test_clipped_to_the_unit_interval():
    rng = np.random.default_rng(5)
    calibration = _calibration({SPARSE_FITS: 0.02 + 0.05 * rng.standard_normal(19)}, rng)
    result = calibration.interval("paper", "one_shot", "collapse", _regime(SPARSE_FITS), 0.97)
    assert result.high == 1.0 and 0.8 < result.low < 0.97


def test_save_and_load(tmp_path):
    rng = np.random.default_rng(6)
    calibration = _calibration({SPARSE_FITS: 0.05 + 0.02 * rng.standard_normal(19)}, rng)
    calibration.provenance = {"sources": {"x.json": {"date": "today"}}}
    path = calibration.save(tmp_path / "calibration.json")
    loaded = CalibrationSet.load(path)
    assert loaded.runs == calibration.runs and loaded.provenance == calibration.provenance
    with pytest.raises(ValueError, match="not a calibration set"):
        CalibrationSet.from_dict({"format": "something else", "runs": []})


def test_the_shipped_set_loads_and_answers_or_says_why():
    calibration = CalibrationSet.load()
    assert calibration.runs and calibration.provenance["sources"]
    assert ("one_shot", "accuracy") in calibration.targets()
    run = calibration.runs[0]
    result = calibration.interval(
        "paper", "one_shot", "accuracy", run.regime, run.predicted["paper"], 0.9
    )
    assert (result.bounds is None) == (result.reason is not None)


def test_the_range_check_reads_the_features_that_move_the_residual():
    rng = np.random.default_rng(7)
    calibration = _calibration({SPARSE_FITS: 0.05 + 0.02 * rng.standard_normal(25)}, rng)
    # Train loss and accuracy lie outside their calibration range (0.04 .. 0.06) but
    # the class already reads the fit: the interval is given.
    fitted = _regime(SPARSE_FITS, train_loss=0.5, train_accuracy=1.0)
    assert calibration.interval("paper", "one_shot", "collapse", fitted, 0.8).bounds is not None
    for changes, feature in [
        (dict(small_weight_share=0.9), "small_weight_share"),
        (dict(pruned_norm_ratio=0.5), "pruned_norm_ratio"),
    ]:
        result = calibration.interval(
            "paper", "one_shot", "collapse", _regime(SPARSE_FITS, **changes), 0.8
        )
        assert result.bounds is None and feature in result.reason
    strict = calibration.interval(
        "paper", "one_shot", "collapse", fitted, 0.8, range_features=("train_loss",)
    )
    assert strict.bounds is None and "train_loss" in strict.reason
    with pytest.raises(ValueError, match="unknown range features"):
        calibration.interval("paper", "one_shot", "collapse", fitted, 0.8, range_features=("x",))
    under = _calibration({UNDER_FITTED: 0.05 + 0.02 * rng.standard_normal(25)}, rng)
    regression = _regime(UNDER_FITTED, train_accuracy=None)  # a model without accuracy
    result = under.interval("paper", "one_shot", "collapse", regression, 0.8)
    assert result.bounds is None and "not a classifier" in result.reason


def test_a_prediction_gives_its_calibrated_interval_with_the_measured_coverage_or_why_not():
    from pruning_limit.limit import predict_from_spectrum
    from pruning_limit.spectrum import Spectrum

    rng = np.random.default_rng(8)
    calibration = _calibration({SPARSE_FITS: 0.05 + 0.02 * rng.standard_normal(25)}, rng)
    spectrum = Spectrum(
        nodes=np.linspace(0, 1, 20)[None], weights=np.full((1, 20), 1 / 20), dimension=20,
        zero_rows=0, curvature="ggn", method="exact",
    )  # fmt: skip
    prediction = predict_from_spectrum(spectrum, np.linspace(-1, 1, 20), 0.1, methods=("paper",))
    # From a spectrum alone there is no regime, hence no interval, and the reason says so.
    assert prediction.regime is None
    assert prediction.calibrated_interval("paper", calibration=calibration) is None
    assert "regime is unknown" in prediction.calibrated("paper", calibration=calibration).reason
    assert "Regime: unknown" in prediction.summary()

    prediction.regime = _regime(SPARSE_FITS).to_dict()
    p = prediction.removal_fraction("paper")
    low, high = prediction.calibrated_interval("paper", calibration=calibration)
    units = calibration.units("paper", "one_shot", "collapse", SPARSE_FITS)
    expected = conformal_offsets([r for _, r, _ in units], 0.9, "asymmetric")
    assert (low, high) == pytest.approx((p + expected[0], p + expected[1]))
    result = prediction.calibrated("paper", calibration=calibration)
    measured = calibration.leave_one_out("paper", "one_shot", "collapse", SPARSE_FITS, 0.9)
    assert result.measured == {k: measured[k] for k in ("units", "answered", "coverage",
                                                         "mean_width")}  # fmt: skip
    assert "leave-one-out" in result.measured_text()
    [every] = prediction.calibrated_intervals(calibration=calibration)
    assert every.bounds == (low, high)

    prediction.regime = _regime(SPARSE_FITS, num_train=10).to_dict()  # D/N = 100
    assert prediction.calibrated_interval("paper", calibration=calibration) is None
    reason = prediction.calibrated("paper", calibration=calibration).reason
    assert "outside the calibration range" in reason and "d_over_n = 100" in reason
