"""The library's writers in one process, and as a rank other than 0 would run them.

Every writer goes through ``serialization.write_atomic``: without torch.distributed
it writes (atomically, no temporary left behind); as rank 1 of a group it writes
nothing and returns the path rank 0 writes. The 2-process gloo group of
``test_distributed.py`` checks the same on real ranks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from distributed_workers import problem, results_to_save, save_all

import pruning_limit as pl
from pruning_limit import distributed, serialization

FILES = ["spectrum.npz", "prediction.json", "validation.json", "study.json",
         "checkpoint/model.pt", "checkpoint/card.json", "figures/density.png"]  # fmt: skip


@pytest.fixture(scope="module")
def results():
    model, loss_fn, train, test, _ = problem()
    return results_to_save(pl, model, loss_fn, train, test)


def test_every_writer_writes_without_torch_distributed(results, tmp_path):
    saved = save_all(results, str(tmp_path))
    files = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(files) == sorted(FILES)
    assert saved["spectrum"] == tmp_path / "spectrum.npz"
    assert saved["figure"] == tmp_path / "figures" / "density.png"
    assert np.array_equal(pl.Spectrum.load(saved["spectrum"]).nodes, results["spectrum"].nodes)
    assert pl.Prediction.load(saved["prediction"]).epsilon == results["prediction"].epsilon
    assert pl.Validation.load(saved["validation"]).dense == results["validation"].dense
    weights = torch.load(saved["checkpoint"] / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in results["model"].state_dict().items())
    assert json.loads((saved["checkpoint"] / "card.json").read_text()) == {"by": "test"}
    saved_again = save_all(results, str(tmp_path))  # files already there are replaced
    assert saved_again == saved


def test_a_rank_other_than_zero_writes_nothing_and_returns_rank_zeros_paths(
    results, tmp_path, monkeypatch
):
    main = tmp_path / "main"
    main.mkdir()
    expected = save_all(results, str(main))
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert not distributed.is_main()
    saved = save_all(results, str(other))
    assert list(other.iterdir()) == []
    assert {k: p.relative_to(other) for k, p in saved.items()} == {
        k: p.relative_to(main) for k, p in expected.items()
    }


def test_write_atomic_leaves_no_temporary_when_the_writer_fails(tmp_path):
    def failing(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        serialization.write_atomic(tmp_path / "result.json", failing)
    assert list(tmp_path.iterdir()) == []
