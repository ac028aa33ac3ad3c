"""Stochastic Lanczos quadrature (SLQ), exact spectra, Hutchinson traces, top eigenvalues.

SLQ (Golub & Meurant; Ubaru, Chen & Saad 2017). For a probe v with independent
Rademacher entries (E[v v^T] = I), tr g(C) = E[v^T g(C) v]. With q = v/||v||, m
steps of Lanczos build an orthonormal basis Q of the Krylov space
K_m(C, q) and the Jacobi matrix T = Q^T C Q; with T = U diag(theta) U^T,

    q^T g(C) q  ~  sum_j tau_j g(theta_j),   tau_j = U_1j^2,

the m-point Gauss quadrature rule of the spectral measure of C seen from q; it is
exact for polynomials of degree <= 2m - 1. Averaging over probes gives
tr g(C)/D. Here:

- the basis is fully re-orthogonalised (classical Gram-Schmidt, twice), and the
  coefficients alpha_j, beta_j are accumulated in float64 whatever the product dtype;
- a breakdown (beta_j ~ 0: the Krylov space is invariant) continues with a fresh
  random vector orthogonal to the basis and beta_j = 0; the rule is unchanged
  because the new block of T carries no weight on the first basis vector;
- identically-zero rows of C are found first (see ``CurvatureOperator.zero_rows``),
  probes are restricted to the other D - z coordinates, and z is stored in the
  Spectrum, which adds z * g(0);
- probes run as a block: each Lanczos step multiplies all K current vectors at once;
- the state is written while running, so an interrupted run resumes (same seed ->
  same result, bit for bit). It is a folder: the Lanczos basis, the only large part
  (block_size x steps x D numbers), is *appended* in one ``.npy`` per checkpoint with
  the rows computed since the last one, so each row is written once; a small
  ``index.json`` (coefficients, progress, fingerprints), rewritten atomically after its
  chunks, says which chunks count. A finished block's chunks are deleted;
- under ``torch.distributed`` the products are all-reduced over the ranks' shards
  (:mod:`~pruning_limit.distributed`); every rank runs the same recurrences on the same
  bits, rank 0 alone writes the state and shows progress, and a state to resume
  from is read by rank 0 and broadcast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse.linalg
import torch
from tqdm.auto import tqdm

from . import distributed
from ._version import __version__
from .curvature import EXACT_LIMIT, CurvatureOperator
from .fingerprint import describe_mismatch
from .quadrature import gauss_rule
from .serialization import write_atomic, write_text
from .spectrum import Spectrum

STATE_VERSION = 2


def _generator(seed: int, *stream: int) -> torch.Generator:
    """An independent, reproducible CPU generator for (seed, stream...)."""
    digest = hashlib.sha256(repr((seed, *stream)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _random_rows(count: int, active: torch.Tensor, seed: int, stream: tuple, gaussian=False):
    """``count`` random vectors supported on ``active`` (Rademacher or Gaussian), float64, CPU."""
    rows = torch.zeros(count, active.numel(), dtype=torch.float64)
    for k in range(count):
        gen = _generator(seed, *stream, k)
        n = int(active.sum())
        if gaussian:
            values = torch.randn(n, generator=gen, dtype=torch.float64)
        else:
            values = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
        rows[k, active] = values
    return rows


def _orthogonalize(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from each vectors[k] its components in basis[k] (rows orthonormal), twice.

    One 2-D matrix-vector product per probe: on a CPU, a batched einsum over the
    strided (K, j, D) slice was measured 8-10x slower (benchmarks/slq_speed.py).
    """
    cleaned = []
    for vector, rows in zip(vectors, basis):
        for _ in range(2):
            vector = vector - rows.T @ (rows @ vector)
        cleaned.append(vector)
    return torch.stack(cleaned)


BASIS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Rows of a stored basis moved to the compute device and dtype at a time.
BASIS_CHUNK = 16


