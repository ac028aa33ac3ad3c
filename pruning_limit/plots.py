"""Figures of predictions, validations, spectra and studies (PNG files).

p is always the fraction of prunable weights REMOVED (``amount`` in
torch.nn.utils.prune); the fraction kept is 1 - p.

Every function takes result objects and a path, writes one PNG and returns its
path (under ``torch.distributed`` rank 0 alone writes, atomically, and every rank
returns the path: :mod:`~pruning_limit.serialization`). Figures are built on
matplotlib's object API with the Agg canvas (``matplotlib.figure.Figure``), never
through ``pyplot``: no global figure state is created, so nothing is left open and no
display backend is needed.

- :func:`plot_validation`: test accuracy and training loss against p for each
  variant of a :class:`~pruning_limit.validation.Validation`, the thresholds, the
  actual limits and, given a Prediction, the predicted limits and their intervals.
- :func:`plot_statistical_dimension`: delta(R(p))/D and p against p
  (``Prediction.curves``), the crossings marked: the closed-form limits.
- :func:`plot_spectral_density`: the smoothed spectral density of a Spectrum and
  the cumulative distribution of |lambda| on a log scale (the bulk of tiny
  eigenvalues drives the prediction).
- :func:`plot_study`: predicted and actual limits against the intrinsic dimension,
  one panel per dataset family and regularisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import distributed
from .serialization import write_atomic

VARIANT_COLOURS = {"one_shot": "#1f77b4", "refit": "#d62728", "finetune": "#2ca02c"}
METHOD_STYLES = {
    "paper": ("#9467bd", "o"),
    "orthogonal": ("#8c564b", "s"),
    "quadratic": ("#ff7f0e", "D"),
    "trace_bound": ("#7f7f7f", "v"),
    "statdim_exact": ("#e377c2", "^"),
    "emp": ("#17becf", "P"),
    "taylor_onset": ("#bcbd22", "*"),
}
REMOVED = "p, fraction of prunable weights removed"
DPI = 120


def _figure(rows: int, columns: int, width: float, height: float) -> Figure:
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))
    figure.clear()
    return path


def _method_colour(method: str) -> tuple[str, str]:
    return METHOD_STYLES.get(method, ("#17becf", "x"))


def _variant_colour(variant: str) -> str:
    return VARIANT_COLOURS.get(variant, "#bcbd22")


def _mark_predictions(axis, prediction, label: bool) -> None:
    for method, estimate in prediction.estimates.items():
        colour, _ = _method_colour(method)
        low, high = estimate.interval
        if high > low:
            axis.axvspan(low, high, color=colour, alpha=0.12, linewidth=0)
        axis.axvline(
            estimate.removal_fraction,
            color=colour,
            linestyle="--",
            linewidth=1.2,
            label=f"predicted ({method}) {estimate.removal_fraction:.3f}" if label else None,
        )


def plot_validation(validation, path, prediction=None) -> Path:
    """Test accuracy and train loss against p per variant, limits marked.

    Parameters
    ----------
    validation
        A :class:`~pruning_limit.validation.Validation`.
    path
        Where to write the PNG.
    prediction
        Optionally a :class:`~pruning_limit.prediction.Prediction` of the same model: its
        limits (dashed) and intervals (shaded) are drawn on both panels.

    Returns
    -------
    Path
        The PNG written.

    Example
    -------
    >>> import tempfile
    >>> import pruning_limit as pl
    >>> import torch
    >>> from pruning_limit.models import least_squares
    >>> model, (X, y) = least_squares()   # the train loss of w_P = 0 is sum_P w_j^2 / 4
    >>> validation = pl.validate(model, train_data=(X, y), test_data=(X, y),
    ...                          loss_fn=torch.nn.MSELoss(), epsilon=1.0, variants=("one_shot",),
    ...                          amounts=[0.25, 0.5, 0.75], reference_grid=None, progress=False)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = plot_validation(validation, Path(folder) / "validation")
    ...     path.name, path.read_bytes()[1:4]
    ('validation.png', b'PNG')
    """
    classification = validation.task == "classification"
    figure = _figure(1, 2 if classification else 1, 5.6, 4.2)
    axes = figure.subplots(1, 2 if classification else 1, squeeze=False)[0]
    dense = validation.dense
    if classification:
        axis = axes[0]
        for variant, result in validation.variants.items():
            colour = _variant_colour(variant)
            amounts = np.array([p.amount for p in result.points])
            accuracy = np.array([p.metrics["test_accuracy"] for p in result.points])
            bands = np.array(
                [[p.metrics["test_accuracy_low"], p.metrics["test_accuracy_high"]]
                 for p in result.points]
            )  # fmt: skip
            axis.fill_between(amounts, bands[:, 0], bands[:, 1], color=colour, alpha=0.15)
            axis.plot(amounts, accuracy, marker=".", color=colour, label=variant)
            scan = getattr(result, "reference_points", [])
            if scan:
                axis.plot(
                    [p.amount for p in scan],
                    [p.metrics["test_accuracy"] for p in scan],
                    linestyle="none", marker=".", markersize=1.5, color=colour, alpha=0.5,
                )  # fmt: skip
            axis.axvline(result.accuracy_limit, color=colour, linestyle=":", linewidth=1.5)
            _mark_transition(axis, result, colour)
        axis.axhline(
            dense["test_accuracy"] - validation.tolerance / 100.0,
            color="black",
            linewidth=0.8,
            linestyle="-.",
            label=f"dense - {validation.tolerance:g} pp",
        )
        axis.set_ylabel("test accuracy")
        axis.set_title(
            "accuracy (dotted: onset; dash-dot: collapse centre, band: 10-90 % width;\n"
            "triangle: reference code's above-dense rule)",
            fontsize=8,
        )
    axis = axes[-1]
    for variant, result in validation.variants.items():
        colour = _variant_colour(variant)
        amounts = np.array([p.amount for p in result.points])
        losses = np.array([p.metrics["train_loss"] for p in result.points])
        axis.plot(amounts, losses, marker=".", color=colour, label=variant)
        axis.axvline(result.loss_budget_limit, color=colour, linestyle=":", linewidth=1.5)
        loss_collapse = result.limit("loss_collapse")
        if loss_collapse is not None:
            axis.axvline(loss_collapse, color=colour, linestyle="-.", linewidth=1.2)
    axis.axhline(
        dense["train_loss"] + validation.epsilon,
        color="black",
        linewidth=0.8,
        linestyle="-.",
        label=f"L(w*) + eps (eps = {validation.epsilon:.3g})",
    )
    axis.set_yscale("log")
    axis.set_ylabel("train loss")
    axis.set_title(
        "loss (dotted: loss-budget onset; dash-dot: log-loss collapse centre)", fontsize=8
    )
    for index, axis in enumerate(axes):
        if prediction is not None:
            _mark_predictions(axis, prediction, label=index == len(axes) - 1)
        axis.set_xlabel(REMOVED)
        axis.set_xlim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower left" if axis is not axes[-1] else "upper left")
    figure.suptitle(
        f"Pruning sweep, D = {validation.dimension}, dtype {validation.dtype}", fontsize=10
    )
    return _save(figure, path)


def _mark_transition(axis, result, colour) -> None:
    """The collapse centre (dash-dot), its 10-90 % band, the above-dense rule (triangle)."""
    transition = getattr(result, "transition", None)
    if transition is None:
        return
    start, end = transition.limit("collapse_start"), transition.limit("collapse_end")
    if start is not None and end is not None:
        axis.axvspan(start, end, color=colour, alpha=0.10, linewidth=0, hatch="//")
    centre = transition.limit("collapse")
    if centre is not None:
        axis.axvline(centre, color=colour, linestyle="-.", linewidth=1.5)
        axis.annotate(
            f"collapse {centre:.3f}\nwidth {transition.collapse_width:.3f}",
            (centre, transition.reading("collapse").level),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=6,
            color=colour,
        )
    above = transition.limit("above_dense")
    if above is not None and transition.dense_accuracy is not None:
        axis.plot([above], [transition.dense_accuracy], marker="v", color=colour, markersize=7)


def plot_statistical_dimension(prediction, path) -> Path:
    """delta(R(p))/D for each closed form and the diagonal p, crossings marked.

    The closed-form limits are where a curve crosses the diagonal (the fixed point
    p = delta(R(p))/D). The paper's curve carries a band of +- 2 standard errors
    over probes (zero for an exact spectrum).

    Example
    -------
    >>> import tempfile
    >>> from pruning_limit.limit import predict_from_spectrum
    >>> from pruning_limit.spectrum import Spectrum
    >>> s = Spectrum(nodes=[[0.0, 1.0, 3.0]], weights=np.full((1, 3), 1 / 3), dimension=3,
    ...              zero_rows=0, curvature="ggn", method="exact")
    >>> prediction = predict_from_spectrum(s, [3.0, -1.0, 2.0], 0.5)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = plot_statistical_dimension(prediction, Path(folder) / "statdim.png")
    ...     path.name, path.read_bytes()[1:4]
    ('statdim.png', b'PNG')
    """
    curves = prediction.curves
    grid = np.asarray(curves["removal_fraction"], dtype=float)
    figure = _figure(1, 1, 5.6, 4.4)
    axis = figure.subplots()
    axis.plot(grid, grid, color="black", linewidth=1, label="p")
    for form in ("paper", "orthogonal", "trace_bound"):
        if form not in curves:
            continue
        colour, marker = _method_colour(form)
        values = np.asarray(curves[form], dtype=float)
        axis.plot(grid, values, color=colour, label=f"delta(R(p))/D, {form}")
        if form == "paper" and "paper_standard_error" in curves:
            error = 2 * np.asarray(curves["paper_standard_error"], dtype=float)
            axis.fill_between(grid, values - error, values + error, color=colour, alpha=0.2)
        if form in prediction.estimates:
            p = prediction.estimates[form].removal_fraction
            axis.plot([p], [p], marker=marker, color=colour, markersize=8, linestyle="none")
            axis.annotate(
                f"{p:.3f}", (p, p), textcoords="offset points", xytext=(6, -12), fontsize=8
            )
    if "quadratic" in prediction.estimates:
        colour, _ = _method_colour("quadratic")
        p = prediction.estimates["quadratic"].removal_fraction
        axis.axvline(p, color=colour, linestyle="--", label=f"quadratic model {p:.3f}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel(REMOVED)
    axis.set_ylabel("delta / D")
    axis.set_title(
        f"Statistical dimension, eps = {prediction.epsilon:.3g}, {prediction.curvature}, "
        f"D = {prediction.dimension}",
        fontsize=9,
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_spectral_density(spectrum, path, points: int = 600) -> Path:
    """The spectral density of a Spectrum and the distribution of |lambda|.

    Left: ``Spectrum.density`` (the quadrature rule smoothed by Gaussians) on a grid
    over the node range, log density. Right: the fraction of eigenvalues with
    |lambda| <= x on a log x axis, which shows the bulk of tiny eigenvalues that
    decides tr g_c(C) at large c; the zero rows sit at the left edge.

    Example
    -------
    >>> import tempfile
    >>> from pruning_limit.spectrum import Spectrum
    >>> s = Spectrum(nodes=[[1e-3, 0.5, 2.0]], weights=np.full((1, 3), 1 / 3), dimension=4,
    ...              zero_rows=1, curvature="ggn", method="exact")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = plot_spectral_density(s, Path(folder) / "density.png", points=100)
    ...     path.name, path.read_bytes()[1:4]
    ('density.png', b'PNG')
    """
    nodes = np.asarray(spectrum.nodes, dtype=float)
    weights = np.asarray(spectrum.weights, dtype=float)
    low, high = float(nodes.min()), float(nodes.max())
    margin = 0.05 * (high - low) if high > low else max(abs(high), 1.0) * 0.05
    grid = np.linspace(low - margin, high + margin, points)
    density = spectrum.density(grid)
    figure = _figure(1, 2, 5.0, 4.0)
    left, right = figure.subplots(1, 2)
    left.plot(grid, np.maximum(density, 1e-12), color="#1f77b4")
    left.set_yscale("log")
    left.set_ylim(bottom=max(1e-6, float(density.max()) * 1e-8))
    left.set_xlabel("eigenvalue lambda")
    left.set_ylabel("density")
    left.set_title(f"{spectrum.curvature} spectrum ({spectrum.method})", fontsize=9)
    left.grid(alpha=0.3)

    magnitudes = np.abs(nodes).ravel()
    mass = (weights / spectrum.num_probes).ravel() * spectrum.active_dimension
    mass = mass / spectrum.dimension
    order = np.argsort(magnitudes)
    cumulative = spectrum.zero_rows / spectrum.dimension + np.cumsum(mass[order])
    positive = magnitudes[order] > 0
    floor = float(magnitudes[order][positive].min()) if positive.any() else 1e-12
    right.step(np.maximum(magnitudes[order], floor), cumulative, where="post", color="#d62728")
    right.set_xscale("log")
    right.set_ylim(0, 1.02)
    right.set_xlabel("|lambda|")
    right.set_ylabel("fraction of eigenvalues <= |lambda|")
    right.set_title(f"D = {spectrum.dimension}, {spectrum.zero_rows} zero rows", fontsize=9)
    right.grid(alpha=0.3)
    return _save(figure, path)


def plot_study(study, path, criterion: str = "collapse") -> Path:
    """Predicted and actual limits against the intrinsic dimension, and predicted
    against actual under every criterion.

    Top rows: one panel per dataset family (columns) and regularisation and dtype
    (rows); x is the intrinsic-dimension knob of each run (the latent d of
    manifold data, the PCA rank of the real sets), log scale. Dashed lines with
    markers: the predictors; solid: the actual limits of each variant under
    ``criterion`` (default the collapse centre, with the 10-90 % collapse band
    shaded; ``"accuracy"`` with the binomial intervals as bars); dotted: the
    onset of accuracy damage.

    Bottom row: one panel per criterion (every reading of "actual" in
    :data:`~pruning_limit.validation.CRITERIA`), one-shot pruning: predicted p
    against actual p for every predictor, the diagonal drawn; ``emp`` is the
    curvature-free baseline.

    Parameters
    ----------
    study
        A :class:`~pruning_limit.study.StudyResult`.
    path
        Where to write the PNG.
    criterion
        The criterion of the solid lines (one of ``CRITERIA``).

    Example
    -------
    Two hand-made runs, with what the figure reads of a study's rows:

    >>> import tempfile
    >>> from pruning_limit.study import StudyResult
    >>> rows = [{"run": f"manifold-d{d}", "dataset": "manifold", "regularisation": "plain",
    ...          "dtype": "float32", "intrinsic_dimension": float(d),
    ...          "intrinsic_dimension_label": "latent d",
    ...          "predicted": {"paper": {"p": 0.95 - 0.01 * d, "interval": [0.9, 0.95]}},
    ...          "actual": {"one_shot": {"accuracy": 0.5, "accuracy_interval": [0.45, 0.55],
    ...                                  "collapse": 0.9 - 0.02 * d,
    ...                                  "collapse_start": 0.8 - 0.02 * d,
    ...                                  "collapse_end": 0.95 - 0.02 * d}}}
    ...         for d in (2, 8)]
    >>> study = StudyResult(name="hand-made", out="unused", rows=rows, summary=[], config={})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = plot_study(study, Path(folder) / "study.png")
    ...     path.name, path.read_bytes()[1:4]
    ('study.png', b'PNG')
    """
    from .validation import CRITERIA

    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    rows = study.rows
    families = list(dict.fromkeys(row["dataset"] for row in rows))
    settings = list(dict.fromkeys((row["regularisation"], row["dtype"]) for row in rows))
    columns = max(len(families), len(CRITERIA), 1)
    figure = _figure(max(len(settings), 1) + 1, columns, 4.0, 3.4)
    axes = figure.subplots(max(len(settings), 1) + 1, columns, squeeze=False)
    for i in range(len(settings)):
        for j in range(len(families), columns):
            axes[i][j].set_visible(False)
    for i, setting in enumerate(settings):
        for j, family in enumerate(families):
            axis = axes[i][j]
            chosen = sorted(
                (r for r in rows if r["dataset"] == family
                 and (r["regularisation"], r["dtype"]) == setting),
                key=lambda r: r["intrinsic_dimension"],
            )  # fmt: skip
            if not chosen:
                axis.set_visible(False)
                continue
            x = np.array([r["intrinsic_dimension"] for r in chosen])
            methods = list(dict.fromkeys(m for r in chosen for m in r["predicted"]))
            for method in methods:
                colour, marker = _method_colour(method)
                y = np.array([r["predicted"].get(method, {}).get("p", np.nan) for r in chosen])
                axis.plot(x, y, linestyle="--", marker=marker, color=colour, label=method)
            variants = list(dict.fromkeys(v for r in chosen for v in r["actual"]))
            for variant in variants:
                colour = _variant_colour(variant)
                actual = [r["actual"].get(variant, {}) for r in chosen]
                y = np.array([_number(a.get(criterion)) for a in actual])
                axis.plot(
                    x, y, marker="o", color=colour, linewidth=2, label=f"{variant} {criterion}"
                )
                if criterion == "collapse":
                    low = np.array([_number(a.get("collapse_start")) for a in actual])
                    high = np.array([_number(a.get("collapse_end")) for a in actual])
                    axis.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
                elif criterion == "accuracy":
                    interval = np.array(
                        [a.get("accuracy_interval") or [np.nan, np.nan] for a in actual],
                        dtype=float,
                    )
                    axis.errorbar(
                        x,
                        y,
                        yerr=np.abs(np.stack([y - interval[:, 0], interval[:, 1] - y])),
                        fmt="none",
                        ecolor=colour,
                        alpha=0.35,
                        capsize=3,
                    )
                if criterion != "accuracy":
                    y = np.array([_number(a.get("accuracy")) for a in actual])
                    axis.plot(x, y, linestyle=":", marker=".", color=colour)
            axis.set_xscale("log", base=2)
            axis.set_ylim(0, 1.02)
            axis.set_xlabel(chosen[0].get("intrinsic_dimension_label", "intrinsic dimension"))
            axis.set_ylabel("p removed")
            axis.set_title(f"{family}, {setting[0]}, {setting[1]}", fontsize=9)
            axis.grid(alpha=0.3)
            if i == 0 and j == 0:
                axis.legend(fontsize=6, loc="lower left")
    bottom = axes[-1]
    methods = list(dict.fromkeys(m for r in rows for m in r["predicted"]))
    for j in range(columns):
        axis = bottom[j]
        if j >= len(CRITERIA):
            axis.set_visible(False)
            continue
        name = CRITERIA[j]
        for method in methods:
            colour, marker = _method_colour(method)
            pairs = np.array(
                [
                    [_number(r["actual"].get("one_shot", {}).get(name)),
                     _number(r["predicted"].get(method, {}).get("p"))]
                    for r in rows
                ],
                dtype=float,
            ).reshape(-1, 2)  # fmt: skip
            label = f"{method} (baseline)" if method == "emp" else method
            axis.plot(
                pairs[:, 0], pairs[:, 1], linestyle="none", marker=marker, color=colour,
                markersize=4, alpha=0.8, label=label,
            )  # fmt: skip
        axis.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        axis.set_xlim(0, 1.02)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel(f"actual p, one_shot {name}", fontsize=8)
        axis.set_ylabel("predicted p")
        axis.set_title(f"every predictor vs {name}", fontsize=9)
        axis.grid(alpha=0.3)
        if j == 0:
            axis.legend(fontsize=6, loc="upper left")
    figure.suptitle(
        f"Study {study.name}: predicted (dashed) vs actual {criterion} (solid"
        + (", band: 10-90 % collapse width" if criterion == "collapse" else "")
        + "; dotted: accuracy onset)\nbottom: predicted vs actual under every criterion "
        "(one-shot pruning)",
        fontsize=9,
    )
    return _save(figure, path)


def _number(value) -> float:
    return np.nan if value is None else float(value)
