"""Data parallelism over ``torch.distributed``: sharded sums, rank 0's files, shared failures.

Every full-data quantity of this package is a sum over samples (``batches.py``):

    L(w) = (1/N) sum_r sum_{b in shard r} n_b L_b(w),   N = sum_r sum_{b in shard r} n_b,

and so are its gradient, its curvature-vector products and the metrics of a sweep. When
``torch.distributed`` is initialised (any backend: gloo on CPUs, NCCL on GPUs), each
rank passes its own shard of one dataset; each rank sums over its shard with weights
n_b / N (N the *global* count, itself one all-reduce), and one all-reduce per quantity
adds the ranks' sums. Unequal shards and short last batches are therefore exact: the
result equals one process on the concatenated data up to the order of floating-point
additions, and every rank holds the same bits (an all-reduce hands every rank one
result). Without an initialised process group every function here is the identity
and the package runs as one process.

Random probes come from seeded CPU generators (``lanczos._generator``), so every
rank draws the same ones. Only rank 0 writes files (the SLQ state, and every save,
checkpoint and figure: :func:`~pruning_limit.serialization.write_atomic`) and shows
progress bars; state is read on rank 0 and broadcast.

Failures. A rank that raises inside :func:`failure_barrier` (every public entry point
runs inside one) leaves its message in the process group's key-value store and
re-raises; the other ranks, waiting in a collective of this module (each one polls
the store while it waits), raise :class:`RankFailedError` naming the failed rank and
its error, instead of hanging. A rank that waits longer than :func:`timeout` seconds
(default 1800, environment variable ``PRUNING_LIMIT_TIMEOUT``) for the others raises
too. After a failure the process group is unusable; end the processes.

>>> world_size(), rank(), is_main(), record()
(1, 0, True, {'world_size': 1, 'backend': None})
>>> all_reduce_sum(torch.tensor([1.0, 2.0])).tolist()   # one process: the identity
[1.0, 2.0]
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist

TIMEOUT_VARIABLE = "PRUNING_LIMIT_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0
_ERROR_KEY = "pruning_limit/failed/{}"
_STORE_POLL_SECONDS = 0.1

_state = {"depth": 0, "barriers": 0, "timeout": None}


class RankFailedError(RuntimeError):
    """Another rank failed (its message follows), or the ranks stopped answering.

    A ``RuntimeError``, so code that handles torch.distributed's errors handles it too.

    >>> issubclass(RankFailedError, RuntimeError)
    True
    """


# -- who we are ------------------------------------------------------------------------------


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group of more than one rank is running.

    >>> is_distributed()   # one process, no process group
    False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks (1 without an initialised process group).

    >>> world_size()
    1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialised process group).

    >>> rank()
    0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this rank writes files and shows progress (rank 0).

    >>> is_main()   # a single process is rank 0
    True
    """
    return rank() == 0


def backend() -> str | None:
    """The process group's backend (``"gloo"``, ``"nccl"``, ...), or None.

    >>> print(backend())   # no process group
    None
    """
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return None


def record() -> dict:
    """``{"world_size": N, "backend": ...}``: what results keep of how they were computed.

    >>> record()
    {'world_size': 1, 'backend': None}
    """
    return {"world_size": world_size(), "backend": backend()}


def timeout() -> float:
    """Seconds a rank waits in one collective before it declares the others lost.

    :func:`set_timeout`'s value, else ``PRUNING_LIMIT_TIMEOUT``, else 1800.

    >>> set_timeout(60)
    >>> timeout()
    60.0
    >>> set_timeout(None)   # back to the variable or the default
    """
    if _state["timeout"] is not None:
        return _state["timeout"]
    return float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT))


