"""SLQ, exact spectra and zero-row deflation against eigvalsh of the exact matrix."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import pruning_limit as pl
from pruning_limit.curvature import CurvatureOperator


def eigenvalues(matrix: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(matrix).numpy()


def test_exact_spectrum_equals_eigvalsh_of_torch_func_hessian(case):
    spectrum = pl.exact_spectrum(
        case.model,
        case.loss_fn,
        case.data,
        device="cpu",
        batch_size=case.batch_size,
        curvature="hessian",
    )
    truth = eigenvalues(case.hessian())
    assert spectrum.method == "exact" and spectrum.num_probes == 1
    # zero rows carry eigenvalue 0: put them back before comparing
    nodes = np.sort(np.concatenate([spectrum.nodes[0], np.zeros(spectrum.zero_rows)]))
    np.testing.assert_allclose(nodes, truth, atol=1e-10 * np.abs(truth).max())
    value, error = spectrum.trace_function(np.square)
    assert value == pytest.approx(np.mean(truth**2), rel=1e-10) and error == 0.0


def test_slq_with_m_equal_to_dimension_recovers_every_eigenvalue(case):
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    matrix = operator.matrix()
    spectrum = pl.slq(operator, steps=operator.dimension, probes=2, progress=False)
    truth = eigenvalues(matrix)
    active = ~(matrix == 0).all(dim=1)
    truth_active = eigenvalues(matrix[active][:, active])
    assert spectrum.zero_rows == int((~active).sum())
    scale = np.abs(truth).max()
    for probe in range(2):
        np.testing.assert_allclose(np.sort(spectrum.nodes[probe]), truth_active, atol=1e-8 * scale)


def test_each_probe_is_the_exact_quadratic_form_when_m_equals_dimension():
    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    matrix = operator.matrix()
    values, vectors = torch.linalg.eigh(matrix)
    spectrum = pl.slq(operator, steps=operator.dimension, probes=3, progress=False, seed=7)
    g = lambda x: np.exp(-3.0 * x / float(values.abs().max()))  # noqa: E731
    g_matrix = vectors @ torch.diag(torch.as_tensor(g(values.numpy()))) @ vectors.T
    # rebuild the probes the way slq draws them (documented: Rademacher per probe index)
    from pruning_limit.lanczos import _random_rows

    active = torch.ones(operator.dimension, dtype=torch.bool)
    for k in range(3):
        v = _random_rows(1, active, 7, ("probe", k))[0]
        expected = float(v @ g_matrix @ v / (v @ v))
        assert spectrum.per_probe(g)[k] == pytest.approx(expected, rel=1e-9)


def test_trace_estimate_converges_for_smooth_g_and_error_bars_cover_truth():
    case = __import__("cases").cnn()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    truth = eigenvalues(operator.matrix())
    scale = np.abs(truth).max()
    g = lambda x: np.exp(-x / scale)  # noqa: E731
    exact = np.mean(g(truth))
    spectrum = pl.slq(operator, steps=30, probes=40, progress=False, seed=3)
    # quadrature error shrinks with m ...
    errors = [abs(spectrum.trace_function(g, steps=s)[0] - exact) for s in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]
    # ... and what is left is probe noise, which the standard error describes
    estimate, standard_error = spectrum.trace_function(g)
    assert abs(estimate - exact) < 4 * standard_error
    assert standard_error < 0.05 * exact


def test_trace_and_top_eigenvalues():
    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    truth = eigenvalues(operator.matrix())
    mean, error = pl.lanczos.hutchinson_trace(operator, probes=200, seed=0)
    assert abs(mean - truth.mean()) < 4 * error
    top = pl.lanczos.top_eigenvalues(operator, k=3)
    np.testing.assert_allclose(top, truth[::-1][:3], rtol=1e-6)


def dead_unit_model():
    """A ReLU MLP whose hidden units 1 and 4 never fire, and whose input 2 is always zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].bias[[1, 4]] = -1e3
    X = torch.randn(40, 4, dtype=torch.float64)
    X[:, 2] = 0.0
    y = torch.randint(0, 3, (40,))
    # rows: incoming weights of dead units (2 x 4), outgoing weights of dead units (3 x 2),
    # incoming weights from the silent input to the 4 live units
    expected_zero_rows = 2 * 4 + 3 * 2 + 4
    return model, (X, y), expected_zero_rows


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_dead_units_give_exactly_the_right_zero_row_count(curvature):
    model, data, expected = dead_unit_model()
    loss_fn = nn.CrossEntropyLoss()
    slq_spectrum = pl.estimate_spectrum(
        model, loss_fn, data, steps=10, probes=2, device="cpu", curvature=curvature, progress=False
    )
    exact = pl.exact_spectrum(model, loss_fn, data, device="cpu", curvature=curvature)
    assert slq_spectrum.zero_rows == expected
    assert exact.zero_rows == expected
    # the deflated rule still integrates g(0) = 1 over the null directions
    value, _ = exact.trace_function(lambda x: (x == 0).astype(float))
    assert value >= expected / exact.dimension


