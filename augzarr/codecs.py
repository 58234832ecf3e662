"""Image codecs for the image chunks of a store: what --codec names, one image's bytes, the zarr codec, whole shards.

What --codec names (CODECS, parse_spec)
  raw               the pixels as they are: zarr's lone 'bytes' codec, one zarr chunk per augzarr chunk, no sharding
                    (format 1's layout, readable by any zarr v3 reader)
  jpeg, jpeg:Q      baseline JPEG, quality Q in 1-100 (default DEFAULT_JPEG_QUALITY), 4:2:0 chroma subsampling;
                    libjpeg-turbo through simplejpeg, which decodes 1.4-1.9x faster than OpenCV's imdecode (the same
                    pixels), straight into the batch, and refuses corrupt data that OpenCV decodes to garbage
  webp-lossless     lossless WebP at libwebp's fastest setting (method 0), written by Pillow (OpenCV cannot ask for
                    it), read by OpenCV: 2x smaller than raw on photos, 18% smaller than PNG, encoding ~2x as fast
  The choice of these and of their settings is measured in bench/bench_image_codecs.py (BENCHMARKS.md, "Image codecs").

The layout of an encoded images array [n, H, W, C] (zarr_array_layout)
  Its zarr chunk is one augzarr chunk of rows, stored as one shard of zarr's 'sharding_indexed' codec, so the unit
  of work, of commit and of the per-chunk CRC-32 stays one object. Inside, each row is one inner chunk (1, H, W, C)
  encoded by ImageCodec ('augzarr.image' in the array's zarr.json), the rows' bytes one after the other in row order
  (zarr's Morton order is the row order when only the first axis has more than one inner chunk), then the index:
  one (offset, length) pair of little-endian uint64 per row, then the CRC-32C of those pairs (4 bytes, little
  endian). A row past the end of the array (the last shard's padding) has no bytes and the pair (2^64-1, 2^64-1).
  Every row of the array is written, an all-black one too: a row with no bytes is a fault.

Reading it
  ImageCodec is registered with zarr through the entry point "zarr.codecs" (pyproject.toml), so with augzarr
  installed a plain zarr-python process opens the array and decodes rows without importing augzarr itself.
  augzarr does not go through zarr's pipeline for whole shards: encode_shard writes the exact bytes zarr would
  (tests/test_codecs.py checks it) and decode_shard decodes one into place on a pool of threads (simplejpeg and
  OpenCV release the GIL while they decode). A damaged shard (index, lengths, an undecodable image) raises
  DamagedShardError naming the object; a flipped byte inside an image's compressed data may still decode, to
  wrong pixels, which is what the per-chunk CRC-32 of the stored bytes (crc32_hex) is for.

Determinism: an image's bytes depend only on its pixels, the spec and the encoder library's version, which
encoder_versions records for the store's identity. Importing this module is cheap and changes no global setting:
the image libraries load on the first encode or decode.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

from augzarr.errors import OptionError, UserError
from augzarr.wording import alternatives

CODEC_OPTION = "--codec"
ZARR_CODEC_NAME = "augzarr.image"  # the name in zarr.json and of the entry point (ZEP 9: a namespaced name)
DEFAULT_JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:0"
# libwebp's lossless preset 0 (WebPConfigLosslessPreset): method 0, and "quality", which for lossless is the effort, 0
WEBP_LOSSLESS = {"method": 0, "effort": 0}
NO_CHUNK = 2**64 - 1  # an index entry of a row with no bytes
INDEX_ENTRY = struct.Struct("<QQ")


class DamagedShardError(UserError):
    """A shard whose bytes cannot be what augzarr wrote: its index, a row's bytes or a decode failed."""


