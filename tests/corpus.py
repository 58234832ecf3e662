"""The bad-input corpus of the robustness campaign, generated here (never downloaded).

make_case(folder, name) writes one odd file into a class folder and returns its path.
Each case is either a valid image that must be used correctly, or a bad file that must be
named in a one-line error (and skipped and reported with --skip-bad).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import smooth_image
from PIL import Image

# case -> "valid" (used, converted to RGB) or "bad" (named in the error; skipped with --skip-bad)
CASES = {
    "zero-byte": "bad",
    "truncated-jpeg": "bad",
    "truncated-png": "bad",
    "png-bad-crc": "bad",
    "text-as-jpg": "bad",
    "decompression-bomb": "bad",
    "symlink-loop": "bad",
    "no-read-permission": "bad",
    "cmyk-jpeg": "valid",
    "png-16-bit": "valid",
    "palette-transparent": "valid",
    "grayscale": "valid",
    "grayscale-alpha": "valid",
    "one-pixel": "valid",
    "huge": "valid",
    "exif-rotated": "valid",
    "non-utf8-name": "valid",
}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def make_case(folder: Path, name: str, size: int = 16, seed: int = 0) -> Path:
    """Write case `name` into folder; return the path the build will see."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(smooth_image(rng, size))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if name == "zero-byte":
        path = folder / f"{name}.jpg"
        path.write_bytes(b"")
    elif name == "truncated-jpeg":
        path = folder / f"{name}.jpg"
        path.write_bytes(encoded(rgb, "JPEG")[:200])
    elif name == "truncated-png":
        path.write_bytes(encoded(rgb, "PNG")[:-40])
    elif name == "png-bad-crc":
        data = bytearray(encoded(rgb, "PNG"))
        idat = data.index(b"IDAT")
        length = struct.unpack(">I", data[idat - 4 : idat])[0]
        data[idat + 4 + length] ^= 0xFF  # the IDAT chunk's CRC
        path.write_bytes(bytes(data))
    elif name == "text-as-jpg":
        path = folder / f"{name}.jpg"
        path.write_text("this is not a picture\n")
    elif name == "decompression-bomb":
        # a real PNG header declaring 20000 x 20000 RGB pixels (1.2 GB decoded) with a little data
        header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
        body = zlib.compress(b"\0" * 60001 * 10)
        path.write_bytes(
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
        )
    elif name == "symlink-loop":
        path = folder / f"{name}.jpg"
        os.symlink(path.name, path)  # points at itself
    elif name == "no-read-permission":
        path = folder / f"{name}.jpg"
        path.write_bytes(encoded(rgb, "JPEG"))
        path.chmod(0)
    elif name == "cmyk-jpeg":
        path = folder / f"{name}.jpg"
        path.write_bytes(encoded(rgb.convert("CMYK"), "JPEG", quality=95))
    elif name == "png-16-bit":
        wide = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        Image.fromarray(wide).save(path)  # mode I;16
    elif name == "palette-transparent":
        palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        palette.info["transparency"] = 0
        palette.save(path, transparency=0)
    elif name == "grayscale":
        rgb.convert("L").save(path)
    elif name == "grayscale-alpha":
        rgb.convert("LA").save(path)
    elif name == "one-pixel":
        Image.new("RGB", (1, 1), (200, 30, 60)).save(path)
    elif name == "huge":
        rgb.resize((size * 60, size * 40)).save(path)
    elif name == "exif-rotated":
        path = folder / f"{name}.jpg"
        wide = rgb.resize((size * 2, size))  # stored landscape, tagged to be shown portrait (rotate 90 CW)
        exif = Image.Exif()
        exif[0x0112] = 6
        path.write_bytes(encoded(wide, "JPEG", quality=95, exif=exif.tobytes()))
    elif name == "non-utf8-name":
        raw = os.fsencode(folder) + b"/caf\xe9-latin1.png"  # a Latin-1 name, not valid UTF-8
        with open(raw, "wb") as file:
            file.write(encoded(rgb, "PNG"))
        path = Path(os.fsdecode(raw))
    else:
        raise KeyError(name)
    return path


def expected_rgb(path: Path, size: int) -> np.ndarray:
    """What a valid case must become: Pillow's own reading, EXIF orientation applied, RGB, resized."""
    from PIL import ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode == "I;16":
            image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
        return np.asarray(image.convert("RGB"))
