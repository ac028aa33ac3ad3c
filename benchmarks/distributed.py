"""Data-parallel curvature over torch.distributed: 1 process against N, time and memory.

The workload is data-heavy on purpose (many samples, a small model), the case data
parallelism is for: an MLP 784-64-10 (50,816 prunable weights) on 16,384 synthetic
MNIST-shaped samples in batches of 512 (``--quick``: 784-16-10 on 2,048 samples in
batches of 256). Each world size N runs in a fresh group of N processes; every
rank takes whole contiguous batches (``pruning_limit.distributed.shard``) and
measures, after a barrier so that the ranks start together:

- ``gradient``: one full-data gradient (one all-reduce);
- ``products``: one block of 4 GGN-vector products (one all-reduce of 4 x D);
- ``slq``: a whole ``slq(steps, probes)`` run (zero-row detection included), and
  its peak memory (``common.PeakMemory``: peak RSS above the RSS at entry on a CPU,
  ``torch.cuda.max_memory_allocated`` on a GPU).

The speed-up at N is median time at 1 process / median time at N processes, and the
scaling efficiency speed-up / N. The SLQ of every N is checked against N = 1
(relative difference of the Lanczos coefficients: rounding only).

How to run
----------
CPU, gloo, on one machine (the script spawns the groups itself)::

    python benchmarks/distributed.py --world-sizes 1,2 --rounds 3

N GPUs of one node, NCCL (one process per GPU; the script spawns them)::

    python benchmarks/distributed.py --backend nccl --device cuda --world-sizes 1,2,4,8

A cluster: under torchrun the script measures the one world size torchrun gives it
and writes ``distributed-torchrunN-DEVICE.json``; run it once with 1 process per job
for the reference, then with N::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=$HOST:29500 benchmarks/distributed.py --backend nccl --device cuda

CPU times on a shared machine swing with the other load on it; the machine's load
average before and after each group is recorded with the result.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pruning_limit import CurvatureOperator, slq
from pruning_limit import distributed as parallel

FULL = dict(num_samples=16384, hidden=(64,), batch_size=512, steps=30, probes=2, repeats=5)
QUICK = dict(num_samples=2048, hidden=(16,), batch_size=256, steps=8, probes=2, repeats=2)
BLOCK = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    parallel.all_reduce_sum(torch.zeros(1), "the benchmark's barrier")


def measure(config: dict, device: torch.device, threads: int) -> dict:
    """This rank's measurements on its shard (call inside an initialised process group)."""
    if threads > 0:
        torch.set_num_threads(threads)
    workload = common.mlp_workload(
        torch.device("cpu"), config["num_samples"], config["hidden"], config["batch_size"]
    )
    inputs, targets = parallel.shard((workload.inputs, workload.targets), config["batch_size"])
    inputs, targets = inputs.to(device), targets.to(device)
    model = workload.model.to(device)
    operator = CurvatureOperator(
        model, workload.loss_fn, (inputs, targets), curvature="ggn", device=device,
        batch_size=config["batch_size"],
    )  # fmt: skip
    block = torch.randn(BLOCK, operator.dimension, generator=torch.Generator().manual_seed(1))
    block = block.to(device=device, dtype=operator.dtype)

    def timed(function) -> list[float]:
        times = []
        for _ in range(config["repeats"]):
            barrier()
            common.synchronize(device)
            start = time.perf_counter()
            function()
            common.synchronize(device)
            times.append(time.perf_counter() - start)
        return times

    operator.gradient()  # warm-up: allocator, autograd and vmap caches
    operator.apply(block)
    gradient = timed(operator.gradient)
    products = timed(lambda: operator.apply(block))
    barrier()
    with common.PeakMemory(device) as memory:
        start = time.perf_counter()
        spectrum = slq(operator, steps=config["steps"], probes=config["probes"], progress=False)
        slq_seconds = time.perf_counter() - start
    return {
        "rank": parallel.rank(),
        "samples": int(inputs.shape[0]),
        "gradient_seconds": gradient,
        "products_seconds": products,
        "slq_seconds": slq_seconds,
        "slq_peak_mib": memory.peak_bytes / 2**20,
        "memory_method": memory.method,
        "alphas": spectrum.alphas.tolist(),
        "dimension": operator.dimension,
    }


def gather(record: dict) -> list[dict]:
    """Every rank's record, on every rank (through the package's own collectives)."""
    payload = torch.frombuffer(bytearray(json.dumps(record).encode()), dtype=torch.uint8)
    data = parallel.gather_rows(payload.clone(), "the benchmark's records")
    text = bytes(data.numpy()).decode()
    decoder, records, index = json.JSONDecoder(), [], 0
    while index < len(text):
        value, index = decoder.raw_decode(text, index)
        records.append(value)
    return records