# -- specs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecSpec:
    """One codec with its settings, as --codec spells it (text) and as zarr.json records it (zarr_config)."""

    name: str  # a key of CODECS
    quality: int | None = None  # jpeg only
    settings: dict = field(default_factory=dict, hash=False)  # fixed settings, recorded in zarr.json

    @property
    def text(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    @property
    def is_raw(self) -> bool:
        return self.name == "raw"

    @property
    def lossless(self) -> bool:
        return CODECS[self.name].lossless

    def zarr_config(self) -> dict:
        quality = {} if self.quality is None else {"quality": self.quality}
        return {"format": self.name, **quality, **self.settings}


@dataclass(frozen=True)
class Codec:
    """One entry of CODECS: its help for --codec, how it reads its spelling and what its settings are."""

    help: str
    lossless: bool
    takes_quality: bool = False
    settings: dict = field(default_factory=dict)


CODECS: dict[str, Codec] = {
    "raw": Codec("the pixels as they are (any zarr v3 reader opens the store)", lossless=True),
    "jpeg": Codec(
        f"JPEG, jpeg:Q for quality Q in 1-100 (default {DEFAULT_JPEG_QUALITY}), {JPEG_SUBSAMPLING} chroma",
        lossless=False,
        takes_quality=True,
        settings={"subsampling": JPEG_SUBSAMPLING},
    ),
    "webp-lossless": Codec("lossless WebP, libwebp's fastest setting", lossless=True, settings=WEBP_LOSSLESS),
}
DEFAULT_LOSSY = f"jpeg:{DEFAULT_JPEG_QUALITY}"
DEFAULT_LOSSLESS = "webp-lossless"


def spec_forms() -> str:
    """What --codec takes, as its messages list it: each codec, and NAME:Q after one that takes a quality."""
    forms = []
    for name, codec in CODECS.items():
        forms += [name, f"{name}:Q (Q = quality 1-100)"] if codec.takes_quality else [name]
    return alternatives(forms)


SPEC_FORMS = spec_forms()


def parse_spec(text: str) -> CodecSpec:
    """The spec --codec names ('raw', 'jpeg', 'jpeg:85', 'webp-lossless'), or an OptionError naming --codec and the choices."""
    if not isinstance(text, str):
        raise OptionError(f"{CODEC_OPTION} must be one of {SPEC_FORMS}, not {text!r}")
    name, colon, quality_text = text.strip().lower().partition(":")
    codec = CODECS.get(name)
    if codec is None:
        raise OptionError(f"{CODEC_OPTION} {text!r} is not a codec; the codecs are {SPEC_FORMS}")
    if not colon:
        return CodecSpec(name, DEFAULT_JPEG_QUALITY if codec.takes_quality else None, dict(codec.settings))
    if not codec.takes_quality:
        raise OptionError(f"{CODEC_OPTION} {text!r}: {name} takes no quality; the codecs are {SPEC_FORMS}")
    if not re.fullmatch(r"\d{1,3}", quality_text) or not 1 <= int(quality_text) <= 100:
        raise OptionError(
            f"{CODEC_OPTION} {text!r}: the quality must be a whole number in 1-100, as in jpeg:{DEFAULT_JPEG_QUALITY}"
        )
    return CodecSpec(name, int(quality_text), dict(codec.settings))


def spec_from_zarr_config(config: dict) -> CodecSpec:
    """The spec an 'augzarr.image' codec's configuration records (zarr.json); ValueError for a format augzarr cannot
    decode. The settings are kept as recorded: decoding needs only the format, each encoder checks them."""
    name = config.get("format") if isinstance(config, dict) else None
    if name not in CODECS or name == "raw":
        raise ValueError(
            f"{ZARR_CODEC_NAME} configuration {config!r} names no image format this augzarr decodes "
            f"({', '.join(n for n in CODECS if n != 'raw')})"
        )
    quality = config.get("quality")
    if CODECS[name].takes_quality and not (type(quality) is int and 1 <= quality <= 100):
        raise ValueError(f"{ZARR_CODEC_NAME} configuration {config!r}: {name} needs a quality, a whole number in 1-100")
    return CodecSpec(
        name,
        quality if CODECS[name].takes_quality else None,
        {k: v for k, v in config.items() if k not in ("format", "quality")},
    )


# -- one image --------------------------------------------------------------------------------------
# Each image format: encode(spec, image) -> bytes, decode(data, out) (ValueError when data is not an image of
# out's shape), versions() -> the libraries that decide the encoded bytes. The libraries load on first use.


@functools.cache
def _simplejpeg():
    import simplejpeg

    return simplejpeg


@functools.cache
def _cv2():
    import cv2

    return cv2


SIMPLEJPEG_SUBSAMPLING = {"4:2:0": "420", "4:2:2": "422", "4:4:4": "444"}


def _encode_jpeg(spec: CodecSpec, image: np.ndarray) -> bytes:
    if spec.settings.keys() != {"subsampling"} or spec.settings["subsampling"] not in SIMPLEJPEG_SUBSAMPLING:
        raise ValueError(f"augzarr cannot encode jpeg with the settings {spec.settings}")
    gray = image.shape[2] == 1
    # the accurate DCT (fastdct=False) on both sides: the pixels then match any libjpeg-turbo reader's, OpenCV's too
    return _simplejpeg().encode_jpeg(
        np.ascontiguousarray(image),
        quality=spec.quality,
        colorspace="GRAY" if gray else "RGB",
        colorsubsampling="Gray" if gray else SIMPLEJPEG_SUBSAMPLING[spec.settings["subsampling"]],
        fastdct=False,
    )


def _decode_jpeg(data, out: np.ndarray) -> None:
    simplejpeg = _simplejpeg()
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ValueError(f"is not a decodable jpeg image ({_first_line(exc)})") from None
    if (height, width) != out.shape[:2]:
        raise ValueError(f"decodes to a {[height, width, out.shape[2]]} image, not {list(out.shape)}")
    into = out if out.flags.c_contiguous else np.empty(out.shape, np.uint8)
    try:
        # strict: libjpeg's warnings about corrupt data raise instead of decoding to wrong pixels
        image = simplejpeg.decode_jpeg(
            data,
            colorspace="GRAY" if out.shape[2] == 1 else "RGB",
            fastdct=False,
            fastupsample=False,
            buffer=into,
            strict=True,
        )
    except ValueError as exc:
        raise ValueError(f"is not a decodable jpeg image ({_first_line(exc)})") from None
    if image.shape != out.shape:
        raise ValueError(f"decodes to a {list(image.shape)} image, not {list(out.shape)}")
    if into is not out:
        out[...] = image


def _jpeg_versions() -> dict[str, str]:
    return {"simplejpeg": _simplejpeg().__version__}  # it carries its own libjpeg-turbo, fixed by its release


@functools.cache
def _webp_pillow():
    from PIL import Image, features

    if not features.check("webp"):
        raise UserError(
            "this Pillow was built without WebP: install Pillow's wheel from PyPI (pip install --force-reinstall pillow)"
        )
    return Image, features


def _encode_webp_lossless(spec: CodecSpec, image: np.ndarray) -> bytes:
    settings = spec.settings
    if (
        settings.keys() != {"method", "effort"}
        or settings["method"] not in range(7)
        or settings["effort"] not in range(101)
    ):
        raise ValueError(f"augzarr cannot encode webp-lossless with the settings {settings}")
    Image, _ = _webp_pillow()
    out = io.BytesIO()
    # WebP has no grayscale: a 1-channel image is stored as RGB with equal channels, and read back exactly
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
        out, "WEBP", lossless=True, method=settings["method"], quality=settings["effort"]
    )
    return out.getvalue()


