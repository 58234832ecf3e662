"""Loss, accuracy, per-class accuracy (with Wilson intervals), the confusion matrix, calibration and the
most confidently wrong predictions of a model on a split or on arrays."""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # Keras' clip for the cross-entropy of probabilities
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On calibration of modern neural networks")
MAX_MISTAKES = 16  # the most confidently wrong predictions kept for the report (a 4x4 grid)


def wilson_interval(successes, trials, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a binomial proportion, elementwise: (lower, upper).

    Unlike the normal approximation p +- z sqrt(p(1-p)/n), it stays within [0, 1] and does not
    shrink to a point at 0 or n successes: 0 of 10 gives [0, 0.278], 10 of 10 [0.722, 1].
    Trials of 0 give NaN (nothing measured)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denominator = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denominator
        half = z / denominator * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exactly 0 and 1 at the ends, where rounding would leave 1e-17 or 0.9999999999999999
    lower = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    upper = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return np.where(n > 0, lower, np.nan), np.where(n > 0, upper, np.nan)


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of the top-class confidence, and the reliability table behind it.

    Each prediction's confidence is its largest softmax output; bin b holds the confidences in
    (b/bins, (b+1)/bins] (the first bin also takes 0). ECE = sum over bins of
    (images in the bin / all images) * |accuracy in the bin - mean confidence in the bin|:
    0 when, in every bin, the model is right as often as it says it is."""
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lower, upper]
    count = np.bincount(which, minlength=bins)
    sum_confidence = np.bincount(which, weights=confidence, minlength=bins)
    sum_correct = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    filled = count > 0
    accuracy = np.divide(sum_correct, count, out=np.zeros(bins), where=filled)
    mean_confidence = np.divide(sum_confidence, count, out=np.zeros(bins), where=filled)
    total = max(1, len(labels))
    ece = float(np.sum(count / total * np.abs(accuracy - mean_confidence)))
    return {
        "ece": ece,
        "bins": bins,
        "mean_confidence": float(confidence.mean()) if len(confidence) else None,
        "table": [
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": int(count[b]),
                "accuracy": float(accuracy[b]) if filled[b] else None,
                "mean_confidence": float(mean_confidence[b]) if filled[b] else None,
            }
            for b in range(bins)
        ],
    }


def confidently_wrong(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str], k: int = MAX_MISTAKES
) -> list[dict]:
    """The k wrong predictions made with the highest confidence, highest first (ties by row):
    row (in the evaluated order), true and predicted class, confidence."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")[:k]]
    return [
        {
            "row": int(i),
            "true": class_names[labels[i]],
            "predicted": class_names[predicted[i]],
            "confidence": float(confidence[i]),
        }
        for i in chosen
    ]


def metrics_from_probabilities(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    n_classes = len(class_names)
    labels = labels.astype(np.int64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1 - EPSILON)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    low, high = wilson_interval(np.diag(confusion), support)
    per_class = {
        name: {
            "accuracy": float(confusion[c, c] / support[c]) if support[c] else None,
            "count": int(support[c]),
            "ci95": [float(low[c]), float(high[c])] if support[c] else None,
        }
        for c, name in enumerate(class_names)
    }
    right = int((predicted == labels).sum())
    overall_low, overall_high = wilson_interval(right, len(labels))
    return {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((predicted == labels).mean()),
        "accuracy_ci95": [float(overall_low), float(overall_high)],
        "count": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        "calibration": calibration(probabilities, labels),
        "confidently_wrong": confidently_wrong(probabilities, labels, class_names),
    }


def evaluate_stream(model, stream, class_names: list[str]) -> dict:
    """Metrics of model on a finite StoreStream (stored order), predicting batch by batch."""
    probabilities = np.asarray(model.predict(stream, verbose=0))[
        : len(stream.labels)
    ]  # a distributed run's padding left out
    return metrics_from_probabilities(probabilities, stream.labels, class_names)


def evaluate_arrays(model, images: np.ndarray, labels: np.ndarray, class_names: list[str], batch_size: int) -> dict:
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return metrics_from_probabilities(np.asarray(probabilities), labels, class_names)


def stored_images(store, split: str, rows: list[int]) -> np.ndarray:
    """The images of `rows` of a store's split, numbered in the stored order evaluate_stream predicts in
    (the few rows of the mistakes grid: one read each)."""
    array = store.images(split)
    return np.stack([array[row] for row in rows]) if rows else np.zeros((0, *array.shape[1:]), np.uint8)


def class_gap(metrics: dict) -> tuple[str, float, str, float]:
    """(best class, its accuracy, worst class, its accuracy) among classes with examples."""
    scored = [(v["accuracy"], k) for k, v in metrics["per_class"].items() if v["accuracy"] is not None]
    (worst_acc, worst), (best_acc, best) = min(scored), max(scored)
    return best, best_acc, worst, worst_acc
