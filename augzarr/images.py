"""One encoded source image (a file, or a row of a dataset's file) into an RGB uint8 array; its digest; its size.

Shared by build-aug's workers and evaluate --source, so it lives here and not in builder/. An image reaches
this module as an ImageItem: anything with read_bytes() and a str() that names it in a message, picklable
so that a worker process, or a Dask worker on another machine, reads it itself. A Path is one.

OpenCV decodes small JPEGs about twice as fast as Pillow (55 vs 117 us for a 32x32 CIFAR JPEG here) with
identical pixels, and it already converts every mode (grayscale, palette, alpha, 16-bit, CMYK) to 3 channels
and applies EXIF orientation, so it is the decoder; Pillow is only used for the image-size probe.
Importing this module sets OpenCV's process-wide pixel limit and thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from typing import Protocol

# Refuse to decode more pixels than this, before allocating them (OpenCV reads the limit on
# its first decode; its own default, 2**30, lets a 1.2 GB decompression bomb through).
MAX_IMAGE_PIXELS = int(os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(1 << 27)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from augzarr.errors import UserError  # noqa: E402
from augzarr.wording import shown  # noqa: E402,F401  (messages name items with it)

cv2.setNumThreads(1)  # parallelism comes from worker processes, not OpenCV threads

JPEG_END_OF_IMAGE = b"\xff\xd9"
SKIP_HINT = "or pass --skip-bad to leave it out"  # ends every message about one bad image, unless skipping
EXIF_ORIENTATION = 0x0112


class ImageItem(Protocol):
    """One source image, not decoded: a Path, or a reference such as a row of a file (sources/hf_datasets.py).
    Absolute, so that it means the same in a worker started in another folder."""

    def read_bytes(self) -> bytes:
        """The encoded image (OSError when it cannot be read)."""

    def is_file(self) -> bool:
        """Whether the file holding it is there (a cluster worker that cannot see it gets the source decoded for it)."""


def file_digest(path: ImageItem) -> str:
    """sha256 of the item's bytes, or a marker for one that cannot be read (so hashing never fails)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def read_image_file(path: ImageItem) -> tuple[np.ndarray, str]:
    """Decode an image file (or any ImageItem) to RGB uint8 [H, W, 3]; return it with the sha256 of its bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read image {shown(path)} ({exc.strerror or exc}): make it readable or remove it"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise UserError(f"image {shown(path)} is empty (0 bytes): remove it or replace it")
    if data[:2] == b"\xff\xd8" and JPEG_END_OF_IMAGE not in data[-16:]:
        # libjpeg fills a truncated JPEG with grey and only warns: refuse it instead
        raise UserError(f"image {shown(path)} is a truncated JPEG: remove it or replace it")
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise UserError(undecodable_message(path, data))
    return rgb, digest


def undecodable_message(path: ImageItem, data: bytes) -> str:
    """Why OpenCV refused a file: too many pixels declared, or not an image / corrupt."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # only the header is read here
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:
        width = height = 0
    if width * height > MAX_IMAGE_PIXELS:
        return (
            f"image {shown(path)} declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed "
            "(a decompression bomb, or a huge image): remove it or downscale it (the limit is CV_IO_MAX_IMAGE_PIXELS)"
        )
    return f"cannot decode image {shown(path)}: not a supported image or corrupt; remove it or replace it"


def probe_size(path: ImageItem) -> tuple[int, int]:
    """(height, width) as the decoder will return the image: EXIF orientations 5-8 (a phone's
    portrait photo stored landscape) swap them, as OpenCV and ImageOps.exif_transpose do.
    Of a file, reads the header and the EXIF block only, never the pixels."""
    from PIL import Image

    try:
        # a file is opened by name, so Pillow reads only its first blocks; another item gives its bytes
        with Image.open(path if isinstance(path, os.PathLike) else io.BytesIO(path.read_bytes())) as image:
            width, height = image.size
            exif = Image.Exif()
            if image.info.get("exif"):  # JPEG, WebP and PNG put it here when they open, before any pixel
                exif.load(image.info["exif"])
            orientation = exif.get(EXIF_ORIENTATION)
    except Exception as exc:
        raise UserError(f"cannot read image {shown(path)}: {exc}") from exc
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def first_readable_size(items: Iterable[ImageItem]) -> tuple[int, int]:
    """The size of the first image that can be read: a bad first file is then named by the decoder,
    with the --skip-bad hint, and --skip-bad can leave it out."""
    errors = []
    for item in items:
        try:
            return probe_size(item)
        except UserError as exc:
            errors.append(exc)
    raise errors[0]


