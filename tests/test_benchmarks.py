"""Each benchmark script runs end to end with ``--quick`` and writes a well-formed result.

The scripts run in subprocesses, as a user runs them, into a temporary results
directory. Only the shape of the JSON and the sanity of its numbers (finite,
positive where they are times or ratios) are checked, never a timing: the machines
that run the tests are shared and their speed is not the subject here.

Baselines (PyHessian, curvlinops, hessian-eigenthings) are optional: each must
appear either among the measured tools or among the skipped ones, with a reason.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BASELINES = ("pyhessian", "curvlinops", "hessian_eigenthings")


# Runs a script as __main__ with the given modules made unimportable (as when the
# package is installed without its baselines extra).
WITHOUT_MODULES = """
import runpy, sys
script, hidden = sys.argv[1], sys.argv[2].split(",")
for module in hidden:
    sys.modules[module] = None
sys.argv = [script, *sys.argv[3:]]
sys.path.insert(0, script.rsplit("/", 1)[0])
runpy.run_path(script, run_name="__main__")
"""


def run_benchmark(name: str, results_dir: Path, *extra: str, hide: tuple[str, ...] = ()) -> dict:
    script = str(BENCHMARKS / f"{name}.py")
    prefix = ["-c", WITHOUT_MODULES, script, ",".join(hide)] if hide else [script]
    command = [
        sys.executable,
        *prefix,
        "--quick",
        "--device",
        "cpu",
        "--results-dir",
        str(results_dir),
        *extra,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    path = results_dir / f"{name}-cpu.json"
    assert path.exists(), f"{name} wrote no {path.name}: {completed.stdout[-2000:]}"
    record = json.loads(path.read_text())
    check_provenance(record, name)
    return record


def check_provenance(record: dict, name: str) -> None:
    assert record["benchmark"] == name
    assert record["quick"] is True
    assert record["device"] == "cpu"
    assert "--quick" in record["command"] and f"{name}.py" in record["command"]
    assert record["date"][:2] == "20"
    machine = record["machine"]
    assert machine["cpu_model"] and positive(machine["cpu_count"])
    for package in ("python", "torch", "numpy", "pruning-limit"):
        assert record["versions"][package], package


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def non_negative(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def check_baselines(measured: dict, skipped: dict) -> None:
    for baseline in BASELINES:
        present = any(name.startswith(baseline) for name in measured)
        assert present != (baseline in skipped), baseline
        if baseline in skipped:
            assert "not installed" in skipped[baseline]


def test_hvp_cost(tmp_path):
    record = run_benchmark("hvp_cost", tmp_path)
    assert set(record["results"]) == {"mlp", "cnn"}
    for result in record["results"].values():
        assert positive(result["workload"]["dimension"])
        tools = result["tools"]
        for name in (
            "gradient",
            "ours.hvp",
            "ours.hvp.block8.loop",
            "ours.hvp.block8.batched",
            "ours.ggn",
            "ours.ggn.block8.loop",
            "ours.ggn.block8.batched",
            "torch.func.forward_over_reverse",
        ):
            assert name in tools, name
        for name, entry in tools.items():
            assert positive(entry["ratio_to_gradient_per_vector"]), name
            assert positive(entry["ratio_of_minimums"]), name
            assert positive(entry["seconds_per_vector_median"]), name
            assert all(positive(t) for t in entry["seconds"]), name
            # Every tool multiplies the same matrix onto the same vectors (float32).
            assert non_negative(entry["relative_difference_to_ours"]), name
            assert entry["relative_difference_to_ours"] < 1e-4, name
        assert tools["gradient"]["ratio_to_gradient_per_vector"] == pytest.approx(1.0)
        assert result["faster_block_hvp_method"] in ("loop", "batched")
        assert positive(result["block_speedup_batched_over_loop"])
        check_baselines(tools, result["skipped"])


def test_slq_speed(tmp_path):
    record = run_benchmark("slq_speed", tmp_path)
    speed = record["results"]["speed"]
    for name in ("ours.block", "ours.sequential"):
        assert name in speed["tools"]
    for name, entry in speed["tools"].items():
        assert positive(entry["seconds_median"]), name
        assert positive(entry["seconds_per_probe_median"]), name
        assert positive(entry["ours_block_over_this"]), name
        assert non_negative(entry["peak_memory"]["peak_mib"]), name
    assert positive(speed["block_over_sequential"])
    for ratios in speed["ours_time_over_anchor_time"].values():
        assert all(positive(r) for r in ratios.values())
    check_baselines(speed["tools"], speed["skipped"])

    accuracy = record["results"]["accuracy"]
    exact = accuracy["exact"]["delta_over_D"]
    assert set(exact) == {"c=1", "c=100", "c=10000"}
    assert all(0 < value <= 1 for value in exact.values())
    for name, entry in accuracy["tools"].items():
        for scale, values in entry["delta_over_D"].items():
            assert positive(values["estimate"]), (name, scale)
            assert non_negative(values["relative_error"]), (name, scale)
    # A smooth function is easy for every tool's quadrature.
    for name, entry in accuracy["tools"].items():
        assert entry["delta_over_D"]["c=1"]["relative_error"] < 0.05, name
    check_baselines(accuracy["tools"], accuracy["skipped"])


def test_scale(tmp_path):
    record = run_benchmark("scale", tmp_path)
    results = record["results"]
    for sweep in ("by_dimension", "by_samples"):
        points = results[sweep]["points"]
        assert len(points) >= 3
        for point in points:
            for key in (
                "seconds_median",
                "seconds_per_block_product",
                "gradient_seconds_median",
                "slq_over_gradient",
            ):
                assert positive(point[key]), (sweep, key)
            assert non_negative(point["peak_memory"]["peak_mib"])
        assert math.isfinite(results[sweep]["exponent_wall_time"])
    dimensions = [p["workload"]["dimension"] for p in results["by_dimension"]["points"]]
    assert dimensions == sorted(dimensions) and dimensions[-1] >= 50_000
    resnet = results["resnet18"]
    if resnet["skipped"]:
        assert "CUDA" in resnet["reason"]


def test_scale_resnet_code_path_on_cpu(tmp_path):
    """The GPU section (ResNet-18, D = 11.2M) run tiny on the CPU: the code path works."""
    record = run_benchmark(
        "scale",
        tmp_path,
        "--only-resnet",
        "--resnet-on-cpu",
        "--resnet-samples",
        "2",
        "--resnet-batch-size",
        "2",
        "--resnet-steps",
        "2",
        "--resnet-probes",
        "1",
    )
    assert record["results"]["by_dimension"]["skipped"] is True
    resnet = record["results"]["resnet18"]
    assert resnet["skipped"] is False
    assert resnet["workload"]["dimension"] == 11_164_352
    assert positive(resnet["seconds_median"])
    assert positive(resnet["seconds_per_block_product"])


def test_missing_baselines_are_skipped_with_a_reason(tmp_path):
    record = run_benchmark("slq_speed", tmp_path, hide=BASELINES)
    for section in ("speed", "accuracy"):
        result = record["results"][section]
        assert set(result["skipped"]) == set(BASELINES)
        assert all("not installed" in reason for reason in result["skipped"].values())
        assert not any(name.startswith(BASELINES) for name in result["tools"])
    assert record["results"]["speed"]["ours_time_over_anchor_time"]["ours.block"] == {}


def test_delta_accuracy_quick(tmp_path):
    record = run_benchmark("delta_accuracy", tmp_path)
    for result in record["results"]:
        for curvature in ("hessian", "ggn"):
            block = result["curvatures"][curvature]
            assert positive(block["c_star"]) and 0.0 <= block["p_star_exact"] <= 1.0
            assert block["rows"], curvature
            for row in block["rows"]:
                assert math.isfinite(row["delta_error_at_c_star"])
                assert abs(row["delta_error_at_c_star"]) <= 1.0  # a difference of two fractions
                assert isinstance(row["interval_contains_exact"], bool)
    assert (tmp_path / "delta_accuracy-cpu.png").stat().st_size > 0


def test_prediction_vs_actual_quick(tmp_path):
    package_errors = BENCHMARKS.parent / "pruning_limit" / "data" / "measured_errors.json"
    shipped = package_errors.read_bytes()
    record = run_benchmark("prediction_vs_actual", tmp_path)
    assert package_errors.read_bytes() == shipped  # only a full run rewrites the package's figures
    assert record["fraction"] == "removed"
    studies = record["studies"]
    assert set(studies) == {"float32", "float64"}
    for dtype, study in studies.items():
        assert len(study["runs"]) == 3, dtype  # manifold d = 2, 8 and digits at rank 8
        for run in study["runs"]:
            assert run["dtype"] == dtype and run["curvature"] == "ggn"
            for method in ("paper", "orthogonal", "quadratic", "trace_bound"):
                low, high = run["predicted"][method]["interval"]
                assert 0.0 <= low <= run["predicted"][method]["p"] <= high <= 1.0, method
            for variant in ("one_shot", "refit", "finetune"):
                for criterion in ("accuracy", "loss_budget"):
                    limit = run["actual"][variant][criterion]
                    assert limit is None or 0.0 <= limit <= 1.0, (variant, criterion)
        for line in study["summary"]:
            assert math.isfinite(line["mean_error_pp"]) and abs(line["mean_error_pp"]) <= 100.0
            assert 0.0 <= line["inside_fraction"] <= 1.0
    markdown = (tmp_path / "prediction_vs_actual-cpu.md").read_text()
    assert "| paper | one_shot | accuracy |" in markdown
    for dtype in ("float32", "float64"):
        assert (tmp_path / f"prediction_vs_actual-cpu-{dtype}.png").stat().st_size > 0


def test_distributed(tmp_path):
    record = run_benchmark("distributed", tmp_path, "--rounds", "1")
    assert record["backend"] == "gloo" and record["nccl"] == "not measured"
    one, two = record["results"]["1"], record["results"]["2"]
    assert two["samples_per_rank"] == [1024, 1024] and one["samples_per_rank"] == [2048]
    for key in ("gradient_seconds", "products_seconds", "slq_seconds"):
        assert positive(one[key]) and positive(two[key]), key
    for key in ("slq_speedup", "slq_efficiency", "products_speedup"):
        assert positive(two[key]), key
    assert all(non_negative(m) for m in two["slq_peak_mib_per_rank"])
    assert two["alphas_relative_difference_to_first"] < 1e-4  # float32, rounding only


def test_basis_options(tmp_path):
    record = run_benchmark("basis_options", tmp_path)
    results = record["results"]
    assert set(results) == {"float32", "bfloat16", "offload", "sharded2"}
    assert results["float32"]["difference_to_float32_basis"] == 0
    assert abs(results["sharded2"]["difference_to_float32_basis"]) < 1e-4
    assert results["sharded2"]["basis_mib_per_rank"] == pytest.approx(
        results["float32"]["basis_mib_per_rank"] / 2, rel=0.01
    )
    assert results["bfloat16"]["basis_mib_per_rank"] == pytest.approx(
        results["float32"]["basis_mib_per_rank"] / 2
    )


def test_paper_setting_quick(tmp_path):
    record = run_benchmark("paper_setting", tmp_path)
    assert record["fraction"] == "removed" and record["partial"] is False
    assert len(record["runs"]) == 2
    slq_runs = 0
    for run in record["runs"]:
        assert run["training"]["recipe"] == "paper" and run["training"]["steps"] == 400
        assert run["epsilon_source"]["kind"] == "reference" and run["epsilon_source"]["ddof"] == 0
        for curvature in ("hessian", "ggn"):
            predicted = run["predicted"][curvature]
            for method in ("paper", "reference", "orthogonal", "trace_bound", "emp"):
                assert 0.0 <= predicted[method]["p"] <= 1.0, (curvature, method)
            spectrum = run["spectra"][curvature]
            if spectrum["method"] == "slq":
                slq_runs += 1
                auto = spectrum["auto_steps"]
                assert auto["steps"] == spectrum["steps"] and auto["trace"]
            assert any(note.startswith("reference - paper = ") for note in spectrum["notes"])
        for variant in ("one_shot", "finetune"):
            actual = run["actual"][variant]
            for criterion in ("accuracy", "loss_budget", "collapse"):
                assert actual[criterion] is None or 0.0 <= actual[criterion] <= 1.0
        assert run["actual"]["finetune"]["above_dense"] is None
    assert slq_runs == 2  # the wider network goes through SLQ with steps="auto"
    for line in record["summary"]:
        assert math.isfinite(line["mean_error_pp"]) and abs(line["mean_error_pp"]) <= 100.0
    assert record["goal"]["statement"]
    markdown = (tmp_path / "paper_setting-cpu.md").read_text()
    assert "predicted - actual over fitted runs" in markdown
    assert (tmp_path / "paper_setting-cpu.png").stat().st_size > 0
