"""The command line, driven in subprocesses: outputs checked, bad input exits 2 in one line."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pruning_limit as pl
import pruning_limit.cli  # noqa: F401  (pl.cli.load_data reads --data as the CLI does)

TINY_DATA = "manifold:d=3,n=8,n_train=200,n_test=100"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(*args, cwd=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "pruning_limit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def assert_user_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pruning-limit: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    result = run(
        "train",
        "--data",
        TINY_DATA,
        "--model",
        "mlp:8",
        "--epochs",
        "20",
        "--out",
        folder,
        "--quiet",
        "--json",
    )
    payload = json.loads(result.stdout)
    assert payload["checkpoint"] == str(folder)
    assert (folder / "model.pt").exists() and (folder / "card.json").exists()
    return folder


def test_train_writes_a_checkpoint_that_reloads(checkpoint):
    model, card = pl.load_checkpoint(checkpoint)
    assert card["model"]["hidden"] == [8]
    assert sum(p.numel() for _, p in pl.parameters.prunable_parameters(model)) == 8 * 8 + 8 * 2


def test_spectrum_exact_and_slq_agree_on_the_trace(checkpoint, tmp_path):
    exact = json.loads(
        run(
            "spectrum",
            checkpoint,
            "--data",
            TINY_DATA,
            "--exact",
            "--dtype",
            "float64",
            "--out",
            tmp_path / "exact.npz",
            "--json",
        ).stdout
    )
    slq = json.loads(
        run(
            "spectrum",
            checkpoint,
            "--data",
            TINY_DATA,
            "--steps",
            "30",
            "--probes",
            "8",
            "--dtype",
            "float64",
            "--out",
            tmp_path / "slq.npz",
            "--json",
            "--quiet",
        ).stdout
    )
    assert pl.Spectrum.load(tmp_path / "exact.npz").method == "exact"
    loaded = pl.Spectrum.load(tmp_path / "slq.npz")
    assert loaded.num_probes == 8 and loaded.curvature == "ggn"
    assert (
        abs(slq["trace_per_coordinate"] - exact["trace_per_coordinate"])
        < 4 * slq["trace_standard_error"] + 1e-12
    )


def test_spectrum_killed_and_resumed_equals_uninterrupted(checkpoint, tmp_path):
    # more samples than the checkpoint saw, so that each product takes a while
    common = [
        "spectrum",
        checkpoint,
        "--data",
        "manifold:d=3,n=8,n_train=3000,n_test=10",
        "--steps",
        "40",
        "--probes",
        "3",
        "--block-size",
        "1",
        "--dtype",
        "float64",
        "--checkpoint-every",
        "5",
        "--quiet",
    ]
    run(*common, "--out", tmp_path / "reference.npz")
    target = tmp_path / "resumed.npz"
    state = tmp_path / "resumed.npz.state"
    process = subprocess.Popen(
        [sys.executable, "-m", "pruning_limit.cli", *map(str, common), "--out", target],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not target.exists()
    # Resuming with other data, or other weights, would mix two runs: refused, state kept.
    other_data = [a if a != common[3] else "manifold:d=3,n=8,n_train=3000,n_test=10,seed=7"
                  for a in common]  # fmt: skip
    assert_user_error(run(*other_data, "--out", target, "--resume", check=False), "other data")
    other_weights = tmp_path / "other"
    other_weights.mkdir()
    (other_weights / "card.json").write_text((checkpoint / "card.json").read_text())
    state_dict = torch.load(checkpoint / "model.pt", weights_only=True)
    first = next(iter(state_dict))
    state_dict[first] = state_dict[first] + 0.01
    torch.save(state_dict, other_weights / "model.pt")
    moved = [other_weights if a == checkpoint else a for a in common]
    assert_user_error(
        run(*moved, "--out", target, "--resume", check=False), "other prunable weights"
    )
    assert state.exists() and not target.exists()
    run(*common, "--out", target, "--resume")
    reference, resumed = pl.Spectrum.load(tmp_path / "reference.npz"), pl.Spectrum.load(target)
    assert resumed.provenance["resumed"]
    assert np.array_equal(reference.alphas, resumed.alphas)
    assert np.array_equal(reference.betas, resumed.betas)
    assert not state.exists()


def test_plain_state_dict_needs_a_factory_and_must_fit(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "factories.py").write_text(
        "from torch import nn\n"
        "def good():\n"
        "    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))\n"
        "def bad():\n"
        "    return nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))\n"
    )
    base = [
        "spectrum",
        tmp_path / "weights.pt",
        "--data",
        TINY_DATA,
        "--steps",
        "5",
        "--probes",
        "2",
        "--out",
        tmp_path / "s.npz",
        "--quiet",
    ]
    assert_user_error(run(*base, check=False, cwd=tmp_path), "--model")
    assert_user_error(
        run(*base, "--model", "factories:bad", check=False, cwd=tmp_path), "does not fit"
    )
    run(*base, "--model", "factories:good", cwd=tmp_path)
    assert pl.Spectrum.load(tmp_path / "s.npz").dimension == 8 * 4 + 4 * 2


def test_pickled_model_refused_without_trust_pickle(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(model, tmp_path / "whole.pt")
    base = [
        "spectrum",
        tmp_path / "whole.pt",
        "--data",
        TINY_DATA,
        "--steps",
        "5",
        "--probes",
        "2",
        "--out",
        tmp_path / "s.npz",
        "--quiet",
    ]
    assert_user_error(run(*base, check=False), "--trust-pickle")
    assert not (tmp_path / "s.npz").exists()
    run(*base, "--trust-pickle")
    assert (tmp_path / "s.npz").exists()


def test_torchscript_checkpoint_gives_the_eager_models_spectrum_and_prediction(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model = model.double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    run(
        "spectrum",
        tmp_path / "scripted.pt",
        "--data",
        TINY_DATA,
        "--exact",
        "--curvature",
        "ggn",
        "--dtype",
        "float64",
        "--out",
        tmp_path / "s.npz",
        "--quiet",
    )
    dataset = pl.cli.load_data(TINY_DATA)
    eager = pl.exact_spectrum(
        model,
        torch.nn.CrossEntropyLoss(),
        (dataset.X_train.double(), dataset.y_train),
        curvature="ggn",
    )
    scripted = pl.Spectrum.load(tmp_path / "s.npz")
    assert scripted.dimension == 8 * 4 + 4 * 2
    assert np.allclose(np.sort(scripted.nodes[0]), np.sort(eager.nodes[0]), atol=1e-12)

    result = run(
        "predict",
        tmp_path / "scripted.pt",
        "--data",
        TINY_DATA,
        "--batch-size",
        "50",
        "--json",
        "--quiet",
    )
    assert set(json.loads(result.stdout)["estimates"]) >= {"paper", "quadratic"}
    (tmp_path / "broken.pt").write_bytes((tmp_path / "scripted.pt").read_bytes()[:400])
    assert_user_error(
        run("predict", tmp_path / "broken.pt", "--data", TINY_DATA, "--quiet", check=False),
        "cannot read",
    )


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["spectrum", "{tmp}/missing", "--data", TINY_DATA], ["no checkpoint"]),
        (["spectrum", "{ckpt}", "--data", "nosuchdata:d=3"], ["unknown dataset"]),
        (["spectrum", "{ckpt}", "--data", "{tmp}/nothing.npz"], ["no data file"]),
        (["spectrum", "{tmp}/corrupt.pt", "--data", TINY_DATA], ["cannot read"]),
        (
            ["spectrum", "{ckpt}", "--data", TINY_DATA, "--out", "/proc/forbidden/s.npz"],
            ["/proc/forbidden", "does not exist"],
        ),
        (["train", "--data", "manifold:d=99,n=8", "--model", "mlp:8", "--out", "{tmp}/t"], ["d"]),
    ],
)
def test_bad_input_exits_2_with_one_line(checkpoint, tmp_path, arguments, words):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    filled = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in arguments]
    result = run(*filled, "--quiet", check=False)
    assert_user_error(result, *words)
    assert not any(tmp_path.glob("*.npz"))


def test_predict_prints_every_method_and_saves_json(checkpoint, tmp_path):
    result = run(
        "predict",
        checkpoint,
        "--data",
        TINY_DATA,
        "--epsilon",
        "0.01",
        "--out",
        tmp_path / "prediction.json",
        "--quiet",  # no logs or progress bars; the result is still printed
    )
    assert "REMOVED" in result.stdout and "Measured error against real pruning" in result.stdout
    assert "Regime: " in result.stdout and "spectrum only [" in result.stdout
    for method in ("paper", "orthogonal", "quadratic", "trace_bound"):
        assert method in result.stdout
    prediction = pl.Prediction.load(tmp_path / "prediction.json")
    assert prediction.epsilon == 0.01 and prediction.curvature == "ggn"
    for estimate in prediction.estimates.values():
        low, high = estimate.interval
        assert 0.0 <= low <= estimate.removal_fraction <= high <= 1.0


def test_predict_taylor_onset_named_by_its_target(checkpoint):
    result = run(
        "predict", checkpoint, "--data", TINY_DATA, "--epsilon", "0.01",
        "--method", "paper", "--method", "taylor_onset", "--quiet",
    )  # fmt: skip
    rows = [line for line in result.stdout.splitlines() if line.startswith("taylor_onset ")]
    assert rows and rows[0].endswith("one-shot loss-budget onset")


def test_predict_from_a_saved_spectrum_and_json_output(checkpoint, tmp_path):
    run(
        "spectrum",
        checkpoint,
        "--data",
        TINY_DATA,
        "--steps",
        "20",
        "--probes",
        "4",
        "--out",
        tmp_path / "s.npz",
        "--quiet",
    )
    result = run(
        "predict",
        checkpoint,
        "--data",
        TINY_DATA,
        "--spectrum",
        tmp_path / "s.npz",
        "--method",
        "paper",
        "--json",
        "--epsilon",
        "0.01",
    )
    payload = json.loads(result.stdout)
    assert list(payload["estimates"]) == ["paper"]
    assert payload["spectrum"]["method"] == "slq"
    # The regime, with the card's optimiser, and a calibrated interval (or the reason
    # there is none) for every criterion of the shipped calibration set.
    regime = payload["regime"]
    assert regime["optimizer"] == "adam" and regime["removal_fraction_method"] == "paper"
    assert regime["name"] in ("sparse, fits the data", "dense, fits the data", "under-fitted")
    calibrated = payload["calibrated_intervals"]
    assert {(c["variant"], c["criterion"]) for c in calibrated} >= {("one_shot", "collapse")}
    for entry in calibrated:
        assert entry["method"] == "paper"
        assert (entry["low"] is None) == (entry["reason"] is not None)


def test_predict_bad_input(checkpoint, tmp_path):
    assert_user_error(
        run("predict", checkpoint, "--data", TINY_DATA, "--epsilon", "0", check=False), "epsilon"
    )
    assert_user_error(
        run("predict", checkpoint, "--data", TINY_DATA, "--epsilon", "nan", check=False), "epsilon"
    )
    other = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    operator = pl.CurvatureOperator(
        other,
        torch.nn.CrossEntropyLoss(),
        (torch.randn(20, 8), torch.randint(0, 2, (20,))),
        device="cpu",
        curvature="hessian",
    )
    pl.slq(operator, steps=4, probes=2, progress=False).save(tmp_path / "other.npz")
    assert_user_error(
        run(
            "predict",
            checkpoint,
            "--data",
            TINY_DATA,
            "--spectrum",
            tmp_path / "other.npz",
            check=False,
        ),
        "another model",
    )


def test_validate_compares_with_a_prediction_and_writes_plots(checkpoint, tmp_path):
    run(
        "predict",
        checkpoint,
        "--data",
        TINY_DATA,
        "--epsilon",
        "0.01",
        "--out",
        tmp_path / "prediction.json",
        "--quiet",
    )
    result = run(
        "validate",
        checkpoint,
        "--data",
        TINY_DATA,
        "--prediction",
        tmp_path / "prediction.json",
        "--variant",
        "one_shot",
        "--resolution",
        "0.02",
        "--out",
        tmp_path / "val",
        "--json",
        "--quiet",
    )
    payload = json.loads(result.stdout)
    assert payload["validation"]["epsilon"] == 0.01  # taken from the prediction
    assert (tmp_path / "val" / "validation.json").exists()
    assert (tmp_path / "val" / "validation.png").stat().st_size > 0
    assert "paper" in (tmp_path / "val" / "comparison.md").read_text()
    assert {row["method"] for row in payload["comparison"]["rows"]} >= {"paper", "quadratic"}


def test_validate_rejects_a_negative_tolerance(checkpoint, tmp_path):
    assert_user_error(
        run(
            "validate",
            checkpoint,
            "--data",
            TINY_DATA,
            "--tolerance",
            "-1",
            "--out",
            tmp_path / "v",
            check=False,
        ),
        "tolerance",
    )


def test_demo_quick_writes_the_results_folder(tmp_path):
    result = run("demo", "--quick", "--out", tmp_path / "demo")
    assert "paper" in result.stdout and "one_shot" in result.stdout
    # The transition and who locates it, beside the onsets; the baseline named as such.
    assert "one_shot collapse" in result.stdout and "| width |" in result.stdout
    assert "which predictors land there" in result.stdout and "emp (baseline)" in result.stdout
    study = json.loads((tmp_path / "demo" / "study.json").read_text())
    assert len(study["rows"]) == 2
    assert {row["regularisation"] for row in study["rows"]} == {"plain", "l1=0.001"}
    for row in study["rows"]:
        assert 0.0 <= row["predicted"]["paper"]["p"] <= 1.0
        assert 0.0 <= row["actual"]["one_shot"]["collapse"] <= 1.0
    assert (tmp_path / "demo" / "study.png").stat().st_size > 0


def test_study_from_a_toml_file_and_unknown_keys(tmp_path):
    config = Path(__file__).parent.parent / "examples" / "study-tiny.toml"
    result = run("study", config, "--out", tmp_path / "study", "--quiet", "--json")
    assert json.loads(result.stdout)["name"] == "tiny"
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[study]\nname = "x"\nfavourite_colour = "blue"\n[[datasets]]\nname = "manifold"\n'
    )
    assert_user_error(run("study", bad, check=False), "favourite_colour")


def test_train_with_the_paper_recipe_then_predict_with_the_references_eps_and_pipeline(tmp_path):
    folder = tmp_path / "paper"
    run("train", "--data", TINY_DATA, "--model", "mlp:8", "--recipe", "paper", "--steps", "30",
        "--no-l1-biases", "--warmup-steps", "5", "--out", folder, "--quiet")  # fmt: skip
    _, card = pl.load_checkpoint(folder)
    training = card["training"]
    assert (training["recipe"], training["optimizer"], training["steps"]) == ("paper", "sgd", 30)
    assert training["l1"] == 5e-5 and training["l1_biases"] is False  # the flag overrides
    assert (training["warmup_steps"], training["init"]) == (5, "kaiming_normal")
    payload = json.loads(
        run("predict", folder, "--data", TINY_DATA, "--epsilon", "reference", "--method",
            "paper", "--method", "reference", "--json", "--quiet").stdout
    )  # fmt: skip
    assert payload["epsilon_source"]["kind"] == "reference"
    assert set(payload["estimates"]) == {"paper", "reference"}
    assert any(note.startswith("reference - paper = ") for note in payload["notes"])


def test_spectrum_and_predict_take_steps_auto_and_an_auto_run_resumes(checkpoint, tmp_path):
    common = [
        "spectrum",
        checkpoint,
        "--data",
        "manifold:d=3,n=8,n_train=1500,n_test=10",
        "--steps",
        "auto",
        "--auto-tolerance",  # p* has settled by m = 50 on D = 80: go on to the next m
        "1e-16",
        "--probes",
        "3",
        "--block-size",
        "1",
        "--dtype",
        "float64",
        "--checkpoint-every",
        "5",
        "--quiet",
    ]
    whole = json.loads(run(*common, "--out", tmp_path / "whole.npz", "--json").stdout)
    auto = whole["provenance"]["auto_steps"]
    # D = 80: m = 50, then 100, capped where Lanczos is exact (the non-zero rows)
    assert [row["steps"] for row in auto["trace"]][0] == 50 and len(auto["trace"]) == 2
    assert 50 < auto["steps"] == whole["provenance"]["steps"] <= 80 and not auto["converged"]
    assert auto["max_steps"] == 400 and auto["resumed_after_steps"] is None
    target = tmp_path / "resumed.npz"
    state = tmp_path / "resumed.npz.state"
    process = subprocess.Popen(
        [sys.executable, "-m", "pruning_limit.cli", *map(str, common), "--out", target],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (state / "auto.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (state / "auto.json").exists() and not target.exists()
    assert_user_error(run(*common, "--out", target, check=False), "--resume")
    resumed = json.loads(run(*common, "--out", target, "--resume", "--json").stdout)
    assert resumed["provenance"]["auto_steps"]["resumed_after_steps"] == 50
    reference, loaded = pl.Spectrum.load(tmp_path / "whole.npz"), pl.Spectrum.load(target)
    assert np.array_equal(reference.alphas, loaded.alphas)
    assert not state.exists()

    def assert_argument_error(result, *words):  # argparse's, in one line
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert all(word in lines[0] for word in words), lines[0]

    for bad in ("0", "many"):
        assert_argument_error(
            run("spectrum", checkpoint, "--data", TINY_DATA, "--steps", bad, check=False),
            "--steps",
            "'auto'",
        )
    assert_argument_error(
        run("spectrum", checkpoint, "--data", TINY_DATA, "--steps", "auto",
            "--auto-max-steps", "1", check=False),
        "--auto-max-steps",
    )  # fmt: skip
    assert_user_error(
        run("predict", checkpoint, "--data", TINY_DATA, "--spectrum", target, "--steps", "auto",
            check=False),
        "--spectrum",
    )  # fmt: skip
    # D = 80 <= the exact limit: the spectrum is exact, and predict says --steps did nothing
    result = run("predict", checkpoint, "--data", TINY_DATA, "--steps", "auto", "--method",
                 "paper", "--batch-size", "50", "--json")  # fmt: skip
    assert json.loads(result.stdout)["spectrum"]["method"] == "exact"
    assert "--steps auto has no effect" in result.stderr
