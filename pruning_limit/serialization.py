"""Files of the results: plain JSON values, atomic writes by rank 0 alone, clear read errors.

Every file the library writes (``Spectrum.save``, ``Prediction.save``,
``Validation.save``, ``StudyResult.save``, ``CalibrationSet.save``,
``training.save_checkpoint``, the figures of :mod:`~pruning_limit.plots`) goes through
:func:`write_atomic`: a temporary file next to the target, renamed onto it, so a
reader never sees half a file. Under ``torch.distributed`` only rank 0 writes; the
other ranks return the same path without touching the filesystem, so a script may
call ``save`` on every rank (no race on a shared filesystem) or on rank 0 alone
(``save`` is no collective: nothing waits for the other ranks). A rank that reads
the file back must wait until rank 0 has written it (``torch.distributed.barrier()``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import distributed


def plain(value):
    """Tuples -> lists and numpy scalars/arrays -> Python, recursively (for JSON).

    >>> plain({"p": (0.5, np.float32(0.25)), 1: np.arange(2)})
    {'p': [0.5, 0.25], '1': [0, 1]}
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(handle)`` on ``path.tmp`` and a rename; rank 0 alone.

    Under ``torch.distributed`` the other ranks neither call ``write`` nor touch the
    filesystem; every rank returns ``path``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_atomic(pathlib.Path(folder) / "notes.txt", lambda f: f.write(b"hi"))
    ...     path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('hi', ['notes.txt'])
    """
    path = Path(path)
    if distributed.is_main():
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as handle:
                write(handle)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomic`: rank 0 alone.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_text(pathlib.Path(folder) / "table.md", "| p | 0.5 |")
    ...     path.name, path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('table.md', '| p | 0.5 |', ['table.md'])
    """
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | Path, text: str) -> Path:
    """Write JSON ``text`` to ``path`` (``.json`` added if missing) with
    :func:`write_atomic`: a temporary file and a rename, so that a reader never sees
    half a file; under ``torch.distributed`` rank 0 alone writes, and every rank
    returns the same path.

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_json(pathlib.Path(folder) / "result", '{"p": 0.5}')
    ...     path.name, read_json(path, "result")
    ('result.json', {'p': 0.5})
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    return write_text(path, text)


def read_json(path: str | Path, what: str) -> dict:
    """The JSON object in ``path``; ``what`` names the kind of file in the errors.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "numbers.json"
    ...     _ = path.write_text("[1, 2]")
    ...     try:
    ...         read_json(path, "prediction")
    ...     except ValueError as error:
    ...         print(str(error).split(": ", 1)[1])
    it holds a JSON list, not an object
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a {what} file: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a {what} file: it holds a JSON {type(data).__name__}, not an object"
        )
    return data


class JsonResult:
    """Mixin for a result dataclass whose ``to_dict()`` is a plain JSON object: it gives
    :meth:`to_json` and :meth:`save` (``load`` and its format check stay with each class).

    Example
    -------
    >>> import tempfile
    >>> class Limit(JsonResult):
    ...     def to_dict(self):
    ...         return {"removal_fraction": 0.5}
    >>> Limit().to_json(indent=None)
    '{"removal_fraction": 0.5}'
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     read_json(Limit().save(Path(folder) / "limit"), "limit")
    {'removal_fraction': 0.5}
    """

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text (non-finite numbers are written as NaN / Infinity, which json reads)."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (``.json`` added if missing), atomically.

        Returns the path written. Under ``torch.distributed`` rank 0 alone writes and
        every rank returns the same path (:mod:`~pruning_limit.serialization`).
        """
        return write_json(path, self.to_json())
