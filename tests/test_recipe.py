"""Training recipes: the reference code's SGD + L1 setting, steps=, and the card."""

import json

import pytest
import torch

from pruning_limit.datasets import digits
from pruning_limit.models import model_spec
from pruning_limit.parameters import prunable_parameters
from pruning_limit.training import RECIPES, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def spec():
    return model_spec("mlp", input_dim=64, classes=10, hidden=[32])


def _near_zero_share(model) -> float:
    """Share of prunable weights with |w| < 1e-3 max |w|."""
    weights = torch.cat([w.detach().flatten() for _, w in prunable_parameters(model)]).abs()
    return float((weights < 1e-3 * weights.max()).double().mean())


def test_paper_recipe_sparsifies_far_more_than_adam_at_similar_accuracy(data, spec):
    # 2000 steps (~150 epochs of digits): over seeds 0-5 the share was 0.019-0.025 with
    # the paper's recipe against 0.002-0.004 with Adam; test accuracies 0.96-0.98 for both.
    adam = train(spec, data, steps=2000, progress=False)
    paper = train(spec, data, recipe="paper", steps=2000, progress=False)
    assert _near_zero_share(paper.model) > max(4 * _near_zero_share(adam.model), 0.012)
    accuracy = [run.card["metrics"]["test"]["accuracy"] for run in (adam, paper)]
    assert abs(accuracy[0] - accuracy[1]) < 0.03
    assert paper.card["metrics"]["train"]["accuracy"] > 0.99


def test_the_card_records_every_field_of_the_recipe_and_its_name(data, spec, tmp_path):
    result = train(
        spec, data, recipe="paper", steps=25, lr=0.02, warmup_steps=5, progress=False,
        out=tmp_path / "run",
    )  # fmt: skip
    training = result.card["training"]
    expected = dict(RECIPES["paper"], steps=25, lr=0.02, warmup_steps=5)
    assert set(RECIPES["paper"]) <= set(training)
    assert {key: training[key] for key in expected} == expected
    assert training["recipe"] == "paper"
    assert training["steps_run"] == 25 and training["epochs_run"] == 3  # 11 batches per epoch
    assert training["l1_on"] == "every parameter named weight or bias"
    assert training["lr_schedule"] == "linear warm-up over 5 steps, then constant"
    assert load_checkpoint(tmp_path / "run")[1] == json.loads(json.dumps(result.card))
    assert RECIPES["paper"] == {
        "optimizer": "sgd", "lr": 0.01, "epochs": None, "steps": 78_200, "batch_size": 128,
        "momentum": 0.9, "l1": 5e-5, "l1_biases": True, "weight_decay": 0.0,
        "warmup_steps": 0, "init": "kaiming_normal",
    }  # fmt: skip


def test_steps_are_accepted_by_every_recipe_and_epochs_replace_them(data, spec):
    run = train(spec, data, steps=13, progress=False)
    assert run.card["training"]["recipe"] == "default"
    assert run.card["training"]["steps"] == 13 and run.card["training"]["epochs"] is None
    assert run.card["training"]["steps_run"] == 13
    paper = train(spec, data, recipe="paper", epochs=2, progress=False)
    assert paper.card["training"]["steps"] is None and paper.card["training"]["steps_run"] == 22
    with pytest.raises(ValueError, match="epochs or as steps, not both"):
        train(spec, data, epochs=2, steps=3, progress=False)
    with pytest.raises(ValueError, match="recipe must be one of default, paper"):
        train(spec, data, recipe="adamw", progress=False)
    with pytest.raises(ValueError, match="init must be one of"):
        train(spec, data, init="xavier", steps=1, progress=False)


def test_the_default_recipe_keeps_the_historical_defaults(data, spec):
    explicit = train(
        spec, data, optimizer="adam", lr=1e-3, epochs=2, batch_size=128, l1=0.0,
        weight_decay=0.0, progress=False,
    )  # fmt: skip
    implicit = train(spec, data, epochs=2, progress=False)
    first, second = explicit.model.state_dict(), implicit.model.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert implicit.card["training"]["momentum"] is None  # Adam has none
    assert implicit.card["training"]["l1_on"] == "weight of every Linear and Conv layer"


def test_l1_on_biases_pulls_the_biases_too(data, spec):
    fields = dict(recipe="paper", steps=300, l1=3e-2, progress=False)
    weights_only = train(spec, data, l1_biases=False, **fields).model
    everything = train(spec, data, **fields).model
    bias_norm = [
        sum(float(p.detach().abs().sum()) for n, p in m.named_parameters() if n.endswith("bias"))
        for m in (weights_only, everything)
    ]
    assert bias_norm[1] < 0.5 * bias_norm[0]
