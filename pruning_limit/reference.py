"""The reference code's pipeline, re-implemented from its description.

Zhang et al. check their theory with the public repository Global-One-shot-Pruning.
Its numbers come from a pipeline that differs in several details from the closed
form of :func:`pruning_limit.statdim.statistical_dimension` (the ``paper`` method).
This module reproduces that pipeline, so that its predictions can be compared with
ours on the same network and the same spectrum:

:func:`reference_epsilon`  (``utils.py``: ``cal_loss``)
    eps is the *population* standard deviation (ddof 0) of the mean training losses
    of the mini-batches of 128 samples, the model in eval mode, every batch counted
    once (the short last batch too, with the weight of a full one).
:func:`reference_density`  (``density_plot.py``: ``density_generate``)
    The spectral rule is smoothed into a density on 100,000 equally spaced bins from
    (mean over probes of the smallest node) - 0.01 to (mean of the largest) + 0.01,
    with Gaussians of *variance* sigma^2 = 1e-10 * max(1, range), averaged over the
    probes and normalised to integrate to 1 on the grid.
:func:`reference_limit`  (``cal_rate.py``: ``cal_gw``, ``cal_sparse_rate``)
    Bins with zero density are dropped and each remaining bin is a node at |grid|
    with mass proportional to its density; the identically-zero curvature rows get
    one more node at 1e-30 carrying their share z / D. The Gaussian width is

        gw(R) = sum_b rho_b * r_b^2 / (R^2 + r_b^2) / sum_b rho_b,   r_b^2 = 2 eps / |x_b|,

    i.e. delta(R) / D of the closed form, on the smoothed spectrum. For each p on the
    grid 0, 1/1000, ..., 999/1000 (p = the fraction REMOVED, as ``sparsity_rate`` in
    ``get_sparse_model``), R(p) is the norm of the weights magnitude pruning removes:
    the ceil(p D) smallest |w| (at least one) and every weight tied with the last.
    R(p) is rounded to an integer (half to even), and the prediction is the p that
    minimises |gw(round(R(p))) - p| (the first one on ties).

Everything after eps is numpy on a :class:`~pruning_limit.spectrum.Spectrum`, the flat
weights and eps, so it runs on any spectrum this package computes.

Example
-------
>>> import numpy as np
>>> from pruning_limit.spectrum import Spectrum
>>> eigenvalues = np.linspace(0.0, 2.0, 40)
>>> spectrum = Spectrum(nodes=eigenvalues[None], weights=np.full((1, 40), 1 / 40),
...                     dimension=40, zero_rows=0, curvature="hessian", method="exact")
>>> weights = np.random.default_rng(0).standard_normal(40)
>>> result = reference_limit(spectrum, weights, epsilon=0.5)
>>> result.removal_fraction, result.kept_fraction
(0.525, 0.475)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .batches import as_batches
from .parameters import eval_mode
from .spectrum import Spectrum

NUM_BINS = 100_000
VARIANCE = 1e-10
OVERHEAD = 0.01
GRID_STEPS = 1000
ZERO_CURVATURE_NODE = 1e-30
BATCH_SIZE = 128
# exp(-x) is exactly 0.0 in float64 for x > 745.2: farther than this many standard
# deviations a Gaussian adds nothing to a bin, as in the reference's dense sum.
_CUTOFF = math.sqrt(2 * 750.0)


# -- eps ----------------------------------------------------------------------------------


def reference_epsilon(
    model: nn.Module,
    loss_fn,
    data,
    batch_size: int = BATCH_SIZE,
    *,
    seed: int | None = None,
) -> tuple[float, dict]:
    """The reference code's loss budget: np.std (ddof 0) of the mini-batch mean losses.

        eps = sqrt( (1/B) sum_b (L_b - Lbar)^2 ),   Lbar = (1/B) sum_b L_b,

    where L_b = ``loss_fn`` (a batch mean) on mini-batch b at w*, the model in eval
    mode, without gradients. Every batch counts once, the short last one included
    (a ``DataLoader`` without ``drop_last``, as the reference's). The reference adds
    its L1 term to every L_b; it is the same for every batch, so it does not change
    eps and is left out.

    Parameters
    ----------
    model
        The trained network; its train/eval modes are restored afterwards.
    loss_fn
        ``loss_fn(outputs, targets)``, a mean over the batch.
    data
        A pair of tensors ``(X, y)`` (cut into batches of ``batch_size`` in order, or
        in the order of a permutation drawn from ``seed``), or any iterable of
        ``(inputs, targets)`` batches such as a ``DataLoader`` (used as it comes).
    batch_size
        Samples per mini-batch (128 in the reference); for a pair of tensors only.
    seed
        If given, shuffle a pair of tensors before cutting it, as the reference's
        ``DataLoader(shuffle=True)`` does.

    Returns
    -------
    (eps, record)
        The record says how eps was obtained: ``kind="reference"``, ``ddof=0``,
        ``mode="eval"``, the batch size, the number of batches, the size of the last
        one and whether it was included (always), the shuffle seed, the mean loss.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 2)
    >>> X, y = torch.randn(300, 3), torch.randint(0, 2, (300,))
    >>> eps, record = reference_epsilon(model, nn.CrossEntropyLoss(), (X, y))
    >>> record["batches"], record["last_batch_size"], record["ddof"]
    (3, 44, 0)
    """
    if getattr(loss_fn, "reduction", "mean") != "mean":
        raise ValueError(
            f"loss_fn must average over the batch (reduction='mean'), got {loss_fn.reduction!r}"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    shuffled = False
    if seed is not None and isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, targets = data
        if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor):
            order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
            data, shuffled = (inputs[order], targets[order]), True
    batches = as_batches(data, batch_size)
    reference = next(model.parameters())
    losses = []
    with eval_mode(model), torch.no_grad():
        for inputs, targets in batches:
            inputs = inputs.to(device=reference.device)
            if inputs.is_floating_point():
                inputs = inputs.to(dtype=reference.dtype)
            losses.append(float(loss_fn(model(inputs), targets.to(reference.device))))
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size < 2:
        raise ValueError(
            f"the reference eps needs at least two mini-batches, got {losses.size}: "
            "use a smaller batch_size or more data"
        )
    if not np.all(np.isfinite(losses)):
        raise ValueError("the mini-batch losses contain NaN or infinite values")
    value = float(np.std(losses, ddof=0))
    if not value > 0:
        raise ValueError("every mini-batch has the same loss: the reference eps is 0")
    sizes = batches.sizes
    record = {
        "kind": "reference",
        "value": value,
        "description": (
            "population standard deviation (ddof 0) of the mean training losses of the "
            "mini-batches, model in eval mode, every batch counted once, the short last "
            "batch included (Global-One-shot-Pruning utils.py cal_loss); the L1 term, a "
            "constant shift of every batch, is left out"
        ),
        "ddof": 0,
        "mode": "eval",
        "batch_size": int(max(sizes)),
        "batches": len(sizes),
        "last_batch_size": int(sizes[-1]),
        "last_batch_included": True,
        "samples": int(sum(sizes)),
        "shuffle_seed": seed if shuffled else None,
        "loss": float(np.average(losses, weights=sizes)),
        "mean_of_batch_losses": float(losses.mean()),
        "dtype": str(reference.dtype).replace("torch.", ""),
    }
    return value, record


# -- the density ------------------------------------------------------------------------------


def reference_density(
    spectrum: Spectrum,
    num_bins: int = NUM_BINS,
    variance: float = VARIANCE,
    overhead: float = OVERHEAD,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The reference code's smoothed spectral density of the Spectrum's quadrature rule.

    With lo = mean_k min_j theta_kj - overhead and hi = mean_k max_j theta_kj + overhead
    (k over probes), the grid is ``linspace(lo, hi, num_bins)`` and

        density(x) = (1/K) sum_k sum_j tau_kj N(x; theta_kj, s^2),
        s^2 = variance * max(1, hi - lo),

    normalised so that sum(density) * (grid[1] - grid[0]) = 1. The identically-zero
    rows of the Spectrum are not in it (see :func:`reference_limit`). Bins farther
    than 38.7 s from every node are exactly 0, as in the reference's float64 sum.

    Returns
    -------
    (grid, density, record)
        ``record`` holds lo, hi, the variance s^2 and the bin width.

    Example
    -------
    >>> s = Spectrum(nodes=[[1.0, 2.0]], weights=[[0.5, 0.5]], dimension=2, zero_rows=0,
    ...              curvature="hessian", method="exact")
    >>> grid, density, record = reference_density(s, num_bins=1001, variance=1e-4)
    >>> record["low"], record["high"], round(record["variance"], 12)   # 1e-4 * (2.01 - 0.99)
    (0.99, 2.01, 0.000102)
    >>> round(float(density.sum() * record["bin_width"]), 6)
    1.0
    """
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    if not variance > 0:
        raise ValueError(f"variance must be positive, got {variance}")
    nodes, weights = spectrum.nodes, spectrum.weights
    lo = float(np.mean(nodes.min(axis=1))) - overhead
    hi = float(np.mean(nodes.max(axis=1))) + overhead
    grid = np.linspace(lo, hi, num_bins)
    var = variance * max(1.0, hi - lo)
    scale = math.sqrt(var)
    order = np.argsort(nodes.ravel(), kind="stable")
    flat_nodes = nodes.ravel()[order]
    flat_weights = weights.ravel()[order]
    density = np.zeros(num_bins)
    norm = 1.0 / math.sqrt(2 * math.pi * var)
    chunk = 4096
    for start in range(0, num_bins, chunk):
        bins = grid[start : start + chunk]
        first = np.searchsorted(flat_nodes, bins[0] - _CUTOFF * scale, side="left")
        last = np.searchsorted(flat_nodes, bins[-1] + _CUTOFF * scale, side="right")
        if first == last:
            continue
        offsets = bins[:, None] - flat_nodes[None, first:last]
        kernel = np.exp(-(offsets**2) / (2.0 * var)) * norm
        density[start : start + chunk] = kernel @ flat_weights[first:last]
    density /= spectrum.num_probes
    total = float(np.sum(density) * (grid[1] - grid[0]))
    if not total > 0:
        raise ValueError("the smoothed density is zero on every bin")
    density /= total
    record = {
        "num_bins": num_bins,
        "low": lo,
        "high": hi,
        "overhead": overhead,
        "variance": var,
        "bin_width": float(grid[1] - grid[0]),
    }
    return grid, density, record


