"""The study: the tiny CI configuration end to end, resuming, and the TOML checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pruning_limit.study import StudyResult, run_study
from pruning_limit.study_config import load_config
from pruning_limit.validation import CRITERIA

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parent.parent / "examples" / "study-tiny.toml"
FULL = Path(__file__).resolve().parent.parent / "examples" / "study.toml"
RUN_FILES = (
    "config.json", "run.json", "spectrum.npz", "prediction.json", "validation.json",
    "validation.png", "statdim.png", "spectrum.png", "checkpoint/card.json", "checkpoint/model.pt",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    lines: list[str] = []
    threads = torch.get_num_threads()
    result = run_study(TINY, out=out, log=lines.append)
    assert torch.get_num_threads() == threads  # the study's thread limit is undone
    return out, result, lines


def test_tiny_study_runs_end_to_end(tiny_study):
    out, result, lines = tiny_study
    names = [row["run"] for row in result.rows]
    assert names == [
        "manifold-d2-plain-float32",
        "manifold-d2-l1_0.001-float32",
        "manifold-d8-plain-float32",
        "manifold-d8-l1_0.001-float32",
    ]
    assert result.skipped == [] and len(lines) == 4
    for name in names:
        for file in RUN_FILES:
            assert (out / name / file).is_file(), (name, file)
    for file in ("study.json", "study.md", "study.png"):
        assert (out / file).stat().st_size > 0
    row = result.rows[0]
    assert set(row["predicted"]) == {"paper", "orthogonal", "quadratic", "trace_bound", "emp"}
    assert set(row["actual"]) == {"one_shot", "refit", "finetune"}
    assert row["curvature"] == "ggn" and row["spectrum_method"] == "exact"
    assert row["refit_curvature"] == "ggn (the prediction's)"
    assert row["intrinsic_dimension"] == 2.0 and row["dimension"] == 288
    for variant in row["actual"].values():
        assert 0.0 <= variant["accuracy"] <= 1.0 and 0.0 <= variant["loss_budget"] <= 1.0
        assert variant["collapse_start"] <= variant["collapse"] <= variant["collapse_end"]
        assert variant["collapse_width"] == pytest.approx(
            variant["collapse_end"] - variant["collapse_start"]
        )
    assert row["actual"]["refit"]["above_dense"] is None
    assert "not read on refit" in row["actual"]["refit"]["above_dense_reason"]
    # Every predictor against every criterion that has a limit.
    measured = [(v, c) for v, a in row["actual"].items() for c in CRITERIA if a.get(c) is not None]
    assert len(measured) >= 3 * 4  # the onsets, collapse and loss_collapse of every variant
    assert len(row["comparison"]) == 5 * len(measured)
    assert {(e["variant"], e["criterion"]) for e in row["comparison"]} == set(measured)
    assert all(s["runs"] <= 4 for s in result.summary)
    assert {s["criterion"] for s in result.summary} >= {"collapse", "loss_collapse"}
    loaded = StudyResult.load(out / "study.json")
    assert loaded.rows == json.loads(json.dumps(result.rows))
    markdown = (out / "study.md").read_text()
    assert "fraction of prunable weights REMOVED" in markdown
    assert "| manifold-d8-plain-float32 |" in markdown and "| quadratic | refit |" in markdown
    assert "`collapse`: collapse centre" in markdown and "| emp (baseline) |" in markdown
    assert "Against the baseline `emp`" in markdown and "which predictors land there" in markdown


def test_a_second_run_skips_finished_runs(tiny_study):
    out, first, _ = tiny_study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/run.json")}
    lines: list[str] = []
    second = run_study(TINY, out=out, log=lines.append)
    assert second.skipped == [row["run"] for row in first.rows]
    assert all("skipped" in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/run.json")} == stamps
    assert second.rows == json.loads(json.dumps(first.rows))


def test_an_interrupted_run_resumes_from_its_last_file(tiny_study, tmp_path):
    source, first, _ = tiny_study
    out = tmp_path / "study"
    shutil.copytree(source, out)
    interrupted = out / "manifold-d8-plain-float32"
    for file in ("run.json", "validation.json", "validation.png"):
        (interrupted / file).unlink()
    prediction = (interrupted / "prediction.json").stat().st_mtime_ns
    result = run_study(TINY, out=out)
    assert "manifold-d8-plain-float32" not in result.skipped and len(result.skipped) == 3
    assert (interrupted / "run.json").is_file() and (interrupted / "validation.png").is_file()
    assert (interrupted / "prediction.json").stat().st_mtime_ns == prediction  # reused
    again = {row["run"]: row for row in result.rows}["manifold-d8-plain-float32"]
    before = {row["run"]: row for row in first.rows}["manifold-d8-plain-float32"]
    assert again["actual"] == json.loads(json.dumps(before["actual"]))  # deterministic


def test_a_run_folder_made_with_another_configuration_is_refused(tiny_study, tmp_path):
    source, _, _ = tiny_study
    out = tmp_path / "study"
    shutil.copytree(source, out)
    config = load_config(TINY)
    config["validation"]["tolerance"] = 1.0
    with pytest.raises(ValueError, match="another configuration"):
        run_study(config, out=out)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


DATASET = '\n[[datasets]]\nname = "manifold"\nd = [2]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[training]\nepoch = 3\n", r"unknown key\(s\) \['epoch'\] in \[training\]"),
        ("[trainig]\nepochs = 3\n", r"unknown section\(s\) \['trainig'\]"),
        ("[validation.finetune]\nsteps = 3\n", r"\['steps'\] in \[validation.finetune\]"),
        ('[model]\nkind = "mlp"\nwidth = 3\n', "width"),
        ("[model]\ninput_dim = 3\n", "taken from each dataset"),
        ("[training]\nepochs = 2.5\n", r"\[training\] epochs must be of type int"),
        ("[training]\nl1 = [-1.0]\n", "l1"),
        ('[study]\ndtypes = ["float16"]\n', "dtypes"),
        ('[prediction]\nmethods = ["magic"]\n', "magic"),
        ('[prediction]\nepsilon = "huge"\n', "epsilon"),
        ('[validation]\nvariants = ["retrain"]\n', "retrain"),
        ("[validation]\namounts = [0.5, 2.0]\n", "amounts"),
        ('[training]\nrecipe = "sgd"\n', "recipe must be one of"),
        ("[training]\nsteps = 10\nepochs = 2\n", "epochs or steps, not both"),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_error(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        run_study(write(tmp_path, text + DATASET), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any run


def test_configuration_without_datasets_or_not_toml(tmp_path):
    with pytest.raises(ValueError, match="datasets"):
        load_config(write(tmp_path, '[study]\nname = "x"\n'))
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(write(tmp_path, "[study\n"))
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_shipped_configurations_are_valid():
    for path in (TINY, FULL):
        config = load_config(path)
        assert config["prediction"]["curvature"] == "ggn"
    full = load_config(FULL)
    names = {entry["name"] for entry in full["datasets"]}
    assert names == {"manifold", "digits", "mnist1d"}


def test_a_non_default_recipe_is_not_overridden_by_the_studys_training_defaults(tmp_path):
    config = load_config(write(tmp_path, '[training]\nrecipe = "paper"\nsteps = 40\n' + DATASET))
    training = config["training"]
    assert (training["recipe"], training["steps"], training["l1"]) == ("paper", 40, [5e-5])
    for key in ("epochs", "lr", "optimizer", "batch_size", "momentum", "l1_biases", "init"):
        assert training[key] is None, key  # train() takes the recipe's value
    given = load_config(write(tmp_path, '[training]\nrecipe = "paper"\nlr = 0.05\n' + DATASET))
    assert given["training"]["lr"] == 0.05 and given["training"]["steps"] is None
    plain = load_config(write(tmp_path, "[training]\nsteps = 40\n" + DATASET))["training"]
    assert (plain["optimizer"], plain["epochs"], plain["steps"]) == ("adam", None, 40)


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ('name = "manifold"\nd = [2, 8, -3]\nn = 8\nn_train = 40\nn_test = 20\n', "d"),
        ('name = "manifold"\nd = [2]\nn = 8\nn_train = 40\nn_test = 20\n'
         '\n[[datasets]]\nname = "nosuchdata"\n', "unknown dataset"),
    ],
)  # fmt: skip
def test_the_whole_configuration_is_checked_before_the_first_run(tmp_path, datasets, message):
    """d = [2, 8, -3] used to run two runs before refusing the third; now nothing runs,
    and no folder or config.json is left behind."""
    with pytest.raises(ValueError, match=message):
        run_study(write(tmp_path, "[[datasets]]\n" + datasets), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_study_predicts_the_taylor_onset_and_marks_its_target(tmp_path):
    config = """
[study]
name = "onset"
threads = 1
[model]
hidden = [8]
[training]
epochs = 5
lr = 1e-2
batch_size = 100
l1 = [0.0]
[prediction]
methods = ["trace_bound", "taylor_onset"]
sensitivity = false
batch_size = 50
[validation]
variants = ["one_shot"]
resolution = 0.05
amounts = [0.0, 0.3, 0.6, 0.9]
[[datasets]]
name = "manifold"
d = [2]
n = 8
n_train = 200
n_test = 200
"""
    assert load_config(write(tmp_path, config))["prediction"]["methods"] == [
        "trace_bound", "taylor_onset"
    ]  # fmt: skip
    result = run_study(write(tmp_path, config), out=tmp_path / "out")
    row = result.rows[0]
    assert set(row["predicted"]) == {"trace_bound", "taylor_onset"}
    assert 0.0 <= row["predicted"]["taylor_onset"]["p"] <= 1.0
    markdown = result.to_markdown()
    assert "| pred taylor_onset |" in markdown
    assert "`taylor_onset`: one-shot loss-budget onset" in markdown
    assert "| taylor_onset | one_shot | loss_budget * |" in markdown
    assert "| trace_bound | one_shot | loss_budget |" in markdown
