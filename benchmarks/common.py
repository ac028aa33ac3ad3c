"""What every benchmark shares: workloads, timing, peak memory, the JSON result file.

Workloads
---------
All data are synthetic, generated from a fixed seed, so every run of every script
sees the same numbers and nothing is downloaded. Labels come from a fixed random
teacher network, so the tasks are learnable (a model trained on them has a
realistic, not a random, curvature).

- ``mlp``: LeNet-300-100 (784-300-100-10, ReLU), 266,200 prunable weights, on
  MNIST-shaped vectors: the classic model of the magnitude-pruning literature.
- ``cnn``: three 3x3 convolutions (16, 32, 64 channels, each followed by 2x2 max
  pooling) and two linear layers (1024-80-10) on CIFAR-shaped images, 106,192
  prunable weights.
- ``tiny``: a 32-32-16-10 MLP (1,696 weights), trained for a few hundred Adam
  steps: small enough for the exact spectrum, the ground truth of the accuracy
  comparisons.
- ``mlp_of_dimension``: 256-h-h-10 MLPs with h chosen to give a requested D.
- ``resnet18``: the CIFAR variant of ResNet-18 (3x3 stem, no max pooling, four
  stages of two BasicBlocks, BatchNorm), 11,164,352 prunable weights, written with
  plain ``torch.nn``.

Every parameter that is not prunable (biases, BatchNorm affine parameters) has
``requires_grad=False``. The package acts on the prunable weights only; PyHessian
and hessian-eigenthings act on every parameter that requires a gradient, so this
is what makes all tools work on the same D x D matrix.

Timing
------
:func:`time_interleaved` runs the tasks round-robin (one call of each per round, the
anchor among them), so that the noise of a shared machine hits all of them alike,
and reports per-round ratios to the anchor. Report medians of those ratios, never
absolute times, as the result of a comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA_VERSION = 1
SEED = 0
BATCH_SIZE = 256

# Import name, distribution name, and what a user would call it.
BASELINES = {
    "pyhessian": ("pyhessian", "pyhessian"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch"),
    "hessian_eigenthings": ("hessian_eigenthings", "hessian-eigenthings"),
}


# -- command line ----------------------------------------------------------------------


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--device``, ``--results-dir``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats: runs end to end on a CPU in under two minutes",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when torch sees it, else the CPU",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where NAME-DEVICE.json goes (default: {RESULTS_DIR})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, OpenMP with more threads "
        "than free cores made single timings swing 10-100x; 0 keeps torch's default)",
    )
    return parser


def configure(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the device that ``--device`` names."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` gives CUDA when available, else the CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def baseline_status(key: str) -> str | None:
    """``None`` when the baseline can be imported, else the reason it is skipped."""
    module, distribution = BASELINES[key]
    if importlib.util.find_spec(module) is None:
        return f"{distribution} is not installed (pip install '.[baselines]')"
    return None


# -- data and models -----------------------------------------------------------------


@dataclass
class Workload:
    """A model, its loss and a fixed dataset cut into batches on one device."""

    name: str
    model: nn.Module
    loss_fn: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    batch_size: int
    device: torch.device
    description: dict = field(default_factory=dict)

    @property
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (self.inputs[i : i + self.batch_size], self.targets[i : i + self.batch_size])
            for i in range(0, self.inputs.shape[0], self.batch_size)
        ]

    @property
    def weights(self) -> list[nn.Parameter]:
        """The prunable weights, in the order every tool flattens them."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def dimension(self) -> int:
        return sum(p.numel() for p in self.weights)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "total_parameters": sum(p.numel() for p in self.model.parameters()),
            "num_samples": int(self.inputs.shape[0]),
            "input_shape": list(self.inputs.shape[1:]),
            "batch_size": self.batch_size,
            "num_batches": len(self.batches),
            "dtype": str(self.inputs.dtype).replace("torch.", ""),
            **self.description,
        }


