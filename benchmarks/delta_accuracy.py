"""Accuracy of delta/D from SLQ against exact spectra, and of the p* it gives.

For trained small models whose exact curvature spectrum is cheap (D ~ 1-2k), this
measures the error of the statistical dimension

    delta(c)/D = tr g_c(C)/D,   g_c(lambda) = 1/(1 + c |lambda|),

estimated by SLQ, against the same quantity from the exact eigenvalues, as a
function of the Lanczos steps m, the number of probes and c, and the error of the
`paper` predictor's p* that follows. c runs over fixed values and over c*, the c
at the exact predicted limit (c* = R(p*)^2 / (2 eps)): the regime that matters.

Plain SLQ on the Hessian (policy "abs") is compared with the remedy this package
uses by default: SLQ on the generalised Gauss-Newton matrix (PSD, so g_c is
completely monotone on its spectrum and the quadrature converges fast and is
bracketed), and with more Lanczos steps on the Hessian.

One SLQ run at the largest m serves every smaller m: a Spectrum keeps each probe's
tridiagonal matrix, and the rule after s steps is that of its leading s x s block.

How it was run (results in ``benchmarks/results/delta_accuracy-cpu.json`` and
``delta_accuracy-cpu.png``)::

    python benchmarks/delta_accuracy.py            # m up to 400, 10 probes, 2 models
    python benchmarks/delta_accuracy.py --quick    # the test: m up to 40, 3 probes
"""

from __future__ import annotations

import time

import common
import numpy as np
import torch
from matplotlib.figure import Figure

import pruning_limit as pl
from pruning_limit.budget import loss_budget
from pruning_limit.limit import predict_from_spectrum
from pruning_limit.spectrum import Spectrum

FIXED_C = (1.0, 1e2, 1e3, 1e4, 1e5)


def trained_models(quick: bool):
    """(name, model, train pair): small networks trained with the package's own trainer."""
    torch.manual_seed(0)
    specs = [
        (
            "mlp-manifold-d8",
            pl.datasets.manifold(d=8, n=32, n_train=600 if quick else 1500, n_test=200, seed=0),
            {"kind": "mlp", "hidden": [24] if quick else [32, 24]},
        ),
        (
            "cnn1d-mnist1d",
            pl.datasets.mnist1d(num_samples=800 if quick else 2000, seed=0),
            {"kind": "cnn1d", "channels": [4, 8], "kernel_size": 5},
        ),
    ]
    if quick:
        specs = specs[:1]
    for name, data, fields in specs:
        kind = fields.pop("kind")
        spec = pl.model_spec(
            kind, input_dim=data.ambient_dimension, classes=data.num_classes, **fields
        )
        result = pl.train(
            spec,
            data,
            epochs=15 if quick else 60,
            lr=3e-3,
            batch_size=100,
            dtype=torch.float64,
            progress=False,
        )
        yield name, result.model, (data.X_train.double(), data.y_train), result.card["metrics"]


def truncated(spectrum: Spectrum, steps: int, probes: int) -> Spectrum:
    """The rule after ``steps`` Lanczos steps, from the first ``probes`` probes."""
    alphas, betas = spectrum.alphas[:probes, :steps], spectrum.betas[:probes, : steps - 1]
    rules = [pl.spectrum.gauss_rule(a, b) for a, b in zip(alphas, betas)]
    return Spectrum(
        nodes=np.stack([r[0] for r in rules]),
        weights=np.stack([r[1] for r in rules]),
        dimension=spectrum.dimension,
        zero_rows=spectrum.zero_rows,
        curvature=spectrum.curvature,
        method="slq",
        parameters=spectrum.parameters,
        alphas=alphas,
        betas=betas,
        provenance=spectrum.provenance,
    )


def delta(spectrum: Spectrum, c: float) -> float:
    return spectrum.trace_function(lambda x: 1.0 / (1.0 + c * np.abs(x)))[0]


