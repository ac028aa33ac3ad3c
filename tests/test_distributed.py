"""Data parallelism: 2 gloo processes on unequal shards give one process's numbers.

One group of 2 spawned processes computes every sharded quantity (products,
gradient, loss, eps, exact and SLQ spectra of the Hessian and the GGN, a prediction,
an interrupted and resumed SLQ, a validation sweep with one-shot, re-fit and fine-tune);
the tests compare each with one
process on the concatenated data (float64, relative error <= 1e-7) and the two ranks
with each other (bit for bit). Both ranks then call every library writer on one
folder: rank 0 alone writes, and both return the same paths. Two more groups check
that a failing or a stuck rank ends every rank with a clear error instead of a hang.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from distributed_workers import (
    BATCH,
    FINETUNE,
    METHODS,
    SPLIT,
    VALIDATION,
    compute,
    problem,
    run_group,
    validation_results,
)

import pruning_limit as pl
from pruning_limit import distributed
from pruning_limit.batches import as_batches
from pruning_limit.quadrature import gauss_rule

TOLERANCE = 1e-7


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_group("sums", str(tmp_path_factory.mktemp("sums")))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, fed the ranks' batches in rank order (the concatenated data)."""
    model, loss_fn, (X, y), test, block = problem()
    batches = (
        as_batches((X[:SPLIT], y[:SPLIT]), BATCH).batches
        + as_batches((X[SPLIT:], y[SPLIT:]), BATCH).batches
    )
    results = compute(pl, model, loss_fn, list(batches), test, block,
                      str(tmp_path_factory.mktemp("single") / "slq.state"))  # fmt: skip
    results["validation"] = validation_results(pl, model, loss_fn, (X, y), test)
    return results


def close(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max()), 1e-300)
    return a.shape == b.shape and float(np.abs(a - b).max()) <= TOLERANCE * scale


def test_ranks_succeed_and_agree_bit_for_bit(ranks):
    for result in ranks:
        assert "error" not in result, result.get("traceback")
    first, second = ranks
    for key in ("hessian_products", "ggn_products", "gradient"):
        assert torch.equal(first[key], second[key])
    for key in ("hessian_slq_nodes", "ggn_slq_nodes", "hessian_exact", "resumed_alphas"):
        assert np.array_equal(first[key], second[key])
    assert first["loss"] == second["loss"] and first["epsilon"] == second["epsilon"]
    assert first["prediction"] == second["prediction"]
    assert first["validation"] == second["validation"]


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_curvature_products_and_spectra_equal_one_process(ranks, single, curvature):
    result = ranks[0]
    assert close(result[f"{curvature}_products"], single[f"{curvature}_products"])
    assert close(result[f"{curvature}_exact"], single[f"{curvature}_exact"])
    assert close(result[f"{curvature}_slq_nodes"], single[f"{curvature}_slq_nodes"])
    assert close(result[f"{curvature}_slq_weights"], single[f"{curvature}_slq_weights"])
    provenance = result[f"{curvature}_provenance"]
    assert provenance["world_size"] == 2 and provenance["backend"] == "gloo"
    assert provenance["num_samples"] == 123 and provenance["num_batches"] == 9
    assert single[f"{curvature}_provenance"]["world_size"] == 1
    # the fingerprint is of the whole data, whichever shard a rank holds
    expected = single[f"{curvature}_fingerprint"]
    assert [r[f"{curvature}_fingerprint"] for r in ranks] == [expected, expected]
    assert single[f"{curvature}_fingerprint"]["samples"] == 123


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_basis_sharded_by_coordinate_gives_the_same_spectrum_at_half_the_memory(
    ranks, single, curvature
):
    for result in ranks:
        assert close(result[f"{curvature}_sharded_nodes"], single[f"{curvature}_slq_nodes"])
    ours = [r[f"{curvature}_sharded_provenance"] for r in ranks]
    theirs = single[f"{curvature}_sharded_provenance"]
    assert [p["basis_coordinates_per_rank"] for p in ours] == [24, 24]
    assert theirs["basis_coordinates_per_rank"] == 48 and not theirs["basis_sharded"]
    assert ours[0]["basis_sharded"]
    assert ours[0]["basis_mib_per_rank"] == pytest.approx(theirs["basis_mib_per_rank"] / 2)


def test_basis_stored_in_float32_or_bfloat16_stays_close_to_the_full_basis():
    model, loss_fn, train, _, _ = problem()
    operator = pl.CurvatureOperator(model, loss_fn, train, batch_size=BATCH, device="cpu")
    options = dict(steps=20, probes=2, progress=False)
    full = pl.slq(operator, **options)
    c = 1e3 / float(np.abs(full.nodes).max())  # c lambda_max = 1e3, the regime of c*
    reference = full.trace_function(lambda x: 1 / (1 + c * np.abs(x)))[0]
    for dtype, tolerance in (("float32", 1e-6), ("bfloat16", 2e-2)):
        stored = pl.slq(operator, basis_dtype=dtype, basis_device="cpu", **options)
        estimate = stored.trace_function(lambda x: 1 / (1 + c * np.abs(x)))[0]
        assert abs(estimate - reference) <= tolerance, dtype
        assert stored.provenance["basis_dtype"] == dtype
    with pytest.raises(ValueError, match="basis_dtype must be"):
        pl.slq(operator, basis_dtype="float16", **options)