def synthetic_classification(
    num_samples: int, input_shape: tuple[int, ...], classes: int = 10, seed: int = SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a fixed random two-layer tanh teacher."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, *input_shape, generator=generator)
    flat = inputs.reshape(num_samples, -1)
    hidden = torch.randn(flat.shape[1], 64, generator=generator) / math.sqrt(flat.shape[1])
    readout = torch.randn(64, classes, generator=generator)
    targets = (torch.tanh(flat @ hidden) @ readout).argmax(dim=1)
    return inputs, targets


def freeze_non_prunable(model: nn.Module) -> nn.Module:
    """Leave ``requires_grad`` on the Linear/Conv weights only (see the module docstring)."""
    prunable = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in prunable)
    return model


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def small_cnn(channels: tuple[int, ...] = (16, 32, 64), hidden: int = 80) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = 3
    for width in channels:
        layers += [nn.Conv2d(fan_in, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        fan_in = width
    side = 32 // 2 ** len(channels)
    layers += [
        nn.Flatten(),
        nn.Linear(fan_in * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, fan_in: int, fan_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(fan_in, fan_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(fan_out)
        self.conv2 = nn.Conv2d(fan_out, fan_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(fan_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or fan_in != fan_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(fan_in, fan_out, 1, stride=stride, bias=False), nn.BatchNorm2d(fan_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (He et al. 2016, CIFAR variant): 11.2M parameters."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, fan_in = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(fan_in, width, stride), BasicBlock(width, width, 1))
            )
            fan_in = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def _workload(name, model, inputs, targets, device, batch_size, description) -> Workload:
    model = freeze_non_prunable(model).to(device).eval()
    return Workload(
        name=name,
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        inputs=inputs.to(device),
        targets=targets.to(device),
        batch_size=batch_size,
        device=device,
        description=description,
    )


def mlp_workload(
    device: torch.device,
    num_samples: int = 2048,
    hidden: tuple[int, ...] = (300, 100),
    batch_size: int = BATCH_SIZE,
) -> Workload:
    """LeNet-300-100 (or narrower ``hidden`` for quick runs) on 784-dimensional inputs."""
    torch.manual_seed(SEED)
    inputs, targets = synthetic_classification(num_samples, (784,))
    widths = [784, *hidden, 10]
    return _workload(
        "mlp",
        mlp(widths),
        inputs,
        targets,
        device,
        batch_size,
        {"architecture": "MLP " + "-".join(map(str, widths)) + ", ReLU"},
    )


def cnn_workload(
    device: torch.device,
    num_samples: int = 2048,
    channels: tuple[int, ...] = (16, 32, 64),
    hidden: int = 80,
    batch_size: int = BATCH_SIZE,
) -> Workload:
    """The small CNN on 3x32x32 images."""
    torch.manual_seed(SEED)
    inputs, targets = synthetic_classification(num_samples, (3, 32, 32))
    return _workload(
        "cnn",
        small_cnn(channels, hidden),
        inputs,
        targets,
        device,
        batch_size,
        {"architecture": f"CNN conv3x3 {list(channels)} + maxpool, linear -> {hidden} -> 10"},
    )


def tiny_workload(
    device: torch.device, num_samples: int = 1024, train_steps: int = 300
) -> Workload:
    """A 32-32-16-10 MLP trained to near its minimum: D = 1,696, exact spectrum cheap."""
    torch.manual_seed(SEED)
    inputs, targets = synthetic_classification(num_samples, (32,))
    model = mlp([32, 32, 16, 10])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(train_steps):
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
    with torch.no_grad():
        final_loss = float(loss_fn(model(inputs), targets))
    return _workload(
        "tiny",
        model,
        inputs,
        targets,
        device,
        BATCH_SIZE,
        {
            "architecture": "MLP 32-32-16-10, ReLU",
            "training": f"{train_steps} full-batch Adam steps, lr 1e-2",
            "train_loss": final_loss,
        },
    )


def mlp_of_dimension(
    device: torch.device, dimension: int, num_samples: int, batch_size: int = BATCH_SIZE
) -> Workload:
    """A 256-h-h-10 MLP whose weight count is closest to ``dimension``."""
    # 256 h + h^2 + 10 h = D
    width = max(1, round((-266 + math.sqrt(266**2 + 4 * dimension)) / 2))
    torch.manual_seed(SEED)
    inputs, targets = synthetic_classification(num_samples, (256,))
    widths = [256, width, width, 10]
    return _workload(
        f"mlp_d{dimension}",
        mlp(widths),
        inputs,
        targets,
        device,
        batch_size,
        {
            "architecture": "MLP " + "-".join(map(str, widths)) + ", ReLU",
            "target_dimension": dimension,
        },
    )


def resnet18_workload(device: torch.device, num_samples: int, batch_size: int) -> Workload:
    """ResNet-18 on CIFAR-shaped synthetic images (BatchNorm on its running statistics)."""
    torch.manual_seed(SEED)
    inputs, targets = synthetic_classification(num_samples, (3, 32, 32))
    return _workload(
        "resnet18",
        ResNet18(),
        inputs,
        targets,
        device,
        batch_size,
        {"architecture": "ResNet-18 (CIFAR variant, BasicBlock, BatchNorm in eval mode)"},
    )


def full_data_gradient(workload: Workload) -> Callable[[], list[torch.Tensor]]:
    """The anchor: one gradient of the full-data mean loss by plain autograd, batch by batch."""
    batches = workload.batches
    total = workload.inputs.shape[0]

    def gradient() -> list[torch.Tensor]:
        weights = workload.weights
        summed = [torch.zeros_like(w) for w in weights]
        for inputs, targets in batches:
            loss = workload.loss_fn(workload.model(inputs), targets) * (inputs.shape[0] / total)
            for acc, g in zip(summed, torch.autograd.grad(loss, weights)):
                acc += g
        return summed

    return gradient


# -- timing --------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    tasks: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device,
) -> dict[str, list[float]]:
    """Wall seconds of each task, ``repeats`` rounds, one call of every task per round.

    Interleaving spreads slow phases of a shared machine over all tasks instead of
    concentrating them on whichever ran during them.

    Each task is called ``warmup`` times first (lazy initialisation, allocator,
    autograd caches). Tasks run in a rotated order from round to round so that none
    always follows the same neighbour.
    """
    names = list(tasks)
    for _ in range(warmup):
        for name in names:
            tasks[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            synchronize(device)
            start = time.perf_counter()
            tasks[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: list[float], anchor: list[float], per: float = 1.0) -> float:
    """median(times) / per / median(anchor): the cost relative to the anchor.

    A ratio of medians, not a median of per-round ratios: on a shared machine a
    slowdown burst that hits the anchor in one round would otherwise distort every
    ratio of that round.
    """
    return float(np.median(times)) / per / float(np.median(anchor))


def ratio_of_minimums(times: list[float], anchor: list[float], per: float = 1.0) -> float:
    """min(times) / per / min(anchor): the same comparison under the least interference."""
    return float(np.min(times)) / per / float(np.min(anchor))


def timing_summary(times: list[float]) -> dict:
    return {
        "seconds_median": float(np.median(times)),
        "seconds_min": float(np.min(times)),
        "seconds": [float(t) for t in times],
    }


# -- memory --------------------------------------------------------------------------


def _status_bytes(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory used by the code in a ``with`` block, above what was in use before it.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the caching
    allocator's reserve). CPU (Linux): the kernel's peak resident set size (VmHWM,
    reset on entry through /proc/self/clear_refs, so it costs nothing while the
    block runs) minus the resident set at entry; freed heap memory is handed back
    to the OS first (``malloc_trim``) so that one measurement does not hide in the
    previous one's leftovers. Elsewhere: ``ru_maxrss`` of the whole process, which
    cannot be reset (``method`` says which).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        self._start = 0
        if self.device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above entry"
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _release_freed_memory()
        if _reset_peak_rss():
            self.method = "peak RSS (VmHWM, reset at entry) above RSS at entry"
            self._start = _status_bytes("VmRSS")
        else:
            self.method = "ru_maxrss of the whole process (not resettable)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self.method.startswith("peak RSS"):
            self.peak_bytes = _status_bytes("VmHWM") - self._start
        else:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def to_json(self) -> dict:
        return {"peak_mib": self.peak_bytes / 2**20, "method": self.method}


# -- provenance and the result file --------------------------------------------------


def machine_info(device: torch.device) -> dict:
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": (
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            if hasattr(os, "sysconf")
            else None
        ),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": properties.name,
            "memory_gib": properties.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "count": torch.cuda.device_count(),
        }
    return info


def _version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _checkout_version() -> str | None:
    with contextlib.suppress(ImportError):
        from pruning_limit import __version__

        return __version__
    return None


def versions() -> dict:
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": _version_of("scipy"),
        # From a checkout (PYTHONPATH, not installed) the package's own version string.
        "pruning-limit": _version_of("pruning-limit") or _checkout_version(),
        "git_commit": commit,
        **{distribution: _version_of(distribution) for _, distribution in BASELINES.values()},
    }


def write_result(name: str, args: argparse.Namespace, device: torch.device, body: dict) -> Path:
    """Write ``RESULTS_DIR/NAME-DEVICE.json`` (DEVICE: cpu or cuda) with its provenance."""
    record = {
        "benchmark": name,
        "schema_version": SCHEMA_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "quick": bool(args.quick),
        "device": device.type,
        "machine": machine_info(device),
        "versions": versions(),
        **body,
    }
    directory = Path(args.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{device.type}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _finite(value):
    """The record with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _cell(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)