def worker(rank: int, world: int, port: int, backend: str, device_name: str, config: dict,
           threads: int, out: str) -> None:  # fmt: skip
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    device = torch.device("cuda", rank) if device_name == "cuda" else torch.device("cpu")
    records = gather(measure(config, device, threads))
    if rank == 0:
        Path(out).write_text(json.dumps(records))
    dist.destroy_process_group()


def run_group(world: int, args, config: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "ranks.json")
        load_before = os.getloadavg()[0]
        mp.start_processes(
            worker,
            args=(world, free_port(), args.backend, args.device, config, args.threads, out),
            nprocs=world, join=True, start_method="spawn",
        )  # fmt: skip
        ranks = json.loads(Path(out).read_text())
    return {"ranks": ranks, "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0]}  # fmt: skip


def summarise(groups: dict[int, list[dict]]) -> dict:
    """Per world size: medians over rounds of the slowest rank, speed-up and efficiency."""

    def slowest(group: dict, key: str) -> float:
        values = [np.median(r[key]) if isinstance(r[key], list) else r[key] for r in group["ranks"]]
        return float(max(values))

    summary = {}
    reference = None
    for world, rounds in sorted(groups.items()):
        entry = {
            key: float(np.median([slowest(g, key) for g in rounds]))
            for key in ("gradient_seconds", "products_seconds", "slq_seconds")
        }
        entry["slq_peak_mib_per_rank"] = [
            float(np.median([g["ranks"][r]["slq_peak_mib"] for g in rounds])) for r in range(world)
        ]
        entry["samples_per_rank"] = [r["samples"] for r in rounds[0]["ranks"]]
        entry["load_average_before"] = [g["load_average_before"] for g in rounds]
        alphas = np.asarray(rounds[0]["ranks"][0]["alphas"])
        if reference is None:
            reference = (world, entry, alphas)
        else:
            base_world, base, base_alphas = reference
            for key in ("gradient_seconds", "products_seconds", "slq_seconds"):
                speedup = base[key] / entry[key] * base_world
                entry[key.replace("_seconds", "_speedup")] = speedup
                entry[key.replace("_seconds", "_efficiency")] = speedup / world
            entry["alphas_relative_difference_to_first"] = float(
                np.abs(alphas - base_alphas).max() / np.abs(base_alphas).max()
            )
        summary[str(world)] = entry
    return summary


def under_torchrun(args, device: torch.device, config: dict) -> None:
    """One group, the one torchrun started; rank 0 writes its measurements."""
    parallel.init_from_environment(args.backend)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    records = gather(measure(config, device, args.threads))
    world = parallel.world_size()
    if parallel.is_main():
        group = {"ranks": records, "load_average_before": None, "load_average_after": None}
        path = common.write_result(
            f"distributed-torchrun{world}", args, device,
            {"backend": parallel.backend(), "results": summarise({world: [group]}),
             "groups": {str(world): [group]}},
        )  # fmt: skip
        print(f"written to {path}")
    if dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--world-sizes", default="1,2", help="comma-separated (default 1,2)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="groups per world size, alternating (default 2)"
    )
    args = parser.parse_args()
    device = common.configure(args)
    args.device = device.type
    if args.backend == "nccl" and device.type != "cuda":
        raise SystemExit("--backend nccl needs --device cuda")
    config = QUICK if args.quick else FULL
    if "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ:
        return under_torchrun(args, device, config)
    sizes = [int(n) for n in args.world_sizes.split(",")]
    if args.backend == "nccl" and max(sizes) > torch.cuda.device_count():
        raise SystemExit(f"{max(sizes)} ranks asked for, {torch.cuda.device_count()} GPUs seen")
    groups: dict[int, list[dict]] = {n: [] for n in sizes}
    for round_index in range(args.rounds):
        for world in sizes if round_index % 2 == 0 else sizes[::-1]:
            groups[world].append(run_group(world, args, config))
            print(f"round {round_index + 1}: {world} rank(s) done", flush=True)
    summary = summarise(groups)
    workload = {**config, "block": BLOCK, "curvature": "ggn", "dtype": "float32",
                "model": f"MLP 784-{'-'.join(map(str, config['hidden']))}-10"}  # fmt: skip
    rows = [
        [world, entry["gradient_seconds"], entry["products_seconds"], entry["slq_seconds"],
         entry.get("slq_speedup", 1.0), entry.get("slq_efficiency", 1.0),
         max(entry["slq_peak_mib_per_rank"])]
        for world, entry in summary.items()
    ]  # fmt: skip
    common.print_table(
        f"data-parallel GGN ({args.backend}, {device.type})",
        ["ranks", "gradient s", "4 products s", "slq s", "slq speed-up", "efficiency",
         "peak MiB/rank"],
        rows,
    )  # fmt: skip
    path = common.write_result(
        "distributed",
        args,
        device,
        {
            "backend": args.backend,
            "workload": workload,
            "results": summary,
            "groups": {str(n): g for n, g in groups.items()},
            "nccl": "not measured" if args.backend != "nccl" else "measured",
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
