"""Bad input is refused where it enters, in words that name it (issue 16, first part).

The API raises ValueError / TypeError from :func:`pruning_limit.batches.check_model_and_data`
wherever data meet a model; the command line turns every user mistake into exit code 2,
one line on stderr, no traceback, and no file left behind.
"""

import copy
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pruning_limit as pl
from pruning_limit.batches import check_model_and_data
from pruning_limit.datasets import manifold
from pruning_limit.models import SelectOutput

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd, flags=()):
    return subprocess.run(
        [sys.executable, *flags, "-m", "pruning_limit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def listing(*folders):
    return {str(p) for folder in folders for p in Path(folder).rglob("*")}


# -- the API: check_model_and_data and the places that call it ---------------------------


def mlp(outputs=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, outputs))


def labels(n=20, classes=2):
    return torch.arange(n) % classes


X = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "model, loss, data, error, words",
    [
        (mlp(1), nn.MSELoss(), (X, torch.randn(20)), ValueError, r"shape \(20,\).*reshape"),
        (mlp(), nn.MSELoss(), (X, labels()), TypeError, "cross-entropy"),
        (mlp(), nn.CrossEntropyLoss(), (X, labels().float()), TypeError, "--loss mse"),
        (mlp(), nn.CrossEntropyLoss(), (X, labels() * 7 % 8), ValueError, r"\[0, 7\].*2 out"),
        (mlp(), nn.CrossEntropyLoss(), (X, labels() - 1), ValueError, r"\[-1, 0\]"),
        (mlp(), nn.CrossEntropyLoss(), (X[:, :3], labels()), ValueError, r"shape \(3,\)"),
        (mlp(), nn.CrossEntropyLoss(), (X.long(), labels()), ValueError, "int64"),
        (mlp(), nn.CrossEntropyLoss(), (X[:1], labels()[:1]), ValueError, "1 sample"),
    ],
    ids=["mse-1d", "mse-labels", "ce-float", "label-7", "label-1", "features", "int-x", "one"],
)
def test_check_model_and_data_names_the_problem(model, loss, data, error, words):
    with pytest.raises(error, match=words):
        check_model_and_data(model, loss, data)
    with pytest.raises(error, match=words):  # and so does everything built on the curvature
        pl.CurvatureOperator(model, loss, data, device="cpu")


def test_mse_with_1d_targets_is_refused_by_every_entry_point():
    model, data = mlp(1), (X, torch.randn(20))
    with pytest.raises(ValueError, match="reshape"):
        pl.exact_spectrum(model, nn.MSELoss(), data)
    with pytest.raises(ValueError, match="reshape"):
        pl.predict_limit(model, data=data, loss_fn=nn.MSELoss(), epsilon=0.01, methods=("paper",))
    with pytest.raises(ValueError, match="reshape"):
        pl.validate(
            model, train_data=data, test_data=data, loss_fn=nn.MSELoss(), epsilon=0.01,
            variants=("one_shot",), progress=False,
        )  # fmt: skip
    # reshaped, it is accepted
    check_model_and_data(model, nn.MSELoss(), (X, data[1].reshape(-1, 1)))


def test_nan_in_the_inputs_blames_the_data():
    bad = X.clone()
    bad[3, 1] = float("nan")
    bad[9, 0] = float("inf")
    with pytest.raises(ValueError, match=r"inputs X hold 2 NaN or infinite.*sample 3.*data"):
        check_model_and_data(mlp(), nn.CrossEntropyLoss(), (bad, labels()))


def test_a_model_with_several_outputs_must_pick_one():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()

        def forward(self, x):
            return {"logits": self.body(x), "features": x}

    data = (X, labels())
    with pytest.raises(TypeError, match="returns a dict with keys 'logits', 'features'"):
        check_model_and_data(TwoHeads(), nn.CrossEntropyLoss(), data)
    picked = pl.CurvatureOperator(SelectOutput(TwoHeads(), "logits"), nn.CrossEntropyLoss(), data)
    plain = pl.CurvatureOperator(mlp(), nn.CrossEntropyLoss(), data)
    assert torch.allclose(picked.matvec(torch.ones(plain.dimension)), plain.matvec(
        torch.ones(plain.dimension)))  # fmt: skip


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 2)

    def forward(self, x):
        return self.body(x), x


def traced_tuple_model() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(TupleOutput().eval(), torch.randn(5, 8))


