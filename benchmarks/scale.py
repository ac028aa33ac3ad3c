"""How the cost of SLQ grows with the number of weights D and the number of samples N.

CPU. MLPs 256-h-h-10 (``common.mlp_of_dimension``) from D = 1e4 to 1e6 on a fixed
N, then a fixed D on growing N; this package's ``slq`` with its defaults (probes as
one block, zero-row detection on), m steps, a few probes. For each size: wall time,
seconds per curvature product, peak memory, and the wall time as a multiple of one
full-data gradient of the same model and data (the anchor, timed in the same run).
The exponents of wall time ~ D^a and ~ N^b are least-squares slopes on log-log axes.

GPU (only where CUDA is present; otherwise recorded as skipped): ResNet-18 (CIFAR
variant, D = 11,164,352) on 50,000 synthetic CIFAR-shaped images, m = 100, 4
probes: wall time, seconds per block product, and peak GPU memory.
``--resnet-on-cpu`` runs that section on the CPU at whatever (small) size the
``--resnet-*`` options give, to check the code path on a machine without a GPU;
``--only-resnet`` skips the sweeps.

How it was run (results in ``benchmarks/results/scale-cpu.json``)::

    python benchmarks/scale.py --device cpu           # D up to 1e6, m = 30, 2 probes (~6 min)
    python benchmarks/scale.py --quick --device cpu   # the test: D up to 1e5, m = 10
    python benchmarks/scale.py --device cuda --only-resnet    # ResNet-18 on the GPU (not run yet)
"""

from __future__ import annotations

import time

import common
import numpy as np
import torch

from pruning_limit import CurvatureOperator, slq


def measure(workload: common.Workload, steps: int, probes: int, repeats: int) -> dict:
    """Wall time of a whole SLQ and of one full-data gradient, interleaved."""
    operator = CurvatureOperator(
        workload.model,
        workload.loss_fn,
        workload.batches,
        curvature="hessian",
        device=workload.device,
        batch_size=workload.batch_size,
    )
    gradient = common.full_data_gradient(workload)
    # Warm-up: first calls pay for lazy initialisation, not for the work measured.
    gradient()
    slq(operator, steps=2, probes=probes, progress=False)
    runs = []
    gradient_times, slq_times = [], []
    peak = None
    for _ in range(repeats):
        gradient_times += [_timed(gradient, workload.device) for _ in range(3)]
        with common.PeakMemory(workload.device) as memory:
            start = time.perf_counter()
            spectrum = slq(operator, steps=steps, probes=probes, progress=False)
            common.synchronize(workload.device)
            slq_times.append(time.perf_counter() - start)
        peak = peak or memory
        runs.append(spectrum.provenance)
    products = spectrum.steps + 1  # block products: one per step, one for the zero rows
    seconds_products = float(np.median([r["seconds_products"] for r in runs]))
    return {
        "workload": workload.summary(),
        "steps": spectrum.steps,
        "probes": probes,
        "repeats": repeats,
        "seconds_median": float(np.median(slq_times)),
        "seconds": slq_times,
        "seconds_per_block_product": seconds_products / spectrum.steps,
        "seconds_zero_rows": float(np.median([r["seconds_zero_rows"] for r in runs])),
        "block_products": products,
        "gradient_seconds_median": float(np.median(gradient_times)),
        "slq_over_gradient": common.ratio(slq_times, gradient_times),
        "peak_memory": peak.to_json(),
    }


def _timed(function, device: torch.device) -> float:
    common.synchronize(device)
    start = time.perf_counter()
    function()
    common.synchronize(device)
    return time.perf_counter() - start


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares exponent a of y ~ x^a."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def sweep(sizes: list[common.Workload], steps: int, probes: int, repeats: int, key: str) -> dict:
    points = []
    for workload in sizes:
        print(
            f"  D = {workload.dimension:,}, N = {workload.inputs.shape[0]:,}",
            flush=True,
        )
        points.append(measure(workload, steps, probes, repeats))
    xs = [p["workload"][key] for p in points]
    return {
        "points": points,
        "exponent_wall_time": slope(xs, [p["seconds_median"] for p in points]),
        "exponent_gradient_time": slope(xs, [p["gradient_seconds_median"] for p in points]),
    }


