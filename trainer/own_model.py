"""train --model PATH.py:FUNCTION or PATH.keras: the user's own Keras model in place of a built-in one.

Keras is imported inside the functions only (model_spec.py parses the spec, before Keras loads).
Every failure (no file, a file that does not import or load, no such function, a function that
raises or returns no model, a model that does not fit the store) is one UserError line naming the
file, raised before train claims a run folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import zipfile
from pathlib import Path

from augzarr.errors import UserError
from augzarr.wording import SHOWN_LINES, article, listed

from .model_spec import ModelSpec, parse_model_spec
from .records import ModelInfo


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_line(exc: BaseException) -> str:
    """The exception as one short line: Keras' messages run over many lines."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, SyntaxError) and exc.lineno:
        text = f"{exc.msg} (line {exc.lineno})"
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_model_file(spec: ModelSpec):
    """The user's .py file as a module. Its folder leads sys.path while it imports, so it can import
    its neighbours; importing it also registers any custom layers it declares
    (@keras.saving.register_keras_serializable), which a checkpoint of its model needs to load."""
    if not spec.path.is_file():
        raise UserError(f"--model {spec.spec}: no such file {spec.path}")
    name = "augzarr_own_model_" + file_sha256(spec.path)[:16]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, spec.path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(spec.path.resolve().parent))
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UserError(f"--model {spec.spec}: importing {spec.path} failed: {first_line(exc)}") from None
    finally:
        sys.path.remove(str(spec.path.resolve().parent))
    return module