def _decode_with_opencv(data, out: np.ndarray, name: str) -> None:
    cv2 = _cv2()
    gray = out.shape[2] == 1
    flag = cv2.IMREAD_GRAYSCALE if gray else getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:  # OpenCV raises on some damage and returns None on the rest
        raise ValueError(f"is not a decodable {name} image ({_first_line(exc)})") from None
    if image is None:
        raise ValueError(f"is not a decodable {name} image")
    if gray:
        image = image[:, :, None]
    elif flag == cv2.IMREAD_COLOR:  # OpenCV before 4.10 has no RGB flag
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape != out.shape:
        raise ValueError(f"decodes to a {list(image.shape)} image, not {list(out.shape)}")
    out[...] = image


def _webp_versions() -> dict[str, str]:
    Image, features = _webp_pillow()
    return {
        "pillow": Image.__version__,
        "libwebp": features.version("webp"),
    }  # the encoder's; any decoder gives the pixels


FORMATS: dict[str, tuple[Callable, Callable, Callable]] = {
    "jpeg": (_encode_jpeg, _decode_jpeg, _jpeg_versions),
    "webp-lossless": (_encode_webp_lossless, functools.partial(_decode_with_opencv, name="webp"), _webp_versions),
}


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def encode_image(spec: CodecSpec, image: np.ndarray) -> bytes:
    """One image, uint8 [H, W, C] with C = 1 or 3 (RGB), as the codec's bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"an image to encode is uint8 [H, W, 1 or 3], not {image.dtype} {list(image.shape)}")
    if spec.is_raw:
        return np.ascontiguousarray(image).tobytes()
    return FORMATS[spec.name][0](spec, image)


def decode_image_into(spec: CodecSpec, data, out: np.ndarray) -> None:
    """Decode one image's bytes into out (uint8 [H, W, C]); ValueError when they are not an image of that shape
    (its message a predicate: "is not a decodable jpeg image (...)", "decodes to a [16, 16, 3] image, not ...")."""
    if spec.is_raw:
        if len(data) != out.nbytes:
            raise ValueError(f"has {len(data):,} bytes where a raw image has {out.nbytes:,}")
        out[...] = np.frombuffer(data, np.uint8).reshape(out.shape)
        return
    FORMATS[spec.name][1](data, out)


@functools.cache
def encoder_versions(name: str) -> dict[str, str]:
    """The libraries whose versions decide a codec's bytes, for the store's identity (and a cluster's canary)."""
    return {} if name == "raw" else FORMATS[name][2]()


def crc32_hex(data) -> str:
    """The CRC-32 of a chunk's stored bytes: the per-chunk integrity check the store records."""
    return f"{zlib.crc32(data):08x}"


# -- the zarr codec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """zarr v3 array-to-bytes codec of one image a chunk: chunk shape (1, H, W, C) of uint8, C = 1 or 3.

    In zarr.json: {"name": "augzarr.image", "configuration": {"format": "jpeg", "quality": 90, "subsampling": "4:2:0"}}
    (or {"format": "webp-lossless", "method": 0, "effort": 0}). zarr finds it through the "zarr.codecs" entry point
    of augzarr's package."""

    is_fixed_size = False
    spec: CodecSpec

    def __init__(self, **config) -> None:  # the configuration's keys (zarr.json): format, and its settings
        object.__setattr__(self, "spec", spec_from_zarr_config(config))

    @classmethod
    def from_spec(cls, spec: CodecSpec) -> ImageCodec:
        return cls(**spec.zarr_config())

    @classmethod
    def from_dict(cls, data: dict) -> ImageCodec:
        if (
            not isinstance(data, dict)
            or data.get("name") != ZARR_CODEC_NAME
            or not isinstance(data.get("configuration"), dict)
        ):
            raise ValueError(f"not an {ZARR_CODEC_NAME} codec: {data!r}")
        return cls(**data["configuration"])

    def to_dict(self) -> dict:
        return {"name": ZARR_CODEC_NAME, "configuration": self.spec.zarr_config()}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        chunks = getattr(chunk_grid, "chunk_shape", None)
        if dtype.to_native_dtype() != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
            raise ValueError(f"{ZARR_CODEC_NAME} encodes uint8 images [n, H, W, 1 or 3], not {dtype} {list(shape)}")
        if chunks is not None and chunks[0] != 1:
            raise ValueError(
                f"{ZARR_CODEC_NAME} encodes one image a chunk: chunk shape (1, H, W, C), not {chunks} "
                "(put it inside sharding_indexed for chunks of many rows)"
            )

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError  # variable-size output

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        out = np.empty(chunk_spec.shape, np.uint8)
        decode_image_into(self.spec, chunk_bytes.as_numpy_array(), out.reshape(out.shape[-3:]))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        image = chunk_array.as_numpy_array()
        data = encode_image(self.spec, image.reshape(image.shape[-3:]))
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)  # the decoders release the GIL

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)


