"""CurvatureOperator against torch.func ground truth (float64, short last batch).

Also for TorchScript modules (scripted and traced), whose products must equal the
eager module's exact Hessian and GGN.
"""

import io
import warnings

import pytest
import torch
from torch import nn

import pruning_limit as pl
from pruning_limit.curvature import CurvatureOperator
from pruning_limit.models import least_squares


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("hvp_method", ["loop", "batched"])
def test_hessian_products_match_torch_func(case, hvp_method):
    assert case.inputs.shape[0] % case.batch_size != 0  # the last batch is short
    operator = CurvatureOperator(
        case.model,
        case.loss_fn,
        case.data,
        batch_size=case.batch_size,
        device="cpu",
        hvp_method=hvp_method,
        curvature="hessian",
    )
    truth = case.hessian()
    generator = torch.Generator().manual_seed(0)
    block = torch.randn(operator.dimension, 5, generator=generator, dtype=torch.float64)
    assert relative_error(operator.matmat(block), truth @ block) < 1e-10
    assert relative_error(operator.matvec(block[:, 0]), truth @ block[:, 0]) < 1e-10
    assert relative_error(operator.matrix(), truth) < 1e-10


@pytest.mark.parametrize("hvp_method", ["loop", "batched"])
def test_ggn_products_match_jacobian_sandwich(case, hvp_method):
    operator = CurvatureOperator(
        case.model,
        case.loss_fn,
        case.data,
        batch_size=case.batch_size,
        curvature="ggn",
        device="cpu",
        hvp_method=hvp_method,
    )
    truth = case.ggn()
    block = torch.randn(
        operator.dimension, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    assert relative_error(operator.matmat(block), truth @ block) < 1e-10
    assert relative_error(operator.matrix(), truth) < 1e-10
    assert torch.linalg.eigvalsh(operator.matrix()).min() > -1e-12  # PSD for convex losses


def test_auto_hvp_method_batches_only_the_ggn_of_models_without_convolutions():
    cases = __import__("cases")
    expectations = [
        (cases.mlp_tanh, "ggn", "batched"),
        (cases.mlp_tanh, "hessian", "loop"),
        (cases.cnn, "ggn", "loop"),
        (cases.cnn, "hessian", "loop"),
    ]
    for build, curvature, expected in expectations:
        case = build()
        eager = CurvatureOperator(
            case.model, case.loss_fn, case.data, device="cpu", curvature=curvature
        )
        scripted = CurvatureOperator(
            torchscript_round_trip(case.model),
            case.loss_fn,
            case.data,
            device="cpu",
            curvature=curvature,
        )
        assert eager.hvp_method == scripted.hvp_method == expected, (case.name, curvature)
        chosen = CurvatureOperator(
            case.model,
            case.loss_fn,
            case.data,
            device="cpu",
            hvp_method="loop",
            curvature="hessian",
        )
        assert chosen.hvp_method == "loop"
    with pytest.raises(ValueError, match="hvp_method"):
        CurvatureOperator(
            case.model, case.loss_fn, case.data, hvp_method="vmap", curvature="hessian"
        )


def torchscript_round_trip(model: nn.Module, trace_inputs=None) -> torch.jit.ScriptModule:
    """``torch.jit.script`` (or ``trace``) the model, saved and loaded as a user's file is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        compiled = (
            torch.jit.script(model)
            if trace_inputs is None
            else torch.jit.trace(model, trace_inputs)
        )
        buffer = io.BytesIO()
        torch.jit.save(compiled, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("hvp_method", ["loop", "batched"])
def test_torchscript_model_has_the_eager_models_curvature(case, curvature, hvp_method):
    scripted = torchscript_round_trip(case.model)
    mode = case.model.training
    scripted.train(mode)
    before = {k: v.clone() for k, v in scripted.state_dict().items()}
    operator = CurvatureOperator(
        scripted,
        case.loss_fn,
        case.data,
        batch_size=case.batch_size,
        curvature=curvature,
        device="cpu",
        hvp_method=hvp_method,
    )
    assert operator.names == [name for name, _ in case.prunable()]
    truth = case.hessian() if curvature == "hessian" else case.ggn()
    block = torch.randn(
        operator.dimension, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    assert relative_error(operator.matmat(block), truth @ block) < 1e-10
    assert relative_error(operator.matrix(), truth) < 1e-10
    # Weights put back in their slots, and the mode restored.
    for key, value in scripted.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert scripted.training == mode and all(m.training == mode for m in scripted.modules())


def test_traced_model_has_the_eager_models_hessian():
    case = __import__("cases").mlp_tanh()
    traced = torchscript_round_trip(case.model.eval(), trace_inputs=case.inputs[:4])
    operator = CurvatureOperator(
        traced,
        case.loss_fn,
        case.data,
        batch_size=case.batch_size,
        device="cpu",
        curvature="hessian",
    )
    assert relative_error(operator.matrix(), case.hessian()) < 1e-10


def test_torchscript_slots_restored_when_the_call_fails():
    case = __import__("cases").mlp_tanh()
    scripted = torchscript_round_trip(case.model)
    state = dict(scripted.named_parameters())
    originals = {name: tensor.clone() for name, tensor in state.items()}
    wrong = {name: torch.zeros(1, dtype=torch.float64) for name in state}
    with pytest.raises(RuntimeError):
        pl.parameters.call_with(scripted, wrong, case.inputs)
    for name, tensor in scripted.named_parameters():
        assert torch.equal(tensor, originals[name]), name


def test_model_mode_and_weights_untouched():
    case = __import__("cases").batchnorm_regression()
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    )
    operator.matvec(torch.ones(operator.dimension, dtype=torch.float64))
    assert case.model.training and case.model[1].training
    for key, value in case.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_float32_operator_on_float64_model_is_close(case):
    exact = CurvatureOperator(
        case.model, case.loss_fn, case.data, device="cpu", curvature="hessian"
    ).matrix()
    single = CurvatureOperator(
        case.model,
        case.loss_fn,
        case.data,
        device="cpu",
        dtype=torch.float32,
        curvature="hessian",
    ).matrix()
    assert single.dtype == torch.float32
    assert relative_error(single.double(), exact) < 1e-4


def test_gradient_and_loss_match_autograd():
    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(
        case.model, case.loss_fn, case.data, batch_size=8, device="cpu", curvature="hessian"
    )
    case.model.zero_grad()
    loss = case.loss_fn(case.model(case.inputs), case.targets)
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for _, p in case.prunable()])
    assert abs(operator.loss() - loss.item()) < 1e-12
    assert relative_error(operator.gradient(), expected) < 1e-12
    losses, sizes = operator.batch_losses()
    assert list(sizes) == [8, 8, 8, 8, 5]
    assert abs((losses * sizes).sum() / sizes.sum() - loss.item()) < 1e-12


def test_default_parameters_are_linear_and_conv_weights():
    case = __import__("cases").batchnorm_regression()
    names = [name for name, _ in pl.parameters.prunable_parameters(case.model)]
    assert names == ["0.weight", "3.weight"]  # not biases, not BatchNorm's weight


def test_user_parameter_selection_by_name_module_pair_and_tensor(case):
    first_name, first = case.prunable()[0]
    module = dict(case.model.named_modules())[first_name.rsplit(".", 1)[0]]
    for selection in ([first_name], [(module, "weight")], [first]):
        operator = CurvatureOperator(
            case.model, case.loss_fn, case.data, params=selection, device="cpu", curvature="hessian"
        )
        assert operator.dimension == first.numel()
        assert operator.names == [first_name]


def test_curvature_of_mean_squared_error_is_closed_form():
    gen = torch.Generator().manual_seed(5)
    X, y = (
        torch.randn(13, 4, generator=gen, dtype=torch.float64),
        torch.randn(13, 1, generator=gen, dtype=torch.float64),
    )
    model = nn.Linear(4, 1, bias=False).double()
    for curvature in ("hessian", "ggn"):
        operator = CurvatureOperator(
            model, nn.MSELoss(), (X, y), curvature=curvature, batch_size=5, device="cpu"
        )
        assert relative_error(operator.matrix(), 2 * X.T @ X / 13) < 1e-13


@pytest.mark.parametrize("weights", [(1.0, -2.0, 3.0, -4.0), (0.5, 2.0, -1.0)])
def test_least_squares_closed_forms(weights):
    # models.least_squares states: curvature (2 / D) I, and pruning the set P costs
    # sum_{j in P} w*_j^2 / D.
    model, (X, y) = least_squares(weights, repeats=3)
    dimension = len(weights)
    for curvature in ("hessian", "ggn"):
        operator = CurvatureOperator(
            model, nn.MSELoss(), (X, y), curvature=curvature, device="cpu", dtype=torch.float64
        )
        expected = 2 / dimension * torch.eye(dimension, dtype=torch.float64)
        assert relative_error(operator.matrix(), expected) < 1e-12
    with torch.no_grad():
        model.weight[0, 1:] = 0.0
    cost = sum(w * w for w in weights[1:]) / dimension
    assert nn.MSELoss()(model(X), y).item() == pytest.approx(cost, rel=1e-6)


# -- bad input -----------------------------------------------------------------------


def test_model_without_prunable_parameter():
    model = nn.Sequential(nn.Tanh(), nn.BatchNorm1d(3))
    with pytest.raises(pl.NoPrunableParameterError, match="no prunable parameter"):
        CurvatureOperator(
            model, nn.MSELoss(), (torch.randn(4, 3), torch.randn(4, 3)), curvature="hessian"
        )


def test_data_that_yields_no_batch():
    model = nn.Linear(3, 2)
    with pytest.raises(pl.EmptyDataError, match="no batch"):
        CurvatureOperator(model, nn.MSELoss(), [], curvature="hessian")
    with pytest.raises(pl.EmptyDataError, match="no sample"):
        CurvatureOperator(
            model, nn.MSELoss(), (torch.randn(0, 3), torch.randn(0, 2)), curvature="hessian"
        )


def test_nan_in_weights_or_loss():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"0\.weight|weight holds NaN"):
        CurvatureOperator(
            model, nn.MSELoss(), (torch.randn(4, 3), torch.randn(4, 2)), curvature="hessian"
        )
    model = nn.Linear(3, 2)
    targets = torch.randn(4, 2)
    targets[1, 1] = float("nan")
    with pytest.raises(ValueError, match="targets y hold 1 NaN or infinite value.*sample 1"):
        CurvatureOperator(
            model, nn.MSELoss(), (torch.randn(4, 3), targets), device="cpu", curvature="hessian"
        )


def test_parameters_not_in_model():
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    data = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="not a parameter"):
        CurvatureOperator(
            model, nn.MSELoss(), data, params=["nonexistent.weight"], curvature="hessian"
        )
    with pytest.raises(ValueError, match="not a parameter"):
        CurvatureOperator(model, nn.MSELoss(), data, params=[other.weight], curvature="hessian")


def test_mismatched_inputs_and_targets():
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        CurvatureOperator(
            nn.Linear(3, 2),
            nn.MSELoss(),
            (torch.randn(4, 3), torch.randn(5, 2)),
            curvature="hessian",
        )


def test_sum_reduction_refused():
    with pytest.raises(ValueError, match="reduction"):
        CurvatureOperator(
            nn.Linear(3, 2),
            nn.MSELoss(reduction="sum"),
            (torch.randn(4, 3), torch.randn(4, 2)),
            curvature="hessian",
        )


def test_dimension_above_exact_limit():
    operator = CurvatureOperator(
        nn.Linear(30, 20),
        nn.MSELoss(),
        (torch.randn(4, 30), torch.randn(4, 20)),
        device="cpu",
        curvature="hessian",
    )
    with pytest.raises(ValueError, match="exceeds the exact-path limit"):
        operator.matrix(max_dimension=500)


@pytest.mark.gpu
def test_cuda_products_equal_cpu_products(case):
    cpu = CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu", curvature="hessian")
    gpu = CurvatureOperator(case.model, case.loss_fn, case.data, device="cuda", curvature="hessian")
    block = torch.randn(cpu.dimension, 4, dtype=torch.float64)
    assert relative_error(gpu.matmat(block).cpu(), cpu.matmat(block)) < 1e-10


def test_default_curvature_is_the_ggn_everywhere():
    """The README's default: CurvatureOperator, estimate_spectrum and exact_spectrum."""
    case = __import__("cases").mlp_tanh()
    operator = CurvatureOperator(case.model, case.loss_fn, case.data, device="cpu")
    assert isinstance(operator, pl.curvature.GGNOperator) and operator.curvature == "ggn"
    assert isinstance(
        CurvatureOperator(case.model, case.loss_fn, case.data, curvature="hessian"),
        pl.curvature.HessianOperator,
    )
    assert relative_error(operator.matrix(), case.ggn()) < 1e-10
    exact = pl.exact_spectrum(case.model, case.loss_fn, case.data, device="cpu")
    estimated = pl.estimate_spectrum(
        case.model, case.loss_fn, case.data, steps=3, probes=2, device="cpu", progress=False
    )
    assert exact.curvature == estimated.curvature == "ggn"
    with pytest.raises(ValueError, match="curvature"):
        pl.curvature.HessianOperator(case.model, case.loss_fn, case.data, curvature="ggn")