def call_model_function(spec: ModelSpec, image_shape: tuple[int, ...], n_classes: int):
    import keras

    module = import_model_file(spec)
    function = getattr(module, spec.function, None)
    if function is None:
        defined = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and not n.startswith("_") and v.__module__ == module.__name__
        )
        raise UserError(
            f"--model {spec.spec}: {spec.path} has no function {spec.function}"
            + (f" (it defines {listed(defined, limit=SHOWN_LINES)})" if defined else "")
        )
    if not callable(function):
        raise UserError(
            f"--model {spec.spec}: {spec.function} in {spec.path} is {article(type(function).__name__)}, not a function"
        )
    call = f"{spec.function}({tuple(image_shape)}, {n_classes})"
    try:
        model = function(tuple(image_shape), n_classes)
    except Exception as exc:
        raise UserError(f"--model {spec.spec}: {call} raised {first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise UserError(f"--model {spec.spec}: {call} returned {article(type(model).__name__)}, not a keras.Model")
    return model


def load_model_file(spec: ModelSpec):
    """A saved .keras model, uncompiled: train compiles it with its own optimizer and loss. Its weights are kept
    (train starts from them: fine-tuning); any optimizer state or compile settings saved with it are not used."""
    import keras

    if not spec.path.is_file():
        raise UserError(f"--model {spec.spec}: no such file {spec.path}")
    if not zipfile.is_zipfile(spec.path):  # Keras would call it "File not found"
        raise UserError(f"--model {spec.spec}: not a .keras file (the zip archive model.save('NAME.keras') writes)")
    try:
        return keras.models.load_model(spec.path, compile=False)
    except Exception as exc:
        raise UserError(
            f"--model {spec.spec}: Keras cannot load it as a model ({first_line(exc)}); "
            "give a file saved by model.save('NAME.keras'), with any custom layer registered"
        ) from None


def shape_text(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def check_fits(spec: ModelSpec, model, image_shape: tuple[int, ...], n_classes: int) -> None:
    """One image input of the store's shape (a dimension left None takes any size), one output of its class count."""
    what = f"--model {spec.spec}" + (f": {spec.function}() returned a model that" if spec.kind == "python" else "")
    if not model.built:  # a Sequential without keras.Input, or a subclassed model: build it for the store's images
        try:
            model.build((None, *image_shape))
        except Exception as exc:
            raise UserError(f"{what} cannot be built for {shape_text(image_shape)} images: {first_line(exc)}") from None
    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, ValueError):  # a subclassed model has neither: ask it what it makes of the store's images
        inputs = (None, *image_shape)
        try:
            outputs = model.compute_output_shape(inputs)
        except Exception as exc:
            raise UserError(
                f"{what} cannot tell its output shape for {shape_text(image_shape)} images: {first_line(exc)}"
            ) from None
    if isinstance(inputs, list) or isinstance(outputs, list) or isinstance(inputs, dict) or isinstance(outputs, dict):
        raise UserError(
            f"{what} has several inputs or outputs; train feeds it one batch of images and wants one class-probability output"
        )
    hint = (
        "make it use the image_shape and n_classes it is given"
        if spec.kind == "python"
        else "train it for this store's images and classes, or build a store of its shape (build-aug --image-size)"
    )
    check_shapes(what, inputs, outputs, image_shape, n_classes, hint)


def check_shapes(what: str, inputs, outputs, image_shape, n_classes: int, hint: str) -> None:
    """The one rule by which a model fits a store's images, for train (an own model before any run folder is made,
    and every model it fits) and evaluate alike: one image input of the store's rank whose every dimension is the
    store's or None (None takes any size), and one output of the store's class count. inputs and outputs are
    Keras' shapes, batch dimension first."""
    takes, gives = tuple(inputs[1:]), outputs[-1]
    fits = len(takes) == len(image_shape) and all(t is None or t == s for t, s in zip(takes, image_shape))
    if not fits or gives != n_classes or len(outputs) != 2:
        out = f"{gives} classes" if len(outputs) == 2 else f"outputs of shape {shape_text(outputs[1:])}"
        raise UserError(
            f"{what} takes {shape_text(takes)} images into {out}, the store holds {shape_text(image_shape)} images "
            f"of {n_classes} classes: {hint}"
        )


def check_probabilities(spec: ModelSpec, model) -> None:
    """train's loss takes class probabilities: a last layer with a linear activation gives raw scores, which
    would train to NaN. Only that case is refused; a last layer whose activation cannot be seen is trusted."""
    import keras

    last = model.layers[-1] if getattr(model, "layers", None) else None
    if getattr(last, "activation", None) is keras.activations.linear:
        what = f"--model {spec.spec}" + (
            f": {spec.function}() returned a model whose" if spec.kind == "python" else ": its"
        )
        raise UserError(
            f"{what} last layer ({last.name}) outputs raw scores (linear activation), but train's loss takes class "
            'probabilities: end the model with activation="softmax"'
        )


def own_model(spec_text: str, image_shape: tuple[int, ...], n_classes: int) -> tuple[object, ModelInfo]:
    """(model, its record for run.json): the user's model, checked against the store, not compiled by train yet."""
    spec = parse_model_spec(spec_text)
    if spec.kind == "python":
        model = call_model_function(spec, image_shape, n_classes)
        came_compiled = bool(getattr(model, "compiled", False))
    else:
        model = load_model_file(spec)
        came_compiled = False
    check_fits(spec, model, image_shape, n_classes)
    check_probabilities(spec, model)
    python = spec.kind == "python"
    return model, ModelInfo(
        spec.spec,
        spec.kind,
        str(spec.path.resolve()),
        file_sha256(spec.path),
        function=spec.function if python else None,
        came_compiled=came_compiled if python else None,
    )


def before_checkpoint_load(record: ModelInfo | None) -> None:
    """Before loading a run's checkpoint or model.keras (train --resume, evaluate): import the run's own .py
    file (run.json's model record), if it is still there, so the custom layers it registers are known to
    Keras' loader; a model of Keras' own layers loads without it."""
    if record is not None and record.kind == "python" and record.file and Path(record.file).is_file():
        import_model_file(ModelSpec(record.spec, "python", Path(record.file), record.function or ""))