# -- the prediction ---------------------------------------------------------------------------


@dataclass
class ReferencePrediction:
    """The reference pipeline's predicted limit (fraction REMOVED) and its diagnostics.

    Attributes
    ----------
    removal_fraction
        p*, the argmin over p = i/1000 of |gw(round(R(p))) - p|; the fraction removed.
    radius, rounded_radius
        R(p*) and the integer it was rounded to.
    gaussian_width
        gw(round(R(p*))), the predicted delta / D at p*.
    mismatch
        |gw(round(R(p*))) - p*|, the minimum.
    epsilon
        The budget used.
    density
        The density's grid (low, high, variance, bin width), the bins kept (non-zero
        density) of ``num_bins``, and the share z / D of zero-curvature rows appended.
    curves
        ``removal_fraction`` (the 1000-point grid), ``radius`` R(p),
        ``rounded_radius``, ``gaussian_width`` gw(round(R(p))).
    notes
        What a reader should know (e.g. how coarse the integer radius is).

    Example
    -------
    >>> import json
    >>> s = Spectrum(nodes=[[1.0]], weights=[[1.0]], dimension=4, zero_rows=0,
    ...              curvature="hessian", method="exact")
    >>> result = reference_limit(s, [0.5, 1.0, 1.5, 2.0], epsilon=0.5, num_bins=1001)
    >>> result.removal_fraction, result.kept_fraction, result.fraction
    (0.5, 0.5, 'removed')
    >>> record = json.loads(json.dumps(result.to_dict()))   # plain JSON, curves included
    >>> len(record["curves"]["removal_fraction"]), record["density"]["num_bins"]
    (1000, 1001)
    """

    removal_fraction: float
    radius: float
    rounded_radius: int
    gaussian_width: float
    mismatch: float
    epsilon: float
    density: dict
    curves: dict = field(repr=False)
    notes: list = field(default_factory=list)
    fraction: str = "removed"

    @property
    def kept_fraction(self) -> float:
        """1 - p*, the fraction kept (what the paper's later versions quote)."""
        return 1.0 - self.removal_fraction

    def to_dict(self) -> dict:
        data = asdict(self)
        data["curves"] = {key: np.asarray(value).tolist() for key, value in self.curves.items()}
        return data


