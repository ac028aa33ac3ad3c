"""The Lanczos basis options: delta/D at c* and memory against the full float32 basis.

On the trained MLP of ``delta_accuracy.py`` (hidden-manifold data, d = 8), GGN:
c* is the paper's c at the exact predicted limit (float64 exact spectrum, eps =
batch_std), and each option runs SLQ in float32 with the same probes:

- ``float32`` (the reference): the full basis, float32, on the compute device;
- ``bfloat16``: stored in bfloat16, re-orthogonalised in float32;
- ``offload``: ``basis_device="cpu"`` (on a CPU-only machine this is the reference's
  arithmetic with rows moved 16 at a time, so it shows the chunked path only);
- ``sharded2``: 2 gloo ranks, data and basis both sharded (``basis_shard=True``).

Reported: delta/D at c*, its difference to the reference and to the exact value,
the basis memory per rank (from the Spectrum's provenance) and the peak memory of
the SLQ run (``common.PeakMemory``; rank 0 for the sharded run).

How it was run (results in ``benchmarks/results/basis_options-cpu.json``)::

    python benchmarks/basis_options.py            # m = 100, 4 probes
    python benchmarks/basis_options.py --quick    # the test: m = 30, 2 probes
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

import common
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from delta_accuracy import delta, trained_models

import pruning_limit as pl
from pruning_limit import distributed
from pruning_limit.budget import loss_budget
from pruning_limit.limit import predict_from_spectrum

BATCH = 100


def run_slq(model, train_pair, steps: int, probes: int, **basis) -> tuple[pl.Spectrum, float]:
    operator = pl.CurvatureOperator(
        model, torch.nn.CrossEntropyLoss(), train_pair, dtype=torch.float32, device="cpu",
        batch_size=BATCH,
    )  # fmt: skip
    with common.PeakMemory(torch.device("cpu")) as memory:
        spectrum = pl.slq(operator, steps=steps, probes=probes, progress=False, **basis)
    return spectrum, memory.peak_bytes / 2**20


def sharded_worker(rank, port, model, train_pair, steps, probes, out, threads) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)  # fmt: skip
    spectrum, peak = run_slq(model, distributed.shard(train_pair, BATCH), steps, probes,
                             basis_shard=True)  # fmt: skip
    if rank == 0:
        torch.save({"spectrum": spectrum, "peak_mib": peak}, out)
    dist.barrier()
    dist.destroy_process_group()


def sharded(model, train_pair, steps, probes, threads) -> tuple[pl.Spectrum, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.pt")
        mp.start_processes(sharded_worker, args=(port, model, train_pair, steps, probes, out,
                                                 threads),
                           nprocs=2, join=True, start_method="spawn")  # fmt: skip
        saved = torch.load(out, weights_only=False)
    return saved["spectrum"], saved["peak_mib"]


def main() -> None:
    parser = common.argument_parser(__doc__)
    args = parser.parse_args()
    device = common.configure(args)
    steps, probes = (30, 2) if args.quick else (100, 4)
    name, model, train_pair, metrics = next(trained_models(args.quick))
    operator = pl.CurvatureOperator(
        model, torch.nn.CrossEntropyLoss(), train_pair, dtype=torch.float64, device="cpu",
        batch_size=BATCH,
    )  # fmt: skip
    exact = pl.lanczos.exact_spectrum_of(operator)
    epsilon, _ = loss_budget(operator, "batch_std")
    weights = operator.weights().numpy()
    c_star = predict_from_spectrum(exact, weights, epsilon, methods=("paper",),
                                   sensitivity=False).estimates["paper"].scale  # fmt: skip
    exact_delta = delta(exact, c_star)
    model32 = model.float()
    pair32 = (train_pair[0].float(), train_pair[1])
    runs = {}
    options = {
        "float32": {},
        "bfloat16": {"basis_dtype": "bfloat16"},
        "offload": {"basis_device": "cpu", "basis_dtype": "float32"},
    }
    for option, basis in options.items():
        started = time.perf_counter()
        spectrum, peak = run_slq(model32, pair32, steps, probes, **basis)
        runs[option] = (spectrum, peak, time.perf_counter() - started)
    started = time.perf_counter()
    spectrum, peak = sharded(model32, pair32, steps, probes, args.threads)
    runs["sharded2"] = (spectrum, peak, time.perf_counter() - started)

    reference = delta(runs["float32"][0], c_star)
    results = {}
    for option, (spectrum, peak, seconds) in runs.items():
        value = delta(spectrum, c_star)
        results[option] = {
            "delta_over_D_at_c_star": value,
            "difference_to_float32_basis": value - reference,
            "difference_to_exact": value - exact_delta,
            "basis_mib_per_rank": spectrum.provenance["basis_mib_per_rank"],
            "basis_coordinates_per_rank": spectrum.provenance["basis_coordinates_per_rank"],
            "slq_peak_mib": peak,
            "seconds": seconds,
        }
    common.print_table(
        f"{name}: D = {operator.dimension}, c* = {c_star:.4g} "
        f"(c* lambda_max = {c_star * np.abs(exact.nodes).max():.3g}), m = {steps}, "
        f"{probes} probes; exact delta/D = {exact_delta:.5f}",
        ["basis", "delta/D at c*", "- float32 basis", "- exact", "basis MiB/rank", "peak MiB"],
        [[o, r["delta_over_D_at_c_star"], r["difference_to_float32_basis"],
          r["difference_to_exact"], r["basis_mib_per_rank"], r["slq_peak_mib"]]
         for o, r in results.items()],
    )  # fmt: skip
    path = common.write_result("basis_options", args, device, {
        "model": name, "model_metrics": metrics, "dimension": operator.dimension,
        "steps": steps, "probes": probes, "c_star": float(c_star), "epsilon": epsilon,
        "exact_delta_over_D_at_c_star": exact_delta, "results": results,
        "gpu_offload": "not measured (no GPU): on a CPU the offload option shows the chunked "
                       "arithmetic only",
    })  # fmt: skip
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
