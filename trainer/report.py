"""What a run folder shows a person: history CSV, curves, confusion, reliability and mistakes PNGs, the model card."""

from __future__ import annotations

import csv
import functools
import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402

from augzarr.fonts import font_with_glyphs  # noqa: E402
from augzarr.storage.local import write_atomic  # noqa: E402
from augzarr.store_format import StoreAttrs, describe_codec  # noqa: E402
from augzarr.wording import count  # noqa: E402

from .applications import APPLICATIONS  # noqa: E402
from .metrics import class_gap  # noqa: E402
from .options import TrainOptions  # noqa: E402
from .records import DevicesUsed, ModelInfo, RunRecord  # noqa: E402

HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    "images_per_second",
)


def glyphs_quiet(draw):
    """A plot function whose texts no font here can draw (a path in a script DejaVu lacks) draws them as boxes
    without matplotlib's warning on stderr: class names get a font that has them, or their index, before that."""

    @functools.wraps(draw)
    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Glyph .* missing")
            return draw(*args, **kwargs)

    return quiet


def text_font(text: str) -> FontProperties | None:
    """The font for a text of the plots: one with all its glyphs (augzarr.fonts), None when no font here has them."""
    path = font_with_glyphs(text)
    return None if path is None else FontProperties(fname=path)


