"""train --mix mixup|cutmix: each training batch mixed with a shuffled copy of itself, labels made soft.

Done in the stream, not with keras.layers.MixUp / CutMix: those draw from their own seed generator,
whereas these draws come from (seed, epoch, batch) alone, as the online operations' do, so the same
seed gives the same run and --resume the same batches, on every Keras backend. The maths is theirs:

  mixup   image = lam * a + (1 - lam) * b, rounded back to uint8 (the model takes uint8; rounding moves
          a pixel by at most 1/510 of the range); label = lam * onehot(a) + (1 - lam) * onehot(b);
          lam ~ Beta(alpha, alpha) per image (Zhang et al., 2018). Default alpha 0.2.
  cutmix  a box of b pasted into a, its area a fraction 1 - lam of the image (lam ~ Beta(alpha, alpha)),
          centred at random and cut off at the edges; the label weights are the areas actually kept
          (Yun et al., 2019). Default alpha 1.0.

The partner of image i is image perm[i] of the same batch, perm a seeded permutation.
"""

from __future__ import annotations

import numpy as np

from .options import MIXES

STREAM_TAG = 0x0313  # keeps these draws apart from the online operations'


class BatchMix:
    def __init__(self, kind: str, alpha: float, n_classes: int, seed: int):
        if kind not in MIXES:
            raise ValueError(f"unknown mix {kind!r}: choose from {', '.join(MIXES)}")
        self.kind, self.alpha, self.n_classes, self.seed = kind, alpha, n_classes, seed

    def __call__(self, images: np.ndarray, labels: np.ndarray, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, batch, STREAM_TAG])
        n = len(images)
        partner = rng.permutation(n)
        lam = rng.beta(self.alpha, self.alpha, n)
        centres = rng.random((n, 2))
        if self.kind == "mixup":
            weight = lam[:, None, None, None]
            mixed = np.rint(weight * images + (1 - weight) * images[partner]).astype(np.uint8)
            kept = lam
        else:
            box = cut_box(images.shape, 1 - lam, centres)
            mixed = np.where(box[..., None], images[partner], images)
            kept = 1 - box.mean(axis=(1, 2))
        soft = one_hot(labels, self.n_classes) * kept[:, None].astype(np.float32)
        soft += one_hot(labels[partner], self.n_classes) * (1 - kept[:, None]).astype(np.float32)
        return mixed, soft


def cut_box(shape: tuple[int, ...], area: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[n, H, W]: True inside each image's box of the given area fraction (sides sqrt(area) of the image's),
    centred at centres (in [0, 1) of the sides) and cut off at the edges."""
    n, height, width = shape[:3]
    half_y = np.sqrt(area) * height / 2
    half_x = np.sqrt(area) * width / 2
    cy, cx = centres[:, 0] * height, centres[:, 1] * width
    top, bottom = np.clip(np.rint(cy - half_y), 0, height), np.clip(np.rint(cy + half_y), 0, height)
    left, right = np.clip(np.rint(cx - half_x), 0, width), np.clip(np.rint(cx + half_x), 0, width)
    rows, cols = np.arange(height)[None, :], np.arange(width)[None, :]
    inside_y = (rows >= top[:, None]) & (rows < bottom[:, None])
    inside_x = (cols >= left[:, None]) & (cols < right[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]