def zarr_array_layout(spec: CodecSpec, chunk_rows: int, image_shape: tuple[int, ...]) -> dict:
    """The keyword arguments of zarr.create_array (beside shape, dtype uint8 and fill_value 0) for an images array
    whose chunks hold chunk_rows rows: raw, one plain chunk; otherwise one shard of one-image inner chunks."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    chunks = (chunk_rows, *image_shape)
    if spec.is_raw:
        return {"chunks": chunks, "compressors": None}
    # the index's codecs and place written out, not left to zarr's defaults: encode_shard writes the same
    sharding = ShardingCodec(
        chunk_shape=(1, *image_shape),
        codecs=[ImageCodec.from_spec(spec)],
        index_codecs=[BytesCodec(endian="little"), Crc32cCodec()],
        index_location="end",
    )
    return {"chunks": chunks, "serializer": sharding, "compressors": None}


def array_spec(array) -> CodecSpec:
    """The codec a zarr images array is stored with: raw (the lone bytes codec), or the image codec inside
    sharding_indexed as zarr_array_layout makes it; ValueError for any other layout."""
    codecs = array.metadata.codecs
    if len(codecs) == 1 and type(codecs[0]).__name__ == "BytesCodec":
        return parse_spec("raw")
    from zarr.codecs import ShardingCodec

    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        shard = codecs[0]
        inner = shard.codecs
        index = [c.to_dict() for c in shard.index_codecs]
        if (
            len(inner) == 1
            and isinstance(inner[0], ImageCodec)
            and tuple(shard.chunk_shape) == (1, *array.shape[1:])
            and shard.index_location.value == "end"
            and [c["name"] for c in index] == ["bytes", "crc32c"]
        ):
            return inner[0].spec
    raise ValueError(
        f"{array.path} is stored with codecs {[c.to_dict() for c in codecs]}, not raw nor one image a chunk "
        f"in sharding_indexed ({ZARR_CODEC_NAME})"
    )


# -- whole shards (the fast path) -------------------------------------------------------------------


def index_size(shard_rows: int) -> int:
    return shard_rows * INDEX_ENTRY.size + 4


def _crc32c(data) -> bytes:
    import google_crc32c  # zarr's own dependency, for the same checksum its crc32c codec writes

    return struct.pack("<I", google_crc32c.value(bytes(data)))


def default_threads() -> int:
    """Threads a shard decodes on: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_POOLS: dict[int, ThreadPoolExecutor] = {}  # by thread count, this process's own
