"""Classification data of controlled intrinsic dimension (ARCHITECTURE.md, "Data").

Prunability is expected to depend on the intrinsic dimension of the inputs
(Ankner et al., arXiv 2212.00291). Every set here is built offline and is a pure
function of its arguments, so the plain dict :attr:`Dataset.spec` rebuilds it
exactly: ``load_dataset(**dataset.spec)``.

- :func:`manifold`: hidden-manifold data. A latent ``z ~ N(0, I_d)`` is mapped into
  ``R^n`` by a fixed random smooth injective map; a random teacher on ``z`` sets
  the label. The intrinsic dimension is ``d`` by construction.
- :func:`digits`: scikit-learn's bundled 8x8 digits (n = 64, 10 classes).
- :func:`mnist1d`: MNIST-1D (n = 40, 10 classes), generated locally.

The real sets take ``pca_rank=r``: the inputs are replaced by their orthogonal
projection onto the span of the top ``r`` principal directions of the training
inputs, written back in the ambient coordinates, which caps their intrinsic
dimension at ``r``.

Every input is standardised per feature with the mean and standard deviation of
the training split alone. Every dataset carries TwoNN and MLE estimates of its
intrinsic dimension (:func:`intrinsic_dimension`), measured on its training inputs.

Example
-------
>>> from pruning_limit.datasets import load_dataset
>>> data = load_dataset("manifold", d=4, n=32, n_train=500, n_test=100)
>>> tuple(data.X_train.shape), data.num_classes, data.nominal_intrinsic_dimension
((500, 32), 2, 4)
>>> load_dataset(**data.spec).X_train.equal(data.X_train)
True
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

INTRINSIC_DIMENSION_SAMPLE = 2000


@dataclass(frozen=True, repr=False)
class Dataset:
    """A train/test classification split and how it was made.

    Attributes
    ----------
    X_train, X_test
        Inputs, float32, shape ``(samples, ambient_dimension)``, standardised with
        the training split's statistics.
    y_train, y_test
        Class labels in ``0 .. num_classes - 1``, int64.
    name
        The name :func:`load_dataset` knows the set by.
    ambient_dimension
        n, the number of input features.
    nominal_intrinsic_dimension
        The intrinsic dimension by construction (the latent d of :func:`manifold`),
        or None where it is unknown (the real sets: a ``pca_rank`` r only bounds it
        by r, and is recorded in ``spec``).
    estimated_intrinsic_dimension
        ``{"twonn": ..., "mle": ...}`` from :func:`intrinsic_dimension` on ``X_train``.
    num_classes
        Number of classes.
    spec
        JSON-serialisable ``{"name": ..., **arguments}``; ``load_dataset(**spec)``
        rebuilds the set bit for bit.

    Example
    -------
    >>> data = manifold(d=2, n=6, n_train=40, n_test=20)
    >>> data.spec   # doctest: +NORMALIZE_WHITESPACE
    {'name': 'manifold', 'd': 2, 'n': 6, 'classes': 2, 'n_train': 40, 'n_test': 20,
     'seed': 0, 'teacher_width': 32}
    >>> load_dataset(**data.spec).X_train.equal(data.X_train)   # rebuilt bit for bit
    True
    >>> info = data.metadata()   # everything but the tensors
    >>> info["num_train"], info["num_test"], info["nominal_intrinsic_dimension"]
    (40, 20, 2)
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    ambient_dimension: int
    nominal_intrinsic_dimension: int | None
    estimated_intrinsic_dimension: dict[str, float]
    num_classes: int
    spec: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """Everything but the tensors, as a JSON-serialisable dict."""
        return {
            "name": self.name,
            "spec": dict(self.spec),
            "ambient_dimension": self.ambient_dimension,
            "nominal_intrinsic_dimension": self.nominal_intrinsic_dimension,
            "estimated_intrinsic_dimension": dict(self.estimated_intrinsic_dimension),
            "num_classes": self.num_classes,
            "num_train": int(self.X_train.shape[0]),
            "num_test": int(self.X_test.shape[0]),
        }

    def __repr__(self) -> str:
        estimates = ", ".join(
            f"{method}={value:.2f}" for method, value in self.estimated_intrinsic_dimension.items()
        )
        return (
            f"Dataset({self.name!r}, train={self.X_train.shape[0]}, test={self.X_test.shape[0]}, "
            f"ambient_dimension={self.ambient_dimension}, "
            f"nominal_intrinsic_dimension={self.nominal_intrinsic_dimension}, "
            f"estimated: {estimates}, classes={self.num_classes})"
        )


