"""Whole stochastic Lanczos quadrature runs: this package against three baselines.

Speed. On the MLP of ``common.py`` (LeNet-300-100, D = 266,200, N = 2,048, batches
of 256), the same number of Lanczos steps m and of probes, float32:

- ``ours.block``: ``slq(operator, block_size=probes)``, all probes advanced together
  (one block product per step), with its default zero-row detection (4 extra
  products, timed separately in the JSON);
- ``ours.sequential``: the same with ``block_size=1``, one probe after the other;
- ``ours.block.batched``: ``ours.block`` with ``hvp_method="batched"``;
- ``pyhessian``: ``hessian(...).density(iter=m, n_v=probes)``; PyHessian 0.1 calls
  ``torch.eig``, removed from torch, so the benchmark (never the package) swaps in a
  symmetric eigensolver while it runs (:func:`torch_eig_shim`);
- ``curvlinops``: ``fast_lanczos(HessianLinearOperator, m)`` once per probe, the
  Lanczos run behind ``lanczos_approximate_spectrum`` (which would first add an
  ARPACK estimate of the spectral boundaries; that is not timed);
- ``hessian_eigenthings``: ``spectral_density(HessianOperator, num_runs=probes,
  lanczos_steps=m)``.

Wall time, time per probe and peak memory (see ``common.PeakMemory``) of each, and
our time as a ratio to each baseline's (ratios of medians over the repeats, the
tools interleaved).

Accuracy. On the small trained MLP (D = 1,696), each tool's quadrature rule gives
delta/D = tr g_c(H)/D with g_c(x) = 1/(1 + c|x|) for c = 1, 100, 1e4 (the
statistical dimension of the paper, with |lambda| for eigenvalues below zero), and
its relative error against the exact spectrum (float64 eigvalsh of the full
Hessian). Same m, ``probes`` independent probes per tool.

How it was run (results in ``benchmarks/results/slq_speed-cpu.json``)::

    python benchmarks/slq_speed.py --device cpu     # m = 90, 4 probes, 3 repeats
    python benchmarks/slq_speed.py --quick          # the test: small MLP, m = 20
"""

from __future__ import annotations

import contextlib
import time
import warnings

import common
import numpy as np
import torch

from pruning_limit import CurvatureOperator, slq
from pruning_limit.lanczos import exact_spectrum_of

SCALES = (1.0, 100.0, 1e4)


@contextlib.contextmanager
def torch_eig_shim():
    """Give ``torch.eig`` back for PyHessian 0.1's ``density()``, for the duration only.

    PyHessian diagonalises its symmetric tridiagonal Lanczos matrix with
    ``torch.eig(T, eigenvectors=True)`` and reads the real parts and the eigenvector
    columns; ``torch.linalg.eigh`` gives the same for a symmetric matrix.
    """

    def eig(matrix: torch.Tensor, eigenvectors: bool = False):
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    original = getattr(torch, "eig", None)
    torch.eig = eig
    try:
        yield
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original


def statistical_dimension(c: float):
    return lambda x: 1.0 / (1.0 + c * np.abs(x))


def rule_estimates(nodes: np.ndarray, weights: np.ndarray) -> dict:
    """delta/D per scale c from per-probe rules (rows), with the standard error over probes."""
    nodes = np.nan_to_num(np.asarray(nodes, dtype=np.float64))  # padding carries weight 0
    weights = np.nan_to_num(np.asarray(weights, dtype=np.float64))
    out = {}
    for c in SCALES:
        per_probe = np.sum(weights * statistical_dimension(c)(nodes), axis=1)
        out[c] = (float(per_probe.mean()), _stderr(per_probe))
    return out


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")


