"""evaluate's engine: a finished run's model on a store's split or on an image folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from augzarr.errors import UserError
from augzarr.storage.local import write_atomic
from augzarr.store_format import open_store

from .metrics import evaluate_arrays, evaluate_stream, stored_images
from .own_model import before_checkpoint_load
from .report import plot_mistakes, plot_reliability
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


def evaluate_on_store(run_dir: Path, location: str, split: str | None, batch_size: int) -> tuple[dict, np.ndarray]:
    """The metrics, and the images of their confidently_wrong rows (for the mistakes grid)."""
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
    mistakes = stored_images(store, chosen, [m["row"] for m in metrics["confidently_wrong"]])
    return {"model": str(run_dir), "data": f"{location} ({chosen} split)", "evaluated_on": chosen, **metrics}, mistakes


def evaluate_on_folder(run_dir: Path, folder: Path, batch_size: int) -> tuple[dict, np.ndarray]:
    """An image folder DIR/<class>/<image> (or its test/ part, else its val/ part), resized to the model's input:
    the metrics (each confidently wrong image named by its file too), and those images.

    The result also says how many images were resized from which sizes ("resized"), and
    whether they are the very images the model's store was built from ("training_source"):
    then the figure is not a held-out score."""
    # the builder's image reading, imported here only: it sets OpenCV's and Pillow's process-wide limits
    import cv2

    from augzarr.builder.decode import read_image_file, resize_to
    from augzarr.builder.sources import scan_image_folder

    model, run = load_run_model(run_dir)
    # a dimension the model leaves None (it takes any size): the size of the store's images it was trained on
    height, width, channels = (size if size is not None else trained for size, trained in zip(model.input_shape[1:], run["image_shape"]))
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
        image = resize_to(image, height, width)
        if channels == 1:  # a grayscale model (MNIST's): the images' luma, with the ITU-R 601 weights of PIL's convert("L")
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
        images.append(image)
    labels = to_model[split.labels]
    images = np.stack(images)
    metrics = evaluate_arrays(model, images, labels, run["class_names"], batch_size)
    for mistake in metrics["confidently_wrong"]:
        mistake["file"] = str(split.files[mistake["row"]])
    mistakes = images[[m["row"] for m in metrics["confidently_wrong"]]]
    return {"model": str(run_dir), "data": f"{folder} ({part})", "evaluated_on": "folder", **metrics,
            "resized": {"to": f"{width}x{height}", "from": dict(sorted(resized.items()))},
            "training_source": split is source.train and is_training_source(run, folder, source)}, mistakes


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
    low, high = metrics["accuracy_ci95"]
    lines = [f"Test score: {metrics['loss']:.4f}", f"Test accuracy: {metrics['accuracy']:.4f}",
             f"95% interval of the accuracy (Wilson): {low:.3f}-{high:.3f}",
             f"expected calibration error: {metrics['calibration']['ece']:.4f} ({metrics['calibration']['bins']} equal-width confidence bins)",
             "per-class accuracy (95% interval, Wilson):"]
    width = max(len(name) for name in metrics["per_class"])
    for name, row in metrics["per_class"].items():
        accuracy = "  n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        interval = "             " if row["ci95"] is None else f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}"
        lines.append(f"  {name:<{width}}  {accuracy}  {interval}  ({row['count']:,} images)")
    return "\n".join(lines)


def report_paths(path: Path) -> tuple[Path, Path]:
    """Where evaluate --json PATH puts its pictures: beside it, named after it (eval.json -> eval-reliability.png, eval-mistakes.png)."""
    return path.with_name(f"{path.stem}-reliability.png"), path.with_name(f"{path.stem}-mistakes.png")


def write_reports(metrics: dict, path: Path, mistake_images: np.ndarray) -> list[Path]:
    """The JSON at `path` and its two PNGs beside it; the JSON last, naming them. Returns the paths written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    reliability, mistakes = report_paths(path)
    title = f"{metrics['model']} on {metrics['data']}"
    # drawn into a scratch folder beside it (removed on Ctrl-C or a failure), moved into place just before
    # the JSON: an interrupted evaluate leaves no new picture, as it says
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".evaluate-") as scratch:
        drawn = [Path(scratch) / reliability.name, Path(scratch) / mistakes.name]
        plot_reliability(metrics["calibration"], drawn[0], title)
        plot_mistakes(mistake_images, metrics["confidently_wrong"], drawn[1], f"{title}: the most confident mistakes")
        for picture, final in zip(drawn, (reliability, mistakes)):
            os.replace(picture, final)
        reports = {"reliability_diagram": reliability.name, "mistakes_grid": mistakes.name}
        write_atomic(path, json.dumps({**metrics, "reports": reports}, indent=2))  # whole or not at all, even on Ctrl-C
    return [path, reliability, mistakes]