def intrinsic_dimension(
    X: torch.Tensor | np.ndarray, *, sample: int = INTRINSIC_DIMENSION_SAMPLE, seed: int = 0
) -> dict[str, float]:
    """TwoNN and MLE estimates of the intrinsic dimension of the point cloud ``X``.

    - TwoNN (Facco et al. 2017): with r1 < r2 a point's distances to its two
      nearest neighbours, mu = r2 / r1 follows the Pareto law P(mu > t) = t^-d on
      a d-dimensional manifold of locally uniform density; d is fitted to the
      empirical law of mu (scikit-dimension's ``TwoNN``, largest 10% of mu
      discarded).
    - MLE (Levina & Bickel 2004): d(x) = [(1/(k-1)) sum_{j<k} log(T_k(x)/T_j(x))]^-1
      from the distances T_j to the k = 20 nearest neighbours, combined over the
      points as the harmonic mean (scikit-dimension's ``MLE``).

    Both are *estimates*: with 2000 points they track d up to about 8, read 10-20%
    low at d = 16 and saturate above (d = 64 reads about 30-40), since the number
    of points needed grows exponentially with d.

    Parameters
    ----------
    X
        Points, shape ``(samples, features)``, at least 2 features.
    sample
        At most this many points are used, a uniform subsample drawn with ``seed``.
        Repeated points are dropped first (a zero distance r1 makes mu infinite).
    seed
        Seed of the subsample.

    Returns
    -------
    dict
        ``{"twonn": float, "mle": float}``.

    Example
    -------
    >>> generator = torch.Generator().manual_seed(0)
    >>> z = torch.randn(500, 2, generator=generator)              # a plane in R^6
    >>> X = torch.cat([z, z @ torch.randn(2, 4, generator=generator)], dim=1)
    >>> {method: round(value) for method, value in intrinsic_dimension(X).items()}
    {'twonn': 2, 'mle': 2}
    """
    points = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(
            f"X must be a 2-d array of points with at least 2 features, got shape {points.shape}"
        )
    if sample < 3:
        raise ValueError(f"sample must be at least 3, got {sample}")
    points = np.unique(points, axis=0)
    if len(points) < 3:
        raise ValueError(f"X holds {len(points)} distinct points; at least 3 are needed")
    if len(points) > sample:
        rng = np.random.default_rng(seed)
        points = points[np.sort(rng.choice(len(points), size=sample, replace=False))]
    import skdim  # takes seconds to import, and only this function needs it

    return {
        "twonn": float(skdim.id.TwoNN().fit(points).dimension_),
        "mle": float(skdim.id.MLE().fit(points).dimension_),
    }


