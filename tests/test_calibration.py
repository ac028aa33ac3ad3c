"""Calibrated intervals: conformal coverage on known distributions, per regime, and refusals."""

import json
import math

import numpy as np
import pytest

from pruning_limit.calibration import (
    CalibrationRun,
    CalibrationSet,
    choose_rule,
    conformal_offsets,
    jackknife_minmax_offsets,
    regression_features,
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
    assert choose_rule(18, 0.9) == "symmetric"
    assert choose_rule(19, 0.9) == "jackknife-minmax"  # JACKKNIFE_MIN_UNITS
    assert required_runs(0.9, "jackknife-minmax") == 9
    assert choose_rule(19, 0.9, "asymmetric") == "asymmetric"
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
                "paper", "one_shot", "collapse", _regime(name), predicted, 0.9, rule="asymmetric"
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
    own = calibration.interval("paper", "one_shot", "collapse", network, 0.9, rule="asymmetric")
    pooled = calibration.interval(
        "paper", "one_shot", "collapse", network, 0.9, rule="asymmetric", mondrian=False
    )
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
        "paper", "one_shot", "collapse", SPARSE_FITS, 0.8, "asymmetric", check_range=False
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
    units = calibration.units("paper", "one_shot", "collapse", SPARSE_FITS)  # 25: jackknife+
    expected = jackknife_minmax_offsets(
        np.array([regression_features(group[0].regime) for _, _, group in units]),
        [r for _, r, _ in units],
        regression_features(_regime(SPARSE_FITS)),
        0.9,
    )
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


# -- jackknife+ with a ridge regression on the regime features ------------------------------


def _brute_force_jackknife_minmax(X, r, x, coverage, penalty):
    """The textbook jackknife-minmax (Barber et al. 2021): fit i by least squares on the
    augmented system [Z; sqrt(penalty) (0 | I)] beta = [r; 0], Z standardised on the
    n - 1 rows."""
    n, k = X.shape
    at_new_values, errors = [], []
    for i in range(n):
        keep = np.arange(n) != i
        mean, scale = X[keep].mean(0), X[keep].std(0)
        scale[scale <= 1e-12] = np.inf
        Z = np.c_[np.ones(n - 1), (X[keep] - mean) / scale]
        penalty_rows = np.c_[np.zeros(k), math.sqrt(penalty) * np.eye(k)]
        beta = np.linalg.lstsq(np.r_[Z, penalty_rows], np.r_[r[keep], np.zeros(k)], rcond=None)[0]
        at_left_out, at_new = np.c_[np.ones(2), (np.stack([X[i], x]) - mean) / scale] @ beta
        errors.append(abs(r[i] - at_left_out))
        at_new_values.append(at_new)
    # (n + 1)(1 - alpha) rounded first: 20 * 0.9 is 18.000000000000004 in floating point
    rank = math.ceil(round((n + 1) * coverage, 9))
    quantile = sorted(errors)[rank - 1]
    return min(at_new_values) - quantile, max(at_new_values) + quantile


@pytest.mark.parametrize("n, coverage, penalty", [(19, 0.9, 1.0), (30, 0.8, 0.1), (12, 0.9, 5.0)])
def test_jackknife_minmax_matches_the_textbook_loop(n, coverage, penalty):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 4))
    X[:, 3] = 1.0  # a feature constant in the calibration set contributes nothing
    r = X[:, :3] @ np.array([0.1, -0.05, 0.02]) + 0.03 * rng.standard_normal(n)
    x = rng.standard_normal(4)
    expected = _brute_force_jackknife_minmax(X, r, x, coverage, penalty)
    assert jackknife_minmax_offsets(X, r, x, coverage, penalty) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("n, coverage, seed", [(19, 0.9, 0), (40, 0.9, 1), (25, 0.8, 2)])
def test_jackknife_minmax_matches_mapie(n, coverage, seed):
    """MAPIE's CrossConformalRegressor, leave-one-out, method "minmax", on a standardising
    ridge (scikit-learn's StandardScaler + Ridge(alpha=1): population std, intercept
    not penalised, a constant feature scaled by 1 and given coefficient 0) is the same
    interval as ours; ours is a batched solve, fast enough for the n^2 fits of a
    leave-one-out table."""
    mapie = pytest.importorskip("mapie.regression")
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import LeaveOneOut
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    X[:, 5] = 1.0  # like L1 used, constant within a class
    r = 0.3 + X[:, :3] @ np.array([0.1, -0.05, 0.02]) + 0.04 * rng.standard_gamma(2.0, n)
    new = rng.standard_normal((3, 6))
    regressor = mapie.CrossConformalRegressor(
        make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        confidence_level=coverage,
        method="minmax",
        cv=LeaveOneOut(),
    )
    regressor.fit_conformalize(X, r)
    _, intervals = regressor.predict_interval(new)
    for x, (low, high) in zip(new, intervals[:, :, 0]):
        ours = jackknife_minmax_offsets(X, r, x, coverage, penalty=1.0)
        assert ours == pytest.approx((low, high), abs=1e-10)