def measure(name, model, train_pair, args, device) -> dict:
    loss_fn = torch.nn.CrossEntropyLoss()
    steps_grid = sorted(
        {s for s in (10, 25, 50, 100, 200) if s < args.max_steps} | {args.max_steps}
    )
    probe_grid = sorted({k for k in (2, 5) if k < args.probes} | {args.probes})
    result = {"model": name, "curvatures": {}}
    for curvature in ("hessian", "ggn"):
        operator = pl.CurvatureOperator(
            model, loss_fn, train_pair, curvature=curvature, dtype=torch.float64, device=device
        )
        started = time.perf_counter()
        exact = pl.lanczos.exact_spectrum_of(operator)
        exact_seconds = time.perf_counter() - started
        weights = operator.weights().cpu().numpy()
        epsilon, _ = loss_budget(operator, "batch_std")
        exact_prediction = predict_from_spectrum(
            exact, weights, epsilon, methods=("paper",), sensitivity=False
        )
        c_star = exact_prediction.estimates["paper"].scale
        started = time.perf_counter()
        slq = pl.slq(operator, steps=max(steps_grid), probes=args.probes, progress=False)
        slq_seconds = time.perf_counter() - started
        c_values = sorted({*FIXED_C, float(c_star)})
        rows = []
        for steps in steps_grid:
            for probes in probe_grid:
                rule = truncated(slq, min(steps, slq.steps), probes)
                errors = {f"{c:.4g}": delta(rule, c) - delta(exact, c) for c in c_values}
                predicted = predict_from_spectrum(
                    rule, weights, epsilon, methods=("paper",), sensitivity=False
                ).estimates["paper"]
                rows.append(
                    {
                        "steps": steps,
                        "probes": probes,
                        "delta_error_per_D": errors,
                        "delta_error_at_c_star": errors[f"{c_star:.4g}"],
                        "p_star": predicted.removal_fraction,
                        "p_star_interval": list(predicted.interval),
                        "p_star_error": predicted.removal_fraction
                        - exact_prediction.estimates["paper"].removal_fraction,
                        "interval_contains_exact": bool(
                            predicted.interval[0] - 1e-9
                            <= exact_prediction.estimates["paper"].removal_fraction
                            <= predicted.interval[1] + 1e-9
                        ),
                    }
                )
        result["curvatures"][curvature] = {
            "dimension": operator.dimension,
            "zero_rows": exact.zero_rows,
            "eigenvalue_range": [float(exact.nodes.min()), float(exact.nodes.max())],
            "epsilon": epsilon,
            "c_star": float(c_star),
            "c_star_times_lambda_max": float(c_star * np.abs(exact.nodes).max()),
            "p_star_exact": exact_prediction.estimates["paper"].removal_fraction,
            "seconds_exact": exact_seconds,
            "seconds_slq": slq_seconds,
            "rows": rows,
        }
    return result


def plot(results: list[dict], path) -> None:
    figure = Figure(figsize=(5.5 * len(results), 4))
    axes = figure.subplots(1, len(results), squeeze=False)
    for axis, result in zip(axes[0], results):
        for curvature, style in (("hessian", "-o"), ("ggn", "-s")):
            block = result["curvatures"][curvature]
            best = max(r["probes"] for r in block["rows"])
            rows = [r for r in block["rows"] if r["probes"] == best]
            axis.semilogy(
                [r["steps"] for r in rows],
                [max(abs(r["delta_error_at_c_star"]), 1e-8) for r in rows],
                style,
                label=f"{curvature} (c* lambda_max = {block['c_star_times_lambda_max']:.2g})",
            )
        axis.axhline(0.01, color="grey", linestyle=":", label="goal 0.01")
        axis.set_xlabel("Lanczos steps m")
        axis.set_ylabel("|delta_SLQ - delta_exact| / D at c*")
        axis.set_title(f"{result['model']} ({best} probes)")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--max-steps", type=int, default=None, help="largest m (default 400)")
    parser.add_argument("--probes", type=int, default=None, help="probes (default 10)")
    args = parser.parse_args()
    args.max_steps = args.max_steps or (40 if args.quick else 400)
    args.probes = args.probes or (3 if args.quick else 10)
    device = common.configure(args)
    results = [
        measure(name, model, pair, args, device)
        for name, model, pair, _ in trained_models(args.quick)
    ]
    table = []
    for result in results:
        for curvature, block in result["curvatures"].items():
            for row in block["rows"]:
                if row["probes"] == args.probes:
                    table.append(
                        [
                            result["model"],
                            curvature,
                            row["steps"],
                            row["probes"],
                            f"{block['c_star']:.3g}",
                            f"{row['delta_error_at_c_star']:+.4f}",
                            f"{row['p_star_error']:+.4f}",
                            row["interval_contains_exact"],
                        ]
                    )
    common.print_table(
        "delta/D error at c* and p* error (paper), SLQ vs exact",
        ["model", "curvature", "m", "probes", "c*", "d(delta/D)", "d(p*)", "in interval"],
        table,
    )
    path = common.write_result("delta_accuracy", args, device, {"results": results})
    plot(results, path.with_suffix(".png"))
    print(f"written {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
