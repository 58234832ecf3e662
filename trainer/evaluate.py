"""evaluate's engine: a finished run's model on a store's split or on an image folder."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from builder.decode import read_image_file, resize_to
from builder.errors import UserError
from builder.sources import scan_image_folder
from builder.store import open_store

from .metrics import evaluate_arrays, evaluate_stream
from .stream import StoreStream
from .training import check_model_fits_store, read_json


def load_run_model(run_dir: Path) -> tuple[keras.Model, dict]:
    run = read_json(run_dir / "run.json")
    if not run:
        raise UserError(f"--model {run_dir}: not a train run folder (no readable run.json)")
    if run.get("status") != "complete" or not (run_dir / "model.keras").is_file():
        raise UserError(f"--model {run_dir}: the run did not finish; finish it with train --resume --out {run_dir}")
    return keras.models.load_model(run_dir / "model.keras"), run


def evaluate_on_store(run_dir: Path, store: Path, split: str | None, batch_size: int) -> dict:
    model, run = load_run_model(run_dir)
    group = open_store(store)
    attrs = dict(group.attrs)
    check_model_fits_store(model, attrs, f"the model of {run_dir}")
    if attrs["class_names"] != run["class_names"]:
        raise UserError(f"--store {store}: its classes ({', '.join(attrs['class_names'])}) differ from the model's ({', '.join(run['class_names'])})")
    available = [s for s in ("test", "val") if f"{s}/images" in group and group[f"{s}/images"].shape[0]]
    chosen = split or (available[0] if available else None)
    if chosen is None or f"{chosen}/images" not in group or not group[f"{chosen}/images"].shape[0]:
        raise UserError(f"--store {store} has no {split or 'test or val'} rows to evaluate on")
    stream = StoreStream(group, chosen, batch_size, shuffle=False)
    try:
        metrics = evaluate_stream(model, stream, attrs["class_names"])
    finally:
        stream.close()
    return {"model": str(run_dir), "data": f"{store} ({chosen} split)", "evaluated_on": chosen, **metrics}


def evaluate_on_folder(run_dir: Path, folder: Path, batch_size: int) -> dict:
    """An image folder DIR/<class>/<image> (or its test/ part, else its val/ part), resized to the model's input."""
    model, run = load_run_model(run_dir)
    height, width, _ = model.input_shape[1:]
    source = scan_image_folder(folder, image_size=height)
    # a split layout is judged on its held-out part, never on the images a model may have trained on
    part, split = next((part, s) for part, s in (("test/ part", source.test), ("val/ part", source.val), ("all images", source.train)) if s is not None)
    unknown = sorted(set(source.class_names) - set(run["class_names"]))
    if unknown:
        raise UserError(f"--source {folder}: classes the model does not know: {', '.join(unknown)} (it knows {', '.join(run['class_names'])})")
    to_model = np.array([run["class_names"].index(name) for name in source.class_names])
    images = np.stack([resize_to(read_image_file(f)[0], height, width) for f in split.files])
    labels = to_model[split.labels]
    metrics = evaluate_arrays(model, images, labels, run["class_names"], batch_size)
    return {"model": str(run_dir), "data": f"{folder} ({part})", "evaluated_on": "folder", **metrics}


def format_metrics(metrics: dict) -> str:
    lines = [f"Test score: {metrics['loss']:.4f}", f"Test accuracy: {metrics['accuracy']:.4f}", "per-class accuracy:"]
    width = max(len(name) for name in metrics["per_class"])
    for name, row in metrics["per_class"].items():
        accuracy = "  n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        lines.append(f"  {name:<{width}}  {accuracy}  ({row['count']:,} images)")
    return "\n".join(lines)


def write_json(metrics: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
