"""Cost of one full-data Hessian-vector product, as a ratio to one full-data gradient.

For the MLP (LeNet-300-100, D = 266,200, N = 2,048) and the CNN (D = 106,192,
N = 1,024) of ``common.py``, every tool on the same synthetic data in the same
batches of 256, float32, every product below runs once per round, round-robin with
the anchor (a plain autograd gradient of the full-data mean loss). The result is
median(seconds per vector) / median(seconds of the gradient) over the rounds
(``ratio_of_minimums`` in the JSON: the same with minimums):

- this package's ``CurvatureOperator``: one vector; a block of 8 vectors with
  ``hvp_method="loop"`` and with ``hvp_method="batched"`` (per vector); its own
  ``gradient()``; the GGN product, one vector and a block of 8;
- PyHessian's ``hessian.dataloader_hv_product``;
- curvlinops' ``HessianLinearOperator`` (one vector, and a block of 8 through its
  vmapped matmat) and ``GGNLinearOperator``;
- hessian-eigenthings' ``HessianOperator.matvec`` and ``GGNOperator.matvec``.

Every product is checked against this package's on the same vector (relative
difference in the JSON), so the tools are seen to compute the same matrix. A
baseline that is not installed is recorded as skipped, with the reason.

How it was run (results in ``benchmarks/results/hvp_cost-cpu.json``)::

    python benchmarks/hvp_cost.py --device cpu   # 2-core AMD EPYC, shared: 1 thread, 9 rounds
    python benchmarks/hvp_cost.py --quick        # the test: small models, 2 rounds
"""

from __future__ import annotations

import warnings

import common
import torch

from pruning_limit import CurvatureOperator

BLOCK = 8