def test_save_and_load_round_trip_exactly(tmp_path):
    case = __import__("cases").mlp_relu()
    spectrum = pl.estimate_spectrum(
        case.model,
        case.loss_fn,
        case.data,
        steps=12,
        probes=3,
        device="cpu",
        progress=False,
        curvature="hessian",
    )
    path = spectrum.save(tmp_path / "spectrum.npz")
    loaded = pl.Spectrum.load(path)
    for name in ("nodes", "weights", "alphas", "betas"):
        assert np.array_equal(getattr(loaded, name), getattr(spectrum, name))
    assert loaded.parameters == spectrum.parameters
    assert loaded.provenance == spectrum.provenance
    assert (loaded.dimension, loaded.zero_rows, loaded.curvature, loaded.method) == (
        spectrum.dimension,
        spectrum.zero_rows,
        spectrum.curvature,
        spectrum.method,
    )
    exact = pl.exact_spectrum(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    again = pl.Spectrum.load(exact.save(tmp_path / "exact"))
    assert again.alphas is None and np.array_equal(again.nodes, exact.nodes)


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        pl.Spectrum.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a spectrum file"):
        pl.Spectrum.load(tmp_path / "junk.npz")


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_identical_result(tmp_path):
    case = __import__("cases").cnn()
    options = dict(steps=15, probes=5, block_size=2, seed=11, progress=False)
    reference = pl.slq(
        CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"),
        **options,
    )

    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    original_apply, calls = operator.apply, {"n": 0}

    def flaky_apply(rows):
        calls["n"] += 1
        if calls["n"] == 25:  # mid-way through the second block of probes
            raise Interrupt
        return original_apply(rows)

    operator.apply = flaky_apply
    state = tmp_path / "slq.state"
    with pytest.raises(Interrupt):
        pl.slq(operator, state_path=state, checkpoint_every=4, **options)
    assert state.exists()
    resumed = pl.slq(
        CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"),
        state_path=state,
        resume=True,
        **options,
    )
    assert resumed.provenance["resumed"]
    assert np.array_equal(resumed.alphas, reference.alphas)
    assert np.array_equal(resumed.betas, reference.betas)
    assert np.array_equal(resumed.nodes, reference.nodes)
    assert not state.exists()


def test_resume_refuses_a_state_file_of_another_run(tmp_path):
    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    operator.apply_original = operator.apply
    state = tmp_path / "slq.state"

    def stop(rows):
        raise Interrupt

    operator.apply = stop
    with pytest.raises(Interrupt):
        pl.slq(
            operator, steps=5, probes=2, state_path=state, deflate_zero_rows=False, progress=False
        )
    state.mkdir(exist_ok=True)
    (state / "index.json").write_text(json.dumps({"config": {"steps": 99}}))
    fresh = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    with pytest.raises(ValueError, match="belongs to another run"):
        pl.slq(fresh, steps=5, probes=2, state_path=state, resume=True, progress=False)


@pytest.mark.parametrize("change", ["data", "weights"])
def test_resume_refuses_the_state_of_other_data_or_weights(tmp_path, change):
    """The state records the fingerprints of the weights and data: no mixed result."""
    case = __import__("cases").mlp_tanh()
    options = dict(steps=6, probes=2, block_size=1, seed=3, progress=False)
    operator = CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu")
    original, calls = operator.apply, {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 9:  # in the second probe's block
            raise Interrupt
        return original(rows)

    operator.apply = flaky
    state = tmp_path / "slq.state"
    with pytest.raises(Interrupt):
        pl.slq(operator, state_path=state, checkpoint_every=2, **options)
    model, (X, y) = copy.deepcopy(case.model), case.data
    if change == "data":
        X = X.clone()
        X[0] += 1.0
    else:
        with torch.no_grad():
            next(model.parameters()).mul_(1.01)
    other = CurvatureOperator(model, case.loss_fn, (X, y), device="cpu")
    with pytest.raises(ValueError, match=f"other {'data' if change == 'data' else 'prunable'}"):
        pl.slq(other, state_path=state, resume=True, **options)
    assert state.exists()  # refused, not discarded: the right run can still continue
    same = CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu")
    resumed = pl.slq(same, state_path=state, resume=True, **options)
    reference = pl.slq(
        CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu"), **options
    )
    assert resumed.provenance["resumed"]
    assert np.array_equal(resumed.alphas, reference.alphas)


def test_the_state_appends_the_basis_instead_of_rewriting_it(tmp_path, monkeypatch):
    """Each checkpoint writes only the basis rows computed since the last one."""
    from pruning_limit import lanczos

    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", dtype=torch.float64
    )
    written = []
    original = lanczos._save_npy

    def record(path, array):
        written.append((path.name, array.shape))
        original(path, array)

    monkeypatch.setattr(lanczos, "_save_npy", record)
    pl.slq(
        operator,
        steps=12,
        probes=2,
        block_size=2,
        checkpoint_every=3,
        state_path=tmp_path / "s.state",
        progress=False,
    )
    ranges = [name.split(".")[0].split("-")[2:] for name, _ in written if name.startswith("basis")]
    ranges = [(int(start), int(end)) for start, end in ranges]
    # rows 0-3, 4-6, 7-9 at steps 3, 6, 9 (row j + 1 is final after step j): each once
    assert ranges == [(0, 4), (4, 7), (7, 10)]
    assert not (tmp_path / "s.state").exists()


def test_breakdown_on_a_low_rank_curvature_continues():
    # A linear least-squares model on 3 samples: the Hessian 2 X^T X / n has rank 3 in D = 12,
    # so the Krylov space is exhausted after 3 steps and Lanczos must restart.
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(12, 1, bias=False).double()
    spectrum = pl.estimate_spectrum(
        model,
        nn.MSELoss(),
        (X, y),
        steps=12,
        probes=2,
        device="cpu",
        progress=False,
        curvature="hessian",
    )
    truth = np.sort(np.linalg.eigvalsh((2 * X.T @ X / 3).numpy()))
    for probe in range(2):
        nodes = np.sort(spectrum.nodes[probe])
        assert np.all(np.isfinite(nodes))
        np.testing.assert_allclose(nodes[-3:], truth[-3:], rtol=1e-10)
        assert spectrum.weights[probe].sum() == pytest.approx(1.0)
    g = lambda x: 1.0 / (1.0 + 5.0 * x)  # noqa: E731
    assert spectrum.trace_function(g)[0] == pytest.approx(
        np.mean(g(truth)), abs=0.2
    )  # two probes: a loose check that the rule is sane


def test_bad_arguments():
    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    with pytest.raises(ValueError, match="steps and probes"):
        pl.slq(operator, steps=0, probes=3)
    with pytest.raises(ValueError, match="exact-path limit"):
        pl.exact_spectrum(
            case.model, case.loss_fn, case.data, max_dimension=10, curvature="hessian"
        )
    with pytest.raises(ValueError, match="curvature must be one of"):
        pl.estimate_spectrum(case.model, case.loss_fn, case.data, curvature="fisher")


def test_slq_and_exact_spectrum_run_on_a_plain_matrix():
    """The operator protocol: Lanczos needs products, not a model."""
    rng = np.random.default_rng(0)
    factor = rng.standard_normal((12, 12))
    matrix = torch.as_tensor(factor @ factor.T)
    matrix[3] = 0.0
    matrix[:, 3] = 0.0
    operator = pl.curvature.MatrixOperator(matrix)
    exact = pl.lanczos.exact_spectrum_of(operator)
    assert exact.zero_rows == 1 and exact.curvature == "matrix"
    np.testing.assert_allclose(np.sort(exact.nodes[0]), eigenvalues(matrix)[1:], rtol=1e-10)
    spectrum = pl.slq(operator, steps=11, probes=2, progress=False)
    assert spectrum.zero_rows == 1
    for probe in range(2):  # m = D - z steps: every probe's rule holds every eigenvalue
        np.testing.assert_allclose(
            np.sort(spectrum.nodes[probe]), np.sort(exact.nodes[0]), rtol=1e-8
        )


def test_auto_steps_doubles_m_until_p_star_settles_and_lands_on_the_exact_answer():
    from pruning_limit.pipeline import Pipeline

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3)
    ).double()
    data = (torch.randn(200, 10, dtype=torch.float64), torch.randint(0, 3, (200,)))
    loss_fn = torch.nn.CrossEntropyLoss()
    exact = Pipeline(model, loss_fn, data, curvature="hessian", batch_size=50)
    eps, _ = exact.budget()
    truth = exact.predict(exact.spectrum(), epsilon=eps, methods=("paper",), sensitivity=False)
    sampled = Pipeline(model, loss_fn, data, curvature="hessian", batch_size=50, exact_limit=10)
    spectrum = sampled.spectrum(
        steps="auto", probes=4, auto_start=4, auto_max_steps=200, auto_tolerance=0.002
    )
    auto = spectrum.provenance["auto_steps"]
    assert spectrum.method == "slq" and auto["converged"] and auto["steps"] == spectrum.steps
    assert [row["steps"] for row in auto["trace"]] == [4 * 2**i for i in range(len(auto["trace"]))]
    assert auto["trace"][-1]["change"] <= 0.002 < auto["trace"][0]["change"]
    predicted = sampled.predict(spectrum, epsilon=eps, methods=("paper",), sensitivity=False)
    assert predicted.removal_fraction("paper") == pytest.approx(
        truth.removal_fraction("paper"), abs=0.02
    )
    capped = sampled.spectrum(steps="auto", probes=2, auto_start=2, auto_max_steps=4)
    assert capped.steps == 4 and not capped.provenance["auto_steps"]["converged"]
    with pytest.raises(ValueError, match="'auto'"):
        sampled.spectrum(steps="many")