class _Basis:
    """Where and how the Lanczos basis (K x m x D numbers) is kept.

    ``device``/``dtype``: its storage (default: the operator's); the Gram-Schmidt
    arithmetic always runs on the operator's device in its dtype, the stored rows
    brought over ``BASIS_CHUNK`` at a time. ``sharded``: each rank keeps the
    coordinates ``[start, stop)`` of every vector, and each dot product is a partial
    sum plus one all-reduce (one per Gram-Schmidt pass of a block).
    """

    def __init__(self, dimension: int, operator, device=None, dtype=None, sharded=False):
        self.compute_dtype, self.compute_device = operator.dtype, operator.device
        self.device = torch.device(operator.device if device is None else device)
        self.dtype = operator.dtype if dtype is None else dtype
        self.sharded = bool(sharded) and distributed.is_distributed()
        if self.sharded:
            size, extra = divmod(dimension, distributed.world_size())
            index = distributed.rank()
            self.start = index * size + min(index, extra)
            self.stop = self.start + size + (1 if index < extra else 0)
        else:
            self.start, self.stop = 0, dimension
        # The original arithmetic, bit for bit, when nothing is moved, cast or sharded.
        self.plain = not self.sharded and (self.device, self.dtype) == (
            self.compute_device,
            self.compute_dtype,
        )

    @property
    def width(self) -> int:
        return self.stop - self.start

    def local(self, vectors: torch.Tensor) -> torch.Tensor:
        """This rank's coordinates of full vectors (K, D), in the compute dtype."""
        return vectors[:, self.start : self.stop]

    def full(self, rows: torch.Tensor) -> torch.Tensor:
        """Full vectors (K, D) from stored rows (K, width): gathered over ranks if sharded."""
        rows = rows.to(device=self.compute_device, dtype=self.compute_dtype)
        if not self.sharded:
            return rows
        gathered = distributed.gather_rows(rows.T.contiguous().reshape(-1), "the Lanczos vectors")
        return gathered.reshape(-1, rows.shape[0]).T.contiguous()

    def norms(self, vectors: torch.Tensor) -> torch.Tensor:
        """Euclidean norms of the rows of (K, width) blocks, over all coordinates, float64."""
        if not self.sharded:
            return vectors.double().norm(dim=1)
        squares = torch.einsum("kd,kd->k", vectors.double(), vectors.double())
        return distributed.all_reduce_sum(squares, "the Lanczos norms").sqrt()

    def orthogonalize(self, vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """``_orthogonalize`` against stored rows ``basis`` (K, j, width), twice."""
        if self.plain:
            return _orthogonalize(vectors, basis)
        for _ in range(2):
            coefficients = torch.stack(
                [
                    torch.cat(
                        [self._rows(rows, i) @ vector for i in range(0, rows.shape[0], BASIS_CHUNK)]
                    )
                    for vector, rows in zip(vectors, basis)
                ]
            )
            if self.sharded:
                coefficients = distributed.all_reduce_sum(coefficients, "the Lanczos dot products")
            cleaned = []
            for vector, rows, c in zip(vectors, basis, coefficients):
                for i in range(0, rows.shape[0], BASIS_CHUNK):
                    vector = vector - self._rows(rows, i).T @ c[i : i + BASIS_CHUNK]
                cleaned.append(vector)
            vectors = torch.stack(cleaned)
        return vectors

    def _rows(self, rows: torch.Tensor, first: int) -> torch.Tensor:
        return rows[first : first + BASIS_CHUNK].to(
            device=self.compute_device, dtype=self.compute_dtype
        )

    def record(self, count: int, steps: int) -> dict:
        return {
            "basis_device": str(self.device),
            "basis_dtype": str(self.dtype).replace("torch.", ""),
            "basis_sharded": self.sharded,
            "basis_coordinates_per_rank": self.width,
            "basis_mib_per_rank": count * steps * self.width * self.dtype.itemsize / 2**20,
        }


class _LanczosBlock:
    """K independent Lanczos recurrences advanced together, one product per step."""

    def __init__(self, start: torch.Tensor, steps: int, layout: _Basis) -> None:
        count, dimension = start.shape
        self.steps = steps
        self.layout = layout
        self.basis = torch.zeros(
            count, steps, layout.width, dtype=layout.dtype, device=layout.device
        )
        first = (start / start.norm(dim=1, keepdim=True)).to(dtype=layout.compute_dtype)
        self.basis[:, 0] = layout.local(first).to(dtype=layout.dtype, device=layout.device)
        self.alphas = torch.zeros(count, steps, dtype=torch.float64)
        self.betas = torch.zeros(count, max(steps - 1, 0), dtype=torch.float64)
        self.done = 0

    def state(self) -> dict:
        """Everything needed to continue the recurrences (tensors only: loads without pickle)."""
        return {
            "basis": self.basis.cpu(),
            "alphas": self.alphas,
            "betas": self.betas,
            "done": self.done,
        }

    @classmethod
    def from_state(cls, state: dict, layout: _Basis) -> _LanczosBlock:
        """Rebuild a block written by :meth:`state`."""
        block = cls.__new__(cls)
        block.layout = layout
        block.basis = state["basis"].to(dtype=layout.dtype, device=layout.device)
        block.steps = block.basis.shape[1]
        block.alphas = state["alphas"]
        block.betas = state["betas"]
        block.done = int(state["done"])
        return block

    def step(self, operator: CurvatureOperator, active: torch.Tensor, restart) -> None:
        """Advance every recurrence by one step of P C P, P the projection onto ``active``.

        ``restart(j)`` gives fresh vectors for recurrences that break down.
        """
        j = self.done
        layout = self.layout
        current = layout.full(self.basis[:, j])
        product = operator.apply(current) * active
        self.alphas[:, j] = torch.einsum("kd,kd->k", current.double(), product.double()).cpu()
        if j + 1 < self.steps:
            previous = self.basis[:, : j + 1]
            residual = layout.orthogonalize(layout.local(product), previous)
            norms = layout.norms(residual).cpu()
            scale = torch.maximum(self.alphas[:, : j + 1].abs().max(dim=1).values, norms)
            tolerance = 1e3 * torch.finfo(operator.dtype).eps * torch.clamp(scale, min=1e-300)
            broken = norms <= tolerance
            if broken.any():
                fresh = restart(j).to(dtype=residual.dtype, device=residual.device)
                fresh = layout.orthogonalize(layout.local(fresh), previous)
                fresh = layout.orthogonalize(fresh, previous)
                replace = broken.to(residual.device)[:, None]
                residual = torch.where(replace, fresh, residual)
                norms = torch.where(broken, torch.zeros_like(norms), norms)
            self.betas[:, j] = norms
            if layout.sharded:
                lengths = layout.norms(residual).to(residual)[:, None]
            else:
                lengths = residual.norm(dim=1, keepdim=True)
            self.basis[:, j + 1] = (residual / lengths).to(dtype=layout.dtype, device=layout.device)
        self.done = j + 1


@distributed.collective
def slq(
    operator: CurvatureOperator,
    *,
    steps: int = 100,
    probes: int = 10,
    seed: int = 0,
    block_size: int | None = None,
    deflate_zero_rows: bool = True,
    zero_row_probes: int = 4,
    state_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    basis_device: str | torch.device | None = None,
    basis_dtype: str | torch.dtype | None = None,
    basis_shard: bool = False,
) -> Spectrum:
    """Stochastic Lanczos quadrature of a :class:`CurvatureOperator`.

    Parameters
    ----------
    steps
        Lanczos steps m per probe (capped at the number of non-zero rows).
    probes
        Number of Rademacher probes.
    block_size
        Probes advanced together (one block product per step); default all.
        Memory: block_size * steps * D numbers for the basis.
    deflate_zero_rows
        Detect identically-zero rows with ``zero_row_probes`` Gaussian products and
        restrict the probes to the other coordinates.
    state_path, resume
        Write the run's state to the folder ``state_path`` every ``checkpoint_every``
        steps (or every ``checkpoint_seconds``) and after each block; with
        ``resume=True`` an existing state for the same configuration, weights and data
        (their fingerprints) is continued, otherwise it is discarded. Disk: the basis
        of one block, block_size x steps x D numbers of the basis dtype, written
        once (appended); the folder is removed when the run completes. Under
        ``torch.distributed`` rank 0 writes it and broadcasts it on resume.
    basis_device
        Where the Lanczos basis is stored (default: the operator's device); ``"cpu"``
        offloads it when the products run on a GPU (its rows then travel to the GPU,
        16 at a time, for each re-orthogonalisation).
    basis_dtype
        Storage dtype of the basis: ``"float32"`` or ``"bfloat16"`` (default: the
        operator's dtype). Re-orthogonalisation runs in the operator's dtype.
        bfloat16 halves the memory but loses orthogonality at the 1e-3 level: on a
        trained MLP, delta/D at c* fell from 0.870 to 0.375 (m = 100,
        ``benchmarks/basis_options.py``); keep it to small c.
    basis_shard
        With more than one rank: each rank keeps 1/N of the coordinates of every
        basis vector, and every dot product is a partial sum plus an all-reduce
        (memory per rank falls as 1/N). The state is then written after each block
        of probes only (a resumed run repeats the interrupted block).

    Returns
    -------
    Spectrum
        With per-probe tridiagonals, rules, zero-row count and provenance.

    Example
    -------
    >>> from pruning_limit.curvature import MatrixOperator
    >>> operator = MatrixOperator(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)))
    >>> spectrum = slq(operator, steps=6, probes=2, progress=False)
    >>> round(spectrum.trace_function(lambda x: x)[0], 6)   # tr(C)/D = 3.5, exact at m = D
    3.5
    """
    if steps < 1 or probes < 1:
        raise ValueError(f"steps and probes must be >= 1, got steps={steps}, probes={probes}")
    block_size = probes if block_size is None else block_size
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    layout = _Basis(
        operator.dimension,
        operator,
        device=basis_device,
        dtype=_basis_dtype(basis_dtype),
        sharded=basis_shard,
    )
    started = time.perf_counter()

    config = {
        "state_version": STATE_VERSION,
        "dimension": operator.dimension,
        "parameters": [[p.name, list(p.shape)] for p in operator.parameters],
        "curvature": operator.curvature,
        "dtype": str(operator.dtype),
        "steps": steps,
        "probes": probes,
        "seed": seed,
        "block_size": block_size,
        "deflate_zero_rows": deflate_zero_rows,
        "zero_row_probes": zero_row_probes,
        "num_samples": operator.provenance().get("num_samples"),
        "basis_dtype": str(layout.dtype),
        "basis_sharded": layout.sharded,
        "fingerprint": _fingerprint_of(operator),
    }
    main = distributed.is_main()
    if state_path is not None and not resume and main:
        remove_state(state_path)
    state = None
    if resume and state_path:
        state = distributed.broadcast_object(
            _load_state(state_path, config, layout.dtype) if main else None, "the SLQ state"
        )
    store = None if (state_path is None or not main) else _StateFolder(state_path, state)

    if state is not None:
        active = state["active"]
        zero_seconds = state["zero_seconds"]
    elif deflate_zero_rows:
        tick = time.perf_counter()
        active = ~operator.zero_rows(probes=zero_row_probes, seed=seed).cpu()
        zero_seconds = time.perf_counter() - tick
    else:
        active = torch.ones(operator.dimension, dtype=torch.bool)
        zero_seconds = 0.0
    active_dimension = int(active.sum())
    if active_dimension == 0:
        raise ValueError(
            "every row of the curvature is zero: the loss does not depend on the weights"
        )
    effective_steps = min(steps, active_dimension)

    finished_alphas = [] if state is None else list(state["alphas"])
    finished_betas = [] if state is None else list(state["betas"])
    block = None
    if state is not None and state["block"] is not None:
        block = _LanczosBlock.from_state(state["block"], layout)
    product_seconds = 0.0 if state is None else state["product_seconds"]

    def save_state() -> None:
        if store is None:
            return
        store.save(
            config=config,
            active=active,
            zero_seconds=zero_seconds,
            product_seconds=product_seconds,
            finished_alphas=finished_alphas,
            finished_betas=finished_betas,
            block=block,
            block_first=len(finished_alphas),
        )

    done_steps = len(finished_alphas) * effective_steps + (
        0 if block is None else block.done * block.alphas.shape[0]
    )
    bar = tqdm(
        total=probes * effective_steps,
        initial=done_steps,
        desc="SLQ (probes x steps)",
        unit="step",
        disable=not (progress and distributed.is_main()),
        leave=False,
    )
    last_save = time.perf_counter()
    try:
        while len(finished_alphas) < probes:
            first = len(finished_alphas)
            count = min(block_size, probes - first)
            if block is None:
                start = torch.cat(
                    [_random_rows(1, active, seed, ("probe", first + k)) for k in range(count)]
                )
                block = _LanczosBlock(start, effective_steps, layout)

            def restart(j: int, first=first, count=count) -> torch.Tensor:
                return torch.cat(
                    [
                        _random_rows(1, active, seed, ("restart", first + k, j), gaussian=True)
                        for k in range(count)
                    ]
                )

            while block.done < effective_steps:
                tick = time.perf_counter()
                block.step(operator, active.to(operator.device), restart)
                product_seconds += time.perf_counter() - tick
                bar.update(count)
                due = (
                    block.done % checkpoint_every == 0
                    if checkpoint_every
                    else time.perf_counter() - last_save > checkpoint_seconds
                )
                if due and block.done < effective_steps and not layout.sharded:
                    save_state()
                    last_save = time.perf_counter()
            finished_alphas.extend(block.alphas.unbind(0))
            finished_betas.extend(block.betas.unbind(0))
            block = None
            save_state()
    finally:
        bar.close()

    alphas = torch.stack(finished_alphas).numpy()
    betas = torch.stack(finished_betas).numpy()
    rules = [gauss_rule(a, b) for a, b in zip(alphas, betas)]
    if state_path is not None and distributed.is_main():
        remove_state(state_path)
    return Spectrum(
        nodes=np.stack([r[0] for r in rules]),
        weights=np.stack([r[1] for r in rules]),
        alphas=alphas,
        betas=betas,
        dimension=operator.dimension,
        zero_rows=operator.dimension - active_dimension,
        curvature=operator.curvature,
        method="slq",
        parameters=operator.parameters,
        fingerprint=_fingerprint_of(operator),
        provenance={
            **_operator_provenance(operator),
            "steps_requested": steps,
            "steps": effective_steps,
            "probes": probes,
            "probe_distribution": "rademacher",
            "seed": seed,
            "block_size": block_size,
            "reorthogonalization": "full (classical Gram-Schmidt, twice)",
            "zero_row_detection": (
                f"{zero_row_probes} Gaussian probes, exact zeros" if deflate_zero_rows else "off"
            ),
            **layout.record(block_size, effective_steps),
            "seconds_total": time.perf_counter() - started,
            "seconds_products": product_seconds,
            "seconds_zero_rows": zero_seconds,
            "resumed": state is not None,
        },
    )


@distributed.collective
def exact_spectrum_of(
    operator: CurvatureOperator, *, max_dimension: int = EXACT_LIMIT, started=None
) -> Spectrum:
    """All eigenvalues of an operator's matrix, as a one-probe :class:`Spectrum`.

    What :func:`~pruning_limit.pipeline.exact_spectrum` computes for a model.

    >>> import torch
    >>> from pruning_limit.curvature import MatrixOperator
    >>> s = exact_spectrum_of(MatrixOperator(torch.diag(torch.tensor([3.0, 1.0, 0.0]))))
    >>> s.nodes.tolist(), s.zero_rows
    ([[1.0, 3.0]], 1)
    """
    started = time.perf_counter() if started is None else started
    matrix = operator.matrix(max_dimension=max_dimension).double().cpu()
    active = ~(matrix == 0).all(dim=1)
    eigenvalues = torch.linalg.eigvalsh(matrix[active][:, active]).numpy()
    count = eigenvalues.size
    if count == 0:
        raise ValueError(
            "every row of the curvature is zero: the loss does not depend on the weights"
        )
    return Spectrum(
        nodes=eigenvalues[None],
        weights=np.full((1, count), 1.0 / count),
        dimension=operator.dimension,
        zero_rows=operator.dimension - count,
        curvature=operator.curvature,
        method="exact",
        parameters=operator.parameters,
        fingerprint=_fingerprint_of(operator),
        provenance={
            **_operator_provenance(operator),
            "eigensolver": "torch.linalg.eigvalsh (float64)",
            "seconds_total": time.perf_counter() - started,
        },
    )


def _basis_dtype(value) -> torch.dtype | None:
    if value is None or value in BASIS_DTYPES.values() or value == torch.float64:
        return value
    if isinstance(value, str) and value in (*BASIS_DTYPES, "float64"):
        return BASIS_DTYPES.get(value, torch.float64)
    raise ValueError(f"basis_dtype must be 'float32' or 'bfloat16' (or None), got {value!r}")


def hutchinson_trace(
    operator: CurvatureOperator, *, probes: int = 32, seed: int = 0
) -> tuple[float, float]:
    """Hutchinson's estimate of tr(C)/D with Rademacher probes, and its standard error.

    tr(C) = E[v^T C v]; each probe costs one product. Returns per-coordinate
    values (divided by D), like ``Spectrum.trace_function``.

    Example
    -------
    >>> from pruning_limit.curvature import MatrixOperator
    >>> mean, error = hutchinson_trace(MatrixOperator(torch.eye(5, dtype=torch.float64)), probes=4)
    >>> mean, error   # v^T I v / D = 1 for every Rademacher probe
    (1.0, 0.0)
    """
    if probes < 2:
        raise ValueError(f"probes must be >= 2 for a standard error, got {probes}")
    active = torch.ones(operator.dimension, dtype=torch.bool)
    rows = torch.cat([_random_rows(1, active, seed, ("hutchinson", k)) for k in range(probes)])
    rows = rows.to(dtype=operator.dtype, device=operator.device)
    quadratic_forms = torch.einsum("kd,kd->k", rows.double(), operator.apply(rows).double()).cpu()
    values = quadratic_forms / operator.dimension
    return float(values.mean()), float(values.std(unbiased=True) / np.sqrt(probes))


def top_eigenvalues(
    operator: CurvatureOperator, k: int = 5, *, which: str = "LA", tol: float = 1e-6
):
    """The ``k`` largest (``which="LA"``) or largest-magnitude (``"LM"``) eigenvalues of C.

    Implicitly restarted Lanczos (ARPACK through ``scipy.sparse.linalg.eigsh``) on the
    operator, in float64 on the host; returned in descending order.

    Example
    -------
    >>> from pruning_limit.curvature import MatrixOperator
    >>> values = torch.tensor([4.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    >>> top_eigenvalues(MatrixOperator(torch.diag(values)), k=2).round(6).tolist()
    [4.0, 3.0]
    """
    if not 1 <= k < operator.dimension:
        raise ValueError(f"k must lie in [1, D - 1 = {operator.dimension - 1}], got {k}")

    def matvec(x: np.ndarray) -> np.ndarray:
        vector = torch.as_tensor(
            np.ascontiguousarray(x).reshape(-1), dtype=operator.dtype, device=operator.device
        )
        return operator.matvec(vector).double().cpu().numpy()

    linear = scipy.sparse.linalg.LinearOperator(
        (operator.dimension, operator.dimension), matvec=matvec, dtype=np.float64
    )
    values = scipy.sparse.linalg.eigsh(linear, k=k, which=which, tol=tol, return_eigenvectors=False)
    return np.sort(values)[::-1]


def _operator_provenance(operator) -> dict:
    return {
        **operator.provenance(),
        "package_version": __version__,
        "torch_version": torch.__version__,
    }


def _fingerprint_of(operator) -> dict:
    """The weights' and data's fingerprint of a model's operator; {} for a plain matrix."""
    return dict(getattr(operator, "fingerprint", None) or {})


class _StateFolder:
    """An SLQ run's state on disk: ``index.json`` plus the basis in append-only chunks.

    Each :meth:`save` writes the basis rows computed since the previous one as one
    ``.npy`` chunk (atomically: a temporary name, then a rename), then rewrites the
    small index, which lists the chunks that count; a crash between the two leaves an
    unlisted chunk that is ignored and later overwritten or removed.
    """

    def __init__(self, path: str | Path, state: dict | None) -> None:
        self.path = Path(path)
        block = None if state is None else state.get("block")
        self.chunks: list[str] = [] if block is None else list(block["chunks"])
        self.rows = 0 if block is None else int(block["rows"])

    def save(self, *, config, active, zero_seconds, product_seconds, finished_alphas,
             finished_betas, block, block_first) -> None:  # fmt: skip
        # The first save builds the folder under another name and renames it: a run
        # killed before that leaves no state, never one without its index.
        first = not self.path.exists()
        folder = self.path.with_name(self.path.name + ".tmp") if first else self.path
        if first:
            remove_state(folder)
            folder.mkdir()
            _save_npy(folder / "active.npy", active.cpu().numpy())
        block_index = None
        if block is not None:
            rows = min(block.done + 1, block.steps)  # row `done` is the next vector, final
            if rows > self.rows:
                name = f"basis-{block_first:05d}-{self.rows:05d}-{rows:05d}.npy"
                rows_now = block.basis[:, self.rows : rows].cpu()
                if rows_now.dtype == torch.bfloat16:  # numpy has none; float32 holds it exactly
                    rows_now = rows_now.float()
                _save_npy(folder / name, rows_now.numpy())
                self.chunks.append(name)
                self.rows = rows
            block_index = {
                "first": block_first,
                "done": block.done,
                "steps": block.steps,
                "rows": self.rows,
                "chunks": self.chunks,
                "alphas": block.alphas.tolist(),
                "betas": block.betas.tolist(),
            }
        index = {
            "config": config,
            "zero_seconds": zero_seconds,
            "product_seconds": product_seconds,
            "alphas": [a.tolist() for a in finished_alphas],
            "betas": [b.tolist() for b in finished_betas],
            "block": block_index,
        }
        write_text(folder / "index.json", json.dumps(index))  # floats round-trip exactly (repr)
        if first:
            folder.replace(self.path)
        if block is None:  # the block is in the index's coefficients: its basis can go
            self.chunks, self.rows = [], 0
            for chunk in self.path.glob("basis-*.npy"):
                chunk.unlink()


def _save_npy(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False))