def history_csv(history: list[dict]) -> str:
    columns = [c for c in HISTORY_COLUMNS if any(c in row for row in history)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


@glyphs_quiet
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


@glyphs_quiet
def plot_confusion(metrics: dict, path: Path, title: str) -> None:
    figure = confusion_figure(metrics, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def class_ticks(axis, names: list[str]) -> bool:
    """Both axes' ticks labelled with the class names, each in a font that has its glyphs, or with the class index
    where no font here has them (CJK without a CJK font); True when some name had to be an index."""
    fonts = [text_font(name) for name in names]
    labels = [name if font else str(i) for i, (name, font) in enumerate(zip(names, fonts))]
    axis.set_xticks(range(len(names)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), labels)
    for ticks in (axis.get_xticklabels(), axis.get_yticklabels()):
        for tick, font in zip(ticks, fonts):
            if font is not None:
                tick.set_fontproperties(font)
    return None in fonts


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
        if class_ticks(axis, names):
            axis.set_xlabel(
                "predicted (a number is a class index: a name no font here can draw; names in metrics.json)"
            )
    else:
        axis.set_xlabel("predicted (class index; names in metrics.json)")
        axis.set_ylabel("true (class index)")
        side.axis("off")
        side.set_title(f"most confused of {len(names)} classes", loc="left")
        pairs = [
            (count, shown_name(names, i), shown_name(names, j))
            for i, j, count in most_confused(confusion, TOP_CONFUSED)
        ]
        listing = "\n".join(f"{count:,}  {true} -> {predicted}" for count, true, predicted in pairs) or "none"
        side.text(
            0, 1, listing, va="top", ha="left", transform=side.transAxes, fontsize=11, fontproperties=text_font(listing)
        )
    threshold = confusion.max() / 2 if confusion.size else 0
    if len(names) <= MAX_CELL_COUNTS:
        for (i, j), value in np.ndenumerate(confusion):
            axis.text(
                j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > threshold else "black"
            )
    figure.tight_layout()
    return figure


def shown_name(names: list[str], index: int) -> str:
    """A class name as a plot can draw it: itself, or 'class N' when no font here has its glyphs."""
    return names[index] if font_with_glyphs(names[index]) else f"class {index}"


def most_confused(confusion: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the k largest off-diagonal cells, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]  # ties in row order
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


RELIABILITY_PNG = "reliability.png"  # the run folder's names; evaluate --json puts its own beside the JSON
MISTAKES_PNG = "mistakes.png"
MISTAKE_COLUMNS = 4
MAX_LABEL_CHARS = 18  # a class name in a mistakes tile is cut to this


@glyphs_quiet
def save_png(figure, path: Path) -> None:
    """The figure as a PNG, written whole (a kill leaves the old file or the new, never half an image)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


@glyphs_quiet
def plot_reliability(calibration: dict, path: Path, title: str) -> None:
    """The reliability diagram: accuracy against mean confidence per confidence bin (on the diagonal
    when calibrated), the gap shaded, and how many predictions fell in each bin below it."""
    table = calibration["table"]
    lower = np.array([row["lower"] for row in table])
    width = table[0]["upper"] - table[0]["lower"]
    filled = np.array([row["count"] > 0 for row in table])
    accuracy = np.array([row["accuracy"] or 0.0 for row in table])
    confidence = np.array([row["mean_confidence"] or 0.0 for row in table])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    top.bar(
        lower[filled],
        accuracy[filled],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        lower[filled],
        (confidence - accuracy)[filled],
        bottom=accuracy[filled],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE {calibration['ece']:.3f} ({calibration['bins']} equal-width bins)")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(lower, [row["count"] for row in table], width=width, align="edge", color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (largest softmax output)")
    bottom.set_ylabel("images")
    figure.tight_layout()
    save_png(figure, path)


@glyphs_quiet
def plot_mistakes(images: np.ndarray, mistakes: list[dict], path: Path, title: str) -> None:
    """The most confidently wrong images in a grid, each titled with its true and predicted class and
    the confidence; a figure saying so when there is no wrong prediction."""
    if not mistakes:
        figure, axis = plt.subplots(figsize=(4, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, f"{title}\nno wrong predictions", ha="center", va="center")
        save_png(figure, path)
        return
    columns = min(MISTAKE_COLUMNS, len(mistakes))
    rows = -(-len(mistakes) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.6 * rows + 0.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, mistake in zip(axes.flat, images, mistakes):
        gray = image.shape[-1] == 1
        axis.imshow(
            image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest"
        )
        label = (
            f"true: {mistake['true'][:MAX_LABEL_CHARS]}\npredicted: {mistake['predicted'][:MAX_LABEL_CHARS]}\n"
            f"confidence {mistake['confidence']:.3f}"
        )
        axis.set_title(label, fontsize=8, fontproperties=text_font(label))
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_png(figure, path)


def epoch_training_rates(history: list[dict]) -> list[float]:
    """Each epoch's training images/s (steps only, no validation), from run.json rows or history.csv's strings;
    epochs resumed from runs older than the column have none."""
    return [float(row["images_per_second"]) for row in history if row.get("images_per_second")]


def median_training_rate(history: list[dict]) -> float | None:
    """The run's training rate: the median epoch's, so a slow first epoch (tracing) or a noisy one does not move it."""
    rates = epoch_training_rates(history)
    return float(np.median(rates)) if rates else None


def training_rate_lines(history: list[dict], backend: str | None) -> list[str]:
    """The training rate this machine reached, from the epochs that recorded it."""
    rates = epoch_training_rates(history)
    if not rates:
        return []
    return [
        f"- training rate: {median_training_rate(history):,.0f} images/s (median of {count(len(rates), 'epoch')}; first {rates[0]:,.0f}, "
        f"last {rates[-1]:,.0f}) on the {backend} backend, validation not counted"
    ]


def model_line(model: ModelInfo) -> str:
    """Which model was trained: a built-in name, or the user's own (train --model PATH.py:FUNCTION or PATH.keras) with its file's sha256."""
    line = f"- model: `{model.spec}`, {model.parameters or 0:,} parameters"
    if model.kind == "python":
        line += f"; your own, built by `{model.function}()` in `{model.file}` (sha256 `{model.sha256}`), " + (
            "compiled there and compiled again by train" if model.came_compiled else "compiled by train"
        )
    elif model.kind == "keras":
        line += f"; your own, loaded from `{model.file}` (sha256 `{model.sha256}`) with its weights, compiled by train"
    return line


def weights_line(options: TrainOptions, model: ModelInfo) -> str | None:
    """Which weights a keras.applications model started from: none (from scratch), or the file, from where, its hash."""
    if options.model not in APPLICATIONS:
        return None
    if options.weights == "none" or not model.weights_file:
        return "- starting weights: none, trained from scratch (--weights none)"
    if model.weights_url:
        where = (
            f"ImageNet, downloaded from {model.weights_url} into Keras' cache as `{model.weights_file}`"
            if model.weights_downloaded
            else f"ImageNet, from Keras' cache `{model.weights_file}` (published at {model.weights_url})"
        )
    else:
        where = f"from `{model.weights_file}` (--weights PATH)"
    published = (
        "the file Keras publishes" if model.weights_published else "not the file Keras publishes: its md5 differs"
    )
    return f"- starting weights: {where}; sha256 `{model.weights_sha256}`; {published}"


def schedule_line(run: RunRecord) -> str | None:
    """--freeze-epochs: which epochs trained over a frozen backbone, and the fine-tuning rate after them."""
    options = run.options
    if not options.freeze_epochs:
        return None
    tuned = options.epochs - options.freeze_epochs
    return (
        f"- transfer learning: epochs 1-{options.freeze_epochs} trained the new classifier over the frozen backbone at "
        f"learning rate {run.learning_rate or 0:g}; "
        + (
            f"then the whole model was fine-tuned for {tuned} epochs at {run.fine_tune_learning_rate or 0:g} "
            f"({options.lr_schedule}), the backbone's BatchNormalization kept in inference mode"
            if tuned
            else "the backbone was never fine-tuned (--freeze-epochs equals --epochs)"
        )
    )


def devices_line(devices: DevicesUsed, batch_size: int) -> str:
    if devices.names and devices.distributed:
        return f"- devices: data-parallel over {devices.count} ({', '.join(devices.names)}), global batch {batch_size}"
    if devices.names:
        return f"- devices: one ({devices.names[0]}); --distribute found no second device, so the run trained without distribution"
    return "- devices: one"


def model_card(run: RunRecord, store_attrs: StoreAttrs, metrics: dict, history: list[dict]) -> str:
    """The run's model card (model_card.md), section by section: data, training, results, use and its limits."""
    model = run.model or ModelInfo(run.options.model)
    title = f"# Model card: {run.options.model}{'' if model.is_own else ' CNN'}, {run.run_dir}"
    lines = [
        title,
        "",
        *data_lines(run.options, store_attrs, metrics),
        "",
        *training_lines(run, model, history),
        "",
        *results_lines(run.evaluated_on, metrics),
        "",
        *calibration_lines(metrics, run.evaluated_on),
        "",
        *mistake_lines(metrics, run.evaluated_on),
        "",
        *use_lines(run, store_attrs, metrics),
    ]
    return "\n".join(lines) + "\n"


def data_lines(options: TrainOptions, store_attrs: StoreAttrs, metrics: dict) -> list[str]:
    source, policy = store_attrs.source, store_attrs.policy
    return [
        "## Data and provenance",
        "",
        f"- store: `{options.store}` (augzarr format {store_attrs.format_version}, built {(store_attrs.built or {}).get('finished_utc', '?')})",
        f"- images stored as: {describe_codec(store_attrs.codec_spec.text, (store_attrs.codec or {}).get('encoder', {}))}",
        f"- source: {source.kind} `{source.location}`, {source.train_count:,} training and {source.test_count:,} test images"
        + (f" (limited to the first {source.limit:,})" if source.limit else ""),
        f"- source content hash: `{source.content_hash}`",
        *provenance_lines(store_attrs),
        f"- augmentation policy: `{policy.get('name')}`; copies per image: {store_attrs.copies}; originals included: {store_attrs.include_original}; build seed: {store_attrs.seed}",
        (
            f"- validation: {store_attrs.val_fraction} of the training images, held out (stratified) before augmenting"
            if store_attrs.val_fraction is not None
            else f"- validation: the source's own validation folder ({source.layout})"
        ),
        f"- classes ({len(metrics['class_names'])}): {', '.join(metrics['class_names'])}",
        f"- image shape: {tuple(store_attrs.image_shape)}",
    ]


def training_lines(run: RunRecord, model: ModelInfo, history: list[dict]) -> list[str]:
    options = run.options
    final = history[-1] if history else {}
    mixing = f"{options.mix} alpha {run.mix_alpha:g}" if options.mix else "none"
    return [
        "## Training",
        "",
        model_line(model),
        *filter(None, [weights_line(options, model), schedule_line(run)]),
        f"- optimizer: {options.optimizer}, learning rate {run.learning_rate or 0:g} ({options.lr_schedule}), batch size {options.batch_size}, "
        f"epochs {options.epochs}, seed {options.seed}",
        f"- rows per epoch: {run.train_rows or 0:,} (shuffled by chunk windows of {options.buffer_chunks} chunks); "
        f"Keras {run.versions.get('keras')} on the {run.backend} backend",
        f"- augmentation while training: online operations on each batch {options.online or 'none'}; batch mixing {mixing}; Keras "
        f"augmentation layers {options.keras_augment or 'none'}",
        devices_line(run.devices, options.batch_size),
        *training_rate_lines(history, run.backend),
        f"- final epoch: loss {final.get('loss', float('nan')):.4f}, accuracy {final.get('accuracy', float('nan')):.4f}"
        + (
            f", val loss {final['val_loss']:.4f}, val accuracy {final['val_accuracy']:.4f}"
            if "val_loss" in final
            else ""
        ),
    ]


def results_lines(evaluated_on: str, metrics: dict) -> list[str]:
    best, best_acc, worst, worst_acc = class_gap(metrics)
    lines = [
        f"## Results on {evaluated_on} ({count(metrics['count'], 'image')})",
        "",
        f"- loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f} (95% interval {interval(metrics.get('accuracy_ci95'))})",
        f"- best class: {best} ({best_acc:.3f}); worst class: {worst} ({worst_acc:.3f}); gap {best_acc - worst_acc:.3f}",
        "- each 95% interval is the Wilson score interval of the accuracy for that many images: wide for a class of few "
        "images, so classes whose intervals overlap may not truly differ",
        "",
        "| class | images | accuracy | 95% interval |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in metrics["per_class"].items():
        accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        lines.append(f"| {name} | {row['count']:,} | {accuracy} | {interval(row.get('ci95'))} |")
    return lines


def use_lines(run: RunRecord, store_attrs: StoreAttrs, metrics: dict) -> list[str]:
    """What the model is for, in its trainer's words, and the limits of its use that the figures show."""
    best, best_acc, worst, worst_acc = class_gap(metrics)
    lines = [
        "## Intended use and out-of-scope uses",
        "",
        *(
            quoted(run.intended_use)
            if run.intended_use
            else [
                "_Not given: whoever trained this model did not state what it is for (train --intended-use TEXT records it). "
                "Without that statement, treat every use beyond judging this experiment as out of scope._"
            ]
        ),
        "",
        "## Known limits of use",
        "",
        f"- Trained on {tuple(store_attrs.image_shape)} images of these {count(len(metrics['class_names']), 'class')} only: "
        "any other image is forced into one of them; there is no 'none of these' answer.",
        "- Accuracy is measured on images from the same source as the training data; photos from other cameras, "
        "crops or resolutions can score lower.",
        f"- Per-class accuracy differs by {best_acc - worst_acc:.3f} between the best and the worst class: do not assume "
        "the overall accuracy holds for every class.",
        f"- A softmax output is not the chance of being right: on the {run.evaluated_on} split the expected calibration "
        f"error is {metrics['calibration']['ece']:.3f} (Calibration above), the average gap between confidence and accuracy; "
        "on other images it can be larger.",
    ]
    if run.evaluated_on != "test":
        lines.append(
            "- The store has no test split: these results are on the validation split, held out from training "
            "(no copy of its images was trained on) and used for no choice here, but not an independent test set."
        )
    return lines


def interval(bounds: list[float] | None) -> str:
    return "n/a" if bounds is None else f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def quoted(text: str) -> list[str]:
    """A user's own words, as a Markdown quote: every line of it kept, none read as the card's own headings."""
    return [f"> {line}".rstrip() for line in text.splitlines()]


def provenance_lines(attrs: StoreAttrs) -> list[str]:
    """The store's license and provenance (build-aug --license, --provenance), as given; said to be missing when not."""
    lines = []
    for name, value in (("license", attrs.license), ("provenance", attrs.provenance)):
        if value:
            lines += [f"- {name} (recorded in the store by build-aug --{name}):", "", *quoted(value), ""]
        else:
            lines.append(f"- {name}: not recorded in the store (build-aug --{name} TEXT records it)")
    return lines


def calibration_lines(metrics: dict, evaluated_on: str) -> list[str]:
    found = metrics["calibration"]
    mean_confidence, accuracy = found["mean_confidence"], metrics["accuracy"]
    leaning = (
        "overconfident"
        if mean_confidence > accuracy
        else "underconfident"
        if mean_confidence < accuracy
        else "neither over- nor underconfident"
    )
    return [
        "## Calibration",
        "",
        f"- expected calibration error (ECE) on {evaluated_on}: {found['ece']:.3f}; mean confidence {mean_confidence:.3f} "
        f"against accuracy {accuracy:.3f}: {leaning} on average",
        f"- ECE: the predictions are sorted into {found['bins']} equal-width bins of their confidence (the largest softmax "
        "output); it is the mean, weighted by each bin's share of the images, of |accuracy - mean confidence| in the bin "
        "(0: right exactly as often as confident)",
        f"- reliability diagram: [{RELIABILITY_PNG}]({RELIABILITY_PNG})",
    ]


def mistake_lines(metrics: dict, evaluated_on: str) -> list[str]:
    mistakes = metrics["confidently_wrong"]
    if not mistakes:
        every = "the one image was" if metrics["count"] == 1 else f"every one of the {metrics['count']:,} images was"
        return ["## Most confident mistakes", "", f"- none: {every} classified correctly"]
    return [
        "## Most confident mistakes",
        "",
        f"- the {count(len(mistakes), 'wrong prediction')} made with the highest confidence, as images: [{MISTAKES_PNG}]({MISTAKES_PNG}); "
        f"row: the image's row in the store's {evaluated_on} split",
        "",
        "| row | true | predicted | confidence |",
        "| ---: | --- | --- | ---: |",
        *(f"| {m['row']} | {m['true']} | {m['predicted']} | {m['confidence']:.3f} |" for m in mistakes),
    ]
