"""The one path from a model and its data to a Prediction.

    model + data --(CurvatureOperator)--> Spectrum --(eps, R(p), fixed points)--> Prediction

:class:`Pipeline` holds each step's result once: the curvature operator (the only
place the package constructs one from a model), its dense matrix (built at most
once, for the exact spectrum and the quadratic model alike), the spectrum (exact up
to :data:`~pruning_limit.curvature.EXACT_LIMIT` coordinates, else SLQ), the loss
budget, the quadratic model and the Taylor model. :func:`predict_limit`,
:func:`estimate_spectrum`, :func:`exact_spectrum`,
:func:`~pruning_limit.validation.validate` (its re-fit), the study and the command
line all go through it.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .batches import DEFAULT_BATCH_SIZE
from .budget import BATCH_STD, REFERENCE, check_epsilon, loss_budget
from .curvature import CURVATURES, DEFAULT_CURVATURE, EXACT_LIMIT, CurvatureOperator, ModelLoss
from .fingerprint import describe_mismatch, weights_fingerprint
from .lanczos import exact_spectrum_of, remove_state, slq
from .limit import (
    check_methods,
    check_statdim_dimension,
    closed_form_limit,
    predict_from_spectrum,
)
from .onset import DEFAULT_POINTS, TaylorModel
from .parameters import resolve_parameters
from .prediction import DEFAULT_METHODS, Prediction
from .quadratic import QuadraticModel
from .reference import reference_epsilon
from .regime import measure_regime
from .spectrum import Spectrum
from .statdim import check_policy

# Methods that read the curvature itself, not only its spectrum: they need data= and
# loss_fn=. The first two through the quadratic model, taylor_onset through the
# gradient and curvature products at w* (the Taylor model).
NEEDS_QUADRATIC_MODEL = ("quadratic", "statdim_exact")
NEEDS_CURVATURE = (*NEEDS_QUADRATIC_MODEL, "taylor_onset")
AUTO = "auto"
AUTO_TOLERANCE = 0.005
AUTO_START = 50
AUTO_MAX_STEPS = 400
AUTO_STATE_VERSION = 1
# The regime's R(p*)/||w|| is read at this predictor's p*, as in the calibration set.
REGIME_METHOD = "paper"


class Pipeline:
    """Model + data -> curvature -> spectrum -> Prediction, each step computed once.

    Parameters
    ----------
    model
        The trained network; its selected weights are w* (a copy is taken).
    loss_fn, data
        The batch-mean loss and the training data, as for
        :class:`~pruning_limit.curvature.CurvatureOperator`; ``None`` when only closed
        forms of a given spectrum with a given eps are asked for.
    curvature
        ``"ggn"`` (default) or ``"hessian"``.
    params
        The tensors to prune (default: every Linear and Conv ``weight``).
    dtype, device, batch_size
        Of the curvature products and the batch losses (default float64: budgets near
        zero loss need it).
    exact_limit
        The exact spectrum and the dense quadratic model up to this D.
    policy, damping
        For eigenvalues <= 0, and the quadratic model's damping.

    Example
    -------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    >>> pipeline = Pipeline(model, torch.nn.CrossEntropyLoss(), (X, y), batch_size=10)
    >>> spectrum = pipeline.spectrum()
    >>> spectrum.method, spectrum.curvature, spectrum.dimension
    ('exact', 'ggn', 6)
    >>> pipeline.predict(spectrum, methods=("paper", "quadratic")).epsilon_source["batches"]
    4
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn=None,
        data=None,
        *,
        curvature: str = DEFAULT_CURVATURE,
        params: Iterable | None = None,
        dtype: torch.dtype | None = torch.float64,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        exact_limit: int = EXACT_LIMIT,
        policy: str = "abs",
        damping: float = 0.0,
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        check_policy(policy)
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.curvature = curvature
        self.selected = resolve_parameters(model, params)
        self.names = [name for name, _ in self.selected]
        self.parameters = [(name, tuple(p.shape)) for name, p in self.selected]
        self.weights = np.concatenate(
            [p.detach().cpu().double().numpy().reshape(-1) for _, p in self.selected]
        )
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self.exact_limit = exact_limit
        self.policy = policy
        self.damping = damping
        self._operator: CurvatureOperator | None = None
        self._model_loss: ModelLoss | None = None
        self._matrix: torch.Tensor | None = None
        self._quadratic: QuadraticModel | None = None
        self._taylor: TaylorModel | None = None

    @property
    def dimension(self) -> int:
        """D, the number of prunable weights."""
        return int(self.weights.size)

    @property
    def has_data(self) -> bool:
        """Whether training data and a loss were given (curvature and ``batch_std`` need them)."""
        return self.data is not None and self.loss_fn is not None

    def _options(self) -> dict:
        if not self.has_data:
            raise ValueError("the curvature and eps='batch_std' need data= and loss_fn=")
        return dict(
            params=self.names, dtype=self.dtype, device=self.device, batch_size=self.batch_size
        )

    @property
    def operator(self) -> CurvatureOperator:
        """The curvature operator, built on first use."""
        if self._operator is None:
            self._operator = CurvatureOperator(
                self.model, self.loss_fn, self.data, curvature=self.curvature, **self._options()
            )
        return self._operator

    def matrix(self, max_dimension: int | None = None, block: int = 64) -> torch.Tensor:
        """The dense curvature matrix, built at most once (D products)."""
        if self._matrix is None:
            limit = self.exact_limit if max_dimension is None else max_dimension
            self._matrix = self.operator.matrix(max_dimension=limit, block=block)
        return self._matrix

    def model_loss(self) -> ModelLoss:
        """The loss at w* over the data: the operator if built, else a plain (cheaper) one."""
        if self._operator is not None:
            return self._operator
        if self._model_loss is None:
            self._model_loss = ModelLoss(self.model, self.loss_fn, self.data, **self._options())
        return self._model_loss

    def spectrum(
        self, *, steps: int | str = 100, probes: int = 10, seed: int = 0, progress: bool = False,
        epsilon: str | float = BATCH_STD, auto_tolerance: float = AUTO_TOLERANCE,
        auto_start: int = AUTO_START, auto_max_steps: int = AUTO_MAX_STEPS, **slq_options,
    ) -> Spectrum:  # fmt: skip
        """The curvature's spectrum: exact when D <= ``exact_limit``, else SLQ
        (``steps``, ``probes``, ``seed`` and ``slq_options`` go to
        :func:`~pruning_limit.lanczos.slq`).

        ``steps="auto"``: m starts at ``auto_start`` and doubles until the ``paper``
        prediction p* (with the loss budget ``epsilon``) moves by at most
        ``auto_tolerance`` between m/2 and m steps, or m reaches ``auto_max_steps``.
        Each doubling re-runs the same Lanczos runs from the start (same seed and
        probes, so the first m steps are the same numbers; the total cost is at most
        twice the last run's); the m reached, every m tried with its change, and
        whether the tolerance was met are recorded in ``provenance["auto_steps"]``.
        With ``state_path`` (in ``slq_options``) the auto run keeps its state in that
        folder: ``auto.json`` (the m already tried, written after each) and the
        current m's SLQ state (``slq-mM``, see :func:`~pruning_limit.lanczos.slq`);
        ``resume=True`` continues an interrupted auto run from there (same model,
        data, eps, probes, seed and auto settings, or ``ValueError``).
        """
        if self.dimension <= self.exact_limit:
            return exact_spectrum_of(_WithMatrix(self), max_dimension=self.exact_limit)
        if steps == AUTO:
            return self._auto_spectrum(
                probes=probes, seed=seed, progress=progress, epsilon=epsilon,
                tolerance=auto_tolerance, start=auto_start, max_steps=auto_max_steps,
                **slq_options,
            )  # fmt: skip
        if isinstance(steps, str):
            raise ValueError(f"steps must be a positive integer or 'auto', got {steps!r}")
        return slq(
            self.operator, steps=steps, probes=probes, seed=seed, progress=progress, **slq_options
        )

    def _auto_spectrum(
        self, *, probes, seed, progress, epsilon, tolerance, start, max_steps,
        state_path=None, resume=False, **slq_options,
    ) -> Spectrum:  # fmt: skip
        if not (isinstance(start, int) and isinstance(max_steps, int) and 2 <= start <= max_steps):
            raise ValueError(
                f"steps='auto' needs integers 2 <= auto_start <= auto_max_steps, got "
                f"{start!r} and {max_steps!r}"
            )
        if not tolerance > 0:
            raise ValueError(f"auto_tolerance must be positive, got {tolerance!r}")
        eps, _ = self.budget(epsilon)
        state = _AutoState(
            state_path,
            {
                "auto_state_version": AUTO_STATE_VERSION,
                "curvature": self.curvature,
                "dimension": self.dimension,
                "policy": self.policy,
                "epsilon": eps,
                "probes": probes,
                "seed": seed,
                "tolerance": tolerance,
                "start": start,
                "max_steps": max_steps,
                "fingerprint": dict(getattr(self.operator, "fingerprint", None) or {}),
            },
            resume,
        )
        # Only m that did not end the search are saved: a resumed run takes the next one.
        trace = state.trace
        steps = start if not trace else min(2 * trace[-1]["steps"], max_steps)
        while True:
            spectrum = slq(
                self.operator, steps=steps, probes=probes, seed=seed, progress=progress,
                state_path=state.slq_path(steps), resume=state.path is not None,
                **slq_options,
            )  # fmt: skip
            estimate = predict_from_spectrum(
                spectrum, self.weights, eps, methods=("paper",), policy=self.policy,
                sensitivity=False,
            ).estimates["paper"]  # fmt: skip
            half = estimate.uncertainty.get("half_steps")
            change = None if half is None else abs(estimate.removal_fraction - half)
            trace.append(
                {"steps": spectrum.steps, "p": estimate.removal_fraction, "p_half_steps": half,
                 "change": change}
            )  # fmt: skip
            converged = change is not None and change <= tolerance
            # slq caps m at the active dimension: no more steps to take there.
            exhausted = spectrum.steps < steps or steps >= max_steps
            if converged or exhausted:
                break
            state.save(trace)
            steps = min(2 * steps, max_steps)
        spectrum.provenance["auto_steps"] = {
            "steps": spectrum.steps,
            "tolerance": tolerance,
            "converged": converged,
            "criterion": "|p*(m) - p*(m/2)| of the paper method, fraction removed",
            "epsilon": eps,
            "start": start,
            "max_steps": max_steps,
            "trace": trace,
            "resumed_after_steps": state.resumed_after,
        }
        state.remove()
        return spectrum

    def budget(self, epsilon: str | float = BATCH_STD) -> tuple[float, dict]:
        """eps and its record (:func:`~pruning_limit.budget.loss_budget`)."""
        if check_epsilon(epsilon) == REFERENCE:
            if not self.has_data:
                raise ValueError("epsilon='reference' needs data= and loss_fn=")
            return reference_epsilon(self.model, self.loss_fn, self.data)
        if epsilon == BATCH_STD:
            source = self.model_loss()
            return loss_budget(source, epsilon, dtype=source.dtype)
        if self.has_data:
            return loss_budget(self.model_loss(), epsilon, dtype=self.model_loss().dtype)
        return loss_budget(None, epsilon)

    def quadratic_model(self) -> QuadraticModel:
        """The quadratic model of the loss at w*, built once (dense up to ``exact_limit``)."""
        if self._quadratic is None:
            self._quadratic = QuadraticModel(
                _WithMatrix(self),
                self.weights,
                policy=self.policy,
                damping=self.damping,
                dense_limit=self.exact_limit,
            )
        return self._quadratic

    def taylor_model(self, points: int = DEFAULT_POINTS) -> TaylorModel:
        """The Taylor model of the one-shot loss rise at w*
        (:class:`~pruning_limit.onset.TaylorModel`), built once per ``points``: the
        gradient and ``points`` curvature products (from the dense matrix when the
        pipeline already holds it), no forward pass at a pruned point."""
        if self._taylor is None or self._taylor.points != points:
            curvature = self.operator if self._matrix is None else self._matrix
            gradient = self.model_loss().gradient()
            self._taylor = TaylorModel(curvature, self.weights, gradient, points=points)
        return self._taylor

    def taylor_onset(self, epsilon: str | float = BATCH_STD, points: int = DEFAULT_POINTS) -> float:
        """The one-shot loss-budget onset of the Taylor model at w*
        (:meth:`taylor_model`; the ``taylor_onset`` method of :meth:`predict`)."""
        eps, _ = self.budget(epsilon)
        return self.taylor_model(points).onset(eps)

    def fingerprint(self) -> dict:
        """Fingerprints of w*, the other parameters and buffers, and (given data) the data."""
        if self.has_data:
            return dict(self.model_loss().fingerprint)
        chosen = set(self.names)
        return {
            "weights": weights_fingerprint(self.selected),
            "other": weights_fingerprint(
                [(n, t) for n, t in self.model.named_parameters() if n not in chosen]
                + list(self.model.named_buffers())
            ),
        }

    def check_spectrum(self, spectrum: Spectrum, allow_mismatch: bool = False) -> list[str]:
        """Refuse a Spectrum of other tensors (D, names, shapes), or of other weights or
        data (their fingerprints), unless ``allow_mismatch``; the notes to record."""
        self.check_tensors(spectrum)
        return self._check_fingerprint(spectrum, allow_mismatch)

    def check_tensors(self, spectrum: Spectrum) -> None:
        """Refuse a Spectrum of other tensors than this pipeline's (D, names, shapes)."""
        if spectrum.dimension != self.dimension:
            raise ValueError(
                f"the spectrum was computed for another model: it has D = {spectrum.dimension} "
                f"but the model's prunable weights number {self.dimension}"
            )
        if spectrum.parameters:
            theirs = [(p.name, tuple(p.shape)) for p in spectrum.parameters]
            if theirs != self.parameters:
                raise ValueError(
                    f"the spectrum was computed for another model: its parameters {theirs} do "
                    f"not match the model's {self.parameters}"
                )

    def _check_fingerprint(self, spectrum: Spectrum, allow_mismatch: bool) -> list[str]:
        if not spectrum.fingerprint:
            note = (
                "the spectrum records no fingerprint of its weights and data (a plain matrix's, "
                "or written by an older version): not checked against this model and data"
            )
            warnings.warn(note, UserWarning, stacklevel=5)
            return [note]
        notes = []
        current = self.fingerprint()
        differs = describe_mismatch(spectrum.fingerprint, current)
        if differs:
            what = " and ".join(differs)
            if not allow_mismatch:
                raise ValueError(
                    f"the spectrum was computed at other {what} than the ones given (their "
                    "fingerprints differ), so its limit would be another network's: recompute "
                    "it, or pass allow_mismatch=True (--allow-spectrum-mismatch) to use it anyway"
                )
            notes.append(f"the spectrum was computed at other {what}: used as allowed")
        if "data" not in current:
            notes.append("no data given: the spectrum's data were not checked")
        return notes

    def predict(
        self,
        spectrum: Spectrum | None = None,
        *,
        epsilon: str | float = BATCH_STD,
        methods: Iterable[str] = DEFAULT_METHODS,
        card: dict | None = None,
        seed: int = 0,
        allow_mismatch: bool = False,
        progress: bool = False,
        steps: int | str = 100,
        probes: int = 10,
        auto_max_steps: int = AUTO_MAX_STEPS,
        **options,
    ) -> Prediction:
        """The Prediction from ``spectrum`` (default: :meth:`spectrum` with ``steps``,
        ``probes`` and SLQ probes from ``seed``; ``steps="auto"`` reads p* at this
        ``epsilon``, up to m = ``auto_max_steps``), eps and w*.

        With training data and a loss, the Prediction also holds the network's
        :class:`~pruning_limit.regime.Regime` (one pass over the data), measured at
        ``paper``'s p* (computed if not asked for) with the model ``card`` when given
        (L1 strength, optimiser); it selects the calibrated intervals
        (:meth:`~pruning_limit.prediction.Prediction.calibrated`).
        ``seed`` also seeds ``statdim_exact``'s samples; ``allow_mismatch`` accepts a
        spectrum of other weights or data (:meth:`check_spectrum`). ``options`` go to
        :func:`~pruning_limit.limit.predict_from_spectrum`.
        """
        methods = check_methods(methods)
        if spectrum is None:
            spectrum = self.spectrum(
                steps=steps, probes=probes, seed=seed, progress=progress, epsilon=epsilon,
                auto_start=min(AUTO_START, auto_max_steps), auto_max_steps=auto_max_steps,
            )  # fmt: skip
            notes = []
        else:
            notes = self.check_spectrum(spectrum, allow_mismatch)
        eps, source = self.budget(epsilon)
        needs_quadratic = set(NEEDS_QUADRATIC_MODEL) & set(methods)
        prediction = predict_from_spectrum(
            spectrum,
            self.weights,
            eps,
            methods=methods,
            policy=self.policy,
            curvature=self.quadratic_model() if needs_quadratic else None,
            taylor=self.taylor_model() if "taylor_onset" in methods else None,
            epsilon_source=source,
            damping=self.damping,
            dense_limit=self.exact_limit,
            parameters=self.parameters,
            seed=seed,
            progress=progress,
            **options,
        )
        prediction.distributed = distributed.record()
        if self.has_data:
            prediction.regime = self.regime(prediction, spectrum, card).to_dict()
        prediction.notes.extend(notes)
        return prediction

    def regime(self, prediction: Prediction, spectrum: Spectrum, card: dict | None = None):
        """The network's :class:`~pruning_limit.regime.Regime` for ``prediction``."""
        if REGIME_METHOD in prediction.estimates:
            removal_fraction = prediction.removal_fraction(REGIME_METHOD)
        else:
            removal_fraction = closed_form_limit(
                REGIME_METHOD, spectrum, self.weights, prediction.epsilon, self.policy
            )
        return measure_regime(
            self.model, self.loss_fn, self.data,
            removal_fraction=removal_fraction, removal_fraction_method=REGIME_METHOD,
            card=card, curvature=prediction.curvature,
            epsilon_source=prediction.epsilon_source, params=self.names,
        )  # fmt: skip