def remove_state(path: str | Path) -> None:
    """Delete an SLQ state (a folder; a single file from an older version).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     state = Path(folder) / "spectrum.npz.state"
    ...     state.mkdir()
    ...     _ = (state / "basis-0.npy").write_bytes(b"")
    ...     remove_state(state)
    ...     remove_state(state)   # already gone: nothing to do
    ...     state.exists()
    False
    """
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def state_size(dimension: int, steps: int, block_size: int, dtype: torch.dtype) -> int:
    """Bytes an SLQ state folder holds at most: one block's Lanczos basis, each row
    written once (block_size x steps x D numbers of ``dtype``).

    >>> state_size(71_424, 150, 10, torch.float32) / 1e6   # the basis of 10 probes
    428.544
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(block_size) * int(steps) * int(dimension) * itemsize


def _load_state(path: str | Path, config: dict, dtype) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        raise ValueError(
            f"SLQ state {path} is a single file, written by an older version: remove it or "
            "start over (--overwrite)"
        )
    try:
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError) as error:  # a truncated or foreign folder: say so
        raise ValueError(f"cannot read SLQ state {path}/index.json: {error}") from error
    saved = index.get("config", {})
    differs = describe_mismatch(saved.get("fingerprint") or {}, config["fingerprint"])
    if differs:
        raise ValueError(
            f"cannot resume from {path}: it was computed at other {' and '.join(differs)} "
            "than this run's (their fingerprints differ); resume with the same model and data, "
            "or start over (--overwrite)"
        )
    if saved != config:
        differing = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(
            f"SLQ state {path} belongs to another run (differs in: {', '.join(differing)}); "
            "remove it or run without resume"
        )
    if not index["alphas"] and index["block"] is None:
        warnings.warn(f"state {path} holds no finished step; starting over", stacklevel=3)
    try:
        active = torch.from_numpy(np.load(path / "active.npy", allow_pickle=False))
        block = index["block"]
        if block is not None:
            pieces = [np.load(path / name, allow_pickle=False) for name in block["chunks"]]
            basis = torch.from_numpy(np.concatenate(pieces, axis=1))
            full = torch.zeros(basis.shape[0], block["steps"], basis.shape[2], dtype=dtype)
            full[:, : basis.shape[1]] = basis.to(dtype)
            block = {
                "basis": full,
                "alphas": torch.tensor(block["alphas"], dtype=torch.float64),
                "betas": torch.tensor(block["betas"], dtype=torch.float64).reshape(
                    full.shape[0], max(block["steps"] - 1, 0)
                ),
                "done": block["done"],
                "chunks": block["chunks"],
                "rows": block["rows"],
            }
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read SLQ state {path}: {error}") from error
    return {
        "active": active,
        "zero_seconds": index["zero_seconds"],
        "product_seconds": index["product_seconds"],
        "alphas": [torch.tensor(a, dtype=torch.float64) for a in index["alphas"]],
        "betas": [torch.tensor(b, dtype=torch.float64) for b in index["betas"]],
        "block": block,
    }