def resnet(args, device: torch.device) -> dict:
    workload = common.resnet18_workload(device, args.resnet_samples, args.resnet_batch_size)
    print(
        f"resnet18: D = {workload.dimension:,}, N = {args.resnet_samples:,}, "
        f"m = {args.resnet_steps}, {args.resnet_probes} probes on {device}",
        flush=True,
    )
    result = measure(workload, args.resnet_steps, args.resnet_probes, repeats=1)
    result["skipped"] = False
    return result


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--resnet-samples", type=int, default=None, help="default 50,000")
    parser.add_argument("--resnet-steps", type=int, default=None, help="default 100")
    parser.add_argument("--resnet-probes", type=int, default=4)
    parser.add_argument("--resnet-batch-size", type=int, default=512)
    parser.add_argument(
        "--resnet-on-cpu",
        action="store_true",
        help="run the ResNet-18 section on the CPU (a check of the code path, not a measurement)",
    )
    parser.add_argument(
        "--only-resnet", action="store_true", help="skip the CPU sweeps, run the ResNet-18 section"
    )
    args = parser.parse_args()
    device = common.configure(args)

    if args.quick:
        dimensions, samples = [10_000, 30_000, 100_000], 2048
        fixed_dimension, sample_sizes = 30_000, [512, 2048, 8192]
        steps, probes, repeats = 10, 2, 2
        resnet_samples, resnet_steps = 5_000, 10
    else:
        dimensions, samples = [10_000, 30_000, 100_000, 300_000, 1_000_000], 2048
        fixed_dimension, sample_sizes = 100_000, [1024, 4096, 16384]
        steps, probes, repeats = 30, 2, 3
        resnet_samples, resnet_steps = 50_000, 100
    args.resnet_samples = args.resnet_samples or resnet_samples
    args.resnet_steps = args.resnet_steps or resnet_steps

    if args.only_resnet:
        by_dimension = by_samples = {"skipped": True, "reason": "--only-resnet"}
    else:
        print(f"D sweep, N = {samples}, m = {steps}, {probes} probes", flush=True)
        by_dimension = sweep(
            [common.mlp_of_dimension(device, d, samples) for d in dimensions],
            steps,
            probes,
            repeats,
            "dimension",
        )
        print(f"N sweep, D ~ {fixed_dimension:,}", flush=True)
        by_samples = sweep(
            [common.mlp_of_dimension(device, fixed_dimension, n) for n in sample_sizes],
            steps,
            probes,
            repeats,
            "num_samples",
        )
    if device.type == "cuda":
        gpu = resnet(args, device)
    elif args.resnet_on_cpu:
        gpu = {**resnet(args, device), "note": "run on the CPU to check the code path only"}
    else:
        gpu = {"skipped": True, "reason": "CUDA is not available on this machine"}

    for title, result in (("D", by_dimension), ("N", by_samples)):
        if result.get("skipped"):
            continue
        common.print_table(
            f"SLQ cost against {title}: m = {steps}, {probes} probes "
            f"(wall time ~ {title}^{result['exponent_wall_time']:.2f})",
            ["D", "N", "wall s", "s/block product", "SLQ / gradient", "peak MiB"],
            [
                [
                    p["workload"]["dimension"],
                    p["workload"]["num_samples"],
                    p["seconds_median"],
                    p["seconds_per_block_product"],
                    p["slq_over_gradient"],
                    p["peak_memory"]["peak_mib"],
                ]
                for p in result["points"]
            ],
        )
    if gpu["skipped"]:
        print(f"\nResNet-18: skipped ({gpu['reason']})")
    else:
        print(
            f"\nResNet-18 on {device}: {gpu['seconds_median']:.1f} s, "
            f"{gpu['seconds_per_block_product']:.2f} s per block product, "
            f"peak {gpu['peak_memory']['peak_mib']:.0f} MiB"
        )

    path = common.write_result(
        "scale",
        args,
        device,
        {
            "settings": {"steps": steps, "probes": probes, "repeats": repeats},
            "results": {"by_dimension": by_dimension, "by_samples": by_samples, "resnet18": gpu},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
