"""The ``Spectrum``: a quadrature rule for traces of matrix functions of a curvature matrix C.

For a symmetric C in R^{D x D} and any function g, a Spectrum answers

    tr g(C) / D  ~  (z * g(0) + (D - z) * mean_k sum_j tau_kj g(theta_kj)) / D,

where ``z`` is the number of identically-zero rows of C (exact null directions,
counted and deflated before quadrature) and, for each probe k, the nodes theta_kj
and weights tau_kj (summing to 1) come from stochastic Lanczos quadrature on the
other D - z coordinates. The exact path stores one "probe" holding every
eigenvalue with weight 1/(D - z), so the same formula is then exact.

SLQ spectra also keep each probe's tridiagonal Lanczos matrix T_k (alphas on the
diagonal, betas off it, in float64). The rule after any number of steps s <= m is
the eigen-decomposition of T_k[:s, :s] (nodes = eigenvalues, weights = squared
first components), so convergence in m is checked without new products, and
Gauss-Radau rules (T with its last diagonal entry modified) are available for
bracketing.

Nothing here depends on eps, R or an eigenvalue policy: one Spectrum serves every
prediction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .quadrature import gauss_rule
from .serialization import write_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ParameterInfo:
    """Name and shape of one tensor the curvature acts on, in flattening order.

    >>> ParameterInfo("0.weight", (3, 2)).numel, ParameterInfo("scale", ()).numel
    (6, 1)
    """

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Spectrum:
    """Quadrature nodes and weights for tr g(C)/D, with how they were obtained.

    Attributes
    ----------
    nodes, weights
        Arrays of shape (probes, m): Ritz values theta_kj and Gauss weights tau_kj
        (each row sums to 1) on the deflated space of dimension D - zero_rows.
    dimension
        D, the number of coordinates C acts on (the prunable weights).
    zero_rows
        z, the number of identically-zero rows of C; each contributes g(0).
    curvature
        ``"hessian"`` or ``"ggn"``.
    method
        ``"slq"`` or ``"exact"``.
    alphas, betas
        For SLQ, the tridiagonal Lanczos coefficients per probe, shapes (probes, m)
        and (probes, m - 1); ``None`` for the exact path.
    parameters
        The tensors C acts on, in order: lets a consumer check that a Spectrum
        belongs to a given model.
    provenance
        How it was obtained: dtype, device, seed, steps, probes, timings, version.
    fingerprint
        Of the weights and the data it was computed at
        (:mod:`pruning_limit.fingerprint`): ``weights``, ``other``, ``data``, ``samples``.
        Empty for a plain matrix's spectrum and for files written before it was recorded.

    Example
    -------
    The exact spectrum of C = diag(1, 2, 0): two nodes of weight 1/2 on the
    deflated space, and one zero row.

    >>> import tempfile
    >>> spectrum = Spectrum(nodes=[[1.0, 2.0]], weights=[[0.5, 0.5]], dimension=3,
    ...                     zero_rows=1, curvature="matrix", method="exact")
    >>> spectrum.trace_function(lambda x: x)       # tr C / D = (1 + 2 + 0) / 3
    (1.0, 0.0)
    >>> round(spectrum.trace_function(lambda x: x**2)[0], 6)   # tr C^2 / D = (1 + 4 + 0) / 3
    1.666667
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded = Spectrum.load(spectrum.save(Path(folder) / "spectrum"))
    >>> loaded.dimension, loaded.zero_rows, loaded.nodes.tolist(), loaded.weights.tolist()
    (3, 1, [[1.0, 2.0]], [[0.5, 0.5]])
    """

    nodes: np.ndarray
    weights: np.ndarray
    dimension: int
    zero_rows: int
    curvature: str
    method: str
    parameters: tuple[ParameterInfo, ...] = ()
    alphas: np.ndarray | None = None
    betas: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes = np.atleast_2d(np.asarray(self.nodes, dtype=np.float64))
        self.weights = np.atleast_2d(np.asarray(self.weights, dtype=np.float64))
        if self.nodes.shape != self.weights.shape:
            raise ValueError(
                f"nodes and weights must have the same shape, got {self.nodes.shape} "
                f"and {self.weights.shape}"
            )
        if not 0 <= self.zero_rows <= self.dimension:
            raise ValueError(f"zero_rows={self.zero_rows} must lie in [0, D={self.dimension}]")
        self.parameters = tuple(
            p if isinstance(p, ParameterInfo) else ParameterInfo(p[0], tuple(p[1]))
            for p in self.parameters
        )
        if self.alphas is not None:
            self.alphas = np.atleast_2d(np.asarray(self.alphas, dtype=np.float64))
            self.betas = np.asarray(self.betas, dtype=np.float64).reshape(
                self.alphas.shape[0], self.alphas.shape[1] - 1
            )

    @property
    def num_probes(self) -> int:
        return self.nodes.shape[0]

    @property
    def steps(self) -> int:
        """Lanczos steps m per probe (for the exact path: D - z)."""
        return self.nodes.shape[1]

    @property
    def active_dimension(self) -> int:
        return self.dimension - self.zero_rows

    def __repr__(self) -> str:
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        return (
            f"Spectrum(method={self.method!r}, curvature={self.curvature!r}, D={self.dimension}, "
            f"zero_rows={self.zero_rows}, probes={self.num_probes}, steps={self.steps}, "
            f"nodes in [{lo:.3g}, {hi:.3g}])"
        )

    def rule(self, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights of the quadrature rule after ``steps`` Lanczos steps.

        ``steps=None`` gives the full rule. Truncation needs the tridiagonal
        coefficients, so only SLQ spectra accept a smaller ``steps``.
        """
        if steps is None or steps == self.steps:
            return self.nodes, self.weights
        if self.alphas is None:
            raise ValueError("only SLQ spectra can be truncated to fewer steps")
        if not 1 <= steps <= self.alphas.shape[1]:
            raise ValueError(f"steps must lie in [1, {self.alphas.shape[1]}], got {steps}")
        rules = [gauss_rule(a[:steps], b[: steps - 1]) for a, b in zip(self.alphas, self.betas)]
        return np.stack([r[0] for r in rules]), np.stack([r[1] for r in rules])

    def trace_function(
        self, g: Callable[[np.ndarray], np.ndarray], steps: int | None = None
    ) -> tuple[float, float]:
        """Estimate tr g(C)/D and its standard error over probes.

        Parameters
        ----------
        g
            A vectorised function of eigenvalues (numpy array in, array out).
        steps
            Use the rule after this many Lanczos steps (default: all).

        Returns
        -------
        (estimate, standard_error)
            The standard error is the spread of the per-probe estimates over
            sqrt(probes); 0 for the exact path and for a single probe it is NaN.
        """
        nodes, weights = self.rule(steps)
        per_probe = self.per_probe(g, nodes, weights)
        estimate = float(per_probe.mean())
        if self.method == "exact":
            error = 0.0
        elif per_probe.size < 2:
            error = float("nan")
        else:
            error = float(per_probe.std(ddof=1) / np.sqrt(per_probe.size))
        return estimate, error

    def per_probe(
        self,
        g: Callable[[np.ndarray], np.ndarray],
        nodes: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Each probe's estimate of tr g(C)/D (zero rows included), shape (probes,)."""
        nodes = self.nodes if nodes is None else nodes
        weights = self.weights if weights is None else weights
        quadrature = np.sum(weights * np.asarray(g(nodes), dtype=np.float64), axis=1)
        g0 = float(np.asarray(g(np.zeros(1)), dtype=np.float64)[0])
        return (self.zero_rows * g0 + self.active_dimension * quadrature) / self.dimension

    def density(self, grid: np.ndarray, width: float | None = None) -> np.ndarray:
        """Spectral density on ``grid``: the rule smoothed by Gaussians of ``width``.

        Integrates to 1 over the real line (the zero rows are a mass of z/D at 0).
        The default width is 1% of the node range.
        """
        grid = np.asarray(grid, dtype=np.float64)
        if width is None:
            span = float(self.nodes.max() - self.nodes.min())
            width = 0.01 * span if span > 0 else 1e-3 * max(1.0, abs(float(self.nodes.max())))
        kernel = lambda x: np.exp(-0.5 * ((grid[:, None] - x[None, :]) / width) ** 2)  # noqa: E731
        norm = 1.0 / (width * np.sqrt(2 * np.pi))
        active = kernel(self.nodes.ravel()) @ (self.weights.ravel() / self.num_probes)
        zeros = kernel(np.zeros(1))[:, 0]
        return norm * (self.active_dimension * active + self.zero_rows * zeros) / self.dimension

    def save(self, path: str | Path) -> Path:
        """Write the Spectrum to an ``.npz`` file (arrays, plus metadata as JSON text).

        ``.npz`` is added if missing; the path written is returned. Under
        ``torch.distributed`` rank 0 alone writes and every rank returns the same path
        (:mod:`~pruning_limit.serialization`).
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        metadata = {
            "format_version": FORMAT_VERSION,
            "dimension": self.dimension,
            "zero_rows": self.zero_rows,
            "curvature": self.curvature,
            "method": self.method,
            "parameters": [asdict(p) for p in self.parameters],
            "provenance": self.provenance,
            "fingerprint": self.fingerprint,
        }
        arrays = {"nodes": self.nodes, "weights": self.weights}
        if self.alphas is not None:
            arrays.update(alphas=self.alphas, betas=self.betas)
        return write_atomic(
            path, lambda handle: np.savez(handle, metadata=np.array(json.dumps(metadata)), **arrays)
        )

    @classmethod
    def load(cls, path: str | Path) -> Spectrum:
        """Read a Spectrum written by :meth:`save` (no pickle is involved)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no spectrum file at {path}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                metadata = json.loads(str(archive["metadata"]))
                arrays = {k: archive[k] for k in archive.files if k != "metadata"}
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"{path} is not a spectrum file written by pruning-limit: {error}"
            ) from error
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has spectrum format {metadata.get('format_version')}, "
                f"this version reads {FORMAT_VERSION}"
            )
        return cls(
            nodes=arrays["nodes"],
            weights=arrays["weights"],
            alphas=arrays.get("alphas"),
            betas=arrays.get("betas"),
            dimension=int(metadata["dimension"]),
            zero_rows=int(metadata["zero_rows"]),
            curvature=metadata["curvature"],
            method=metadata["method"],
            parameters=tuple(
                ParameterInfo(p["name"], tuple(p["shape"])) for p in metadata["parameters"]
            ),
            provenance=metadata["provenance"],
            fingerprint=metadata.get("fingerprint") or {},
        )