def test_an_output_of_a_torchscript_model_cannot_be_selected():
    """functional_call cannot substitute weights inside it: the curvature would be zero."""
    with pytest.raises(TypeError, match="TorchScript"):
        SelectOutput(traced_tuple_model(), 0)


def test_a_model_traced_in_train_mode_is_refused_and_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.train(), X[:5])
    before = {name: b.clone() for name, b in traced.named_buffers()}
    with pytest.raises(ValueError, match="traced in train mode"):
        check_model_and_data(traced, nn.CrossEntropyLoss(), (X, labels()))
    for name, buffer in traced.named_buffers():
        assert torch.equal(buffer, before[name]), name


@pytest.mark.parametrize("epsilon", [float("inf"), 1e400, float("nan"), 0.0, -1.0])
def test_the_loss_budget_must_be_finite_and_positive(epsilon):
    with pytest.raises(ValueError, match="finite positive number"):
        pl.loss_budget(None, epsilon)
    with pytest.raises(ValueError, match="finite positive number"):
        pl.predict_limit(
            mlp(), data=(X, labels()), loss_fn=nn.CrossEntropyLoss(), epsilon=epsilon,
            methods=("paper",),
        )  # fmt: skip


def test_an_inverted_bracket_is_no_bracket(monkeypatch):
    from pruning_limit import quadrature

    operator = pl.CurvatureOperator(mlp(), nn.CrossEntropyLoss(), (X, labels()), curvature="ggn")
    spectrum = pl.slq(operator, steps=6, probes=2, progress=False)
    weights = operator.weights().double().numpy()

    def inverted(spectrum, rules, scale):
        shape = (spectrum.num_probes,)
        return np.full(shape, 1.312), np.ones(shape)

    monkeypatch.setattr(quadrature, "bounds_at", inverted)
    convergence = pl.predict_from_spectrum(spectrum, weights, 0.01, methods=("paper",)).convergence
    assert convergence["bracket_valid"] is False
    assert "no Gauss/Gauss-Radau bracket" in convergence["message"]
    # how far: an excess of 1e-5 read "0.9857 exceeds the Gauss-Radau bound 0.9857"
    assert "exceeds the Gauss-Radau bound 1 by 0.31" in convergence["message"]
    assert "relative width -" not in convergence["message"]


def test_torchs_own_torchscript_deprecation_warning_is_not_shown():
    """torch 2.14 warns on every torch.jit.script call, which its jvp makes on first use."""
    script = """
import warnings
import torch

original = torch.jit.script


def script(*args, **kwargs):  # torch 2.14's warning, on any torch
    warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`.",
                  FutureWarning)
    return original(*args, **kwargs)


torch.jit.script = script
warnings.simplefilter("error", FutureWarning)
import pruning_limit as pl
from torch import nn

model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
data = (torch.randn(20, 4), torch.arange(20) % 2)
operator = pl.CurvatureOperator(model, nn.CrossEntropyLoss(), data, curvature="ggn")
operator.matvec(torch.ones(operator.dimension))  # forward-mode AD: torch.func.jvp
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env={**ENV, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "deprecated" not in result.stderr, result.stderr


# -- the command line --------------------------------------------------------------------

FACTORIES = """
import torch
from torch import nn

CONSTANT = 3


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 2)

    def forward(self, x):
        return self.body(x), x


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 2)

    def forward(self, x):
        return {"logits": self.body(x)}


def pair():
    return Pair()


def heads():
    return Heads()


def one_output():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))


def broken():
    raise RuntimeError("no GPU here")


def regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 8, generator=g)
    return X, torch.tanh(X[:, :1])
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny checkpoint folder, data files good and bad, and model factories."""
    folder = tmp_path_factory.mktemp("assets")
    data = manifold(d=3, n=8, n_train=200, n_test=100)
    spec = pl.model_spec("mlp", input_dim=8, classes=2, hidden=[8])
    pl.train(spec, data, epochs=3, progress=False, out=folder / "ckpt")
    X, y = data.X_train.numpy(), data.y_train.numpy()
    files = {
        "good": {"X": X, "y": y},
        "label7": {
            "X": X,
            "y": np.where(np.arange(len(y)) == 5, 7, y),
            "X_test": data.X_test.numpy(),
            "y_test": data.y_test.numpy(),
        },
        "labelm1": {"X": X, "y": np.where(np.arange(len(y)) == 5, -1, y)},
        "features": {"X": X[:, :5], "y": y},
        "floaty": {"X": X, "y": y.astype(np.float32)},
        "floaty2d": {"X": X, "y": y.astype(np.float32)[:, None]},
        "intx": {"X": (X * 10).astype(np.int64), "y": y},
        "strx": {"X": np.array([["a"] * 8] * len(y)), "y": y},
        "nanx": {"X": np.where(np.arange(X.size).reshape(X.shape) == 17, np.nan, X), "y": y},
        "one": {"X": X[:1], "y": y[:1]},
    }
    for name, arrays in files.items():
        np.savez(folder / f"{name}.npz", **arrays)
    (folder / "factories.py").write_text(FACTORIES)
    sys.path.insert(0, str(folder))
    try:
        import factories

        for name in ("pair", "heads", "one_output"):
            torch.save(getattr(factories, name)().state_dict(), folder / f"{name}.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("factories", None)
    traced_tuple_model().save(str(folder / "traced_tuple.pt"))
    for name, cut in (("ckpt_empty", 0), ("ckpt_truncated", 2)):
        shutil.copytree(folder / "ckpt", folder / name)
        weights = (folder / "ckpt" / "model.pt").read_bytes()
        (folder / name / "model.pt").write_bytes(weights[: len(weights) // cut if cut else 0])
    (folder / "empty.pt").write_bytes(b"")
    good = (folder / "pair.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model.train(), torch.randn(5, 8)).save(str(folder / "traced_train.pt"))
    np.savez(folder / "with_test.npz", X=X, y=y, X_test=data.X_test.numpy(),
             y_test=data.y_test.numpy())  # fmt: skip
    # spectra of the checkpoint's architecture at other weights, and at other data
    trained, _ = pl.load_checkpoint(folder / "ckpt")
    loss, pair = nn.CrossEntropyLoss(), (torch.as_tensor(X), torch.as_tensor(y))
    other = copy.deepcopy(trained)  # one weight changed
    with torch.no_grad():
        next(other.parameters())[0, 0] += 0.1
    pl.exact_spectrum(other, loss, pair, device="cpu").save(folder / "other_weights.npz")
    shifted = (pair[0] + 0.01, pair[1])
    pl.exact_spectrum(trained, loss, shifted, device="cpu").save(folder / "other_data.npz")
    # predictions edited by hand, or not predictions at all
    prediction = pl.predict_limit(trained, data=pair, loss_fn=loss, epsilon=0.01,
                                  methods=("paper",)).to_dict()  # fmt: skip
    edits = {
        "p17": lambda d: d["estimates"]["paper"].update(removal_fraction=1.7),
        "pnan": lambda d: d["estimates"]["paper"].update(removal_fraction=float("nan")),
        "noestimates": lambda d: d.pop("estimates"),
    }
    for name, edit in edits.items():
        edited = json.loads(json.dumps(prediction))
        edit(edited)
        (folder / f"{name}.json").write_text(json.dumps(edited))
    (folder / "list.json").write_text(json.dumps([prediction]))
    return folder


SPECTRUM = ["spectrum", "ckpt", "--steps", "3", "--probes", "1", "--quiet"]
PREDICT = ["predict", "ckpt", "--data", "good.npz", "--method", "paper", "--epsilon", "0.01"]
VALIDATE = ["validate", "ckpt", "--data", "with_test.npz", "--out", "{tmp}/val", "--prediction"]

BAD_INPUTS = {
    "label 7": (SPECTRUM + ["--data", "label7.npz"], ["labels lie in [0, 7]", "2 outputs"]),
    "label -1": (SPECTRUM + ["--data", "labelm1.npz"], ["labels lie in [-1, 1]"]),
    "feature count": (SPECTRUM + ["--data", "features.npz"], ["inputs of shape (5,)"]),
    "float labels, cross-entropy": (SPECTRUM + ["--data", "floaty.npz"], ["--loss mse"]),
    "float targets, no --loss mse": (
        SPECTRUM[:1] + ["one_output.pt", "--model", "factories:one_output"] + SPECTRUM[2:]
        + ["--data", "floaty2d.npz"],
        ["--loss mse"],
    ),
    "integer X": (SPECTRUM + ["--data", "intx.npz"], ["int64", "float"]),
    "string X": (SPECTRUM + ["--data", "strx.npz"], ["X must be an array of numbers"]),
    "mse on class labels": (SPECTRUM + ["--data", "good.npz", "--loss", "mse"], ["cross-entropy"]),
    "mse with 1-d float targets": (
        SPECTRUM[:1] + ["one_output.pt", "--model", "factories:one_output"] + SPECTRUM[2:]
        + ["--data", "floaty.npz", "--loss", "mse"],
        ["shape (200,)", "(200, 1)", "reshape"],
    ),
    "tuple output": (
        SPECTRUM[:1] + ["pair.pt", "--model", "factories:pair"] + SPECTRUM[2:]
        + ["--data", "good.npz"],
        ["returns a tuple", "--output"],
    ),
    "dict output": (
        SPECTRUM[:1] + ["heads.pt", "--model", "factories:heads"] + SPECTRUM[2:]
        + ["--data", "good.npz"],
        ["returns a dict with keys 'logits'"],
    ),
    "wrong --output": (
        SPECTRUM[:1] + ["heads.pt", "--model", "factories:heads", "--output", "scores"]
        + SPECTRUM[2:] + ["--data", "good.npz"],
        ["'scores'"],
    ),
    "--output of a TorchScript model": (
        SPECTRUM[:1] + ["traced_tuple.pt", "--output", "0"] + SPECTRUM[2:] + ["--data", "good.npz"],
        ["--output", "TorchScript"],
    ),
    "device tpu": (SPECTRUM + ["--data", "good.npz", "--device", "tpu"], ["unknown device"]),
    "model not callable": (
        SPECTRUM[:1] + ["pair.pt", "--model", "factories:CONSTANT"] + SPECTRUM[2:]
        + ["--data", "good.npz"],
        ["not a function"],
    ),
    "factory raises": (
        SPECTRUM[:1] + ["pair.pt", "--model", "factories:broken"] + SPECTRUM[2:]
        + ["--data", "good.npz"],
        ["factories:broken() raised RuntimeError: no GPU here"],
    ),
    "empty checkpoint": (SPECTRUM[:1] + ["empty.pt"] + SPECTRUM[2:] + ["--data", "good.npz"],
                         ["empty (0 bytes)"]),
    "truncated checkpoint": (
        SPECTRUM[:1] + ["truncated.pt"] + SPECTRUM[2:] + ["--data", "good.npz"],
        ["truncated"],
    ),
    "checkpoint folder, empty model.pt": (
        SPECTRUM[:1] + ["ckpt_empty"] + SPECTRUM[2:] + ["--data", "good.npz"],
        ["model.pt is empty (0 bytes)"],
    ),
    "checkpoint folder, truncated model.pt": (
        SPECTRUM[:1] + ["ckpt_truncated"] + SPECTRUM[2:] + ["--data", "good.npz"],
        ["model.pt", "truncated"],
    ),
    "traced in train mode": (
        SPECTRUM[:1] + ["traced_train.pt"] + SPECTRUM[2:] + ["--data", "good.npz"],
        ["traced in train mode", "model.eval()"],
    ),
    "nan in X": (SPECTRUM + ["--data", "nanx.npz"], ["NaN", "data are at fault"]),
    "one sample": (SPECTRUM + ["--data", "one.npz"], ["1 sample"]),
    "argparse": (
        SPECTRUM + ["--data", "good.npz", "--steps", "many"],
        ["--steps", "positive integer or 'auto'", "--help"],
    ),
    "epsilon inf": (["predict", "ckpt", "--data", "good.npz", "--epsilon", "inf"], ["finite"]),
    "epsilon 1e400": (["predict", "ckpt", "--data", "good.npz", "--epsilon", "1e400"], ["finite"]),
    "missing data function": (SPECTRUM + ["--data", "factories:nothing"], ["no data function"]),
    "missing parent of --out": (
        SPECTRUM + ["--data", "good.npz", "--out", "{tmp}/no/such/s.npz"],
        ["does not exist"],
    ),
    "train, missing parent": (
        ["train", "--data", "manifold:d=3,n=8,n_train=50,n_test=20", "--model", "mlp:4",
         "--out", "{tmp}/no/model"],
        ["does not exist"],
    ),
    "train, bad model spec": (
        ["train", "--data", "manifold:d=3,n=8,n_train=50,n_test=20", "--model", "mlp:4x",
         "--out", "{tmp}/model"],
        ["layer widths"],
    ),
    "validate, bad data": (
        ["validate", "ckpt", "--data", "label7.npz", "--out", "{tmp}/val"],
        ["labels lie in"],
    ),
    "spectrum of other weights": (
        PREDICT + ["--spectrum", "other_weights.npz"],
        ["other prunable weights", "--allow-spectrum-mismatch"],
    ),
    "spectrum of other data": (
        PREDICT + ["--spectrum", "other_data.npz"], ["other data", "--allow-spectrum-mismatch"],
    ),
    "prediction with p* = 1.7": (VALIDATE + ["p17.json"], ["removal_fraction", "[0, 1]", "1.7"]),
    "prediction with p* = NaN": (VALIDATE + ["pnan.json"], ["removal_fraction", "nan"]),
    "prediction without estimates": (VALIDATE + ["noestimates.json"], ["needs 'estimates'"]),
    "prediction that is a JSON list": (VALIDATE + ["list.json"], ["json list"]),
}  # fmt: skip


# The whole table runs in one subprocess, each case through cli.main as the command line
# calls it (argv in, exit code out, stderr captured): one torch import, not thirty.
TABLE_DRIVER = """
import contextlib, io, json, sys, traceback
from pruning_limit.cli import main

