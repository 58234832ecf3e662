"""evaluate's engine: a finished run's model on a store's split or on an image folder."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from augzarr.errors import UserError
from augzarr.storage.local import write_atomic
from augzarr.store_format import open_store

from .metrics import evaluate_arrays, evaluate_stream
from .own_model import before_checkpoint_load
from .stream import StoreStream
from .training import check_model_fits_store, read_json


def load_run_model(run_dir: Path) -> tuple[keras.Model, dict]:
    run = read_json(run_dir / "run.json")
    if not run:
        raise UserError(f"--model {run_dir}: not a train run folder (no readable run.json)")
    if run.get("status") != "complete" or not (run_dir / "model.keras").is_file():
        raise UserError(f"--model {run_dir}: the run did not finish; finish it with train --resume --out {run_dir}")
    before_checkpoint_load(run.get("model"))  # train --model PATH.py:FUNCTION: the custom layers its file registers
    return keras.models.load_model(run_dir / "model.keras"), run


def evaluate_on_store(run_dir: Path, location: str, split: str | None, batch_size: int) -> dict:
    model, run = load_run_model(run_dir)
    store = open_store(location)
    attrs = store.attrs
    check_model_fits_store(model, attrs, f"the model of {run_dir}")
    if attrs.class_names != run["class_names"]:
        raise UserError(f"--store {location}: its classes ({', '.join(attrs.class_names)}) differ from the model's ({', '.join(run['class_names'])})")
    available = [s for s in ("test", "val") if store.has(s)]
    chosen = split or (available[0] if available else None)
    if chosen is None or not store.has(chosen):
        raise UserError(f"--store {location} has no {split or 'test or val'} rows to evaluate on")
    stream = StoreStream(store, chosen, batch_size, shuffle=False)
    try:
        metrics = evaluate_stream(model, stream, attrs.class_names)
    finally:
        stream.close()
    return {"model": str(run_dir), "data": f"{location} ({chosen} split)", "evaluated_on": chosen, **metrics}


def evaluate_on_folder(run_dir: Path, folder: Path, batch_size: int) -> dict:
    """An image folder DIR/<class>/<image> (or its test/ part, else its val/ part), resized to the model's input.

    The result also says how many images were resized from which sizes ("resized"), and
    whether they are the very images the model's store was built from ("training_source"):
    then the figure is not a held-out score."""
    # the builder's image reading, imported here only: it sets OpenCV's and Pillow's process-wide limits
    from augzarr.builder.decode import read_image_file, resize_to
    from augzarr.builder.sources import scan_image_folder

    model, run = load_run_model(run_dir)
    height, width, _ = model.input_shape[1:]
    source = scan_image_folder(folder, image_size=height)
    # a split layout is judged on its held-out part, never on the images a model may have trained on
    part, split = next((part, s) for part, s in (("test/ part", source.test), ("val/ part", source.val), ("all images", source.train)) if s is not None)
    unknown = sorted(set(source.class_names) - set(run["class_names"]))
    if unknown:
        raise UserError(f"--source {folder}: classes the model does not know: {', '.join(unknown)} (it knows {', '.join(run['class_names'])})")
    to_model = np.array([run["class_names"].index(name) for name in source.class_names])
    images, resized = [], {}
    for file in split.files:
        image = read_image_file(file)[0]
        if image.shape[:2] != (height, width):
            size = f"{image.shape[1]}x{image.shape[0]}"
            resized[size] = resized.get(size, 0) + 1
        images.append(resize_to(image, height, width))
    labels = to_model[split.labels]
    metrics = evaluate_arrays(model, np.stack(images), labels, run["class_names"], batch_size)
    return {"model": str(run_dir), "data": f"{folder} ({part})", "evaluated_on": "folder", **metrics,
            "resized": {"to": f"{width}x{height}", "from": dict(sorted(resized.items()))},
            "training_source": split is source.train and is_training_source(run, folder, source)}


def is_training_source(run: dict, folder: Path, source) -> bool:
    """Whether `folder` is the image folder the run's store was built from: the same path as the
    recorded location, or the same content hash (computed as build-aug computes it, so a copy
    or a moved folder is recognised too)."""
    from augzarr.builder.sources import hash_folder_files

    recorded = run.get("store_source") or {"content_hash": run.get("store_fingerprint", {}).get("content_hash")}
    location = recorded.get("location")
    if location and recorded.get("kind") == "image-folder" and Path(location).resolve() == folder.resolve():
        return True
    return recorded.get("content_hash") is not None and hash_folder_files(source) == recorded["content_hash"]


def resize_note(metrics: dict) -> str | None:
    """'resized N images from WxH to the model's 32x32', or None when none was resized."""
    sizes = metrics.get("resized", {}).get("from", {})
    if not sizes:
        return None
    count = sum(sizes.values())
    shown = ", ".join(f"{n:,} from {size}" if len(sizes) > 1 else size for size, n in sizes.items())
    where = f"({shown})" if len(sizes) > 1 else f"from {shown}"
    return f"resized {count:,} image{'s' if count != 1 else ''} {where} to the model's {metrics['resized']['to']}"


def format_metrics(metrics: dict) -> str:
    lines = [f"Test score: {metrics['loss']:.4f}", f"Test accuracy: {metrics['accuracy']:.4f}", "per-class accuracy:"]
    width = max(len(name) for name in metrics["per_class"])
    for name, row in metrics["per_class"].items():
        accuracy = "  n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        lines.append(f"  {name:<{width}}  {accuracy}  ({row['count']:,} images)")
    return "\n".join(lines)


def write_json(metrics: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(metrics, indent=2))  # whole or not at all, even on Ctrl-C
