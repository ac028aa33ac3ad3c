"""Datasets of controlled intrinsic dimension: determinism, ID estimates, offline generation."""

import json
import socket

import numpy as np
import pytest
import torch

from pruning_limit.datasets import (
    Dataset,
    digits,
    intrinsic_dimension,
    load_dataset,
    manifold,
    mnist1d,
)


def _same_data(a: Dataset, b: Dataset) -> bool:
    return all(
        torch.equal(getattr(a, name), getattr(b, name))
        for name in ("X_train", "y_train", "X_test", "y_test")
    )


def test_manifold_is_deterministic_by_seed_and_rebuilds_from_its_spec():
    first = manifold(d=3, n=12, classes=3, n_train=300, n_test=100, seed=5)
    assert _same_data(first, manifold(d=3, n=12, classes=3, n_train=300, n_test=100, seed=5))
    assert not torch.equal(first.X_train, manifold(d=3, n=12, n_train=300, seed=6).X_train)
    rebuilt = load_dataset(**json.loads(json.dumps(first.spec)))
    assert _same_data(first, rebuilt)
    assert rebuilt.estimated_intrinsic_dimension == first.estimated_intrinsic_dimension


def test_manifold_shapes_types_balance_and_standardisation():
    data = manifold(d=3, n=12, classes=3, n_train=300, n_test=90)
    assert data.X_train.shape == (300, 12) and data.X_test.shape == (90, 12)
    assert data.X_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train.bincount().tolist() == [100, 100, 100]
    assert set(data.y_test.tolist()) <= {0, 1, 2}
    assert torch.allclose(data.X_train.mean(0), torch.zeros(12), atol=1e-5)
    assert torch.allclose(data.X_train.std(0, unbiased=False), torch.ones(12), atol=1e-4)
    assert (data.ambient_dimension, data.nominal_intrinsic_dimension, data.num_classes) == (
        12,
        3,
        3,
    )
    assert set(data.estimated_intrinsic_dimension) == {"twonn", "mle"}
    json.dumps(data.metadata())


@pytest.mark.parametrize("d", [2, 4, 8])
def test_twonn_tracks_the_latent_dimension_of_manifold_data(d):
    data = manifold(d=d, n=64, n_train=2000, n_test=10)
    assert abs(data.estimated_intrinsic_dimension["twonn"] - d) <= 0.25 * d
    assert abs(data.estimated_intrinsic_dimension["mle"] - d) <= 0.25 * d


def test_intrinsic_dimension_of_a_flat_plane_and_its_subsample_seed():
    rng = np.random.default_rng(0)
    plane = rng.standard_normal((3000, 2)) @ rng.standard_normal((2, 10))
    estimate = intrinsic_dimension(plane, sample=1000, seed=1)
    assert estimate == intrinsic_dimension(plane, sample=1000, seed=1)
    assert abs(estimate["twonn"] - 2) < 0.3 and abs(estimate["mle"] - 2) < 0.3
    with pytest.raises(ValueError, match="at least 2 features"):
        intrinsic_dimension(np.zeros(10))


def test_digits_split_is_stratified_and_pca_truncation_lowers_the_estimate():
    full = digits(seed=1)
    assert full.X_train.shape[1] == 64 and full.num_classes == 10
    assert full.X_train.shape[0] + full.X_test.shape[0] == 1797
    assert _same_data(full, digits(seed=1))
    train_share = full.y_train.bincount().double() / full.y_train.bincount().sum()
    test_share = full.y_test.bincount().double() / full.y_test.bincount().sum()
    assert torch.allclose(train_share, test_share, atol=0.01)

    truncated = digits(pca_rank=2, seed=1)
    assert torch.linalg.matrix_rank(truncated.X_train) == 2
    assert truncated.spec["pca_rank"] == 2 and truncated.nominal_intrinsic_dimension is None
    assert truncated.estimated_intrinsic_dimension["twonn"] < 3
    assert full.estimated_intrinsic_dimension["twonn"] > 6


def test_mnist1d_is_generated_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    numpy_state = np.random.get_state()[1].copy()

    data = mnist1d(num_samples=500, pca_rank=8, seed=3)

    assert data.X_train.shape == (400, 40) and data.X_test.shape == (100, 40)
    assert sorted(data.y_train.unique().tolist()) == list(range(10))
    assert torch.isfinite(data.X_train).all()
    assert torch.linalg.matrix_rank(data.X_train) == 8
    assert _same_data(data, mnist1d(num_samples=500, pca_rank=8, seed=3))
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # global state restored


def test_bad_arguments_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match=r"d=10 > n=4"):
        manifold(d=10, n=4)
    with pytest.raises(ValueError, match="known datasets: digits, manifold, mnist1d"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match=r"number of features \(64\).*got 65"):
        digits(pca_rank=65)
    with pytest.raises(ValueError, match=r"number of features \(40\).*got 0"):
        mnist1d(pca_rank=0)
    with pytest.raises(ValueError, match="takes no argument 'pca_rank'"):
        load_dataset("manifold", pca_rank=3)
    with pytest.raises(ValueError, match="classes must be at least 2"):
        manifold(classes=1)