def manifold(
    d: int = 8,
    n: int = 64,
    classes: int = 2,
    n_train: int = 2000,
    n_test: int = 1000,
    seed: int = 0,
    teacher_width: int = 32,
) -> Dataset:
    """Hidden-manifold data: inputs on a d-dimensional curved manifold in R^n.

    With a latent ``z ~ N(0, I_d)`` per sample and, drawn once from ``seed``,
    ``A in R^{d x n}`` with entries ``N(0, 1/d)`` and ``b in R^n`` with entries
    ``N(0, 1/4)``, the input is

        x = tanh(z A + b)   (then standardised per feature),

    a smooth map whose pre-activations have unit variance (curved, not saturated).
    For n >= d, A has rank d almost surely, so the map is injective with full-rank
    Jacobian: the inputs fill a d-dimensional manifold and nothing less.

    The label comes from a random teacher on the latent, a one-hidden-layer tanh
    network ``s(z) = tanh(z W / sqrt(d) + c) v`` of width ``teacher_width``; ``s``
    is cut at its ``1/classes, 2/classes, ...`` quantiles over the training
    samples, so the classes are balanced.

    Parameters
    ----------
    d
        Latent (intrinsic) dimension, 1 <= d <= n.
    n
        Ambient dimension of the inputs.
    classes
        Number of classes, at least 2.
    n_train, n_test
        Numbers of samples.
    seed
        Seeds the map, the teacher and the samples.
    teacher_width
        Hidden width of the teacher network.

    Returns
    -------
    Dataset
        ``nominal_intrinsic_dimension = d``.

    Example
    -------
    >>> data = manifold(d=2, n=6, n_train=40, n_test=20)
    >>> tuple(data.X_train.shape), data.nominal_intrinsic_dimension
    ((40, 6), 2)
    >>> data.y_train.bincount().tolist()   # balanced classes
    [20, 20]
    """
    spec = {
        "name": "manifold",
        "d": d,
        "n": n,
        "classes": classes,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "teacher_width": teacher_width,
    }
    _check_positive(spec, ("d", "n", "n_train", "n_test", "teacher_width"))
    if d > n:
        raise ValueError(
            f"the latent dimension d must not exceed the ambient dimension n: got d={d} > n={n}"
        )
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")
    if n_train < classes:
        raise ValueError(f"n_train must be at least classes={classes}, got {n_train}")
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((d, n)) / np.sqrt(d)
    offset = 0.5 * rng.standard_normal(n)
    teacher_in = rng.standard_normal((d, teacher_width)) / np.sqrt(d)
    teacher_bias = rng.standard_normal(teacher_width)
    teacher_out = rng.standard_normal(teacher_width) / np.sqrt(teacher_width)
    latent = rng.standard_normal((n_train + n_test, d))

    inputs = np.tanh(latent @ embedding + offset)
    score = np.tanh(latent @ teacher_in + teacher_bias) @ teacher_out
    cuts = np.quantile(score[:n_train], np.arange(1, classes) / classes)
    labels = np.searchsorted(cuts, score, side="right")
    return _finish(
        inputs[:n_train],
        labels[:n_train],
        inputs[n_train:],
        labels[n_train:],
        spec=spec,
        num_classes=classes,
        nominal_intrinsic_dimension=d,
        pca_rank=None,
    )


def digits(pca_rank: int | None = None, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits: 1797 images, n = 64, 10 classes.

    Read with ``sklearn.datasets.load_digits`` (shipped with scikit-learn, no
    download) and split into train and test, stratified by class, with ``seed``.

    Parameters
    ----------
    pca_rank
        If given, the (standardised) inputs are projected onto the top ``pca_rank``
        principal directions of the training inputs and written back in the 64
        pixel coordinates; 1 <= pca_rank <= 64.
    test_fraction
        Share of the samples held out for testing, in (0, 1).
    seed
        Seeds the split.

    Example
    -------
    >>> data = digits(pca_rank=8, test_fraction=0.9)
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape), data.num_classes
    ((179, 64), (1618, 64), 10)
    >>> int(torch.linalg.matrix_rank(data.X_train))   # 64 pixels, rank pca_rank
    8
    """
    spec = {"name": "digits", "pca_rank": pca_rank, "test_fraction": test_fraction, "seed": seed}
    _check_real_arguments(spec, features=64)
    bunch = load_digits()
    return _split_real(bunch.data, bunch.target, spec=spec, num_classes=10)


def mnist1d(
    pca_rank: int | None = None,
    num_samples: int = 5000,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """MNIST-1D (Greydanus 2020): 1-d signals of length n = 40, 10 classes.

    Generated locally with ``mnist1d.data.make_dataset`` and the package's default
    generation arguments (``get_dataset_args``) apart from ``num_samples`` and the
    seed; the downloading path (``get_dataset``) is never taken. The samples are
    then split into train and test, stratified by class, with ``seed``. The
    generator reseeds Python's and NumPy's global random state; both are restored
    afterwards.

    Parameters
    ----------
    pca_rank
        As for :func:`digits`; 1 <= pca_rank <= 40.
    num_samples
        Number of signals generated (rounded down to a multiple of 10: the
        generator makes the same number per class).
    test_fraction
        Share of the samples held out for testing, in (0, 1).
    seed
        Seeds the generator and the split.

    Example
    -------
    >>> data = mnist1d(num_samples=100)
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape)
    ((80, 40), (20, 40))
    >>> data.y_train.bincount().tolist()   # stratified: 8 per class
    [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]
    """
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: only when used

    spec = {
        "name": "mnist1d",
        "pca_rank": pca_rank,
        "num_samples": num_samples,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    args = get_dataset_args()
    _check_real_arguments(spec, features=args.final_seq_length)
    if num_samples < 20:
        raise ValueError(f"num_samples must be at least 20 (2 per class), got {num_samples}")
    args.num_samples = num_samples
    args.seed = seed
    # Generate everything as "train"; the stratified split is ours, as for digits.
    args.train_split = 1.0
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return _split_real(generated["x"], generated["y"], spec=spec, num_classes=10)


DATASETS = {"manifold": manifold, "digits": digits, "mnist1d": mnist1d}


def load_dataset(name: str, **kwargs) -> Dataset:
    """Build the dataset called ``name`` ("manifold", "digits" or "mnist1d") from ``kwargs``.

    ``load_dataset(**dataset.spec)`` rebuilds ``dataset`` exactly.

    Example
    -------
    >>> data = load_dataset("manifold", d=2, n=6, n_train=40, n_test=20, seed=0)
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape), data.ambient_dimension
    ((40, 6), (20, 6), 6)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    builder = DATASETS[name]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {name!r} takes no argument {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}"
        )
    return builder(**kwargs)