class _Interrupted(Exception):
    pass


class _InterruptingOperator:
    """The operator, raising after ``after`` block products (a run killed mid-way)."""

    def __init__(self, operator, after: int) -> None:
        self._operator, self.after = operator, after

    def __getattr__(self, name):
        return getattr(self._operator, name)

    def apply(self, rows, method=None):
        if self.after == 0:
            raise _Interrupted
        self.after -= 1
        return self._operator.apply(rows, method)


def test_auto_steps_resumes_an_interrupted_run_and_reaches_the_exact_answer(tmp_path):
    from pruning_limit.pipeline import AUTO_MAX_STEPS, Pipeline

    assert AUTO_MAX_STEPS >= 400  # the paper's Hessian needed m = 200 at c* on an MLP
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3)
    ).double()
    data = (torch.randn(200, 10, dtype=torch.float64), torch.randint(0, 3, (200,)))
    loss_fn = torch.nn.CrossEntropyLoss()
    exact = Pipeline(model, loss_fn, data, curvature="hessian", batch_size=50)
    eps, _ = exact.budget()
    truth = exact.predict(exact.spectrum(), epsilon=eps, methods=("paper",), sensitivity=False)
    options = dict(steps="auto", probes=2, auto_start=4, auto_max_steps=400, auto_tolerance=0.002,
                   epsilon=eps, checkpoint_every=1)  # fmt: skip

    def pipeline():
        return Pipeline(model, loss_fn, data, curvature="hessian", batch_size=50, exact_limit=10)

    whole = pipeline().spectrum(**options)
    auto = whole.provenance["auto_steps"]
    assert auto["converged"] and auto["steps"] == whole.steps >= 16
    assert auto["resumed_after_steps"] is None
    predicted = exact.predict(whole, epsilon=eps, methods=("paper",), sensitivity=False)
    assert predicted.removal_fraction("paper") == pytest.approx(
        truth.removal_fraction("paper"), abs=0.02
    )

    state = tmp_path / "auto.state"
    interrupted = pipeline()
    # m = 4 ends (one block product per step: 4), m = 8 stops after 5 of its steps
    real = interrupted.operator
    interrupted._operator = _InterruptingOperator(real, after=4 + 5)
    with pytest.raises(_Interrupted):
        interrupted.spectrum(**options, state_path=state)
    saved = json.loads((state / "auto.json").read_text())
    assert [row["steps"] for row in saved["trace"]] == [4]
    assert (state / "slq-m8").is_dir()
    # Another budget, or other weights, are another run: refused, the state kept.
    with pytest.raises(ValueError, match="differs in: epsilon"):
        pipeline().spectrum(**{**options, "epsilon": 2 * eps}, state_path=state, resume=True)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved[0].weight[0, 0] += 0.01
    with pytest.raises(ValueError, match="other"):
        Pipeline(moved, loss_fn, data, curvature="hessian", batch_size=50, exact_limit=10).spectrum(
            **options, state_path=state, resume=True
        )
    interrupted._operator = real
    resumed = interrupted.spectrum(**options, state_path=state, resume=True)
    record = resumed.provenance["auto_steps"]
    assert record["resumed_after_steps"] == 4 and record["steps"] == auto["steps"]
    assert [row["steps"] for row in record["trace"]] == [row["steps"] for row in auto["trace"]]
    np.testing.assert_array_equal(resumed.alphas, whole.alphas)
    np.testing.assert_array_equal(resumed.betas, whole.betas)
    assert not state.exists()
    # A fixed-steps run's state is not an auto run's, and the reverse.
    fixed = tmp_path / "fixed.state"
    stopped = pipeline()
    stopped._operator = _InterruptingOperator(stopped.operator, after=5)
    with pytest.raises(_Interrupted):
        pl.slq(stopped.operator, steps=20, probes=2, state_path=fixed, checkpoint_every=1,
               progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="fixed number of steps"):
        pipeline().spectrum(**options, state_path=fixed, resume=True)


def test_estimate_spectrum_and_predict_limit_take_auto_steps():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    data = (torch.randn(120, 6), torch.randint(0, 3, (120,)))
    loss_fn = torch.nn.CrossEntropyLoss()
    spectrum = pl.estimate_spectrum(
        model, loss_fn, data, steps="auto", probes=2, curvature="hessian", dtype=torch.float64,
        device="cpu", auto_start=4, auto_max_steps=8, batch_size=40, progress=False,
    )  # fmt: skip
    assert [row["steps"] for row in spectrum.provenance["auto_steps"]["trace"]] in ([4], [4, 8])
    assert spectrum.steps == spectrum.provenance["auto_steps"]["steps"]
    prediction = pl.predict_limit(
        model, data=data, loss_fn=loss_fn, methods=("paper",), dense_limit=10, steps="auto",
        probes=2, auto_max_steps=60, batch_size=40,
    )  # fmt: skip
    assert prediction.spectrum["provenance"]["auto_steps"]["steps"] in (50, 60)
    with pytest.raises(ValueError, match="'auto'"):
        pl.estimate_spectrum(model, loss_fn, data, steps="many", device="cpu")