results = {}
for name, argv in json.loads(sys.argv[1]).items():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            traceback.print_exc()
            code = None
    results[name] = {"code": code, "stderr": stderr.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def table(assets, tmp_path_factory):
    """{case: (exit code, stderr, files left behind)} for every case of BAD_INPUTS."""
    base = tmp_path_factory.mktemp("table")
    argvs = {}
    for index, (case, (arguments, _)) in enumerate(BAD_INPUTS.items()):
        folder = base / str(index)
        folder.mkdir()
        argv = [str(a).format(tmp=folder) for a in arguments]
        if argv[0] in ("spectrum", "predict") and "--out" not in argv:
            argv += ["--out", str(folder / "out")]
        argvs[case] = argv
    before = listing(assets)
    result = subprocess.run(
        [sys.executable, "-c", TABLE_DRIVER, json.dumps(argvs)],
        capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(ROOT)}, cwd=assets,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert listing(assets) == before, "a refused command left a file in the working folder"
    outcomes = json.loads(result.stdout)
    return {
        case: (outcome["code"], outcome["stderr"], listing(base / str(index)))
        for index, (case, outcome) in enumerate(outcomes.items())
    }


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_the_cli_refuses_bad_input_in_one_line_and_leaves_nothing(table, case):
    code, stderr, left_behind = table[case]
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in BAD_INPUTS[case][1]:
        assert word.lower() in lines[0].lower(), lines[0]
    assert not left_behind


def test_one_refusal_through_the_real_command_line(assets, tmp_path):
    """The table calls cli.main; here the same path through `python -m`, as users run it."""
    result = cli(*SPECTRUM, "--data", "label7.npz", "--out", tmp_path / "s.npz", cwd=assets)
    assert_one_line_error(result, "labels lie in [0, 7]")
    assert not any(tmp_path.iterdir())


def test_a_refused_study_leaves_no_folder_above_its_default_out(tmp_path):
    """The folders above a configuration's default out are created for the study, and
    removed again when its configuration is refused."""
    config = '[study]\nname = "x"\nout = "results/studies/x"\n[[datasets]]\nname = "nosuchdata"\n'
    (tmp_path / "bad.toml").write_text(config)
    assert_one_line_error(cli("study", "bad.toml", cwd=tmp_path), "unknown dataset")
    assert listing(tmp_path) == {str(tmp_path / "bad.toml")}


def test_module_function_data_and_model_factory_from_the_current_folder(assets, tmp_path):
    """As the installed script runs them: without the current folder on sys.path (-P)."""
    result = cli(
        "spectrum", "one_output.pt", "--model", "factories:one_output", "--data",
        "factories:regression", "--loss", "mse", "--exact", "--out", tmp_path / "s.npz",
        "--quiet", cwd=assets, flags=["-P"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pl.Spectrum.load(tmp_path / "s.npz").dimension == 8 * 4 + 4


def test_output_picks_one_output_of_a_model(assets, tmp_path):
    result = cli(
        "spectrum", "pair.pt", "--model", "factories:pair", "--output", "0", "--data",
        "good.npz", "--exact", "--out", tmp_path / "s.npz", "--quiet", cwd=assets,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pl.Spectrum.load(tmp_path / "s.npz").dimension == 8 * 2


def test_capped_steps_and_the_written_file_are_named(assets, tmp_path):
    result = cli(
        "spectrum", "ckpt", "--data", "good.npz", "--steps", "100000", "--probes", "1",
        "--out", tmp_path / "s", cwd=assets,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--steps 100000 capped at" in result.stdout
    assert "at most 0.0256 MB on disk (1 probes x 80 steps x D = 80)" in result.stdout
    assert f"written to {tmp_path / 's.npz'}\n" in result.stdout
    result = cli(
        "predict", "ckpt", "--data", "good.npz", "--method", "paper", "--epsilon", "0.01",
        "--out", tmp_path / "bo", "--quiet", cwd=assets,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"written to {tmp_path / 'bo.json'}" in result.stdout
    assert (tmp_path / "bo.json").exists() and not (tmp_path / "bo.json.lock").exists()


def test_a_second_run_on_the_same_out_is_refused(assets, tmp_path):
    lock = tmp_path / "s.npz.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli(*SPECTRUM, "--data", "good.npz", "--out", tmp_path / "s.npz", cwd=assets)
    assert_one_line_error(result, "another pruning-limit run is writing")
    assert not (tmp_path / "s.npz").exists()


def test_a_left_over_state_needs_resume_or_overwrite(assets, tmp_path):
    state = tmp_path / "s.npz.state"
    state.write_bytes(b"left by an interrupted run")
    common = [*SPECTRUM, "--data", "good.npz", "--out", tmp_path / "s.npz"]
    assert_one_line_error(cli(*common, cwd=assets), "--resume", "--overwrite")
    assert state.read_bytes() == b"left by an interrupted run"
    assert_one_line_error(cli(*common, "--resume", "--overwrite", cwd=assets), "give one")
    result = cli(*common, "--overwrite", cwd=assets)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.npz").exists() and not state.exists()


def test_ctrl_c_says_that_resume_continues(assets, tmp_path):
    common = [
        "spectrum", "ckpt", "--data", "manifold:d=3,n=8,n_train=3000,n_test=10", "--steps",
        "60", "--probes", "3", "--block-size", "1", "--checkpoint-every", "2", "--quiet",
        "--out", tmp_path / "s.npz",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "pruning_limit.cli", *map(str, common)],
        env={**ENV, "PYTHONPATH": str(ROOT)},
        cwd=assets,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test run started in the background (`pytest &` from a script) ignores SIGINT,
        # and a child inherits that: Python then never raises KeyboardInterrupt, and the
        # run finished with exit 0. Ctrl-C at a terminal reaches a default handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = tmp_path / "s.npz.state"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0], stderr
    assert state.exists() and not (tmp_path / "s.npz.lock").exists()


def test_predict_seeds_what_draws_random_numbers_and_records_the_seed(assets, tmp_path):
    """statdim_exact's Monte Carlo samples (an exact spectrum, D = 80): --seed 3 and
    --seed 4 give other numbers, and each Prediction records its seed."""
    driver = (
        "import sys\nfrom pruning_limit.cli import main\n"
        "for seed in ('3', '4'):\n"
        "    out = f'{sys.argv[1]}/p{seed}.json'\n"
        "    assert main([*sys.argv[2:], '--seed', seed, '--out', out]) == 0\n"
    )
    predict = ["predict", "ckpt", "--data", "good.npz", "--method", "statdim_exact",
               "--epsilon", "0.01", "--quiet"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", driver, str(tmp_path), *predict], capture_output=True, text=True,
        env={**ENV, "PYTHONPATH": str(ROOT)}, cwd=assets, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    three, four = (json.loads((tmp_path / f"p{s}.json").read_text()) for s in (3, 4))
    assert three["seeds"] == {"statdim_exact": 3} and four["seeds"] == {"statdim_exact": 4}
    fractions = [p["estimates"]["statdim_exact"]["removal_fraction"] for p in (three, four)]
    assert fractions[0] != fractions[1]


def test_predict_says_when_the_seed_has_no_effect(assets, tmp_path):
    """An exact spectrum and a closed form use no random numbers: --seed is named as
    having no effect, and the Prediction records no seed."""
    result = cli(*PREDICT, "--seed", "3", "--out", tmp_path / "p.json", cwd=assets)
    assert result.returncode == 0, result.stderr
    assert "--seed 3 has no effect" in result.stdout
    assert json.loads((tmp_path / "p.json").read_text())["seeds"] == {}
