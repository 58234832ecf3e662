"""train --online: cheap random operations on each stored row as it is streamed, on top of the stored copies.

Fixed copies lose the per-epoch randomness that online augmentation has; these ops bring it back at
almost no cost. They work on a whole uint8 batch at once (numpy broadcasting and one gather, no
per-image Python), and their random draws come from (seed, epoch, batch) alone, so the same seed and
store give the same batches, and a resumed run sees the batches the uninterrupted one would have.

  flip   mirror left-right, each image with probability 1/2
  shift  pad by 1/8 of the side (4 px at 32) with black, then crop back at a random offset in each axis:
         a random translation by up to 1/8 of the side, as the crop-flip preset does offline
  erase  cutout: a square a quarter of the side (8 px at 32) filled with mid-grey (128) at a random
         centre, which may lie near an edge so the square is partly outside (DeVries & Taylor, 2017)
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .options import ONLINE_OPS, parse_online  # noqa: F401  (the names' one home, importable without numpy)

SHIFT_FRACTION = 1 / 8
ERASE_FRACTION = 1 / 4
ERASE_FILL = 128
STREAM_TAG = 0x0A11  # keeps these draws apart from any other use of (seed, epoch, batch)


class OnlineAugment:
    """ops applied to batches: a new array each time, the stream's window left as stored."""

    def __init__(self, ops: tuple[str, ...], seed: int):
        self.ops, self.seed = ops, seed

    def __call__(self, images: np.ndarray, epoch: int, batch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, batch, STREAM_TAG])
        # draws in a fixed order whatever the ops, so adding one leaves the others' draws alone
        flipped = rng.random(len(images)) < 0.5
        offsets = rng.random((len(images), 2))
        centres = rng.random((len(images), 2))
        out = shift(images, offsets) if "shift" in self.ops else images.copy()
        if "flip" in self.ops:
            flip(out, flipped)
        if "erase" in self.ops:
            erase(out, centres)
        return out


def pixels(images: np.ndarray) -> np.ndarray:
    """[n, H, W] view of [n, H, W, C] uint8 images, one element per pixel: moving whole pixels (C bytes
    at a time) instead of single bytes makes these gathers 2-3x faster."""
    return images.view(np.dtype((np.void, images.shape[3])))[..., 0]


def shift(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each image padded by 1/8 of its side with black and cropped back at its own offset (offsets
    in [0, 1) pick the crop's corner among the 2 * pad + 1 positions of each axis)."""
    n, height, width, channels = images.shape
    pad_y, pad_x = max(1, round(height * SHIFT_FRACTION)), max(1, round(width * SHIFT_FRACTION))
    padded = np.zeros((n, height + 2 * pad_y, width + 2 * pad_x, channels), np.uint8)
    padded[:, pad_y : pad_y + height, pad_x : pad_x + width] = images
    top = (offsets[:, 0] * (2 * pad_y + 1)).astype(np.intp)
    left = (offsets[:, 1] * (2 * pad_x + 1)).astype(np.intp)
    # every crop of every image as a view, then one gather of the chosen crop per image
    crops = sliding_window_view(pixels(padded), (height, width), axis=(1, 2))  # [n, positions y, positions x, H, W]
    return crops[np.arange(n), top, left].view(np.uint8).reshape(images.shape)


def flip(images: np.ndarray, chosen: np.ndarray) -> None:
    """In place: the chosen images mirrored left-right."""
    view, index = pixels(images), np.flatnonzero(chosen)
    view[index] = view[index, :, ::-1]


def erase(images: np.ndarray, centres: np.ndarray) -> None:
    """In place: each image's square, a quarter of the side, centred at its centre (in [0, 1) of the
    side) and cut off where it passes an edge, set to ERASE_FILL."""
    n, height, width = images.shape[:3]
    size_y, size_x = max(1, round(height * ERASE_FRACTION)), max(1, round(width * ERASE_FRACTION))
    top = (centres[:, 0] * height).astype(np.intp) - size_y // 2
    left = (centres[:, 1] * width).astype(np.intp) - size_x // 2
    # rows and columns past an edge clip onto the edge's, which the square covers anyway: one scatter
    rows = np.clip(top[:, None] + np.arange(size_y), 0, height - 1)
    cols = np.clip(left[:, None] + np.arange(size_x), 0, width - 1)
    images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = ERASE_FILL
