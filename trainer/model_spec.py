"""train --model's syntax: a built-in name, PATH.py:FUNCTION or PATH.keras, read without Keras and without the
file itself, so options.py checks it before anything loads (own_model.py reads the file when train builds the model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    spec: str  # as given on the command line
    kind: str  # "python" (a function in a .py file) or "keras" (a saved .keras model)
    path: Path
    function: str = ""


def parse_model_spec(spec: str) -> ModelSpec | None:
    """PATH.py:FUNCTION or PATH.keras -> its ModelSpec; None for anything else (a built-in name, or a
    mistake: the caller says what --model takes). Raises ValueError for a .py file without a function."""
    if spec.endswith(".keras"):
        return ModelSpec(spec, "keras", Path(spec))
    head, colon, function = spec.rpartition(":")
    if colon and head.endswith(".py"):
        if not function.isidentifier():
            raise ValueError(f"--model {spec}: after {head}: give the name of the function that builds the model")
        return ModelSpec(spec, "python", Path(head), function)
    if spec.endswith(".py"):
        raise ValueError(f"--model {spec}: name the function in it that builds the model, as {spec}:FUNCTION")
    return None
