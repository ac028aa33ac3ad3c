"""`torchrun --nproc_per_node=2 -m pruning_limit ...` on a tiny checkpoint, against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from distributed_workers import free_port
from test_cli import ENV, TINY_DATA, run

import pruning_limit as pl

pytestmark = pytest.mark.slow  # each torchrun launch imports the package on 2 ranks
DATA = "manifold:d=3,n=8,n_train=600,n_test=100"


def torchrun(*args, wait=True):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "pruning_limit", *map(str, args),
    ]  # fmt: skip
    if not wait:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    run("train", "--data", TINY_DATA, "--model", "mlp:8", "--epochs", "20", "--out", folder,
        "--quiet")  # fmt: skip
    return folder


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers in /proc")
def test_killed_torchrun_spectrum_resumes_to_the_one_process_result(checkpoint, tmp_path):
    common = ["spectrum", checkpoint, "--data", DATA, "--steps", "30", "--probes", "2",
              "--block-size", "1", "--dtype", "float64", "--batch-size", "64",
              "--checkpoint-every", "3", "--quiet"]  # fmt: skip
    run(*common, "--out", tmp_path / "single.npz")
    target, state = tmp_path / "dist.npz", tmp_path / "dist.npz.state"
    process = torchrun(*common, "--out", target, wait=False)
    deadline = time.time() + 200
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    for worker in children(process.pid):  # the ranks run in sessions of their own
        os.kill(worker, signal.SIGKILL)
    process.kill()
    process.wait()
    assert state.exists() and not target.exists()
    torchrun(*common, "--out", target, "--resume")
    single, resumed = pl.Spectrum.load(tmp_path / "single.npz"), pl.Spectrum.load(target)
    assert resumed.provenance["resumed"] and resumed.provenance["world_size"] == 2
    assert resumed.provenance["num_samples"] == 600
    assert np.abs(resumed.nodes - single.nodes).max() <= 1e-7 * np.abs(single.nodes).max()
    assert not state.exists()


def test_torchrun_validate_equals_one_process_and_only_rank_0_prints(checkpoint, tmp_path):
    common = ["validate", checkpoint, "--data", DATA, "--batch-size", "64", "--resolution",
              "0.05", "--json", "--quiet"]  # fmt: skip
    single = json.loads(run(*common, "--out", tmp_path / "single").stdout)["validation"]
    result = torchrun(*common, "--out", tmp_path / "dist")
    distributed = json.loads(result.stdout)["validation"]  # one JSON document: rank 0's
    assert (tmp_path / "dist" / "validation.json").exists()
    for variant in ("one_shot", "refit"):
        ours, theirs = distributed["variants"][variant], single["variants"][variant]
        assert ours["accuracy_limit"] == theirs["accuracy_limit"]
        assert ours["loss_budget_limit"] == theirs["loss_budget_limit"]
    assert np.isclose(distributed["epsilon"], single["epsilon"], rtol=1e-7, atol=0)
    assert distributed["dense"]["n_train"] == 600
