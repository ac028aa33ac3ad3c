"""What each rank of the 2-process gloo groups of ``test_distributed.py`` runs.

Every scenario writes ``rank{r}.pt`` (a dict of results, or of the error each rank
ended with) to the output folder; the test compares them with one process.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
BATCH = 16
SPLIT = 70  # rank 0: samples [0, 70), rank 1: [70, 123): unequal shards, short last batches
SLQ = dict(steps=10, probes=3, seed=5, progress=False)
METHODS = ("paper", "orthogonal", "trace_bound", "quadratic")
# Fine-tune batches of 5 of the 123 samples: some lie on one rank alone (the other adds zeros).
FINETUNE = dict(epochs=2, lr=1e-2, batch_size=5)
VALIDATION = dict(variants=("one_shot", "refit", "finetune"), amounts=[0.0, 0.3, 0.6, 0.9],
                  resolution=0.05, finetune=FINETUNE, seed=3, progress=False)  # fmt: skip


def problem():
    """A tiny float64 classifier and 123 training / 61 test samples (the same on every rank)."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.7)
    X = torch.randn(123, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (123,), generator=generator)
    X_test = torch.randn(61, 5, generator=generator, dtype=torch.float64)
    y_test = torch.randint(0, 3, (61,), generator=generator)
    block = torch.randn(2, 48, generator=generator, dtype=torch.float64)
    return model, torch.nn.CrossEntropyLoss(), (X, y), (X_test, y_test), block


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Interrupt(Exception):
    """Stands for a kill of every rank mid-run."""


def compute(pl, model, loss_fn, train, test, block, state_path) -> dict:
    """Every sharded quantity, from this process's data (a shard, or all of it)."""
    results = {}
    for curvature in ("hessian", "ggn"):
        operator = pl.CurvatureOperator(model, loss_fn, train, curvature=curvature,
                                        batch_size=BATCH, device="cpu")  # fmt: skip
        results[f"{curvature}_products"] = operator.apply(block)
        results[f"{curvature}_exact"] = pl.exact_spectrum(
            model, loss_fn, train, curvature=curvature, batch_size=BATCH, device="cpu"
        ).nodes
        spectrum = pl.estimate_spectrum(model, loss_fn, train, curvature=curvature,
                                        batch_size=BATCH, device="cpu", **SLQ)  # fmt: skip
        results[f"{curvature}_slq_nodes"] = spectrum.nodes
        results[f"{curvature}_slq_weights"] = spectrum.weights
        results[f"{curvature}_provenance"] = spectrum.provenance
        results[f"{curvature}_fingerprint"] = spectrum.fingerprint
        sharded = pl.estimate_spectrum(model, loss_fn, train, curvature=curvature,
                                       batch_size=BATCH, device="cpu", basis_shard=True,
                                       **SLQ)  # fmt: skip
        results[f"{curvature}_sharded_nodes"] = sharded.nodes
        results[f"{curvature}_sharded_provenance"] = sharded.provenance
    results["loss"] = operator.loss()
    results["gradient"] = operator.gradient()
    results["epsilon"] = pl.loss_budget(operator)[0]
    prediction = pl.predict_limit(model, data=train, loss_fn=loss_fn, methods=METHODS,
                                  batch_size=BATCH, dtype=torch.float64)  # fmt: skip
    results["prediction"] = {m: prediction.removal_fraction(m) for m in METHODS}
    results["prediction_epsilon"] = prediction.epsilon
    results["prediction_distributed"] = prediction.distributed

    # resume: every rank is "killed" at the same product, then the run is resumed
    operator = pl.CurvatureOperator(model, loss_fn, train, batch_size=BATCH, device="cpu")
    original, calls = operator.apply, {"n": 0}

    def flaky(rows, method=None):
        calls["n"] += 1
        if calls["n"] == 12:
            raise Interrupt
        return original(rows, method)

    operator.apply = flaky
    try:
        pl.slq(operator, state_path=state_path, checkpoint_every=2, block_size=1, **SLQ)
    except Interrupt:
        results["interrupted"] = os.path.exists(state_path)
    fresh = pl.CurvatureOperator(model, loss_fn, train, batch_size=BATCH, device="cpu")
    resumed = pl.slq(fresh, state_path=state_path, resume=True, block_size=1, **SLQ)
    results["resumed"] = resumed.provenance["resumed"]
    results["resumed_alphas"] = resumed.alphas
    results["resumed_betas"] = resumed.betas
    return results


def validation_results(pl, model, loss_fn, train, test) -> dict:
    validation = pl.validate(model, train_data=train, test_data=test, loss_fn=loss_fn,
                             batch_size=BATCH, **VALIDATION)  # fmt: skip
    return {
        "dense": validation.dense,
        "epsilon": validation.epsilon,
        "limits": {
            (v, c): validation.limit(v, c)
            for v in VALIDATION["variants"]
            for c in ("accuracy", "loss_budget")
        },
        "points": {
            v: [(p.amount, p.metrics) for p in validation.variants[v].points]
            for v in VALIDATION["variants"]
        },
        "finetuned_dense": validation.variants["finetune"].reference,
    }


