"""pruning-limit: predict how large a fraction of a network's weights global one-shot
magnitude pruning can remove, from the curvature of the loss, and check it by pruning.

Data flow (ARCHITECTURE.md): model + data -> CurvatureOperator -> Spectrum ->
Prediction -> Validation -> Comparison / StudyResult. Fractions are always the fraction
*removed* (``amount`` in torch.nn.utils.prune); the fraction kept is 1 - p.

The names below are the everyday ones; everything else stays reachable through its
module (``pruning_limit.statdim.statistical_dimension``, ``pruning_limit.pruning.sweep``...).

>>> import pruning_limit as pl
>>> sorted(pl.__all__)[:3]
['Comparison', 'CurvatureOperator', 'Dataset']
"""

import warnings

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

from . import reference
from ._version import __version__
from .batches import EmptyDataError
from .budget import loss_budget
from .comparison import Comparison, compare
from .curvature import CurvatureOperator
from .datasets import Dataset, load_dataset
from .lanczos import slq
from .limit import predict_from_spectrum, pruned_norm
from .models import build_model, model_spec
from .parameters import NoPrunableParameterError
from .pipeline import Pipeline, estimate_spectrum, exact_spectrum, predict_limit
from .prediction import MethodEstimate, Prediction
from .pruning import kept_mask, sweep
from .spectrum import Spectrum
from .study import StudyResult, run_study
from .study_config import load_config
from .training import TrainResult, load_checkpoint, train
from .validation import Validation, validate
from .variants import FinetuneBudget

__all__ = [
    "__version__",
    # data and models
    "Dataset",
    "load_dataset",
    "model_spec",
    "build_model",
    "train",
    "TrainResult",
    "load_checkpoint",
    # curvature and spectrum
    "CurvatureOperator",
    "Spectrum",
    "estimate_spectrum",
    "exact_spectrum",
    "slq",
    # prediction
    "Pipeline",
    "predict_limit",
    "predict_from_spectrum",
    "loss_budget",
    "pruned_norm",
    "Prediction",
    "MethodEstimate",
    "reference",  # the reference code's eps and pipeline (epsilon="reference", methods)
    # validation
    "kept_mask",
    "sweep",
    "validate",
    "FinetuneBudget",
    "Validation",
    "compare",
    "Comparison",
    # study
    "load_config",
    "run_study",
    "StudyResult",
    # errors
    "EmptyDataError",
    "NoPrunableParameterError",
]
