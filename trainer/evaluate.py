"""evaluate's engine: a finished run's model on a store's split, or on a source's images (augzarr.sources)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from augzarr.errors import UserError
from augzarr.storage import open_storage
from augzarr.storage.local import write_atomic
from augzarr.store_format import StoreAttrs, digest_keys, open_store, read_raw_attrs, train_file_digests
from augzarr.wording import count, listed

from .metrics import evaluate_arrays, evaluate_stream, stored_images
from .own_model import before_checkpoint_load
from .records import RUN_JSON, RunRecord, StoreFingerprint
from .report import plot_mistakes, plot_reliability
from .stream import StoreStream
from .training import check_model_fits_store


def load_run_model(run_dir: Path) -> tuple[keras.Model, RunRecord]:
    run = RunRecord.read(run_dir)
    if run_dir.is_file():
        raise UserError(f"--model {run_dir} is a file, not a train run folder: give the folder train --out made")
    if run is None:
        raise UserError(f"--model {run_dir}: not a train run folder (no readable {RUN_JSON})")
    if not run.is_complete or not (run_dir / "model.keras").is_file():
        raise UserError(f"--model {run_dir}: the run did not finish; finish it with train --resume --out {run_dir}")
    if run.class_names is None or run.image_shape is None:
        raise UserError(
            f"--model {run_dir}: its {RUN_JSON} is damaged (it lacks the class names or the image shape); "
            "train the model again, or evaluate a run folder train wrote whole"
        )
    before_checkpoint_load(run.model)  # train --model PATH.py:FUNCTION: the custom layers its file registers
    return keras.models.load_model(run_dir / "model.keras"), run


def evaluate_on_store(run_dir: Path, location: str, split: str | None, batch_size: int) -> tuple[dict, np.ndarray]:
    """The metrics, and the images of their confidently_wrong rows (for the mistakes grid)."""
    model, run = load_run_model(run_dir)
    store = open_store(location)
    attrs = store.attrs
    check_model_fits_store(model, attrs, f"the model of {run_dir}")
    if attrs.class_names != run.class_names:
        raise UserError(
            f"--store {location}: its classes differ from the model's: {class_difference(attrs.class_names, run.class_names)}"
        )
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


def class_difference(names: list[str], model_names: list[str]) -> str:
    """Where two class lists part, in a line however many classes they hold."""
    sizes = f"{count(len(names), 'class')} against the model's {len(model_names):,}"
    at = next((i for i, (a, b) in enumerate(zip(names, model_names)) if a != b), None)
    return sizes if at is None else f"{sizes}; class {at} is {names[at]!r}, the model's {model_names[at]!r}"


def evaluate_on_source(run_dir: Path, spec: Path | str, batch_size: int) -> tuple[dict, np.ndarray]:
    """Images of any source build-aug reads (augzarr.sources: an image folder DIR/<class>/<image>, a folder saved by
    Hugging Face datasets, a CIFAR-10 archive, a keras.datasets name), judged on its test split, else its val split,
    else all its images, each resized to the model's input: the metrics (each confidently wrong image named by its
    file too, where it has one), and those images.

    The result also says how many images were resized from which sizes ("resized"), and how many of
    them the model trained on ("training_images", by their content, from the digests the model's store
    recorded; "training_source" when any, or, for a store without them, when the source is its source
    whole): then the figure is not a held-out score."""
    from augzarr.sources import open_source

    model, run = load_run_model(run_dir)
    # a dimension the model leaves None (it takes any size): the size of the store's images it was trained on
    height, width, channels = (
        size if size is not None else trained for size, trained in zip(model.input_shape[1:], run.image_shape)
    )
    # a path that exists is read as one, even where its name is also a dataset's (evaluate --source ./cifar10)
    source = open_source(str(Path(spec).absolute()) if Path(spec).exists() else str(spec))
    # a source with splits of its own is judged on its held-out part, never on the images a model may have trained on
    part, split = next(
        (part, s)
        for part, s in (("test/ part", source.test), ("val/ part", source.val), ("all images", source.train))
        if s is not None
    )
    unknown = sorted(set(source.class_names) - set(run.class_names))
    if unknown:
        raise UserError(
            f"--source {spec}: {count(len(unknown), 'class', 'classes')} the model does not know: {listed(unknown)} "
            f"(it knows {count(len(run.class_names), 'class')}: {listed(run.class_names)})"
        )
    to_model = np.array([run.class_names.index(name) for name in source.class_names])
    images, resized, digests = model_inputs(split, height, width, channels, trained_fit(run))
    metrics = evaluate_arrays(model, images, to_model[split.labels], run.class_names, batch_size)
    if split.files is not None:
        for mistake in metrics["confidently_wrong"]:
            mistake["file"] = str(split.files[mistake["row"]])
    mistakes = images[[m["row"] for m in metrics["confidently_wrong"]]]
    overlap = training_images(run, digests)
    if overlap["count"] is not None:
        trained = overlap["count"] > 0
    else:  # a store without the digests, or out of reach: the source as a whole
        trained = split is source.train and is_training_source(run, source)
    return {
        "model": str(run_dir),
        "data": f"{spec} ({part})",
        "evaluated_on": "folder",
        **metrics,
        "resized": {"to": f"{width}x{height}", "from": dict(sorted(resized.items()))},
        "training_images": overlap,
        "training_source": trained,
    }, mistakes


def trained_fit(run) -> str:
    """How the store the model trained on fitted its images to their size (build-aug --fit): images judged are fitted
    the same way. Stretch for a store recorded before --fit existed, or a run that recorded no store identity."""
    from augzarr.images import FIT_BEFORE_RECORDED

    identity = run.store_fingerprint.identity if run.store_fingerprint is not None else None
    return (identity or {}).get("fit", FIT_BEFORE_RECORDED)


def model_inputs(
    split, height: int, width: int, channels: int, fit: str = "stretch"
) -> tuple[np.ndarray, dict[str, int], list[str] | None]:
    """A source split's images as the model takes them, each fitted to its size as `fit` says (images.FITS): (images,
    how many were resized from each size, the sha256 of each image's encoded bytes, None for a source of decoded
    arrays)."""
    # the images' reading, imported here only: it sets OpenCV's and Pillow's process-wide limits
    import cv2

    from augzarr.images import fit_to, read_image_file

    images, resized, digests = [], {}, []
    for row in range(len(split)):
        if split.images is not None:
            image = split.images[row]
        else:
            image, digest = read_image_file(split.files[row])
            digests.append(digest)
        if image.shape[:2] != (height, width):
            size = f"{image.shape[1]}x{image.shape[0]}"
            resized[size] = resized.get(size, 0) + 1
        image = fit_to(image, height, width, fit).reshape(height, width, -1)
        if (
            channels == 1 and image.shape[2] == 3
        ):  # a grayscale model (MNIST's): the luma, with the ITU-R 601 weights of PIL's convert("L")
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
        elif channels == 3 and image.shape[2] == 1:  # a colour model on grayscale arrays
            image = np.repeat(image, 3, axis=2)
        images.append(image)
    return np.stack(images), resized, digests if split.images is None else None


def training_images(run: RunRecord, digests: list[str] | None) -> dict:
    """How many of the evaluated files (their sha256 digests; None for decoded arrays) the model's store has in
    train/: "count" None when that cannot be told (arrays, or a store gone, changed, or predating the record), with the reason."""
    location = run.options.store if run.options is not None else None
    result = {
        "count": None,
        "of": len(digests) if digests is not None else None,
        "store": location,
        "unknown_because": None,
    }
    if digests is None:
        return {**result, "unknown_because": "the source's images are arrays, not image files"}
    if not location:
        return {**result, "unknown_because": "the run does not name its store"}
    try:
        storage = open_storage(location)
        raw = read_raw_attrs(storage) if storage.exists() else None
        attrs = StoreAttrs.from_json(raw, location) if raw is not None else None
    except UserError as exc:
        return {**result, "unknown_because": f"its store cannot be read ({exc})"}
    if attrs is None:
        return {**result, "unknown_because": f"its store {location} is not there"}
    if run.store_fingerprint is None or not StoreFingerprint.of(attrs).same_build(run.store_fingerprint):
        return {**result, "unknown_because": f"{location} is no longer the store it was trained from"}
    trained = train_file_digests(storage)
    if trained is None:
        return {
            **result,
            "unknown_because": f"its store {location} does not record its training files "
            "(built from arrays, or by an older augzarr)",
        }
    return {**result, "count": sum(key in trained for key in digest_keys(digests))}


def training_warning(metrics: dict, source) -> str | None:
    """evaluate --source's warning when the model trained on some of the images, naming how many; None when it did not."""
    if not metrics.get("training_source"):
        return None
    overlap = metrics.get("training_images") or {}
    if overlap.get("count"):
        what = (
            f"--source {source}: {overlap['count']:,} of its {count(overlap['of'], 'image')} {'was' if overlap['count'] == 1 else 'were'} "
            f"in the model's training data (found by content among the files its store {overlap['store']} was built from)"
        )
    else:
        what = f"--source {source} holds the images the model's store was built from (same folder or content hash): most of them were trained on"
    return f"{what}, so this is not a held-out score; use --store with its val or test split, or images the model never saw"


