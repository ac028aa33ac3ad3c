"""pruning-limit: predict how large a fraction of a network's weights global one-shot
magnitude pruning can remove, from the curvature of the loss, and check it by pruning.

Data flow: model + data -> CurvatureOperator -> Spectrum -> Prediction -> Validation.
Fractions are always the fraction *removed* (``amount`` in torch.nn.utils.prune);
the fraction kept is 1 - p.
"""

import warnings
from importlib.metadata import PackageNotFoundError, version

# Forward-mode AD (torch.func.jvp, which the GGN products use) registers torch's jvp
# decompositions on first use by calling torch.jit.script, and each call warns that
# TorchScript is deprecated (a FutureWarning from torch 2.14, shown on every run): torch's
# own doing, nothing a user can act on. Registering them here, with that one warning
# silenced, keeps it out of the output; any other warning still shows.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except ImportError:  # a torch without it has nothing to register
        pass

from .batches import Batches, EmptyDataError, as_batches
from .datasets import Dataset, digits, intrinsic_dimension, load_dataset, manifold, mnist1d
from .geometry import (
    orthogonal_statistical_dimension,
    quadrature_bounds,
    statdim_exact,
    statistical_dimension,
    trace_bound,
)
from .hessian import (
    CurvatureOperator,
    NoPrunableParameterError,
    prunable_parameters,
    resolve_parameters,
)
from .lanczos import (
    estimate_spectrum,
    exact_spectrum,
    exact_spectrum_of,
    hutchinson_trace,
    slq,
    top_eigenvalues,
)
from .limit import (
    MethodEstimate,
    Prediction,
    loss_budget,
    predict_from_spectrum,
    predict_limit,
    pruned_norm,
    statistical_dimension_curve,
)
from .models import build_model, count_parameters, model_spec
from .pruning import (
    AccuracyDrop,
    AccuracyDropBound,
    LossBudget,
    SweepPoint,
    accuracy_interval,
    classification_metrics,
    limit_from_sweep,
    limit_interval,
    magnitude_mask,
    number_to_prune,
    pruned,
    sweep,
)
from .quadratic import QuadraticModel, magnitude_pruned_mask, quadratic_limit, quadratic_refit
from .spectrum import ParameterInfo, Spectrum
from .study import StudyResult, load_config, run_study
from .training import TrainResult, evaluate, load_checkpoint, save_checkpoint, train
from .validation import Comparison, FinetuneBudget, Validation, compare, validate

try:
    __version__ = version("pruning-limit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Batches",
    "CurvatureOperator",
    "EmptyDataError",
    "NoPrunableParameterError",
    "ParameterInfo",
    "Spectrum",
    "as_batches",
    "estimate_spectrum",
    "exact_spectrum",
    "exact_spectrum_of",
    "hutchinson_trace",
    "prunable_parameters",
    "resolve_parameters",
    "slq",
    "top_eigenvalues",
    # pruning.py
    "AccuracyDrop",
    "AccuracyDropBound",
    "LossBudget",
    "SweepPoint",
    "accuracy_interval",
    "classification_metrics",
    "limit_from_sweep",
    "limit_interval",
    "magnitude_mask",
    "number_to_prune",
    "pruned",
    "sweep",
    # datasets.py, models.py, training.py
    "Dataset",
    "TrainResult",
    "build_model",
    "count_parameters",
    "digits",
    "evaluate",
    "intrinsic_dimension",
    "load_checkpoint",
    "load_dataset",
    "manifold",
    "mnist1d",
    "model_spec",
    "save_checkpoint",
    "train",
    # geometry.py, limit.py, quadratic.py
    "MethodEstimate",
    "Prediction",
    "QuadraticModel",
    "loss_budget",
    "magnitude_pruned_mask",
    "orthogonal_statistical_dimension",
    "predict_from_spectrum",
    "predict_limit",
    "pruned_norm",
    "quadratic_limit",
    "quadratic_refit",
    "quadrature_bounds",
    "statdim_exact",
    "statistical_dimension",
    "statistical_dimension_curve",
    "trace_bound",
    # validate.py, study.py (plots.py: pruning_limit.plots)
    "Comparison",
    "FinetuneBudget",
    "StudyResult",
    "Validation",
    "compare",
    "load_config",
    "run_study",
    "validate",
]
