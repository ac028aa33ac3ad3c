"""Models from specs, deterministic training, L1, and checkpoints that reload exactly."""

import json

import pytest
import torch

import pruning_limit
from pruning_limit.datasets import manifold
from pruning_limit.models import build_model, count_parameters, model_spec
from pruning_limit.parameters import prunable_parameters
from pruning_limit.training import evaluate, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return manifold(d=4, n=16, n_train=500, n_test=500, seed=0)


@pytest.fixture(scope="module")
def spec():
    return model_spec("mlp", input_dim=16, classes=2, hidden=[32])


def _prunable_weights(model):
    return torch.cat([weight.detach().flatten() for _, weight in prunable_parameters(model)])


@pytest.mark.parametrize(
    "kind, fields, input_dim, classes",
    [
        ("mlp", {"hidden": [16, 16], "activation": "tanh", "batchnorm": True}, 12, 3),
        ("cnn1d", {"channels": [4, 8], "activation": "gelu"}, 40, 10),
        ("cnn2d", {"channels": [4, 8], "batchnorm": True}, 64, 10),
    ],
)
def test_every_kind_builds_from_its_json_spec_and_maps_flat_inputs_to_logits(
    kind, fields, input_dim, classes
):
    spec = json.loads(json.dumps(model_spec(kind, input_dim=input_dim, classes=classes, **fields)))
    model = build_model(spec)
    assert model(torch.randn(5, input_dim)).shape == (5, classes)
    assert len(prunable_parameters(model)) == len(fields.get("hidden", fields.get("channels"))) + 1


def test_model_sizes_span_the_exact_hessian_path_to_a_million():
    small = build_model(model_spec("mlp", input_dim=16, classes=2, hidden=[32, 16]))
    large = build_model(model_spec("mlp", input_dim=64, classes=10, hidden=[1024, 1024]))
    assert count_parameters(small) < 5000 < 10**6 < count_parameters(large)


def test_bad_model_specs_name_the_field():
    with pytest.raises(ValueError, match="unknown model kind 'rnn'"):
        build_model({"kind": "rnn"})
    with pytest.raises(ValueError, match="activation must be one of relu, tanh, gelu"):
        model_spec("mlp", input_dim=4, classes=2, activation="swish")
    with pytest.raises(ValueError, match="unknown field.*dropout"):
        model_spec("mlp", input_dim=4, classes=2, dropout=0.5)
    with pytest.raises(ValueError, match="lacks the field.*hidden"):
        build_model({"kind": "mlp", "input_dim": 4, "classes": 2, "activation": "relu",
                     "batchnorm": False})  # fmt: skip
    with pytest.raises(ValueError, match="image_shape"):
        model_spec("cnn2d", input_dim=40, classes=10)
    with pytest.raises(ValueError, match="pooling"):
        model_spec("cnn2d", input_dim=64, classes=10, channels=[2, 2, 2, 2])


def test_same_seed_gives_bit_identical_weights(data, spec):
    runs = [
        train(spec, data, lr=1e-2, epochs=3, batch_size=64, seed=7, progress=False)
        for _ in range(2)
    ]
    other = train(spec, data, lr=1e-2, epochs=3, batch_size=64, seed=8, progress=False)
    first, second = (run.model.state_dict() for run in runs)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["out.weight"], other.model.state_dict()["out.weight"])


def test_training_learns_and_records_its_card(data, spec):
    result = train(
        spec, data, lr=1e-2, epochs=20, batch_size=50, dtype=torch.float64,
        target_train_loss=0.3, progress=False,
    )  # fmt: skip
    card = result.card
    assert card["training"]["target_reached"] and card["training"]["epochs_run"] < 20
    assert card["metrics"]["train"]["loss"] <= 0.3
    assert card["metrics"]["test"]["accuracy"] > 0.8
    assert card["dtype"] == "float64" and next(result.model.parameters()).dtype == torch.float64
    assert card["model"] == spec and card["dataset"] == data.spec
    assert card["pruning_limit_version"] == pruning_limit.__version__
    assert card["torch_version"] == torch.__version__
    assert card["metrics"]["test"] == evaluate(result.model, data.X_test, data.y_test)
    json.dumps(card)


def test_l1_leaves_many_more_near_zero_weights_at_similar_accuracy(data, spec):
    plain = train(spec, data, lr=1e-2, epochs=30, batch_size=50, progress=False)
    sparse = train(spec, data, lr=1e-2, epochs=30, batch_size=50, l1=3e-3, progress=False)
    near_zero_plain = int((_prunable_weights(plain.model).abs() < 1e-3).sum())
    near_zero_sparse = int((_prunable_weights(sparse.model).abs() < 1e-3).sum())
    assert near_zero_sparse > max(10 * near_zero_plain, 50)
    accuracy = [run.card["metrics"]["test"]["accuracy"] for run in (plain, sparse)]
    assert abs(accuracy[0] - accuracy[1]) < 0.05


def test_checkpoint_reloads_to_identical_outputs(data, spec, tmp_path):
    result = train(
        spec, data, lr=1e-2, epochs=2, batch_size=64, progress=False, out=tmp_path / "run"
    )
    assert result.path == tmp_path / "run"
    for path in (tmp_path / "run", tmp_path / "run" / "card.json"):
        model, card = load_checkpoint(path)
        assert card == result.card
        assert torch.equal(model(data.X_test), result.model(data.X_test))


def test_checkpoint_errors(data, spec, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    directory = tmp_path / "run"
    train(spec, data, epochs=1, progress=False, out=directory)

    card = json.loads((directory / "card.json").read_text())
    card["model"]["hidden"] = [33]
    (directory / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"fc1.weight has shape \(32, 16\).*\(33, 16\)"):
        load_checkpoint(directory)
    card["model"]["hidden"] = [32, 8]
    (directory / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"missing keys \['fc2.weight', 'fc2.bias'\]"):
        load_checkpoint(directory)

    (directory / "card.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON model card"):
        load_checkpoint(directory)

    train(spec, data, epochs=1, progress=False, out=directory)
    (directory / "model.pt").write_bytes(b"not a state_dict" * 8)
    with pytest.raises(ValueError, match="not a readable state_dict"):
        load_checkpoint(directory)
    (directory / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_checkpoint(directory)


def test_bad_training_arguments(data, spec):
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, got 'lbfgs'"):
        train(spec, data, optimizer="lbfgs", progress=False)
    with pytest.raises(ValueError, match="does not fit dataset 'manifold'"):
        train(model_spec("mlp", input_dim=8, classes=2), data, progress=False)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        train(spec, data, dtype=torch.float16, progress=False)