def training_note(metrics: dict) -> str | None:
    """A note when evaluate --source could not look for training images by content (only a whole copy of the source is recognised)."""
    reason = (metrics.get("training_images") or {}).get("unknown_because")
    if reason is None or metrics.get("training_source"):
        return None
    return (
        f"note: the model's training images could not be looked for among these by content: {reason}; only its whole "
        "source folder is recognised"
    )


def is_training_source(run: RunRecord, source) -> bool:
    """Whether `source` is the one the run's store was built from: the same kind at the recorded location, or
    the same content hash (computed as build-aug computes it, so a copy or a moved folder is recognised too)."""
    recorded = run.source_for_evaluate
    if recorded.location and recorded.kind == source.kind and source.is_location(recorded.location):
        return True
    return recorded.content_hash is not None and source.hash_without_decoding() == recorded.content_hash


RESIZE_EXAMPLES = 3  # sizes named in the note; every size and its count is in the JSON ("resized")


def resize_note(metrics: dict) -> str | None:
    """'resized N images from WxH to the model's 32x32', or, from several sizes, how many sizes and the most common
    few (a folder of photos has hundreds); None when none was resized."""
    sizes = metrics.get("resized", {}).get("from", {})
    if not sizes:
        return None
    total = count(sum(sizes.values()), "image")
    to = f"to the model's {metrics['resized']['to']}"
    if len(sizes) == 1:
        return f"resized {total} from {next(iter(sizes))} {to}"
    common = sorted(sizes.items(), key=lambda item: -item[1])[:RESIZE_EXAMPLES]  # stable: ties keep the sizes' order
    shown = ", ".join(f"{n:,} from {size}" for size, n in common)
    if len(sizes) <= RESIZE_EXAMPLES:
        return f"resized {total} ({shown}) {to}"
    return f"resized {total} from {len(sizes):,} different sizes ({shown}, and {count(len(sizes) - len(common), 'other size')}) {to}"


def format_metrics(metrics: dict) -> str:
    low, high = metrics["accuracy_ci95"]
    lines = [
        f"Test score: {metrics['loss']:.4f}",
        f"Test accuracy: {metrics['accuracy']:.4f}",
        f"95% interval of the accuracy (Wilson): {low:.3f}-{high:.3f}",
        f"expected calibration error: {metrics['calibration']['ece']:.4f} ({metrics['calibration']['bins']} equal-width confidence bins)",
        "per-class accuracy (95% interval, Wilson):",
    ]
    width = max(len(name) for name in metrics["per_class"])
    for name, row in metrics["per_class"].items():
        accuracy = "  n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        interval = "             " if row["ci95"] is None else f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}"
        lines.append(f"  {name:<{width}}  {accuracy}  {interval}  ({count(row['count'], 'image')})")
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