def test_loss_gradient_eps_and_prediction_equal_one_process(ranks, single):
    result = ranks[0]
    assert close(result["loss"], single["loss"])
    assert close(result["gradient"], single["gradient"])
    assert close(result["epsilon"], single["epsilon"])  # batch_std over all 9 batches
    assert close(result["prediction_epsilon"], single["prediction_epsilon"])
    for method in METHODS:
        assert abs(result["prediction"][method] - single["prediction"][method]) <= 1e-6
    assert result["prediction_distributed"] == {"world_size": 2, "backend": "gloo"}


def test_interrupted_distributed_slq_resumes_to_the_identical_result(ranks, single):
    result = ranks[0]
    assert result["interrupted"] and result["resumed"]
    assert close(result["resumed_alphas"], single["resumed_alphas"])
    assert close(result["resumed_betas"], single["resumed_betas"])
    # and equal to the uninterrupted distributed run (probe by probe instead of in a block)
    nodes = [gauss_rule(a, b)[0] for a, b in zip(result["resumed_alphas"], result["resumed_betas"])]
    assert close(np.stack(nodes), result["ggn_slq_nodes"])


def test_validation_sweep_equals_one_process(ranks, single):
    result, reference = ranks[0]["validation"], single["validation"]
    assert result["limits"] == reference["limits"]
    assert close(result["epsilon"], reference["epsilon"])
    assert result["dense"]["n_test"] == 61 and result["dense"]["n_train"] == 123
    for variant in VALIDATION["variants"]:
        ours, theirs = result["points"][variant], reference["points"][variant]
        assert [p for p, _ in ours] == [p for p, _ in theirs]
        for (_, a), (_, b) in zip(ours, theirs):
            for key in ("test_loss", "train_loss", "test_accuracy", "train_accuracy"):
                assert close(a[key], b[key]), (variant, key)
    for key in ("test_loss", "train_loss", "test_accuracy", "train_accuracy"):
        assert close(result["finetuned_dense"][key], reference["finetuned_dense"][key]), key
    # the fine-tune really moved the weights, and some of its batches lay on one rank alone
    assert result["finetuned_dense"]["train_loss"] < result["dense"]["train_loss"] - 1e-3
    boundary = distributed.shard_range(123, BATCH, 1, 2)[0]  # the validation's shards
    order = torch.Generator().manual_seed(VALIDATION["seed"])
    batches = [
        batch
        for _ in range(FINETUNE["epochs"])
        for batch in torch.randperm(123, generator=order).split(FINETUNE["batch_size"])
    ]
    assert any(bool((b < boundary).all() or (b >= boundary).all()) for b in batches)


def test_only_rank_zero_writes_and_every_rank_returns_the_same_paths(ranks):
    first, second = ranks
    saved = first["saved"]
    assert second["saved"] == saved
    assert second["filesystem"] == []  # no rename, no folder: rank 1 touched nothing
    written = sorted(target for kind, target in first["filesystem"] if kind == "replace")
    folder = saved["checkpoint"].parent
    expected = ["spectrum.npz", "prediction.json", "validation.json", "study.json",
                "checkpoint/model.pt", "checkpoint/card.json", "figures/density.png"]  # fmt: skip
    assert written == sorted(str(folder / name) for name in expected)
    assert {saved[k].name for k in saved} == {
        "spectrum.npz", "prediction.json", "validation.json", "study.json", "checkpoint",
        "density.png",
    }  # fmt: skip
    assert all((folder / name).is_file() for name in expected)
    assert not list(folder.rglob("*.tmp"))
    assert pl.Validation.load(saved["validation"]).dense == first["validation"]["dense"]


def test_a_failing_rank_ends_every_rank_with_a_clear_error(tmp_path):
    first, second = run_group("bad_data", str(tmp_path), limit=120)
    # The rank with bad data refuses it where data enter (batches.check_model_and_data).
    assert second["error"] == "ValueError"
    assert "the model refuses inputs of shape (4,)" in second["message"]
    assert first["error"] == "RankFailedError"
    assert "rank 1 failed in estimate_spectrum: ValueError" in first["message"]
    assert "the model refuses inputs of shape (4,)" in first["message"]


def test_a_stuck_rank_times_out_with_a_clear_error(tmp_path):
    first, second = run_group("stuck", str(tmp_path), limit=120)
    assert first["error"] == "RankFailedError" and "waited 2 s" in first["message"]
    assert second["error"] == "RankFailedError"


def test_shards_are_whole_contiguous_batches():
    for samples, batch, world in [(123, 16, 2), (10, 3, 3), (7, 7, 1), (100, 1, 4)]:
        ranges = [distributed.shard_range(samples, batch, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == samples
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % batch == 0 for start, _ in ranges)
    with pytest.raises(ValueError, match="fewer than the 3 ranks"):
        distributed.shard_range(5, 4, 0, 3)