def tools_for(workload: common.Workload, steps: int, probes: int, skipped: dict) -> dict:
    """name -> function running a whole SLQ and returning (nodes, weights, extra info)."""
    device, batches = workload.device, workload.batches

    def ours(block_size: int, hvp_method: str = "loop"):
        def run():
            operator = CurvatureOperator(
                workload.model,
                workload.loss_fn,
                batches,
                curvature="hessian",
                device=device,
                batch_size=workload.batch_size,
                hvp_method=hvp_method,
            )
            spectrum = slq(
                operator, steps=steps, probes=probes, block_size=block_size, progress=False
            )
            info = {
                key: spectrum.provenance[key]
                for key in ("seconds_zero_rows", "seconds_products", "block_size", "hvp_method")
            }
            info["zero_rows"] = spectrum.zero_rows
            return spectrum, info

        return run

    tools = {
        "ours.block": ours(probes),
        "ours.sequential": ours(1),
        "ours.block.batched": ours(probes, "batched"),
    }

    reason = common.baseline_status("pyhessian")
    if reason:
        skipped["pyhessian"] = reason
    else:
        from pyhessian import hessian as PyHessian

        def pyhessian_run():
            torch.manual_seed(common.SEED)
            computer = PyHessian(
                workload.model, workload.loss_fn, dataloader=batches, cuda=device.type == "cuda"
            )
            with torch_eig_shim():
                nodes, weights = computer.density(iter=steps, n_v=probes)
            workload.model.zero_grad(set_to_none=True)  # it leaves graphs in .grad
            return (np.array(nodes), np.array(weights)), {}

        tools["pyhessian"] = pyhessian_run

    reason = common.baseline_status("curvlinops")
    if reason:
        skipped["curvlinops"] = reason
    else:
        from curvlinops import HessianLinearOperator
        from curvlinops.papyan2020traces.spectrum import fast_lanczos

        def curvlinops_run():
            torch.manual_seed(common.SEED)
            operator = HessianLinearOperator(
                workload.model,
                workload.loss_fn,
                workload.weights,
                batches,
                check_deterministic=False,
            )
            rules = [fast_lanczos(operator, steps) for _ in range(probes)]
            nodes = np.stack([values.double().cpu().numpy() for values, _ in rules])
            weights = np.stack([(vectors[0] ** 2).double().cpu().numpy() for _, vectors in rules])
            return (nodes, weights), {"reorthogonalization": "none (fast_lanczos)"}

        tools["curvlinops"] = curvlinops_run

    reason = common.baseline_status("hessian_eigenthings")
    if reason:
        skipped["hessian_eigenthings"] = reason
    else:
        import hessian_eigenthings as he

        assert len({x.shape[0] for x, _ in batches}) == 1  # it averages batches unweighted

        def eigenthings_run():
            operator = he.HessianOperator(
                workload.model, batches, he.supervised_loss(workload.loss_fn)
            )
            result = he.spectral_density(
                operator, num_runs=probes, lanczos_steps=steps, seed=common.SEED
            )
            nodes = result.raw_eigenvalues.double().cpu().numpy()
            weights = result.raw_weights.double().cpu().numpy()
            return (nodes, weights), {"reorthogonalization": "full"}

        tools["hessian_eigenthings"] = eigenthings_run
    return tools


def speed(workload: common.Workload, steps: int, probes: int, repeats: int) -> dict:
    skipped: dict[str, str] = {}
    tools = tools_for(workload, steps, probes, skipped)
    names = list(tools)
    times = {name: [] for name in names}
    memory, info = {}, {}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            print(f"  round {round_index + 1}/{repeats}: {name}", flush=True)
            with common.PeakMemory(workload.device) as peak:
                common.synchronize(workload.device)
                start = time.perf_counter()
                _, extra = tools[name]()
                common.synchronize(workload.device)
                times[name].append(time.perf_counter() - start)
            memory.setdefault(name, peak)
            info.setdefault(name, extra)
    results = {}
    for name in names:
        median = float(np.median(times[name]))
        results[name] = {
            "seconds_per_probe_median": median / probes,
            "peak_memory": memory[name].to_json(),
            "info": info[name],
            **common.timing_summary(times[name]),
        }
        results[name]["ours_block_over_this"] = common.ratio(times["ours.block"], times[name])
    anchors = [name for name in names if not name.startswith("ours")]
    ratios = {
        ours: {anchor: common.ratio(times[ours], times[anchor]) for anchor in anchors}
        for ours in names
        if ours.startswith("ours")
    }
    return {
        "workload": workload.summary(),
        "steps": steps,
        "probes": probes,
        "repeats": repeats,
        "tools": results,
        "ours_time_over_anchor_time": ratios,
        "block_over_sequential": common.ratio(times["ours.block"], times["ours.sequential"]),
        "skipped": skipped,
    }