# a forked child (a build's or a stream's worker) has none of its parent's threads: it starts pools of its own,
# since a copied pool would queue work for threads that are not there and wait forever
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(threads: int) -> ThreadPoolExecutor:
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS.setdefault(threads, ThreadPoolExecutor(threads, thread_name_prefix="augzarr-codec"))
    return pool


def _on_threads(work: Callable[[int, int], None], rows: int, threads: int | None) -> None:
    """work(start, stop) over rows, split in contiguous shares, on `threads` threads (None: the cores); errors raised."""
    threads = max(1, min(rows, default_threads() if threads is None else threads))
    if threads == 1:
        work(0, rows)
        return
    edges = np.linspace(0, rows, threads + 1).astype(int)
    futures = [_pool(threads).submit(work, a, b) for a, b in zip(edges[:-1], edges[1:])]
    wait(futures)  # every share finished before anything is raised: no thread still writes into the caller's array
    for future in futures:
        future.result()


def encode_shard(spec: CodecSpec, block: np.ndarray, shard_rows: int, threads: int | None = 1) -> bytes:
    """The exact bytes zarr's sharding codec writes for one chunk of an array laid out by zarr_array_layout:
    block holds the chunk's rows (fewer than shard_rows in the array's last chunk), each encoded on its own."""
    if spec.is_raw:
        raise ValueError("a raw images array has no shards: its chunk is the pixels themselves")
    if not 0 < len(block) <= shard_rows:
        raise ValueError(f"a shard of {shard_rows} rows cannot hold {len(block)}")
    parts = [b""] * len(block)  # each row's encoded bytes

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            parts[i] = encode_image(spec, block[i])

    _on_threads(work, len(block), threads)
    index = bytearray(shard_rows * INDEX_ENTRY.size)
    offset = 0
    for i in range(shard_rows):
        entry = (offset, len(parts[i])) if i < len(parts) else (NO_CHUNK, NO_CHUNK)
        INDEX_ENTRY.pack_into(index, i * INDEX_ENTRY.size, *entry)
        offset += len(parts[i]) if i < len(parts) else 0
    return b"".join([*parts, bytes(index), _crc32c(index)])


