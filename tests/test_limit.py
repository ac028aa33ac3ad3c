"""The predicted limit: eps, R(p), the fixed points, their intervals, the Prediction.

Independent references are written here: a dense-grid-plus-bisection solver over
exact eigenvalues, a brute-force quadratic-model search on Haar-rotated matrices,
and a numpy Lanczos for SLQ-like spectra.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from cases import reference_slq
from scipy.stats import ortho_group

import pruning_limit as pl
from pruning_limit.budget import loss_budget
from pruning_limit.limit import predict_from_spectrum, pruned_norm, statistical_dimension_curve
from pruning_limit.pipeline import predict_limit
from pruning_limit.prediction import (
    CONVENTION,
    DEFAULT_METHODS,
    METHODS,
    Prediction,
    measured_errors,
)
from pruning_limit.spectrum import ParameterInfo, Spectrum


def exact_spectrum(eigenvalues, curvature="hessian", parameters=()):
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    n = eigenvalues.size
    return Spectrum(
        nodes=eigenvalues[None],
        weights=np.full((1, n), 1.0 / n),
        dimension=n,
        zero_rows=0,
        curvature=curvature,
        method="exact",
        parameters=parameters,
    )


def reference_paper_limit(eigenvalues, weights, epsilon, policy="abs"):
    """Root of mean(r^2 / (R(p)^2 + r^2)) - p: dense grid, then bisection."""
    squares = np.sort(np.asarray(weights) ** 2)
    cumulative = np.concatenate([[0.0], np.cumsum(squares)])
    curvature = np.abs(eigenvalues) if policy == "abs" else np.maximum(eigenvalues, 0)

    def excess(p):
        position = p * squares.size
        whole = min(int(np.floor(position)), squares.size - 1)
        radius_sq = cumulative[whole] + (position - whole) * squares[whole]
        return np.mean(1.0 / (1.0 + radius_sq / (2 * epsilon) * curvature)) - p

    grid = np.linspace(0, 1, 2001)
    values = np.array([excess(p) for p in grid])
    first = np.flatnonzero(values <= 0)[0]
    low, high = grid[first - 1], grid[first]
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return 0.5 * (low + high)


def brute_force_quadratic_limit(matrix, weights, epsilon):
    """Largest count k whose magnitude support has Schur cost <= eps (every k tried)."""
    order = np.argsort(np.abs(weights), kind="stable")
    best = 0
    for count in range(1, weights.size + 1):
        pruned = np.zeros(weights.size, dtype=bool)
        pruned[order[:count]] = True
        kept = ~pruned
        c_kp = matrix[np.ix_(kept, pruned)]
        schur = (
            matrix[np.ix_(pruned, pruned)]
            - c_kp.T @ np.linalg.solve(matrix[np.ix_(kept, kept)], c_kp)
            if kept.any()
            else matrix
        )
        if 0.5 * weights[pruned] @ schur @ weights[pruned] <= epsilon:
            best = count
        else:
            break
    return best / weights.size


# -- R(p) -----------------------------------------------------------------------------------


def test_pruned_norm_is_exact_at_counts_and_continuous_between():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(37)
    dimension = weights.size
    sorted_squares = np.sort(weights**2)
    counts = np.arange(dimension + 1)
    expected = np.sqrt(np.concatenate([[0.0], np.cumsum(sorted_squares)]))
    np.testing.assert_allclose(pruned_norm(weights, counts / dimension), expected, rtol=1e-12)
    grid = np.linspace(0, 1, 1001)
    values = pruned_norm(weights, grid)
    assert np.all(np.diff(values) >= 0)
    # R^2 moves by at most the largest square per unit of p D.
    largest_step = sorted_squares.max() * grid[1] * dimension
    assert np.max(np.abs(np.diff(values**2))) <= largest_step + 1e-12
    assert isinstance(pruned_norm(weights, 0.3), float)
    assert pruned_norm(torch.tensor(weights), 1.0) == pytest.approx(np.linalg.norm(weights))
    for bad in (-0.1, 1.1, np.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            pruned_norm(weights, bad)
    # The removed vector at p = k / D, computed in floating point, is the count k's exactly:
    # no round-off sliver sqrt(1e-15) ~ 3e-8 of the next weight.
    from pruning_limit.limit import PrunedNorm

    norm, order = PrunedNorm(weights), np.argsort(np.abs(weights))
    for k, p in enumerate(np.linspace(0.0, 1.0, dimension + 1)):
        expected = np.zeros(dimension)
        expected[order[:k]] = weights[order[:k]]
        assert np.array_equal(norm.removed_vector(p), expected), k


# -- the fixed points -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["abs", "flat"])
@pytest.mark.parametrize("epsilon", [1e-4, 1e-2, 1.0])
def test_paper_limit_matches_an_independent_solver(policy, epsilon):
    rng = np.random.default_rng(1)
    eigenvalues = rng.normal(0.05, 0.3, 300) * rng.exponential(1.0, 300)
    weights = rng.standard_normal(300) * rng.exponential(1.0, 300)
    prediction = predict_from_spectrum(
        exact_spectrum(eigenvalues), weights, epsilon, methods=("paper",), policy=policy
    )
    expected = reference_paper_limit(eigenvalues, weights, epsilon, policy)
    estimate = prediction.estimates["paper"]
    assert estimate.removal_fraction == pytest.approx(expected, abs=1e-9)
    assert estimate.interval == (estimate.removal_fraction, estimate.removal_fraction)
    assert estimate.radius == pytest.approx(pruned_norm(weights, expected), rel=1e-6)
    assert estimate.kept_fraction == pytest.approx(1 - expected)
    assert estimate.sensitivity["epsilon/10"] < expected < estimate.sensitivity["epsilon*10"]


def test_curves_cross_the_diagonal_at_the_limits():
    rng = np.random.default_rng(2)
    eigenvalues = np.exp(rng.uniform(-8, 0, 200))
    weights = rng.standard_normal(200)
    prediction = predict_from_spectrum(exact_spectrum(eigenvalues), weights, 0.01)
    curves = prediction.curves
    grid = np.asarray(curves["removal_fraction"])
    for method in ("paper", "orthogonal", "trace_bound"):
        values = np.asarray(curves[method])
        first = np.flatnonzero(values - grid <= 0)[0]
        assert grid[first - 1] <= prediction.removal_fraction(method) <= grid[first]
    p, delta = statistical_dimension_curve(
        exact_spectrum(eigenvalues), weights, 0.01, [prediction.removal_fraction("paper")]
    )
    assert delta[0] == pytest.approx(p[0], abs=1e-8)
    assert prediction.removal_fraction("trace_bound") <= prediction.removal_fraction("paper")


def test_orthogonal_form_tracks_the_quadratic_model_for_haar_eigenvectors():
    """DESIGN section 7: on Haar-rotated H the orthogonal form is close to the exact answer."""
    errors = {"orthogonal": [], "paper": []}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        dimension = 120
        eigenvalues = np.exp(rng.uniform(np.log(1e-4), 0, dimension))
        basis = ortho_group.rvs(dimension, random_state=seed)
        hessian = (basis * eigenvalues) @ basis.T
        weights = rng.standard_normal(dimension)
        epsilon = (1e-3, 1e-2, 1e-1)[seed % 3]
        exact = brute_force_quadratic_limit(hessian, weights, epsilon)
        prediction = predict_from_spectrum(
            exact_spectrum(eigenvalues),
            weights,
            epsilon,
            methods=("paper", "orthogonal", "quadratic"),
            curvature=hessian,
            sensitivity=False,
        )
        quadratic = prediction.estimates["quadratic"]
        assert quadratic.interval[0] == pytest.approx(exact)
        for method in errors:
            errors[method].append(abs(prediction.removal_fraction(method) - exact))
    assert max(errors["orthogonal"]) < 0.06
    assert np.mean(errors["orthogonal"]) < np.mean(errors["paper"])


def test_the_slow_quadratic_method_shows_its_progress(capsys, monkeypatch):
    """predict's slow method shows a bar of the supports its bisection solves (issue 16:
    minutes without a sign of life); none without progress=True."""
    from pruning_limit import limit

    bars = []

    def recording(*args, **kwargs):
        bars.append(limit_tqdm(*args, **kwargs))
        return bars[-1]

    limit_tqdm = limit.tqdm
    monkeypatch.setattr(limit, "tqdm", recording)
    rng = np.random.default_rng(0)
    eigenvalues = np.exp(rng.uniform(np.log(1e-3), 0, 40))
    basis = ortho_group.rvs(40, random_state=0)
    options = dict(methods=("paper", "quadratic"), curvature=(basis * eigenvalues) @ basis.T,
                   sensitivity=False)  # fmt: skip
    weights, spectrum = rng.standard_normal(40), exact_spectrum(eigenvalues)
    predict_from_spectrum(spectrum, weights, 0.01, **options)
    assert capsys.readouterr().err == "" and bars[-1].disable
    prediction = predict_from_spectrum(spectrum, weights, 0.01, progress=True, **options)
    assert "quadratic: supports solved (dense)" in capsys.readouterr().err
    assert bars[-1].n == prediction.estimates["quadratic"].uncertainty["evaluations"] > 0


def test_edges_of_the_fixed_point():
    rng = np.random.default_rng(3)
    eigenvalues = rng.uniform(0.1, 1.0, 80)
    weights = rng.standard_normal(80)
    spectrum = exact_spectrum(eigenvalues)
    methods = ("paper", "orthogonal", "trace_bound")

    tiny = predict_from_spectrum(spectrum, weights, 1e-14, methods=methods)
    for method in methods:
        assert tiny.removal_fraction(method) < 1e-3
    huge = predict_from_spectrum(spectrum, weights, 1e12, methods=methods)
    for method in methods:
        assert huge.removal_fraction(method) > 0.999
    # No budget predicts nothing (p* = 1 whatever the network), and JSON has no inf.
    with pytest.raises(ValueError, match="finite positive number"):
        predict_from_spectrum(spectrum, weights, np.inf, methods=methods)
    # Zero curvature: every direction is unbounded (infinite radii r_i).
    flat = predict_from_spectrum(exact_spectrum(np.zeros(80)), weights, 1e-6, methods=methods)
    assert all(flat.removal_fraction(m) == 1.0 for m in methods)
    # Weights already zero cost nothing to remove: p* >= their share, even at tiny eps.
    sparse = weights.copy()
    sparse[:20] = 0.0
    assert predict_from_spectrum(spectrum, sparse, 1e-14, methods=methods).removal_fraction(
        "paper"
    ) == pytest.approx(0.25, abs=1e-3)
    assert predict_from_spectrum(spectrum, np.zeros(80), 1e-6).removal_fraction() == 1.0


def test_bad_input_is_refused():
    spectrum = exact_spectrum(np.linspace(0.1, 1, 10))
    weights = np.ones(10)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="positive"):
            predict_from_spectrum(spectrum, weights, bad)
    with pytest.raises(ValueError, match="known: paper, orthogonal"):
        predict_from_spectrum(spectrum, weights, 0.1, methods=("paper", "magic"))
    with pytest.raises(ValueError, match="D = 10"):
        predict_from_spectrum(spectrum, np.ones(11), 0.1)
    with pytest.raises(ValueError, match="curvature itself"):
        predict_from_spectrum(spectrum, weights, 0.1, methods=("quadratic",))
    with pytest.raises(ValueError, match="policy"):
        predict_from_spectrum(spectrum, weights, 0.1, policy="clip")
    with pytest.raises(ValueError, match="statdim_exact needs D <= 500"):
        predict_from_spectrum(
            exact_spectrum(np.ones(501)), np.ones(501), 0.1, methods=("statdim_exact",)
        )


# -- uncertainty of SLQ estimates ------------------------------------------------------------


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_intervals_contain_the_exact_spectrum_answer(curvature):
    rng = np.random.default_rng(10)
    dimension = 200
    if curvature == "ggn":
        eigenvalues = np.concatenate([np.zeros(40), np.exp(rng.uniform(-7, 0, dimension - 40))])
    else:
        eigenvalues = np.concatenate(
            [-np.exp(rng.uniform(-7, -3, 30)), np.exp(rng.uniform(-7, 0, dimension - 30))]
        )
    basis = ortho_group.rvs(dimension, random_state=10)
    matrix = (basis * eigenvalues) @ basis.T
    weights = rng.standard_normal(dimension)
    epsilon = 0.01
    truth = predict_from_spectrum(
        exact_spectrum(eigenvalues, curvature), weights, epsilon, sensitivity=False
    )
    seeds = 10
    covered = {method: 0 for method in truth.estimates}
    for seed in range(seeds):
        spectrum = reference_slq(matrix, 4, 16, np.random.default_rng(seed), curvature)[0]
        estimate = predict_from_spectrum(spectrum, weights, epsilon, sensitivity=False)
        for method, result in estimate.estimates.items():
            low, high = result.interval
            assert low <= result.removal_fraction <= high
            assert {"probes", "half_steps"} <= set(result.uncertainty)
            # tr(C)/D is exact in Gauss quadrature, so a GGN trace bound needs no bracket.
            if not (curvature == "ggn" and method == "trace_bound"):
                assert "quadrature" in result.uncertainty
            covered[method] += low <= truth.removal_fraction(method) <= high
    assert all(count >= 0.9 * seeds for count in covered.values()), covered


def test_convergence_report_says_how_far_from_converged():
    rng = np.random.default_rng(11)
    dimension = 300
    eigenvalues = np.exp(rng.uniform(np.log(1e-6), 0, dimension))
    basis = ortho_group.rvs(dimension, random_state=11)
    matrix = (basis * eigenvalues) @ basis.T
    weights = rng.standard_normal(dimension)
    spectrum = reference_slq(matrix, 3, 30, rng, "ggn")[0]
    loose = predict_from_spectrum(spectrum, weights, 1e-4, sensitivity=False).convergence
    easy = predict_from_spectrum(spectrum, weights, 10.0, sensitivity=False).convergence
    assert loose["scale_times_lambda_max"] > 100 * easy["scale_times_lambda_max"]
    assert not loose["converged"] and easy["converged"]
    assert loose["relative_width"] > loose["relative_width_half_steps"] / 10
    assert loose["steps_for_tolerance_observed"] > 30
    assert loose["steps_for_tolerance_theory"] > 30
    assert "not converged" in loose["message"] and "Lanczos steps" in loose["message"]
    exact = predict_from_spectrum(exact_spectrum(eigenvalues, "ggn"), weights, 1e-4)
    assert exact.convergence["converged"] and "exact" in exact.convergence["message"]
    # Hessian with the flat policy: no bracket exists, only the m/2-step check.
    hessian = reference_slq(matrix - 0.01 * np.eye(dimension), 3, 30, rng, "hessian")[0]
    flat = predict_from_spectrum(hessian, weights, 1e-3, policy="flat", sensitivity=False)
    assert "no bracket" in flat.convergence["message"]
    assert "quadrature" not in flat.estimates["paper"].uncertainty


# -- the loss budget ---------------------------------------------------------------------------


def test_loss_budget():
    losses = np.array([0.31, 0.29, 0.35, 0.33])
    eps, record = loss_budget((losses, [32, 32, 32, 16]))
    assert eps == pytest.approx(np.std(losses, ddof=1))
    assert record["kind"] == "batch_std" and record["batch_size"] == 32
    assert record["batch_sizes_vary"] and record["batches"] == 4
    assert record["loss"] == pytest.approx(np.average(losses, weights=[32, 32, 32, 16]))
    assert loss_budget(losses)[0] == pytest.approx(eps)
    eps, record = loss_budget(None, 0.05)
    assert (eps, record["kind"]) == (0.05, "given")
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            loss_budget(None, bad)
    with pytest.raises(ValueError, match="batch_std"):
        loss_budget(None, "batch_mean")
    with pytest.raises(ValueError, match="at least two"):
        loss_budget([0.3])
    with pytest.raises(ValueError, match="at least two"):
        loss_budget(None)
    with pytest.warns(UserWarning, match="resolves"):
        loss_budget(None, 1e-7, dtype=torch.float32, loss=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_budget(None, 1e-7, dtype=torch.float64, loss=2.0)


# -- the Prediction ------------------------------------------------------------------------------


def test_prediction_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(4)
    dimension = 150
    eigenvalues = rng.uniform(-0.1, 1.0, dimension)
    matrix = np.diag(eigenvalues)
    spectrum = reference_slq(matrix, 3, 12, rng, "hessian")[0]
    spectrum.provenance = {"seed": 4, "dtype": "float64"}
    prediction = predict_from_spectrum(
        spectrum,
        rng.standard_normal(dimension),
        0.02,
        methods=("paper", "quadratic"),
        curvature=matrix,
    )
    path = prediction.save(tmp_path / "prediction")
    assert path.suffix == ".json"
    loaded = Prediction.load(path)
    assert loaded.to_json() == prediction.to_json()
    data = json.loads(path.read_text())
    assert data["fraction"] == "removed" and data["convention"] == CONVENTION
    assert data["spectrum"]["provenance"]["seed"] == 4
    assert loaded.removal_fraction("quadratic") == prediction.removal_fraction("quadratic")
    assert loaded.interval("paper") == prediction.interval("paper")
    text = prediction.summary()
    assert "REMOVED" in text and "kept" in text and "paper" in text and "quadratic" in text
    assert "removed" in repr(prediction)
    with pytest.raises(KeyError, match="computed"):
        prediction.removal_fraction("orthogonal")
    with pytest.raises(FileNotFoundError):
        Prediction.load(tmp_path / "missing.json")


def test_summary_quotes_the_measured_error_of_each_predictor_it_shows():
    measured = measured_errors()
    # The same actual limits for every predictor, every default predictor measured
    # (the baseline emp included), against the onset and the collapse centre.
    against = tuple(measured["methods"]["paper"])
    assert against[0] == "one_shot/accuracy" and "one_shot/collapse" in against
    assert "refit/loss_budget" in against
    assert measured["runs"] > 0 and "prediction_vs_actual" in measured["source"]
    for method in DEFAULT_METHODS:
        assert tuple(measured["methods"][method]) == against, method
        for cell in measured["methods"][method].values():
            assert 0 < cell["runs"] <= measured["runs"]
            assert abs(cell["mean_error_pp"]) <= cell["mean_abs_error_pp"] <= 100
    rng = np.random.default_rng(5)
    eigenvalues = rng.uniform(0.0, 1.0, 40)
    prediction = predict_from_spectrum(
        exact_spectrum(eigenvalues, "ggn"),
        rng.standard_normal(40),
        0.05,
        methods=("paper", "statdim_exact"),
        statdim_samples=50,
        curvature=np.diag(eigenvalues),
    )
    # The table of p* and the table of measured errors each have a "paper" row;
    # statdim_exact was not measured against pruning, so it has only the first.
    paper = measured["methods"]["paper"]
    expected = [f"{paper[a]['mean_error_pp']:+.1f}" for a in against]
    lines = prediction.summary().splitlines()
    assert any(line.startswith("Measured error against real pruning") for line in lines)
    paper_rows = [line.split() for line in lines if line.startswith("paper")]
    assert len(paper_rows) == 2 and paper_rows[1][1::2] == expected
    assert len([line for line in lines if line.startswith("statdim_exact")]) == 1


# -- from a model ------------------------------------------------------------------------------


def tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).double()
    inputs = torch.randn(96, 3, dtype=torch.float64)
    targets = (inputs[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model, torch.nn.CrossEntropyLoss(), (inputs, targets)


def model_spectrum(model, loss_fn, data, curvature="hessian"):
    from pruning_limit.curvature import CurvatureOperator

    operator = CurvatureOperator(model, loss_fn, data, curvature=curvature, device="cpu")
    matrix = operator.matrix().numpy()
    spectrum = exact_spectrum(np.linalg.eigvalsh(matrix), curvature, operator.parameters)
    return spectrum, matrix, operator


def test_predict_limit_from_a_model():
    model, loss_fn, data = tiny_problem()
    spectrum, matrix, operator = model_spectrum(model, loss_fn, data)
    weights = torch.cat([model[0].weight.reshape(-1), model[2].weight.reshape(-1)]).detach()
    prediction = predict_limit(
        model,
        spectrum,
        epsilon="batch_std",
        data=data,
        loss_fn=loss_fn,
        batch_size=32,
        methods=("paper", "quadratic", "statdim_exact"),
        statdim_samples=200,
    )
    losses = operator.batch_losses()[0]  # default batch size: one batch of 96
    assert losses.size == 1 and prediction.epsilon > 0
    assert prediction.epsilon_source["batch_size"] == 32
    assert prediction.epsilon_source["batches"] == 3
    direct = predict_from_spectrum(
        spectrum,
        weights.numpy(),
        prediction.epsilon,
        methods=("paper", "quadratic"),
        curvature=matrix,
    )
    assert prediction.removal_fraction("paper") == pytest.approx(direct.removal_fraction("paper"))
    assert prediction.removal_fraction("quadratic") == pytest.approx(
        direct.removal_fraction("quadratic")
    )
    assert 0 <= prediction.removal_fraction("statdim_exact") <= 1
    assert prediction.parameters == [["0.weight", [5, 3]], ["2.weight", [2, 5]]]
    assert prediction.dimension == 25
    given = predict_limit(model, spectrum, epsilon=0.01, methods=("paper", "trace_bound"))
    assert given.epsilon_source["kind"] == "given" and given.curvature == "hessian"
    # Without a spectrum the default curvature is the GGN, taken exactly at this D.
    own = predict_limit(model, epsilon=0.01, data=data, loss_fn=loss_fn, methods=("paper",))
    ggn = pl.exact_spectrum(model, loss_fn, data, curvature="ggn", dtype=torch.float64)
    assert own.curvature == "ggn"
    assert own.removal_fraction("paper") == pytest.approx(
        predict_from_spectrum(ggn, weights.numpy(), 0.01, methods=("paper",)).removal_fraction(
            "paper"
        )
    )


def test_predict_limit_refuses_mismatches_and_missing_data():
    model, loss_fn, data = tiny_problem()
    spectrum, _, _ = model_spectrum(model, loss_fn, data)
    with pytest.raises(ValueError, match="known: " + ", ".join(METHODS)):
        predict_limit(model, spectrum, epsilon=0.1, methods=("paper", "exact"))
    with pytest.raises(ValueError, match="data= and loss_fn="):
        predict_limit(model, spectrum, epsilon="batch_std")
    with pytest.raises(ValueError, match="data= and loss_fn="):
        predict_limit(model, spectrum, epsilon=0.1, methods=("quadratic",))
    with pytest.raises(ValueError, match="data= and loss_fn="):
        predict_limit(model, None, epsilon=0.1)
    wrong_size = exact_spectrum(np.ones(24))
    with pytest.raises(ValueError, match="D = 24"):
        predict_limit(model, wrong_size, epsilon=0.1)
    renamed = exact_spectrum(
        spectrum.nodes[0], parameters=(ParameterInfo("0.weight", (3, 5)), spectrum.parameters[1])
    )
    with pytest.raises(ValueError, match="do not match"):
        predict_limit(model, renamed, epsilon=0.1)
    unknown = exact_spectrum(spectrum.nodes[0], parameters=(ParameterInfo("9.weight", (25,)),))
    with pytest.raises(ValueError, match="does not match the model"):
        predict_limit(model, unknown, epsilon=0.1)
    with pytest.raises(ValueError, match="curvature='ggn'"):
        predict_limit(model, spectrum, epsilon=0.1, curvature="ggn")
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            predict_limit(model, spectrum, epsilon=bad)


def test_taylor_onset_is_the_one_shot_loss_budget_limit_of_a_least_squares_loss():
    # A least-squares loss is its own second-order Taylor model (GGN = Hessian = 2 X^T X / N)
    # and its w* is not a minimum (g != 0): the onset must match a pruning sweep.
    from pruning_limit.onset import loss_rise, taylor_onset
    from pruning_limit.pipeline import Pipeline
    from pruning_limit.pruning import pruned

    torch.manual_seed(0)
    D, N = 200, 400
    X = torch.randn(N, D, dtype=torch.float64)
    model = torch.nn.Linear(D, 1, bias=False).double()
    y = model(X).detach() + 0.1 * torch.randn(N, 1, dtype=torch.float64)
    loss_fn = torch.nn.MSELoss()
    pipeline = Pipeline(model, loss_fn, (X, y), batch_size=100)
    with torch.no_grad():
        dense = float(loss_fn(model(X), y))
    counts = np.arange(D + 1)
    rises = []
    for k in counts:  # every count torch's pruning can take
        with pruned(model, float(k / D)), torch.no_grad():
            rises.append(float(loss_fn(model(X), y)) - dense)
    rises = np.array(rises)
    gradient = pipeline.model_loss().gradient()
    np.testing.assert_allclose(
        loss_rise(pipeline.operator, pipeline.weights, gradient, counts[::20] / D),
        rises[::20],
        atol=1e-10,
    )
    epsilon = 0.5 * rises.max()
    last_within = (np.argmax(rises >= epsilon) - 1) / D  # the sweep's limit
    onset = pipeline.taylor_onset(epsilon, points=D + 1)
    assert last_within <= onset <= last_within + 1 / D
    matrix = (2 * X.T @ X / N).numpy()
    assert taylor_onset(matrix, pipeline.weights, gradient, epsilon, points=D + 1) == (
        pytest.approx(onset, abs=1e-9)
    )


def hand_taylor_rises(A, g, weights):
    """rise_k = w_P^T A w_P / 2 - g^T w_P with w_P the k smallest |w*| (distinct), by hand."""
    order = np.argsort(np.abs(weights))
    rises = [0.0]
    for k in range(1, weights.size + 1):
        removed = np.zeros_like(weights)
        removed[order[:k]] = weights[order[:k]]
        rises.append(0.5 * removed @ A @ removed - g @ removed)
    return np.array(rises)


def hand_first_crossing(rises, epsilon):
    """The first p = k / D with rise_k >= eps, linear in p from the count before it."""
    k = int(np.flatnonzero(rises >= epsilon)[0])
    return (k - 1 + (epsilon - rises[k - 1]) / (rises[k] - rises[k - 1])) / (rises.size - 1)


def test_taylor_onset_method_equals_the_hand_computed_first_crossing_of_a_quadratic_loss():
    # L(w) = (w - w*)^T A (w - w*) / 2 + g^T (w - w*): its Taylor model at w* is itself, and
    # pruning to w* - w_P raises it by w_P^T A w_P / 2 - g^T w_P. A is indefinite: the
    # method uses the curvature as is (no eigenvalue policy), unlike the quadratic model.
    from pruning_limit.onset import TaylorModel

    rng = np.random.default_rng(13)
    D = 40
    Q = ortho_group.rvs(D, random_state=13)
    eigenvalues = np.concatenate([[-0.05], rng.uniform(0.1, 2.0, D - 1)])
    A = (Q * eigenvalues) @ Q.T
    weights = rng.permutation(np.linspace(0.05, 2.0, D)) * rng.choice([-1.0, 1.0], D)
    g = 0.02 * rng.standard_normal(D)
    rises = hand_taylor_rises(A, g, weights)
    spectrum = exact_spectrum(np.linalg.eigvalsh(A))
    for epsilon in (0.5 * rises.max(), 0.05 * rises.max()):
        expected = hand_first_crossing(rises, epsilon)
        taylor = TaylorModel(A, weights, g, points=D + 1)  # the grid p = k / D
        prediction = predict_from_spectrum(
            spectrum, weights, epsilon, methods=("paper", "taylor_onset"), taylor=taylor
        )
        estimate = prediction.estimates["taylor_onset"]
        assert estimate.removal_fraction == pytest.approx(expected, abs=1e-12)
        k = int(np.flatnonzero(rises >= epsilon)[0])
        assert estimate.interval == pytest.approx(((k - 1) / D, k / D))
        assert estimate.uncertainty["grid"] == pytest.approx(((k - 1) / D, k / D))
        terms = estimate.uncertainty["gradient_term"] + estimate.uncertainty["curvature_term"]
        assert terms == pytest.approx(epsilon)  # exactly eps at a grid point, else close
        assert estimate.radius == pytest.approx(pruned_norm(weights, expected))
        for key, scale in (("epsilon/10", 0.1), ("epsilon*10", 10.0)):
            level = scale * epsilon
            value = hand_first_crossing(rises, level) if rises.max() >= level else 1.0
            assert estimate.sensitivity[key] == pytest.approx(value, abs=1e-12)
        assert "LOSS-BUDGET ONSET" in estimate.notes[0]
    # |A| would change the answer: the policy is not applied.
    absolute = (Q * np.abs(eigenvalues)) @ Q.T
    epsilon = 0.5 * rises.max()
    assert TaylorModel(absolute, weights, g, points=D + 1).onset(epsilon) != pytest.approx(
        hand_first_crossing(rises, epsilon), abs=1e-6
    )
    # The rise never reaches eps: p = 1, the whole grid below it.
    never = TaylorModel(A, weights, g, points=D + 1)
    assert never.onset(2 * rises.max()) == 1.0 and never.bracket(2 * rises.max()) == (1.0, 1.0)


def test_taylor_onset_through_predict_limit_equals_the_hand_computed_crossing():
    # A least-squares loss L(w) = mean((X w - y)^2) is the quadratic loss with A = 2 X^T X / N
    # and g = 2 X^T (X w* - y) / N, both by hand; the default grid of 201 points is the
    # grid of counts when D = 200.
    torch.manual_seed(2)
    D, N = 200, 300
    X = torch.randn(N, D, dtype=torch.float64)
    model = torch.nn.Linear(D, 1, bias=False).double()
    y = model(X).detach() + 0.2 * torch.randn(N, 1, dtype=torch.float64)
    weights = model.weight.detach().numpy().reshape(-1)
    Xn, yn = X.numpy(), y.numpy().reshape(-1)
    A = 2 * Xn.T @ Xn / N
    g = 2 * Xn.T @ (Xn @ weights - yn) / N
    rises = hand_taylor_rises(A, g, weights)
    epsilon = 0.3 * rises.max()
    prediction = predict_limit(
        model, epsilon=epsilon, data=(X, y), loss_fn=torch.nn.MSELoss(), batch_size=100,
        methods=("trace_bound", "taylor_onset"),
    )  # fmt: skip
    assert prediction.removal_fraction("taylor_onset") == pytest.approx(
        hand_first_crossing(rises, epsilon), abs=1e-9
    )
    assert list(prediction.estimates) == ["trace_bound", "taylor_onset"]


def test_taylor_onset_is_refused_without_data_and_with_other_weights():
    from pruning_limit.onset import TaylorModel

    model, loss_fn, data = tiny_problem()
    spectrum, matrix, _ = model_spectrum(model, loss_fn, data)
    with pytest.raises(ValueError, match=r"taylor_onset.*need data= and loss_fn="):
        predict_limit(model, spectrum, epsilon=0.1, methods=("paper", "taylor_onset"))
    weights = np.concatenate(
        [model[0].weight.detach().numpy().reshape(-1), model[2].weight.detach().numpy().ravel()]
    )
    with pytest.raises(ValueError, match="taylor_onset needs the gradient and the curvature"):
        predict_from_spectrum(spectrum, weights, 0.1, methods=("taylor_onset",), curvature=matrix)
    other = TaylorModel(matrix, weights[::-1].copy(), np.zeros(25))
    with pytest.raises(ValueError, match="other weights"):
        predict_from_spectrum(spectrum, weights, 0.1, methods=("taylor_onset",), taylor=other)
    with pytest.raises(ValueError, match="gradient has 3 coordinates"):
        TaylorModel(matrix, weights, np.zeros(3))
    with pytest.raises(ValueError, match="points"):
        TaylorModel(matrix, weights, np.zeros(25), points=1)
    with pytest.raises(ValueError, match="as a number"):
        TaylorModel(matrix, weights, np.zeros(25)).onset("batch_std")
    # With the data it runs, from the same pipeline as the other methods.
    prediction = predict_limit(
        model, spectrum, epsilon=0.1, data=data, loss_fn=loss_fn, methods=("taylor_onset",)
    )
    assert 0.0 <= prediction.removal_fraction("taylor_onset") <= 1.0


def test_taylor_onset_saves_loads_and_is_labelled_by_its_target(tmp_path):
    from pruning_limit.onset import TaylorModel
    from pruning_limit.prediction import METHOD_TARGETS

    rng = np.random.default_rng(3)
    D = 30
    A = np.diag(rng.uniform(0.1, 1.0, D))
    weights, gradient = rng.standard_normal(D), 0.01 * rng.standard_normal(D)
    prediction = predict_from_spectrum(
        exact_spectrum(np.diag(A), "ggn"), weights, 0.05,
        methods=("paper", "trace_bound", "taylor_onset"),
        taylor=TaylorModel(A, weights, gradient),
    )  # fmt: skip
    loaded = Prediction.load(prediction.save(tmp_path / "prediction"))
    assert loaded.to_json() == prediction.to_json()
    assert loaded.interval("taylor_onset") == prediction.interval("taylor_onset")
    assert loaded.estimates["taylor_onset"].notes == prediction.estimates["taylor_onset"].notes
    assert loaded.removal_fraction("taylor_onset") == prediction.removal_fraction("taylor_onset")
    # Each row of the summary names what its method predicts, taylor_onset its onset.
    rows = {}
    for line in prediction.summary().splitlines():  # the first row of each: the p* table
        if line.strip():
            rows.setdefault(line.split()[0], line)
    assert rows["taylor_onset"].endswith("one-shot loss-budget onset")
    assert rows["paper"].endswith("transition (kinematic formula)")
    assert set(METHOD_TARGETS) == set(METHODS)
    # Not a default: no measured error ships for it, so it is not quoted as measured.
    assert "taylor_onset" not in DEFAULT_METHODS
    assert "taylor_onset" not in measured_errors()["methods"]