def accuracy(workload: common.Workload, steps: int, probes: int) -> dict:
    """delta/D of every tool against the exact spectrum of the same Hessian."""
    exact_operator = CurvatureOperator(
        workload.model,
        workload.loss_fn,
        workload.batches,
        curvature="hessian",
        dtype=torch.float64,
        device=workload.device,
        batch_size=workload.batch_size,
    )
    exact = exact_spectrum_of(exact_operator)
    truth = {c: exact.trace_function(statistical_dimension(c))[0] for c in SCALES}
    skipped: dict[str, str] = {}
    tools = tools_for(workload, steps, probes, skipped)
    tools.pop("ours.block.batched")  # same numbers as ours.block
    results = {}
    for name, run in tools.items():
        start = time.perf_counter()
        output, extra = run()
        seconds = time.perf_counter() - start
        if name.startswith("ours"):
            estimates = {c: output.trace_function(statistical_dimension(c)) for c in SCALES}
        else:
            estimates = rule_estimates(*output)
        results[name] = {
            "seconds": seconds,
            "info": extra,
            "delta_over_D": {
                f"c={c:g}": {
                    "estimate": estimates[c][0],
                    "stderr_over_probes": estimates[c][1],
                    "relative_error": abs(estimates[c][0] - truth[c]) / truth[c],
                }
                for c in SCALES
            },
        }
    return {
        "workload": workload.summary(),
        "steps": steps,
        "probes": probes,
        "exact": {
            "eigenvalue_range": [float(exact.nodes.min()), float(exact.nodes.max())],
            "zero_rows": exact.zero_rows,
            "delta_over_D": {f"c={c:g}": truth[c] for c in SCALES},
        },
        "g": "g_c(x) = 1 / (1 + c |x|)",
        "tools": results,
        "skipped": skipped,
    }


def main() -> None:
    parser = common.argument_parser(__doc__)
    args = parser.parse_args()
    device = common.configure(args)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")  # PyHessian's backward

    if args.quick:
        speed_workload = common.mlp_workload(device, 256, hidden=(64, 32), batch_size=128)
        steps, probes, repeats = 20, 2, 1
        tiny = common.tiny_workload(device, num_samples=512, train_steps=100)
        accuracy_steps, accuracy_probes = 30, 3
    else:
        speed_workload = common.mlp_workload(device)
        steps, probes, repeats = 90, 4, 3
        tiny = common.tiny_workload(device)
        accuracy_steps, accuracy_probes = 90, 10

    d = speed_workload.dimension
    print(f"speed: {speed_workload.name}, D = {d:,}, m = {steps}, {probes} probes", flush=True)
    speed_result = speed(speed_workload, steps, probes, repeats)
    print(f"accuracy: {tiny.name}, D = {tiny.dimension:,}", flush=True)
    accuracy_result = accuracy(tiny, accuracy_steps, accuracy_probes)

    common.print_table(
        f"whole SLQ, D = {d:,}, m = {steps}, {probes} probes, median of {repeats}",
        ["tool", "wall s", "s/probe", "peak MiB", "ours.block / this"],
        [
            [
                name,
                entry["seconds_median"],
                entry["seconds_per_probe_median"],
                entry["peak_memory"]["peak_mib"],
                entry["ours_block_over_this"],
            ]
            for name, entry in speed_result["tools"].items()
        ],
    )
    exact = accuracy_result["exact"]["delta_over_D"]
    common.print_table(
        f"relative error of delta/D, D = {tiny.dimension:,}, m = {accuracy_steps}, "
        f"{accuracy_probes} probes (exact: "
        + ", ".join(f"{k} {v:.4g}" for k, v in exact.items())
        + ")",
        ["tool", *exact],
        [
            [name, *(e["relative_error"] for e in entry["delta_over_D"].values())]
            for name, entry in accuracy_result["tools"].items()
        ],
    )
    for tool, reason in speed_result["skipped"].items():
        print(f"skipped {tool}: {reason}")

    path = common.write_result(
        "slq_speed",
        args,
        device,
        {
            "settings": {"seed": common.SEED, "threads": torch.get_num_threads()},
            "results": {"speed": speed_result, "accuracy": accuracy_result},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
