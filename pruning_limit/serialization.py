"""JSON for the result dataclasses: plain values, atomic writes, clear read errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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


def write_json(path: str | Path, text: str) -> Path:
    """Write JSON ``text`` to ``path`` (``.json`` added if missing) through a temporary
    file and a rename, so that a reader never sees half a file.

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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


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