def test_jackknife_minmax_covers_a_known_model_and_is_narrower_than_the_residuals_spread():
    """Residuals that depend on the features, as measured (module docstring): r = 0.3 +
    x . b + N(0, 0.02^2). Coverage at nominal 90 % is >= 1 - alpha by theory; over
    2,000 draws it is within 4 sigma of 90 % or above, and the interval is far narrower
    than the split-conformal one, which must span the feature-driven spread."""
    rng = np.random.default_rng(9)
    n, draws, coverage = 29, 2000, 0.9
    b = np.array([0.15, -0.1, 0.05])
    inside, widths, split_widths = [], [], []
    for _ in range(draws):
        X = rng.standard_normal((n + 1, 3))
        r = 0.3 + X @ b + 0.02 * rng.standard_normal(n + 1)
        low, high = jackknife_minmax_offsets(X[:n], r[:n], X[n], coverage)
        inside.append(low <= r[n] <= high)
        widths.append(high - low)
        split_low, split_high = conformal_offsets(r[:n], coverage, "asymmetric")
        split_widths.append(split_high - split_low)
    error = 4 * math.sqrt(0.9 * 0.1 / draws)
    assert np.mean(inside) >= coverage - error
    assert np.mean(inside) <= 0.97  # not covering by being needlessly wide
    assert np.mean(widths) < 0.3 * np.mean(split_widths)
    # At least the noise's own 90 % width, and at most half again: the min and max over
    # the leave-one-out fits add the regression's own uncertainty.
    assert 2 * 1.645 * 0.02 <= np.mean(widths) <= 1.5 * 2 * 1.645 * 0.02


def test_jackknife_minmax_is_the_default_from_19_units_and_reads_the_regime_features():
    rng = np.random.default_rng(10)
    # Residuals that move with the pruned-norm ratio within the class.
    calibration = _calibration({SPARSE_FITS: np.zeros(25)}, rng)
    runs = [
        CalibrationRun(
            run.run,
            run.group,
            run.regime,
            run.predicted,
            {
                "one_shot": {
                    "collapse": run.predicted["paper"] + 2.0 * (run.regime.pruned_norm_ratio - 0.1)
                }
            },
        )  # fmt: skip
        for run in calibration.runs
    ]
    calibration = CalibrationSet(runs)
    low_ratio = _regime(SPARSE_FITS, pruned_norm_ratio=0.06)
    high_ratio = _regime(SPARSE_FITS, pruned_norm_ratio=0.14)
    first = calibration.interval("paper", "one_shot", "collapse", low_ratio, 0.5)
    second = calibration.interval("paper", "one_shot", "collapse", high_ratio, 0.5)
    assert first.rule == second.rule == "jackknife-minmax"
    assert "ridge jackknife-minmax" in str(first)
    # The interval follows the feature: 0.5 + 2 (0.06 - 0.1) = 0.42, 0.5 + 2 (0.04) = 0.58.
    assert first.low < 0.42 < first.high < second.low < 0.58 < second.high
    split = calibration.interval("paper", "one_shot", "collapse", low_ratio, 0.5, rule="asymmetric")
    assert first.width < 0.5 * split.width
    np.testing.assert_allclose(
        regression_features(low_ratio),
        [low_ratio.train_accuracy, math.log(0.05), 0.3, math.log(1000 / 2000), 0.06, 0.0],
    )
    pooled = calibration.interval(
        "paper", "one_shot", "collapse", None, 0.5, rule="jackknife-minmax", mondrian=False,
        check_range=False,
    )  # fmt: skip
    assert pooled.bounds is None and "needs the network's regime features" in pooled.reason


def test_held_out_networks_of_the_same_regimes_are_covered_at_the_nominal_rate():
    """Intervals of one synthetic set tested on fresh networks of the same distribution:
    the held-out coverage is the conformal guarantee, measured (not leave-one-out)."""
    rng = np.random.default_rng(11)
    covered, answered = 0, 0
    for _ in range(40):
        calibration = _calibration({DENSE_FITS: -0.3 + 0.05 * rng.standard_normal(29)}, rng)
        fresh = _calibration({DENSE_FITS: -0.3 + 0.05 * rng.standard_normal(10)}, rng)
        fresh = CalibrationSet(
            [
                type(r)(f"new-{r.run}", f"new-{r.group}", r.regime, r.predicted, r.actual)
                for r in fresh.runs
            ]  # fmt: skip
        )
        row = calibration.held_out(fresh, "paper", "one_shot", "collapse", DENSE_FITS, 0.9)
        assert row["units"] == 10 and row["rules"].keys() <= {"jackknife-minmax"}
        covered += round(row["coverage"] * row["answered"]) if row["answered"] else 0
        answered += row["answered"]
    assert answered >= 300  # the range check refuses only the extremes
    share = covered / answered
    assert 0.9 - 4 * math.sqrt(0.09 / answered) <= share <= 0.98
    [row] = calibration.held_out_table(fresh, 0.9)
    assert row["regime"] == DENSE_FITS and row["units"] == 10


def test_a_saved_set_carries_its_leave_one_out_rows_and_drops_them_for_other_runs(tmp_path):
    rng = np.random.default_rng(12)
    calibration = _calibration({SPARSE_FITS: 0.05 + 0.02 * rng.standard_normal(25)}, rng)
    row = calibration.leave_one_out("paper", "one_shot", "collapse", SPARSE_FITS, 0.9)
    path = calibration.save(tmp_path / "set.json")
    data = json.loads(path.read_text())
    assert data["leave_one_out"]["rows"] == [row]
    loaded = CalibrationSet.load(path)
    assert (
        loaded._measured
        and loaded.leave_one_out("paper", "one_shot", "collapse", SPARSE_FITS, 0.9) == row
    )
    # The same rows over other runs are not trusted: they are measured again.
    data["runs"][0]["actual"]["one_shot"]["collapse"] += 0.5
    data["leave_one_out"]["rows"][0]["coverage"] = 0.123
    changed = CalibrationSet.from_dict(data)
    assert not changed._measured
    again = changed.leave_one_out("paper", "one_shot", "collapse", SPARSE_FITS, 0.9)
    assert again["coverage"] != 0.123