class _WithMatrix:
    """The pipeline's operator, with ``matrix()`` answered from the pipeline's one copy."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self._pipeline.operator, name)

    def matrix(self, max_dimension: int | None = None, block: int = 64) -> torch.Tensor:
        return self._pipeline.matrix(max_dimension, block)


class _AutoState:
    """A ``steps="auto"`` run's state folder (none when ``path`` is None): ``auto.json``
    holds the configuration and the m already tried; ``slq-mM`` the SLQ state of the m
    in progress. Rank 0 alone reads and writes it; the m tried are broadcast."""

    def __init__(self, path, config: dict, resume: bool) -> None:
        self.path = None if path is None else Path(path)
        self.config = json.loads(json.dumps(config))  # as it reads back from the file
        self.trace: list[dict] = []
        main = distributed.is_main()
        if self.path is not None and main:
            if resume:
                self.trace = self._load()
            else:
                remove_state(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
        if self.path is not None:
            self.trace = distributed.broadcast_object(self.trace, "the auto-steps state")
        self.resumed_after = self.trace[-1]["steps"] if self.trace else None

    def _load(self) -> list[dict]:
        index = self.path / "auto.json"
        if not index.exists():
            if (self.path / "index.json").exists():
                raise ValueError(
                    f"{self.path} holds the state of an SLQ run with a fixed number of steps, "
                    "not of a steps='auto' run: resume it with those steps, or start over"
                )
            return []  # killed before the first m finished: nothing to continue
        try:
            saved = json.loads(index.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the auto-steps state {index}: {error}") from error
        config = saved.get("config", {})
        differs = describe_mismatch(config.get("fingerprint") or {}, self.config["fingerprint"])
        if differs:
            raise ValueError(
                f"cannot resume from {self.path}: it was computed at other "
                f"{' and '.join(differs)} than this run's (their fingerprints differ); resume "
                "with the same model and data, or start over"
            )
        if config != self.config:
            differing = sorted(k for k in set(config) | set(self.config)
                               if config.get(k) != self.config.get(k))  # fmt: skip
            raise ValueError(
                f"the auto-steps state {self.path} belongs to another run (differs in: "
                f"{', '.join(differing)}); remove it or run without resume"
            )
        return list(saved["trace"])

    def slq_path(self, steps: int) -> Path | None:
        return None if self.path is None else self.path / f"slq-m{steps}"

    def save(self, trace: list[dict]) -> None:
        if self.path is None or not distributed.is_main():
            return
        index = self.path / "auto.json"
        tmp = index.with_name(index.name + ".tmp")
        tmp.write_text(json.dumps({"config": self.config, "trace": trace}))
        tmp.replace(index)

    def remove(self) -> None:
        if self.path is not None and distributed.is_main():
            remove_state(self.path)


@distributed.collective
def predict_limit(
    model,
    spectrum: Spectrum | None = None,
    *,
    epsilon: str | float = BATCH_STD,
    methods: Iterable[str] = DEFAULT_METHODS,
    policy: str = "abs",
    data=None,
    loss_fn=None,
    curvature: str | None = None,
    params: Iterable | None = None,
    dtype=None,
    device: str = "cpu",
    batch_size: int | None = None,
    damping: float = 0.0,
    dense_limit: int = EXACT_LIMIT,
    card: dict | None = None,
    seed: int = 0,
    allow_mismatch: bool = False,
    progress: bool = False,
    steps: int | str = 100,
    probes: int = 10,
    auto_max_steps: int = AUTO_MAX_STEPS,
    **options,
) -> Prediction:
    """Predict how large a fraction p of a model's prunable weights can be removed.

    Parameters
    ----------
    model
        The trained ``torch.nn.Module``; its prunable weights (default: every Linear and
        Conv ``weight``, or the Spectrum's tensors) are w*.
    spectrum
        A Spectrum of the same tensors (checked: D and every name and shape) computed at
        the same weights and data (checked: their fingerprints, which the Spectrum
        records; the data only when ``data`` is given). ``None``: computed here from
        ``data`` and ``loss_fn`` (exact for D <= :data:`EXACT_LIMIT`, else SLQ:
        :meth:`Pipeline.spectrum`).
    epsilon
        ``"batch_std"``, ``"reference"`` (the reference code's: np.std with ddof 0 of
        the batch-128 mean losses, eval mode; recorded as ``kind="reference"``) (both
        need ``data`` and ``loss_fn``) or a positive number.
    methods
        Any of :data:`METHODS`; ``quadratic``, ``statdim_exact`` and ``taylor_onset``
        need ``data`` and ``loss_fn`` (they use the curvature itself, not only its
        spectrum; ``taylor_onset`` also the gradient, and predicts the one-shot
        loss-budget onset, not the transition: :mod:`~pruning_limit.onset`).
    policy
        ``"abs"`` or ``"flat"``, for eigenvalues <= 0.
    data, loss_fn
        As for :class:`~pruning_limit.curvature.CurvatureOperator`.
    curvature
        ``"hessian"`` or ``"ggn"``; default: the Spectrum's (a mismatch is an error),
        else ``"ggn"``: PSD, so no eigenvalue policy is needed, the quadratic model is
        convex, and SLQ's delta/D converges by m = 50 at the c of the predicted limit
        where the Hessian's (policy ``abs``) needed m = 200
        (``benchmarks/delta_accuracy.py``).
    params
        The tensors to prune (default: the Spectrum's, else the prunable weights).
    dtype, device, batch_size
        For the operator built here (default dtype: float64, which budgets near
        zero loss need).
    damping, dense_limit
        For the quadratic model (see :class:`~pruning_limit.quadratic.QuadraticModel`).
    card
        The model card (:func:`~pruning_limit.training.load_checkpoint`), if any: the
        regime records the L1 strength and optimiser from it. With ``data`` and
        ``loss_fn`` the Prediction holds the network's regime
        (:attr:`~pruning_limit.prediction.Prediction.regime`), which selects its
        calibrated intervals.
    seed
        Seeds what draws random numbers: SLQ's probes when the spectrum is computed here,
        ``statdim_exact``'s samples. Recorded in ``Prediction.seeds``; an exact or given
        spectrum with closed forms uses none (``seeds`` is then empty, or holds the
        given spectrum's seed).
    allow_mismatch
        Use a spectrum whose fingerprints say it was computed at other weights or other
        data (recorded in the Prediction's notes); by default that is refused.
    progress
        Progress bars for the long steps (SLQ, the dense matrix, the quadratic model).
    steps, probes, auto_max_steps
        Lanczos steps and probes of the SLQ spectrum computed here (no ``spectrum``,
        D > ``dense_limit``); ``steps="auto"``: m doubles until ``paper``'s p* settles
        or reaches ``auto_max_steps`` (:meth:`Pipeline.spectrum`), the m reached in
        the spectrum's provenance.
    options
        Passed to :func:`predict_from_spectrum` (``confidence``, ``sensitivity``,
        ``tolerance``, ``statdim_samples``, ``curve_points``).

    Raises
    ------
    ValueError
        Unknown method, a Spectrum that does not match the model (tensors, or the
        fingerprints of weights or data without ``allow_mismatch``), missing data for a
        method or for ``"batch_std"``, eps <= 0, inf or NaN.

    Example
    -------
    >>> import torch, pruning_limit as pl
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    >>> X, y = torch.randn(128, 4), torch.randint(0, 3, (128,))
    >>> prediction = pl.predict_limit(model, data=(X, y), loss_fn=torch.nn.CrossEntropyLoss(),
    ...                               methods=("paper", "trace_bound"), batch_size=32)
    >>> prediction.curvature, prediction.epsilon_source["kind"]
    ('ggn', 'batch_std')
    >>> 0.0 <= prediction.removal_fraction("trace_bound") <= prediction.removal_fraction("paper")
    True
    """
    methods = check_methods(methods)
    check_policy(policy)
    check_epsilon(epsilon)
    if curvature is not None and curvature not in CURVATURES:
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    if spectrum is not None:
        if curvature is not None and curvature != spectrum.curvature:
            raise ValueError(
                f"curvature={curvature!r} but the spectrum is of the {spectrum.curvature!r}"
            )
        curvature = spectrum.curvature
    if params is None and spectrum is not None and spectrum.parameters:
        params = [p.name for p in spectrum.parameters]
    try:
        pipeline = Pipeline(
            model,
            loss_fn,
            data,
            curvature=curvature or DEFAULT_CURVATURE,
            params=params,
            dtype=torch.float64 if dtype is None else dtype,
            device=device,
            batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            exact_limit=dense_limit,
            policy=policy,
            damping=damping,
        )
    except ValueError as error:
        if spectrum is None:
            raise
        raise ValueError(
            f"the spectrum was computed for another model: it does not match the model: {error}"
        ) from error
    check_statdim_dimension(methods, pipeline.dimension)
    if spectrum is not None:
        pipeline.check_tensors(spectrum)
    needs_data = [m for m in methods if m in NEEDS_CURVATURE]
    if epsilon in (BATCH_STD, REFERENCE):
        needs_data.append(f"epsilon={epsilon!r}")
    if spectrum is None:
        needs_data.append("spectrum=None")
    if needs_data and not pipeline.has_data:
        raise ValueError(f"{', '.join(needs_data)} need data= and loss_fn= (the training data)")
    return pipeline.predict(
        spectrum, epsilon=epsilon, methods=methods, card=card, seed=seed,
        allow_mismatch=allow_mismatch, progress=progress, steps=steps, probes=probes,
        auto_max_steps=auto_max_steps, **options,
    )  # fmt: skip


@distributed.collective
def estimate_spectrum(
    model: torch.nn.Module,
    loss_fn,
    data,
    *,
    steps: int | str = 100,
    probes: int = 10,
    curvature: str = DEFAULT_CURVATURE,
    params: Iterable | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    epsilon: str | float = BATCH_STD,
    auto_tolerance: float = AUTO_TOLERANCE,
    auto_start: int = AUTO_START,
    auto_max_steps: int = AUTO_MAX_STEPS,
    **slq_options,
) -> Spectrum:
    """SLQ spectrum of the GGN (or Hessian) of ``loss_fn`` over ``data`` at the model's weights.

    Builds a :class:`~pruning_limit.curvature.CurvatureOperator` and calls
    :func:`~pruning_limit.lanczos.slq`; see both for the parameters. ``slq_options`` go
    to :func:`~pruning_limit.lanczos.slq` (``block_size``, ``state_path``, ``resume``,
    ``checkpoint_every``, ``progress``, ...). ``steps="auto"``: m doubles from
    ``auto_start`` until the ``paper`` p* at the budget ``epsilon`` moves by at most
    ``auto_tolerance`` between m/2 and m, or m reaches ``auto_max_steps``
    (:meth:`Pipeline.spectrum`; resumable with ``state_path`` and ``resume``); the m
    reached is ``provenance["auto_steps"]["steps"]``.

    Example
    -------
    >>> import torch, pruning_limit as pl
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> s = pl.estimate_spectrum(model, torch.nn.CrossEntropyLoss(), (X, y), steps=20, probes=2,
    ...                          dtype=torch.float64, device="cpu", progress=False)
    >>> s.dimension, s.num_probes, s.steps, s.curvature
    (56, 2, 20, 'ggn')
    """
    pipeline = Pipeline(
        model, loss_fn, data, curvature=curvature, params=params, dtype=dtype, device=device,
        batch_size=batch_size,
    )  # fmt: skip
    if steps == AUTO:
        return pipeline._auto_spectrum(
            probes=probes, seed=seed, epsilon=epsilon, tolerance=auto_tolerance,
            start=auto_start, max_steps=auto_max_steps,
            **{"progress": True, **slq_options},
        )  # fmt: skip
    if isinstance(steps, str):
        raise ValueError(f"steps must be a positive integer or 'auto', got {steps!r}")
    return slq(pipeline.operator, steps=steps, probes=probes, seed=seed, **slq_options)


@distributed.collective
def exact_spectrum(
    model: torch.nn.Module,
    loss_fn,
    data,
    *,
    curvature: str = DEFAULT_CURVATURE,
    params: Iterable | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_dimension: int = EXACT_LIMIT,
) -> Spectrum:
    """All eigenvalues of the curvature matrix (GGN by default), as a one-probe Spectrum.

    C is built column by column from products with unit vectors, symmetrised,
    its identically-zero rows counted and removed, and the rest diagonalised in
    float64 (``eigvalsh``). Each eigenvalue gets weight 1/(D - z), so every
    ``trace_function`` is exact. Raises ``ValueError`` when D > ``max_dimension``.

    Example
    -------
    >>> import torch, pruning_limit as pl
    >>> model = torch.nn.Linear(3, 1, bias=False).double()
    >>> X = torch.eye(3, dtype=torch.float64)
    >>> s = pl.exact_spectrum(model, torch.nn.MSELoss(), (X, torch.zeros(3, 1).double()))
    >>> s.nodes.round(6).tolist()   # GGN of the mean squared error: 2 X^T X / 3
    [[0.666667, 0.666667, 0.666667]]
    """
    started = time.perf_counter()
    pipeline = Pipeline(
        model, loss_fn, data, curvature=curvature, params=params, dtype=dtype, device=device,
        batch_size=batch_size, exact_limit=max_dimension,
    )  # fmt: skip
    return exact_spectrum_of(pipeline.operator, max_dimension=max_dimension, started=started)
