"""Turn one image file into an RGB uint8 array of the build's shape.

OpenCV decodes small JPEGs about twice as fast as Pillow (55 vs 117 us for a
32x32 CIFAR JPEG here) with identical pixels, and it already converts every
mode (grayscale, palette, alpha, 16-bit, CMYK) to 3 channels and applies EXIF
orientation, so it is the decoder; Pillow is only used for the image-size probe.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path

# Refuse to decode more pixels than this, before allocating them (OpenCV reads the limit on
# its first decode; its own default, 2**30, lets a 1.2 GB decompression bomb through).
MAX_IMAGE_PIXELS = int(os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(1 << 27)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from augzarr.errors import UserError  # noqa: E402

cv2.setNumThreads(1)  # parallelism comes from worker processes, not OpenCV threads

JPEG_END_OF_IMAGE = b"\xff\xd9"
SKIP_HINT = "or pass --skip-bad to leave it out"  # ends every message about one bad image, unless skipping


def shown(path: Path | str) -> str:
    """A path fit for a message or JSON: undecodable bytes of a file name (not UTF-8) as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes, or a marker for a file that cannot be read (so hashing never fails)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def read_image_file(path: Path) -> tuple[np.ndarray, str]:
    """Decode a file to RGB uint8 [H, W, 3]; return it with the sha256 of its bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read image {shown(path)} ({exc.strerror or exc}): make it readable or remove it") from exc
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


def undecodable_message(path: Path, data: bytes) -> str:
    """Why OpenCV refused a file: too many pixels declared, or not an image / corrupt."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # only the header is read here
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:
        width = height = 0
    if width * height > MAX_IMAGE_PIXELS:
        return (f"image {shown(path)} declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed "
                "(a decompression bomb, or a huge image): remove it or downscale it (the limit is CV_IO_MAX_IMAGE_PIXELS)")
    return f"cannot decode image {shown(path)}: not a supported image or corrupt; remove it or replace it"


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