def set_timeout(seconds: float | None) -> None:
    """Set :func:`timeout` (None: back to ``PRUNING_LIMIT_TIMEOUT`` or the default).

    >>> set_timeout(2.5)
    >>> timeout()
    2.5
    >>> set_timeout(None)
    >>> set_timeout(0)
    Traceback (most recent call last):
    ...
    ValueError: the timeout must be a positive number of seconds, got 0
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(f"the timeout must be a positive number of seconds, got {seconds!r}")
    _state["timeout"] = None if seconds is None else float(seconds)


def shard_range(num_samples: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of shard ``index`` of ``count``: whole batches, contiguous.

    The shards' batches, in rank order, are exactly the batches one process forms
    from all the data, so per-batch readings (eps = ``batch_std``) agree too. The
    batches are spread as evenly as possible.

    >>> [shard_range(10, 3, r, 2) for r in range(2)]   # batches 3,3 | 3,1
    [(0, 6), (6, 10)]
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"need samples and a batch size >= 1, got {num_samples}, {batch_size}")
    batches = -(-num_samples // batch_size)
    if batches < count:
        raise ValueError(
            f"the data form {batches} batch(es) of {batch_size} samples, fewer than the "
            f"{count} ranks: every rank needs at least one batch (use a smaller batch size)"
        )
    per_rank, extra = divmod(batches, count)
    first = index * per_rank + min(index, extra)
    last = first + per_rank + (1 if index < extra else 0)
    return first * batch_size, min(last * batch_size, num_samples)


def shard(pair, batch_size: int = 1):
    """This rank's shard (:func:`shard_range`) of a pair of tensors ``(X, y)``.

    >>> X, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    >>> inputs, targets = shard((X, y), batch_size=2)   # one rank: all of it
    >>> tuple(inputs.shape), targets.tolist()
    ((5, 2), [0, 1, 2, 3, 4])
    """
    inputs, targets = pair
    start, stop = shard_range(int(inputs.shape[0]), batch_size, rank(), world_size())
    return inputs[start:stop], targets[start:stop]


# -- collectives -------------------------------------------------------------------------------


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def _failure_message() -> str | None:
    store = _store()
    key = _ERROR_KEY.format(_state["barriers"])
    try:
        if store is not None and store.check([key]):
            return store.get(key).decode(errors="replace")
    except RuntimeError:  # the store lives on rank 0's host: it may be gone with it
        return "rank 0 is gone (its key-value store does not answer)"
    return None


def _announce_failure(message: str) -> None:
    store = _store()
    key = _ERROR_KEY.format(_state["barriers"])
    try:
        if store is not None and not store.check([key]):
            store.set(key, message)
    except RuntimeError:
        pass


def _wait(work, what: str) -> None:
    """Wait for an asynchronous collective, watching for failures elsewhere and the timeout."""
    started = time.monotonic()
    limit = timeout()
    next_poll = started + _STORE_POLL_SECONDS
    delay = 1e-5
    while not work.is_completed():
        now = time.monotonic()
        if now >= next_poll:
            message = _failure_message()
            if message is not None:
                raise RankFailedError(f"rank {rank()} stopped at {what}: {message}")
            next_poll = now + _STORE_POLL_SECONDS
        if now - started > limit:
            message = (
                f"rank {rank()} waited {limit:g} s at {what} for the other ranks of "
                f"{world_size()}: one is stuck or died without a message "
                f"({TIMEOUT_VARIABLE} sets the timeout)"
            )
            _announce_failure(message)
            raise RankFailedError(message)
        time.sleep(delay)
        delay = min(2 * delay, 0.005)
    try:
        work.wait()
    except RuntimeError as error:
        message = _failure_message()
        raise RankFailedError(
            f"rank {rank()} stopped at {what}: "
            + (message or f"the collective failed ({error}); another rank probably exited")
        ) from error


def _communication_device() -> torch.device:
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, what: str = "a sum over ranks") -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor on its device; itself with one rank).

    >>> local = torch.tensor([1.0, 2.0])
    >>> all_reduce_sum(local) is local   # one rank: the sum is its own
    True
    """
    if not is_distributed():
        return tensor
    device = _communication_device()
    buffer = tensor.detach().to(device=device, copy=True).contiguous()
    _wait(dist.all_reduce(buffer, op=dist.ReduceOp.SUM, async_op=True), what)
    return buffer.to(tensor.device)


def sum_over_ranks(value: int, what: str = "a count over ranks") -> int:
    """An integer summed over ranks.

    >>> sum_over_ranks(7)   # one rank
    7
    """
    return int(all_reduce_sum(torch.tensor([int(value)], dtype=torch.int64), what).item())