def split_like(vector: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat vector as a list of tensors shaped like ``weights`` (PyHessian's format)."""
    return [p.reshape(w.shape) for p, w in zip(vector.split([w.numel() for w in weights]), weights)]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def products(workload: common.Workload, skipped: dict) -> tuple[dict, dict]:
    """The timed tasks and the package's own products on the same vectors.

    Tasks: name -> (vectors per call, function returning the products as (K, D) rows).
    References: curvature kind -> (product with the vector, products with the block).
    """
    device, weights, batches = workload.device, workload.weights, workload.batches
    generator = torch.Generator().manual_seed(common.SEED)
    vector = torch.randn(workload.dimension, generator=generator).to(device)
    block = torch.randn(BLOCK, workload.dimension, generator=generator).to(device)

    def ours(curvature: str, hvp_method: str = "loop") -> CurvatureOperator:
        return CurvatureOperator(
            workload.model,
            workload.loss_fn,
            batches,
            curvature=curvature,
            device=device,
            batch_size=workload.batch_size,
            hvp_method=hvp_method,
        )

    hessian_loop, hessian_batched = ours("hessian"), ours("hessian", "batched")
    ggn, ggn_batched = ours("ggn"), ours("ggn", "batched")
    anchor = common.full_data_gradient(workload)

    def forward_over_reverse() -> torch.Tensor:
        """The alternative to double backward: torch.func.jvp of torch.func.grad, per batch."""
        names = [n for n, p in workload.model.named_parameters() if p.requires_grad]
        fixed = {n: p.detach() for n, p in workload.model.named_parameters() if n not in names}
        fixed.update(dict(workload.model.named_buffers()))
        point = {n: p.detach() for n, p in workload.model.named_parameters() if n in names}
        tangent = dict(zip(names, split_like(vector, weights)))
        total = None
        for inputs, targets in batches:

            def loss(params, inputs=inputs, targets=targets):
                outputs = torch.func.functional_call(workload.model, {**fixed, **params}, (inputs,))
                return workload.loss_fn(outputs, targets)

            _, product = torch.func.jvp(torch.func.grad(loss), (point,), (tangent,))
            piece = flat([product[n] for n in names]) * (inputs.shape[0] / workload.inputs.shape[0])
            total = piece if total is None else total + piece
        return total[None]

    tasks = {
        "gradient": (1, lambda: flat(anchor())[None]),
        "ours.gradient": (1, lambda: hessian_loop.gradient()[None]),
        "ours.hvp": (1, lambda: hessian_loop.apply(vector[None])),
        "ours.hvp.block8.loop": (BLOCK, lambda: hessian_loop.apply(block)),
        "ours.hvp.block8.batched": (BLOCK, lambda: hessian_batched.apply(block)),
        "ours.ggn": (1, lambda: ggn.apply(vector[None])),
        "ours.ggn.block8.loop": (BLOCK, lambda: ggn.apply(block)),
        "ours.ggn.block8.batched": (BLOCK, lambda: ggn_batched.apply(block)),
        "torch.func.forward_over_reverse": (1, forward_over_reverse),
    }

    reason = common.baseline_status("pyhessian")
    if reason:
        skipped["pyhessian"] = reason
    else:
        from pyhessian import hessian as PyHessian

        pyhessian = PyHessian(
            workload.model, workload.loss_fn, dataloader=batches, cuda=device.type == "cuda"
        )
        pieces = split_like(vector, weights)

        def pyhessian_hvp():
            _, product = pyhessian.dataloader_hv_product(pieces)
            workload.model.zero_grad(set_to_none=True)  # it leaves graphs in .grad
            return flat(product)[None]

        tasks["pyhessian.hvp"] = (1, pyhessian_hvp)

    reason = common.baseline_status("curvlinops")
    if reason:
        skipped["curvlinops"] = reason
    else:
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        options = dict(check_deterministic=False)
        curvlinops_h = HessianLinearOperator(
            workload.model, workload.loss_fn, weights, batches, **options
        )
        curvlinops_g = GGNLinearOperator(
            workload.model, workload.loss_fn, weights, batches, **options
        )
        tasks["curvlinops.hvp"] = (1, lambda: (curvlinops_h @ vector)[None])
        tasks["curvlinops.hvp.block8"] = (BLOCK, lambda: (curvlinops_h @ block.T).T)
        tasks["curvlinops.ggn"] = (1, lambda: (curvlinops_g @ vector)[None])

    reason = common.baseline_status("hessian_eigenthings")
    if reason:
        skipped["hessian_eigenthings"] = reason
    else:
        import hessian_eigenthings as he

        # It averages batches without weights: exact here because all batches are full.
        assert len(set(x.shape[0] for x, _ in batches)) == 1
        eigenthings_h = he.HessianOperator(
            workload.model, batches, he.supervised_loss(workload.loss_fn)
        )
        eigenthings_g = he.GGNOperator(
            workload.model,
            batches,
            he.supervised_forward,
            he.supervised_loss_of_output(workload.loss_fn),
        )
        tasks["hessian_eigenthings.hvp"] = (1, lambda: eigenthings_h.matvec(vector)[None])
        tasks["hessian_eigenthings.ggn"] = (1, lambda: eigenthings_g.matvec(vector)[None])

    references = {
        "hessian": (hessian_loop.apply(vector[None]), hessian_loop.apply(block)),
        "ggn": (ggn.apply(vector[None]), ggn.apply(block)),
        "gradient": (hessian_loop.gradient()[None], None),
    }
    return tasks, references


def kind_of(name: str) -> str:
    if name.endswith("gradient"):
        return "gradient"
    return "ggn" if ".ggn" in name else "hessian"


def measure(workload: common.Workload, repeats: int) -> dict:
    skipped: dict[str, str] = {}
    tasks, references = products(workload, skipped)
    agreement = {}
    for name, (count, task) in tasks.items():
        single, blocked = references[kind_of(name)]
        reference = single if count == 1 else blocked
        result = task().detach()
        agreement[name] = float((result - reference).norm() / reference.norm())
    # The agreement check above was every task's warm-up call.
    times = common.time_interleaved(
        {name: task for name, (_, task) in tasks.items()},
        repeats=repeats,
        warmup=0,
        device=workload.device,
    )
    tools = {}
    for name, (count, _) in tasks.items():
        tools[name] = {
            "curvature": kind_of(name),
            "vectors_per_call": count,
            "ratio_to_gradient_per_vector": common.ratio(times[name], times["gradient"], count),
            "ratio_of_minimums": common.ratio_of_minimums(times[name], times["gradient"], count),
            "seconds_per_vector_median": float(torch.tensor(times[name]).median()) / count,
            "relative_difference_to_ours": agreement[name],
            **common.timing_summary(times[name]),
        }
    loop = tools["ours.hvp.block8.loop"]["ratio_to_gradient_per_vector"]
    batched = tools["ours.hvp.block8.batched"]["ratio_to_gradient_per_vector"]
    return {
        "workload": workload.summary(),
        "anchor": "gradient: plain autograd, full-data mean loss, batch by batch",
        "tools": tools,
        "faster_block_hvp_method": "loop" if loop <= batched else "batched",
        "block_speedup_batched_over_loop": loop / batched,
        "skipped": skipped,
    }


def main() -> None:
    parser = common.argument_parser(__doc__)
    args = parser.parse_args()
    device = common.configure(args)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")  # PyHessian's backward

    if args.quick:
        repeats = 2
        workloads = [
            common.mlp_workload(device, 256, hidden=(64, 32), batch_size=128),
            common.cnn_workload(device, 256, channels=(4, 8, 8), hidden=16, batch_size=128),
        ]
    else:
        repeats = 9
        # The CNN costs ~30x the MLP per sample on a CPU: half the data keeps the run short.
        workloads = [common.mlp_workload(device, 2048), common.cnn_workload(device, 1024)]

    results = {}
    for workload in workloads:
        n = workload.inputs.shape[0]
        print(f"{workload.name}: D = {workload.dimension:,}, N = {n:,}", flush=True)
        results[workload.name] = measure(workload, repeats)

    for name, result in results.items():
        rows = [
            [
                tool,
                entry["vectors_per_call"],
                entry["ratio_to_gradient_per_vector"],
                entry["seconds_per_vector_median"],
                entry["relative_difference_to_ours"],
            ]
            for tool, entry in result["tools"].items()
        ]
        d = result["workload"]["dimension"]
        common.print_table(
            f"{name} (D = {d:,}): per-vector cost / one full-data gradient, median of {repeats}",
            ["product", "vectors", "ratio", "s/vector", "rel. diff. to ours"],
            rows,
        )
        print(
            f"blocks of {BLOCK}: hvp_method={result['faster_block_hvp_method']!r} is faster "
            f"(loop / batched = {result['block_speedup_batched_over_loop']:.2f})"
        )
        for tool, reason in result["skipped"].items():
            print(f"skipped {tool}: {reason}")

    path = common.write_result(
        "hvp_cost",
        args,
        device,
        {
            "settings": {"repeats": repeats, "warmup": 1, "block": BLOCK, "seed": common.SEED},
            "results": results,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
