"""What a run folder shows a person: history CSV, curves and confusion PNGs, the model card."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from augzarr.store_format import StoreAttrs  # noqa: E402

from .metrics import class_gap  # noqa: E402

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds", "images_per_second")


def history_csv(history: list[dict]) -> str:
    columns = [c for c in HISTORY_COLUMNS if any(c in row for row in history)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, [row.get(metric) for row in history], marker="o", label="train")
        if any("val_" + metric in row for row in history):
            axis.plot(epochs, [row.get("val_" + metric) for row in history], marker="o", label="val")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


MAX_FIGURE_INCHES = 40  # 4,000 px at 100 dpi, whatever the class count: Pillow refuses images above ~13,000 px square
MAX_NAMED_CLASSES = 60  # beyond this, names on the axes would overlap: the matrix is drawn by class index
MAX_CELL_COUNTS = 20  # beyond this, a count in every cell would not fit
TOP_CONFUSED = 20  # the most confused pairs listed beside an unnamed matrix


def plot_confusion(metrics: dict, path: Path, title: str) -> None:
    figure = confusion_figure(metrics, title)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing")  # a class name in a script DejaVu lacks: drawn as boxes, no noise
        figure.savefig(path, dpi=100)
    plt.close(figure)


def confusion_figure(metrics: dict, title: str):
    """The confusion matrix, at most MAX_FIGURE_INCHES square. Up to MAX_NAMED_CLASSES classes
    the axes name every class; beyond that they show class indices (the names are in
    metrics.json, in that order) and the most confused pairs are listed by name beside it."""
    confusion = np.array(metrics["confusion_matrix"])
    names = metrics["class_names"]
    named = len(names) <= MAX_NAMED_CLASSES
    size = min(MAX_FIGURE_INCHES, max(4.0, 0.6 * len(names) + 2))
    if named:
        figure, axis = plt.subplots(figsize=(size, size))
    else:
        figure, (axis, side) = plt.subplots(1, 2, figsize=(size, size * 0.75), width_ratios=(3, 1))
    axis.imshow(confusion, cmap="Blues", interpolation="nearest")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if named:
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_yticks(range(len(names)), names)
    else:
        axis.set_xlabel("predicted (class index; names in metrics.json)")
        axis.set_ylabel("true (class index)")
        side.axis("off")
        side.set_title(f"most confused of {len(names)} classes", loc="left")
        side.text(0, 1, "\n".join(f"{count:,}  {names[i]} -> {names[j]}" for i, j, count in most_confused(confusion, TOP_CONFUSED)) or "none",
                  va="top", ha="left", transform=side.transAxes, fontsize=11)
    threshold = confusion.max() / 2 if confusion.size else 0
    if len(names) <= MAX_CELL_COUNTS:
        for (i, j), value in np.ndenumerate(confusion):
            axis.text(j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > threshold else "black")
    figure.tight_layout()
    return figure


def most_confused(confusion: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the k largest off-diagonal cells, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]  # ties in row order
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


def training_rate_lines(history: list[dict], run: dict) -> list[str]:
    """The training rate this machine reached, from the epochs that recorded it (none before a resume from older runs)."""
    rates = [row["images_per_second"] for row in history if row.get("images_per_second")]
    if not rates:
        return []
    return [f"- training rate: {float(np.median(rates)):,.0f} images/s (median of {len(rates)} epochs; first {rates[0]:,.0f}, "
            f"last {rates[-1]:,.0f}) on the {run.get('backend')} backend, validation not counted"]


def model_line(run: dict) -> str:
    """Which model was trained: a built-in name, or the user's own (train --model PATH.py:FUNCTION or PATH.keras) with its file's sha256."""
    model = run.get("model") or {"spec": run["options"]["model"], "kind": "built-in"}
    line = f"- model: `{model['spec']}`, {run.get('parameters', 0):,} parameters"
    if model["kind"] == "python":
        line += (f"; your own, built by `{model['function']}()` in `{model['file']}` (sha256 `{model['sha256']}`), "
                 + ("compiled there and compiled again by train" if model.get("came_compiled") else "compiled by train"))
    elif model["kind"] == "keras":
        line += f"; your own, loaded from `{model['file']}` (sha256 `{model['sha256']}`) with its weights, compiled by train"
    return line


def model_card(run: dict, store_attrs: StoreAttrs, metrics: dict, history: list[dict]) -> str:
    options = run["options"]
    source, policy = store_attrs.source, store_attrs.policy
    best, best_acc, worst, worst_acc = class_gap(metrics)
    final = history[-1] if history else {}
    lines = [
        f"# Model card: {options['model']}{' CNN' if run.get('model', {}).get('kind', 'built-in') == 'built-in' else ''}, {run['run_dir']}",
        "",
        "## Data and provenance",
        "",
        f"- store: `{options['store']}` (augzarr format {store_attrs.format_version}, built {(store_attrs.built or {}).get('finished_utc', '?')})",
        f"- source: {source.kind} `{source.location}`, {source.train_count:,} training and {source.test_count:,} test images"
        + (f" (limited to the first {source.limit:,})" if source.limit else ""),
        f"- source content hash: `{source.content_hash}`",
        f"- augmentation policy: `{policy.get('name')}`; copies per image: {store_attrs.copies}; originals included: {store_attrs.include_original}; build seed: {store_attrs.seed}",
        (f"- validation: {store_attrs.val_fraction} of the training images, held out (stratified) before augmenting"
         if store_attrs.val_fraction is not None else f"- validation: the source's own validation folder ({source.layout})"),
        f"- classes ({len(metrics['class_names'])}): {', '.join(metrics['class_names'])}",
        f"- image shape: {tuple(store_attrs.image_shape)}",
        "",
        "## Training",
        "",
        model_line(run),
        f"- optimizer: {options['optimizer']}, learning rate {run.get('learning_rate', 0):g} ({options.get('lr_schedule', 'constant')}), batch size {options['batch_size']}, epochs {options['epochs']}, seed {options['seed']}",
        f"- rows per epoch: {run.get('train_rows', 0):,} (shuffled by chunk windows of {options['buffer_chunks']} chunks); "
        f"Keras {run.get('versions', {}).get('keras')} on the {run.get('backend')} backend",
        f"- augmentation while training: online operations on each batch {options.get('online') or 'none'}; batch mixing "
        f"{(options['mix'] + ' alpha ' + format(run.get('mix_alpha'), 'g')) if options.get('mix') else 'none'}; Keras "
        f"augmentation layers {options.get('keras_augment') or 'none'}",
        (f"- devices: data-parallel over {run.get('device_count')} ({', '.join(run['devices'])}), global batch {options['batch_size']}"
         if run.get("devices") else "- devices: one"),
        *training_rate_lines(history, run),
        f"- final epoch: loss {final.get('loss', float('nan')):.4f}, accuracy {final.get('accuracy', float('nan')):.4f}"
        + (f", val loss {final['val_loss']:.4f}, val accuracy {final['val_accuracy']:.4f}" if "val_loss" in final else ""),
        "",
        f"## Results on {run['evaluated_on']} ({metrics['count']:,} images)",
        "",
        f"- loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}",
        f"- best class: {best} ({best_acc:.3f}); worst class: {worst} ({worst_acc:.3f}); gap {best_acc - worst_acc:.3f}",
        "",
        "| class | images | accuracy |",
        "| --- | ---: | ---: |",
    ]
    for name, row in metrics["per_class"].items():
        accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        lines.append(f"| {name} | {row['count']:,} | {accuracy} |")
    lines += [
        "",
        "## Known limits of use",
        "",
        f"- Trained on {tuple(store_attrs.image_shape)} images of these {len(metrics['class_names'])} classes only: "
        "any other image is forced into one of them; there is no 'none of these' answer.",
        "- Accuracy is measured on images from the same source as the training data; photos from other cameras, "
        "crops or resolutions can score lower.",
        f"- Per-class accuracy differs by {best_acc - worst_acc:.3f} between the best and the worst class: do not assume "
        "the overall accuracy holds for every class.",
        "- The softmax outputs are not calibrated probabilities.",
    ]
    if run["evaluated_on"] != "test":
        lines.append("- The store has no test split: these results are on the validation split, held out from training "
                     "(no copy of its images was trained on) and used for no choice here, but not an independent test set.")
    return "\n".join(lines) + "\n"