def reference_radii(weights, removal_fractions: np.ndarray) -> np.ndarray:
    """R(p) as ``get_sparse_model`` prunes: the norm of the ceil(p D) smallest |w|.

    At least one weight is removed (also at p = 0), and every weight whose |w| equals
    the threshold (the ceil(p D)-th smallest) goes with it.

    >>> weights = [3.0, -1.0, 2.0, 1.0]     # |-1| and |1| tie: both go together
    >>> reference_radii(weights, [0.0, 0.25, 0.5, 0.75]).round(6).tolist()   # sqrt 2, sqrt 6
    [1.414214, 1.414214, 1.414214, 2.44949]
    """
    flat = _flat(weights)
    dimension = flat.size
    magnitudes = np.sort(np.abs(flat))
    partial = np.concatenate([[0.0], np.cumsum(magnitudes**2)])
    p = np.asarray(removal_fractions, dtype=np.float64)
    # The reference's own float expression: ceil(p * D) in double precision.
    counts = np.maximum(np.ceil(p * float(dimension)).astype(np.int64), 1)
    counts = np.minimum(counts, dimension)
    thresholds = magnitudes[counts - 1]
    removed = np.searchsorted(magnitudes, thresholds, side="right")
    return np.sqrt(partial[removed])


def reference_limit(
    spectrum: Spectrum,
    weights,
    epsilon: float,
    *,
    num_bins: int = NUM_BINS,
    variance: float = VARIANCE,
    grid_steps: int = GRID_STEPS,
) -> ReferencePrediction:
    """The reference pipeline's predicted limit on ``spectrum`` (see the module docstring).

    Parameters
    ----------
    spectrum
        The curvature's quadrature rule (exact or SLQ); the reference used one
        128-step Lanczos probe of the Hessian, and |lambda|.
    weights
        w*, flat, in the Spectrum's coordinate order (only their magnitudes matter).
    epsilon
        The loss budget, e.g. from :func:`reference_epsilon`.
    num_bins, variance
        The density's bins and relative Gaussian variance (100,000 and 1e-10).
    grid_steps
        p runs over i / grid_steps for i = 0, ..., grid_steps - 1 (1000).

    Returns
    -------
    ReferencePrediction
        p* is the fraction REMOVED.

    Example
    -------
    Every eigenvalue 1 and eps = 1/2: gw(R) = 1 / (1 + R^2). For p in (1/4, 1/2] two of
    the weights 0.5, 1, 1.5, 2 go, R = sqrt(1.25) rounds to 1 and gw = 1/2, which
    meets p at p* = 1/2.

    >>> s = Spectrum(nodes=[[1.0]], weights=[[1.0]], dimension=4, zero_rows=0,
    ...              curvature="hessian", method="exact")
    >>> result = reference_limit(s, [0.5, 1.0, 1.5, 2.0], epsilon=0.5, num_bins=1001)
    >>> result.removal_fraction, round(result.radius, 6), result.rounded_radius
    (0.5, 1.118034, 1)
    >>> round(result.gaussian_width, 6), round(result.mismatch, 6)
    (0.5, 0.0)
    """
    flat = _flat(weights)
    if flat.size != spectrum.dimension:
        raise ValueError(
            f"the spectrum has D = {spectrum.dimension} coordinates but weights has {flat.size}"
        )
    epsilon = float(epsilon)
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")
    if not isinstance(grid_steps, int) or grid_steps < 1:
        raise ValueError(f"grid_steps must be a positive integer, got {grid_steps!r}")
    grid, density, record = reference_density(spectrum, num_bins, variance)
    kept = density > 0
    masses = density[kept]
    curvatures = np.abs(grid[kept])
    zero_share = spectrum.zero_rows / spectrum.dimension
    if spectrum.zero_rows:
        # cal_sparse_rate's extra bin: mass z/(D - z) of the rest, so its share is z/D.
        extra = spectrum.zero_rows / spectrum.active_dimension * masses.sum()
        masses = np.append(masses, extra)
        curvatures = np.append(curvatures, ZERO_CURVATURE_NODE)
    total = masses.sum()

    p = np.arange(grid_steps) / grid_steps
    radii = reference_radii(flat, p)
    rounded = np.round(radii).astype(np.int64)
    widths = {}
    for radius in np.unique(rounded):
        # r^2 / (R^2 + r^2) with r^2 = 2 eps / x is 1 / (1 + R^2 x / (2 eps)); it
        # is also the reference's limit 1 at a bin exactly at x = 0.
        scale = float(radius) ** 2 / (2.0 * epsilon)
        widths[int(radius)] = float(np.sum(masses / (1.0 + scale * curvatures)) / total)
    gaussian_width = np.array([widths[int(r)] for r in rounded])
    mismatch = np.abs(gaussian_width - p)
    best = int(np.argmin(mismatch))

    notes = []
    distinct = np.unique(rounded).size
    if distinct < 20:
        notes.append(
            f"R is rounded to an integer and runs from 0 to {radii[-1]:.3g}: gw takes only "
            f"{distinct} distinct values along p, so p* can only sit where round(R) jumps"
        )
    density_record = dict(
        record,
        bins_kept=int(kept.sum()),
        zero_rows_share=zero_share,
        curvature_used="|grid|",
    )
    return ReferencePrediction(
        removal_fraction=float(p[best]),
        radius=float(radii[best]),
        rounded_radius=int(rounded[best]),
        gaussian_width=float(gaussian_width[best]),
        mismatch=float(mismatch[best]),
        epsilon=epsilon,
        density=density_record,
        curves={
            "removal_fraction": p,
            "radius": radii,
            "rounded_radius": rounded,
            "gaussian_width": gaussian_width,
        },
        notes=notes,
    )


def _flat(weights) -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().double().numpy()
    elif isinstance(weights, (list, tuple)) and weights and isinstance(weights[0], torch.Tensor):
        weights = np.concatenate([w.detach().cpu().double().numpy().ravel() for w in weights])
    flat = np.asarray(weights, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        raise ValueError("weights is empty")
    if not np.all(np.isfinite(flat)):
        raise ValueError("weights contain NaN or infinite values")
    return flat