def gather_rows(tensor: torch.Tensor, what: str = "a gather over ranks") -> torch.Tensor:
    """The concatenation, in rank order, of every rank's ``tensor`` (1-d, any lengths).

    >>> gather_rows(torch.tensor([3, 1, 2])).tolist()   # one rank: its own rows
    [3, 1, 2]
    """
    if not is_distributed():
        return tensor
    device = _communication_device()
    lengths = torch.zeros(world_size(), dtype=torch.int64, device=device)
    lengths[rank()] = tensor.numel()
    lengths = all_reduce_sum(lengths, what).tolist()
    offset = sum(lengths[: rank()])
    full = torch.zeros(sum(lengths), dtype=tensor.dtype, device=device)
    full[offset : offset + tensor.numel()] = tensor.reshape(-1).to(device)
    return all_reduce_sum(full, what).to(tensor.device)


def broadcast_object(value, what: str = "a broadcast from rank 0"):
    """Rank 0's ``value`` on every rank (tensors, numbers, strings, dicts and lists of them).

    Serialised with ``torch.save`` and read back with ``weights_only=True``: nothing
    that could run code travels.

    >>> broadcast_object({"steps": 10, "nodes": [0.5, 2.0]})   # one rank: its own value
    {'steps': 10, 'nodes': [0.5, 2.0]}
    """
    if not is_distributed():
        return value
    device = _communication_device()
    if is_main():
        buffer = io.BytesIO()
        torch.save(value, buffer)
        payload = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        length = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    else:
        length = torch.zeros(1, dtype=torch.int64, device=device)
    _wait(dist.broadcast(length, src=0, async_op=True), what)
    if not is_main():
        payload = torch.zeros(int(length.item()), dtype=torch.uint8)
    payload = payload.to(device)
    _wait(dist.broadcast(payload, src=0, async_op=True), what)
    if is_main():
        return value
    return torch.load(io.BytesIO(payload.cpu().numpy().tobytes()), weights_only=True)


# -- failures ----------------------------------------------------------------------------------


@contextmanager
def failure_barrier(what: str = "pruning_limit"):
    """Run a collective piece of work so that a failure on one rank ends every rank.

    On the failing rank the exception propagates unchanged after its message has been
    left for the others; the others raise :class:`RankFailedError` with that message
    from the collective they wait in, or from the closing check that every rank
    finished. Nested barriers act as one. With one process: nothing is added.

    >>> with failure_barrier("a sum"):
    ...     total = all_reduce_sum(torch.ones(3)).sum().item()
    >>> total
    3.0
    >>> with failure_barrier("a check"):   # the error itself, after telling the other ranks
    ...     raise ValueError("bad data on this rank")
    Traceback (most recent call last):
    ...
    ValueError: bad data on this rank
    """
    if not is_distributed() or _state["depth"] > 0:
        _state["depth"] += 1
        try:
            yield
        finally:
            _state["depth"] -= 1
        return
    _state["barriers"] += 1
    _state["depth"] += 1
    try:
        yield
        _wait(
            dist.all_reduce(torch.zeros(1, device=_communication_device()), async_op=True),
            f"the end of {what}",
        )
    except BaseException as error:
        if not isinstance(error, RankFailedError):
            _announce_failure(f"rank {rank()} failed in {what}: {type(error).__name__}: {error}")
        raise
    finally:
        _state["depth"] -= 1


def collective(function: Callable) -> Callable:
    """Decorate a public entry point: it runs inside :func:`failure_barrier`.

    >>> @collective
    ... def count(pair):
    ...     return sum_over_ranks(len(pair[0]))
    >>> count.__name__, count((torch.zeros(4, 2), torch.zeros(4)))
    ('count', 4)
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with failure_barrier(function.__name__):
            return function(*args, **kwargs)

    return wrapper


def init_from_environment(backend_name: str | None = None) -> bool:
    """Initialise the process group from torchrun's variables (``RANK``, ``WORLD_SIZE``, ...).

    Returns whether a group of more than one rank is now running. Does nothing when
    one is already initialised or the variables are absent. Default backend: NCCL
    when CUDA is available, else gloo; with NCCL each rank takes the GPU
    ``LOCAL_RANK``.

    >>> import os
    >>> "WORLD_SIZE" in os.environ, init_from_environment()   # not under torchrun
    (False, False)
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    if backend_name is None:
        backend_name = "nccl" if torch.cuda.is_available() else "gloo"
    if backend_name == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend_name)
    return is_distributed()