def _check_positive(spec: dict, names: tuple[str, ...]) -> None:
    for name in names:
        value = spec[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_real_arguments(spec: dict, *, features: int) -> None:
    """Check ``test_fraction`` and ``pca_rank`` of a real set with ``features`` inputs."""
    test_fraction, pca_rank = spec["test_fraction"], spec["pca_rank"]
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if pca_rank is not None and (
        not isinstance(pca_rank, int) or isinstance(pca_rank, bool) or not 1 <= pca_rank <= features
    ):
        raise ValueError(
            f"pca_rank must be None or an integer from 1 to the number of features "
            f"({features}) of {spec['name']}, got {pca_rank!r}"
        )


def _split_real(inputs: np.ndarray, labels: np.ndarray, *, spec: dict, num_classes: int) -> Dataset:
    """Stratified train/test split of a real set, then :func:`_finish`."""
    X_train, X_test, y_train, y_test = train_test_split(
        inputs, labels, test_size=spec["test_fraction"], stratify=labels, random_state=spec["seed"]
    )
    return _finish(
        X_train,
        y_train,
        X_test,
        y_test,
        spec=spec,
        num_classes=num_classes,
        nominal_intrinsic_dimension=None,
        pca_rank=spec["pca_rank"],
    )


def _finish(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    spec: dict,
    num_classes: int,
    nominal_intrinsic_dimension: int | None,
    pca_rank: int | None,
) -> Dataset:
    """Standardise with training statistics, optionally truncate by PCA, estimate the ID.

    Standardisation: x -> (x - m) / s per feature, m and s from ``X_train``; a
    constant feature (s = 0) is only centred. PCA truncation: with V_r the top r
    right singular vectors of the (centred) standardised ``X_train``,
    x -> x V_r V_r^T.
    """
    mean = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale[scale == 0] = 1.0
    X_train = (X_train - mean) / scale
    X_test = (X_test - mean) / scale
    if pca_rank is not None:
        _, _, right = np.linalg.svd(X_train, full_matrices=False)
        projector = right[:pca_rank].T @ right[:pca_rank]
        X_train, X_test = X_train @ projector, X_test @ projector
    X_train_t = torch.as_tensor(X_train, dtype=torch.float32)
    return Dataset(
        X_train=X_train_t,
        y_train=torch.as_tensor(y_train, dtype=torch.int64),
        X_test=torch.as_tensor(X_test, dtype=torch.float32),
        y_test=torch.as_tensor(y_test, dtype=torch.int64),
        name=spec["name"],
        ambient_dimension=int(X_train.shape[1]),
        nominal_intrinsic_dimension=nominal_intrinsic_dimension,
        estimated_intrinsic_dimension=intrinsic_dimension(X_train_t, seed=spec["seed"]),
        num_classes=num_classes,
        spec=spec,
    )