def results_to_save(pl, model, loss_fn, train, test) -> dict:
    """A Spectrum, a Prediction, a Validation and a StudyResult of the problem (collective)."""
    spectrum = pl.exact_spectrum(model, loss_fn, train, batch_size=BATCH, device="cpu")
    prediction = pl.predict_limit(model, spectrum, data=train, loss_fn=loss_fn,
                                  methods=("paper",), batch_size=BATCH)  # fmt: skip
    validation = pl.validate(model, train_data=train, test_data=test, loss_fn=loss_fn,
                             variants=("one_shot",), amounts=[0.0, 0.5], resolution=0.25,
                             reference_grid=None, batch_size=BATCH, progress=False)  # fmt: skip
    study = pl.StudyResult(name="saves", out="", rows=[], summary=[], config={})
    return {"model": model, "spectrum": spectrum, "prediction": prediction,
            "validation": validation, "study": study}  # fmt: skip


def save_all(results: dict, folder: str) -> dict:
    """Every library writer, called on this rank; {what: the path it returned}.

    The names lack their suffixes: each writer adds its own (``.npz``, ``.json``,
    ``.png``), and every rank must return the name rank 0 wrote.
    """
    from pruning_limit import plots, training

    folder = Path(folder)
    return {
        "spectrum": results["spectrum"].save(folder / "spectrum"),
        "prediction": results["prediction"].save(folder / "prediction"),
        "validation": results["validation"].save(folder / "validation"),
        "study": results["study"].save(folder / "study"),
        "checkpoint": training.save_checkpoint(
            results["model"], {"by": "test"}, folder / "checkpoint"
        ),  # fmt: skip
        "figure": plots.plot_spectral_density(results["spectrum"], folder / "figures" / "density"),
    }


@contextmanager
def filesystem_log(folder: str):
    """A list of the renames and folders this process makes in ``folder`` (every write
    of the library is a rename; matplotlib's own cache folders are not counted)."""
    log: list = []
    replace, mkdir = Path.replace, Path.mkdir

    def logged_replace(self, target):
        if str(target).startswith(folder):
            log.append(("replace", str(target)))
        return replace(self, target)

    def logged_mkdir(self, *args, **kwargs):
        if str(self).startswith(folder):
            log.append(("mkdir", str(self)))
        return mkdir(self, *args, **kwargs)

    Path.replace, Path.mkdir = logged_replace, logged_mkdir
    try:
        yield log
    finally:
        Path.replace, Path.mkdir = replace, mkdir


def worker(rank: int, scenario: str, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    import pruning_limit as pl
    from pruning_limit import distributed

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    model, loss_fn, (X, y), test, block = problem()
    train = (X[:SPLIT], y[:SPLIT]) if rank == 0 else (X[SPLIT:], y[SPLIT:])
    results: dict = {}
    try:
        if scenario == "sums":
            results = compute(pl, model, loss_fn, train, test, block,
                              os.path.join(folder, "slq.state"))  # fmt: skip
            aligned = distributed.shard((X, y), BATCH)
            results["validation"] = validation_results(
                pl, model, loss_fn, aligned, distributed.shard(test)
            )
            to_save = results_to_save(pl, model, loss_fn, train, distributed.shard(test))
            with filesystem_log(folder) as log:
                results["saved"] = save_all(to_save, folder)
            results["filesystem"] = log
        elif scenario == "bad_data":
            distributed.set_timeout(60)
            if rank == 1:
                train = (train[0][:, :4], train[1])  # 4 features where the model takes 5
            pl.estimate_spectrum(model, loss_fn, train, batch_size=BATCH, device="cpu", **SLQ)
        elif scenario == "stuck":
            distributed.set_timeout(2)
            with distributed.failure_barrier("a stuck rank"):
                if rank == 1:
                    time.sleep(5)
                distributed.all_reduce_sum(torch.ones(1), "the test's sum")
    except Exception as error:
        results = {"error": type(error).__name__, "message": str(error),
                   "traceback": traceback.format_exc()}  # fmt: skip
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    # After a failure the group cannot be torn down cleanly: leave at once.
    os._exit(0)


def run_group(scenario: str, folder: str, limit: float = 240.0) -> list[dict]:
    """Run ``scenario`` on 2 gloo processes; each rank's results, or an AssertionError."""
    context = mp.start_processes(
        worker, args=(scenario, free_port(), folder), nprocs=WORLD, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + limit
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {scenario!r} group did not finish in {limit:g} s")
    return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD)]  # fmt: skip
