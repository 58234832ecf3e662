"""Which source image and copy goes in which row: the validation hold-out and the row order.

Everything here is a pure function of the labels, the counts and the seed, so a
resumed or re-run build lays out exactly the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Independent random streams derived from the user's seed.
SPLIT_STREAM = 1
ORDER_STREAM = 2
TIE_STREAM = 3


@dataclass
class SplitRows:
    """The rows of one split of the store."""

    source_index: np.ndarray  # int32: row of the image in the source split it came from
    copy_index: np.ndarray  # int16: 0 = original, k = k-th augmented copy
    labels: np.ndarray
    from_split: str  # the source split the images come from: "train", "test" or "val"

    def __len__(self) -> int:
        return len(self.source_index)


def hold_out_validation(
    labels: np.ndarray, val_fraction: float, seed: int, usable: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the usable source rows into (train, val), each sorted."""
    usable = np.ones(len(labels), bool) if usable is None else usable
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    members = [np.flatnonzero((labels == cls) & usable) for cls in np.unique(labels[usable])]
    counts = validation_counts(np.array([len(m) for m in members], np.int64), val_fraction, seed)
    val = [rng.permutation(rows)[:n_val] for rows, n_val in zip(members, counts)]
    val_rows = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    train_rows = np.setdiff1d(np.flatnonzero(usable), val_rows)
    return train_rows, val_rows


def validation_counts(sizes: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Images of each class to hold out: round(f * N) in all (at least 1 when f > 0), each class
    keeping at least one training image; a class gets the floor or the ceiling of its share f * n.

    Rounding each class on its own can miss the total by far (300 classes of 2 images at 0.2 hold
    out none), so the total is apportioned by largest remainder, ties broken by the seed. Where the
    per-class rounding already meets these rules it is kept, so such stores keep their rows.
    """
    per_class = np.array([int(round(val_fraction * n)) for n in sizes.tolist()], np.int64)
    target = round(val_fraction * int(sizes.sum()))
    if val_fraction > 0:
        target = max(1, target)
    target = min(target, int((sizes - 1).sum()))  # every class keeps one training image
    if int(per_class.sum()) == target and (per_class < sizes).all():
        return per_class
    quota = val_fraction * sizes
    counts = np.minimum(np.floor(quota).astype(np.int64), sizes - 1)
    tie = np.random.default_rng([seed, TIE_STREAM]).random(len(sizes))
    while counts.sum() < target:
        order = np.lexsort((tie, counts - quota))  # largest remainder first
        order = order[counts[order] < sizes[order] - 1]
        counts[order[: target - int(counts.sum())]] += 1
    return counts


def plan_rows(
    train_labels: np.ndarray,
    test_labels: np.ndarray | None,
    copies: int,
    include_original: bool,
    val_fraction: float,
    seed: int,
    skipped: dict[str, list[int]] | None = None,
    val_labels: np.ndarray | None = None,
) -> dict[str, SplitRows]:
    """The rows of every split. skipped: source rows left out (bad files under --skip-bad), by source split.
    val_labels: the source's own validation split (an image folder's val/): used as it is, and nothing
    is held out of train (val_fraction unused)."""
    skipped = skipped or {}
    usable_train = np.ones(len(train_labels), bool)
    usable_train[skipped.get("train", [])] = False
    if val_labels is None:
        train_sources, val_sources = hold_out_validation(train_labels, val_fraction, seed, usable_train)
    else:
        train_sources = np.flatnonzero(usable_train)
        val_sources = np.setdiff1d(np.arange(len(val_labels)), skipped.get("val", []))
    first_copy = 0 if include_original else 1
    copy_numbers = np.arange(first_copy, copies + 1)
    sources = np.repeat(train_sources, len(copy_numbers))
    copy_of_row = np.tile(copy_numbers, len(train_sources))
    # A seeded shuffle makes every chunk a fair sample of classes and sources.
    order = np.random.default_rng([seed, ORDER_STREAM]).permutation(len(sources))
    sources, copy_of_row = sources[order], copy_of_row[order]
    splits = {
        "train": SplitRows(sources.astype(np.int32), copy_of_row.astype(np.int16), train_labels[sources], "train"),
    }
    if len(val_sources):
        splits["val"] = (
            originals_only(val_sources, train_labels, "train")
            if val_labels is None
            else originals_only(val_sources, val_labels, "val")
        )
    if test_labels is not None and len(test_labels):
        test_sources = np.setdiff1d(np.arange(len(test_labels)), skipped.get("test", []))
        splits["test"] = originals_only(test_sources, test_labels, "test")
    return splits


def originals_only(source_rows: np.ndarray, labels: np.ndarray, from_split: str) -> SplitRows:
    return SplitRows(
        source_rows.astype(np.int32), np.zeros(len(source_rows), np.int16), labels[source_rows], from_split
    )