def shard_slices(data, shard_rows: int, rows: int, key: str) -> list[tuple[int, int]]:
    """(start, stop) of each of the first `rows` rows' bytes in a shard, from its index, every check made:
    DamagedShardError naming key when the index cannot be what encode_shard wrote."""
    damaged = f"chunk file {key} is damaged"
    size = index_size(shard_rows)
    if len(data) < size:
        raise DamagedShardError(
            f"{damaged}: {len(data):,} bytes, too short for the index of a {shard_rows}-row shard ({size:,} bytes)"
        )
    index = memoryview(data)[len(data) - size : len(data) - 4]
    if _crc32c(index) != bytes(memoryview(data)[len(data) - 4 :]):
        raise DamagedShardError(f"{damaged}: its index does not match its CRC-32C (a changed or truncated shard)")
    entries = np.frombuffer(index, "<u8").reshape(shard_rows, 2)
    body = len(data) - size
    slices, expected = [], 0
    for i in range(rows):
        offset, length = (int(v) for v in entries[i])
        if offset == NO_CHUNK:
            raise DamagedShardError(f"{damaged}: row {i} of the shard has no bytes")
        if offset != expected or offset + length > body:
            raise DamagedShardError(
                f"{damaged}: row {i}'s bytes ({offset:,} + {length:,}) are not where the rows before "
                f"them end ({expected:,}) inside the {body:,} bytes of images"
            )
        slices.append((offset, offset + length))
        expected = offset + length
    return slices


def decode_shard(
    spec: CodecSpec,
    data,
    out: np.ndarray,
    shard_rows: int | None = None,
    threads: int | None = None,
    key: str = "shard",
) -> np.ndarray:
    """Decode one shard object's bytes into out ([rows, H, W, C]: the chunk's rows in the array, fewer in the last
    chunk than the shard's shard_rows, which default to len(out)) on `threads` threads (None: the cores);
    DamagedShardError naming key when they are damaged."""
    shard_rows = len(out) if shard_rows is None else shard_rows
    if len(out) > shard_rows:
        raise ValueError(f"a shard of {shard_rows} rows cannot fill {len(out)}")
    slices = shard_slices(data, shard_rows, len(out), key)
    view = memoryview(data)

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            try:
                decode_image_into(spec, view[slices[i][0] : slices[i][1]], out[i])
            except ValueError as exc:
                raise DamagedShardError(f"chunk file {key} is damaged: row {i} of the shard {exc}") from None

    _on_threads(work, len(out), threads)
    return out