@contextlib.contextmanager
def native_stderr_silenced():
    """libpng prints its own complaints about a corrupt file to the process's stderr, around our
    one-line message; keep them off the terminal (a worker's Python errors travel by pickle, not stderr)."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to exactly height x width (aspect not kept, as Keras' image loaders do)."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] * image.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


FITS = {  # build-aug --fit: how an image of another shape becomes --image-size's
    "crop": "scale the shorter side to fit, then cut the centre (torchvision's Resize+CenterCrop, Keras' "
    "crop_to_aspect_ratio)",
    "pad": "scale the longer side to fit, then pad the rest with black (Keras' pad_to_aspect_ratio)",
    "stretch": "scale each side on its own, the aspect ratio lost (the only way before --fit)",
}
DEFAULT_FIT = "crop"  # a new store's: what users of torchvision and Keras get for photos
FIT_BEFORE_RECORDED = "stretch"  # a store whose identity records no fit was built by stretching


def fit_to(image: np.ndarray, height: int, width: int, fit: str = FIT_BEFORE_RECORDED) -> np.ndarray:
    """image [h, w(, c)] as height x width by FITS[fit]. crop and pad first cut or pad the image to the target's aspect
    ratio, centred, as Keras' smart_resize and pad_to_aspect_ratio do, then resize: the same picture as resizing first,
    for less work on a large photo."""
    h, w = image.shape[:2]
    if fit == "crop":
        crop_h, crop_w = min(h, int(w * height / width)), min(w, int(h * width / height))
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        image = image[top : top + max(crop_h, 1), left : left + max(crop_w, 1)]
    elif fit == "pad":
        pad_h, pad_w = max(h, round(w * height / width)), max(w, round(h * width / height))
        top, left = (pad_h - h) // 2, (pad_w - w) // 2
        image = cv2.copyMakeBorder(
            image, top, pad_h - h - top, left, pad_w - w - left, cv2.BORDER_CONSTANT, value=0
        ).reshape(pad_h, pad_w, *image.shape[2:])
    elif fit != "stretch":
        raise ValueError(f"unknown fit {fit!r}: one of {', '.join(FITS)}")
    return resize_to(np.ascontiguousarray(image), height, width).reshape(height, width, *image.shape[2:])


def staged_size(shape: tuple[int, ...], height: int, width: int, fit: str, scale: float) -> tuple[int, int]:
    """The size an image of shape [h, w, ...] is staged at for its copies (build-aug --stage-scale): the stored size
    height x width times the largest factor up to `scale` at which the part of the image that fit keeps is not enlarged,
    and at least 1 (a smaller image is staged as its fitted original)."""
    h, w = shape[:2]
    if fit == "crop":  # the centre at the stored aspect
        kept_h, kept_w = min(h, w * height / width), min(w, h * width / height)
    elif fit == "pad":  # the whole image and its bands
        kept_h, kept_w = max(h, w * height / width), max(w, h * width / height)
    else:
        kept_h, kept_w = h, w
    factor = min(scale, max(1.0, min(kept_h / height, kept_w / width)))
    return round(height * factor), round(width * factor)


def resize_all(images: np.ndarray, size: int | tuple[int, int], fit: str = FIT_BEFORE_RECORDED) -> np.ndarray:
    """Decoded images [n, H, W, C] fitted to [n, height, width, C] (size: N for NxN, or (height, width))."""
    height, width = (size, size) if isinstance(size, int) else size
    if images.shape[1:3] == (height, width):
        return images
    return np.stack([fit_to(image, height, width, fit) for image in images])
