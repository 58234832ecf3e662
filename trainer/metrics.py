"""Loss, accuracy, per-class accuracy and the confusion matrix of a model on a split or on arrays."""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # Keras' clip for the cross-entropy of probabilities


def metrics_from_probabilities(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    n_classes = len(class_names)
    labels = labels.astype(np.int64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1 - EPSILON)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    per_class = {
        name: {"accuracy": float(confusion[c, c] / support[c]) if support[c] else None, "count": int(support[c])}
        for c, name in enumerate(class_names)
    }
    return {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((predicted == labels).mean()),
        "count": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }


def evaluate_stream(model, stream, class_names: list[str]) -> dict:
    """Metrics of model on a finite StoreStream (stored order), predicting batch by batch."""
    probabilities = np.asarray(model.predict(stream, verbose=0))[:len(stream.labels)]  # a distributed run's padding left out
    return metrics_from_probabilities(probabilities, stream.labels, class_names)


def evaluate_arrays(model, images: np.ndarray, labels: np.ndarray, class_names: list[str], batch_size: int) -> dict:
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return metrics_from_probabilities(np.asarray(probabilities), labels, class_names)


def class_gap(metrics: dict) -> tuple[str, float, str, float]:
    """(best class, its accuracy, worst class, its accuracy) among classes with examples."""
    scored = [(v["accuracy"], k) for k, v in metrics["per_class"].items() if v["accuracy"] is not None]
    (worst_acc, worst), (best_acc, best) = min(scored), max(scored)
    return best, best_acc, worst, worst_acc
