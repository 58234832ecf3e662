"""The store format, version 1: the only contract between builder/ and trainer/.

A zarr v3 group holding train/, val/ and test/ subgroups, each with
images (uint8 [n, H, W, C]), labels, source_index and copy_index, chunked
along the sample axis. A split's images are chunked with min(chunk_rows, its rows),
so readers take each array's own chunk shape, never the chunk_rows attribute. This module
imports no albumentations: the trainer uses it to open and validate stores.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import zarr

from .errors import UserError

FORMAT_NAME = "augzarr"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
BUILD_DIR = ".build"  # present while a build is unfinished; removed when it completes
# Image chunks are stored raw. bench/bench_codecs.py on real CIFAR-10 chunks (BENCHMARKS.md):
# the best generic codec saves 15% (blosc zstd + bitshuffle) at 10x the write and 6x the read
# time, lz4 saves under 1%; decoded JPEG pixels are close to incompressible for these codecs.
IMAGE_CODEC = "none"
SMALL_ARRAY_CHUNK = 1 << 20  # rows per chunk of labels, source_index, copy_index
ROW_ARRAYS = ("labels", "source_index", "copy_index")
ROW_DTYPES = {"source_index": "int32", "copy_index": "int16"}  # labels: label_dtype(classes)

zarr.config.set({"array.write_empty_chunks": True})  # every chunk is a file, so a missing one is a fault


def default_chunk_rows(image_shape: tuple[int, ...], target_bytes: int = 4 << 20, max_rows: int | None = None) -> int:
    """The largest power of two of rows whose raw size stays within ~4 MiB (1024 at 32x32x3),
    and no larger than the power of two that holds max_rows (a chunk file is written whole,
    so a tiny dataset in a 4 MiB chunk would be mostly padding)."""
    rows = max(1, target_bytes // int(np.prod(image_shape)))
    if max_rows is not None:
        rows = min(rows, 1 << max(0, (max_rows - 1).bit_length()))
    return 1 << (rows.bit_length() - 1)


def split_chunk_rows(chunk_rows: int, rows: int) -> int:
    """Rows per image chunk of one split: the requested chunk_rows, but no more than the split holds,
    since a chunk file is stored whole (a 60-row val split would otherwise fill a 1024-row chunk)."""
    return max(1, min(chunk_rows, rows))


def label_dtype(n_classes: int) -> str:
    return "uint8" if n_classes <= 256 else "int32"


def create_skeleton(path: Path, splits: dict, image_shape: tuple[int, ...], n_classes: int, chunk_rows: int, attrs: dict) -> None:
    """Create the group, every array, and write the small per-row arrays. Images come later, chunk by chunk."""
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    root.attrs.put({**attrs, "complete": False})
    for name, rows in splits.items():
        group = root.require_group(name)
        n = len(rows)
        # per-row arrays are tiny: few big chunks (one file each) rather than one per image chunk
        common = {"chunks": (max(1, min(n, SMALL_ARRAY_CHUNK)),), "overwrite": True}
        group.create_array(
            "images",
            shape=(n, *image_shape),
            chunks=(split_chunk_rows(chunk_rows, n), *image_shape),
            dtype="uint8",
            compressors=None,  # see IMAGE_CODEC
            fill_value=0,
            overwrite=True,
        )
        group.create_array("labels", shape=(n,), dtype=label_dtype(n_classes), **common)[:] = rows.labels
        group.create_array("source_index", shape=(n,), dtype="int32", **common)[:] = rows.source_index
        group.create_array("copy_index", shape=(n,), dtype="int16", **common)[:] = rows.copy_index


def read_attrs(path: Path) -> dict | None:
    """The group attributes, or None when path holds no readable zarr group metadata."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("node_type") != "group":
        return None
    return meta.get("attributes", {})


def is_build_in_progress(path: Path) -> bool:
    return (path / BUILD_DIR).is_dir()


def open_store(path: str | Path, require_complete: bool = True, check_chunks: bool = True) -> zarr.Group:
    """Open a store for reading, refusing anything that is not a complete format-1 store whose
    arrays, per-row data and attributes agree (check_chunks=False: only the format and the arrays' metadata)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"store {path} does not exist: build one with build-aug --out {path}")
    attrs = read_attrs(path)
    if attrs is None or attrs.get("format") != FORMAT_NAME:
        if (path / BUILD_DIR / "build.json").is_file():  # a build that stopped before it wrote the group
            raise UserError(unfinished_message(path))
        raise UserError(f"{path} is not an augzarr store (no augzarr group metadata in {path / 'zarr.json'})")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"store {path} has format version {version}, newer than this augzarr reads ({FORMAT_VERSION}): upgrade augzarr")
    if require_complete and (not attrs.get("complete") or is_build_in_progress(path)):
        raise UserError(unfinished_message(path))
    group = zarr.open_group(str(path), mode="r")
    missing, unreadable = [], []
    for key in (k for s in attrs.get("splits", []) for k in (s, *(f"{s}/{a}" for a in ("images", *ROW_ARRAYS)))):
        try:
            group[key]
        except KeyError:
            missing.append(key)
        except Exception as exc:  # a damaged zarr.json of the array or its split: zarr's own parse error
            unreadable.append(f"{path / key / 'zarr.json'} cannot be read ({first_line(exc)})")
    if missing or unreadable:
        problems = ([f"missing arrays {', '.join(missing)}"] if missing else []) + unreadable[:3]
        raise UserError(f"store {path} is damaged: {'; '.join(problems)}; rebuild it with build-aug --overwrite")
    problems = []
    if check_chunks:  # without: the caller (inspect-aug --verify) reports these with the rest of what it finds
        problems += shape_problems(group, attrs)
        problems += [message for _, message in chunk_file_problems(path, group, attrs.get("splits", []))]
        problems += row_array_problems(path, group, attrs)  # read whole: a few bytes a row, cheap for a big store too
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(f"store {path} is damaged: {'; '.join(problems[:3])}{more}; rebuild it with build-aug --overwrite")
    return group


def unfinished_message(path: Path) -> str:
    return (f"store {path} is incomplete, an unfinished build (it stopped or is still running): rerun the same build-aug "
            "command to finish it, or start over with build-aug --overwrite")


def shape_problems(group: zarr.Group, attrs: dict) -> list[str]:
    """Attributes that disagree with the arrays (an edited zarr.json, a mixed-up copy)."""
    problems = class_name_problems(attrs)
    shape = tuple(attrs.get("image_shape", ()))
    for split in attrs.get("splits", []):
        images = group[f"{split}/images"]
        if tuple(images.shape[1:]) != shape:
            problems.append(f"{split}/images holds {tuple(images.shape[1:])} images but the attributes say {shape}")
        for name in ROW_ARRAYS:
            if group[f"{split}/{name}"].shape[0] != images.shape[0]:
                problems.append(f"{split}/{name} has {group[f'{split}/{name}'].shape[0]} rows, {split}/images {images.shape[0]}")
    return problems


def class_name_problems(attrs: dict) -> list[str]:
    """class_names must be distinct, non-empty strings equal to those the build recorded in its identity:
    an edit of class_names alone (fewer, renamed, reordered) is caught here; an edit of both copies
    is caught only where it leaves labels beyond the names (row_array_problems)."""
    names = attrs.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return [f"class_names {short_json(names)} is not a list of non-empty names"]
    problems = []
    if len(set(names)) != len(names):
        problems.append(f"class_names {short_json(names)} repeats a name")
    identity = attrs.get("identity")
    built = identity.get("class_names", names) if isinstance(identity, dict) else names
    if built != names:
        problems.append(f"class_names {short_json(names)} differ from those it was built with {short_json(built)}")
    return problems


def short_json(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def row_array_problems(path: Path, group: zarr.Group, attrs: dict) -> list[str]:
    """labels, source_index and copy_index of every split, read whole and checked: every chunk file
    present and decodable, the dtype, the CRC-32 recorded at build time (stores built before it
    was recorded skip that), and labels within the class names."""
    problems = []
    n_classes = len(attrs["class_names"]) if isinstance(attrs.get("class_names"), list) else 0
    recorded = attrs.get("array_crc32")
    for split in attrs.get("splits", []):
        for name in ROW_ARRAYS:
            key, array = f"{split}/{name}", group[f"{split}/{name}"]
            dtype = np.dtype(label_dtype(n_classes) if name == "labels" else ROW_DTYPES[name])
            if array.dtype != dtype:
                problems.append(f"{key} is {array.dtype}, not {dtype}")
                continue
            data, problem = read_row_array(path, array)
            if problem:
                problems.append(problem)
                continue
            if recorded is not None and crc32_hex(data) != recorded.get(key):
                problems.append(f"{key} ({path / array.path}) does not match its checksum from the build")
            elif name == "labels" and len(data) and int(data.min()) < 0:
                problems.append(f"{key} hold label {int(data.min())}, below 0")
            elif name == "labels" and len(data) and int(data.max()) >= n_classes:
                problems.append(f"{key} go up to {int(data.max())}, but the attributes name {n_classes} classes")
    return problems


def read_row_array(path: Path, array: zarr.Array) -> tuple[np.ndarray | None, str | None]:
    """(the array's data, None), or (None, what is wrong with the first bad chunk file)."""
    rows, parts = array.chunks[0], []
    for c in range(array.cdata_shape[0]):
        file = chunk_path(path, array, c)
        if not file.is_file():  # zarr would read it as zeros
            return None, f"chunk file {file} is missing"
        try:
            parts.append(array[c * rows:(c + 1) * rows])
        except Exception as exc:  # whatever the codec raises on damaged bytes (zstd: RuntimeError)
            return None, f"chunk file {file} cannot be decoded ({first_line(exc)})"
    return (np.concatenate(parts) if parts else np.empty(0, array.dtype)), None


def first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def chunk_path(store_path: Path, array: zarr.Array, chunk: int) -> Path:
    """The file holding chunk `chunk` along an array's rows (each chunk spans the other axes whole)."""
    return store_path / array.path / array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))


def is_raw_layout(array: zarr.Array) -> bool:
    """Whether a chunk file is the chunk's uint8 pixels in C order, nothing else (zarr v3's lone
    'bytes' codec, as IMAGE_CODEC stores images): such chunks can be written and read directly."""
    meta = array.metadata
    return (len(meta.codecs) == 1 and type(meta.codecs[0]).__name__ == "BytesCodec"
            and array.dtype == np.uint8 and meta.fill_value == 0)


def read_chunk_rows(array: zarr.Array, chunk: int, out: np.ndarray) -> None:
    """Fill out with the first len(out) rows of chunk `chunk` of an array.

    A raw chunk of a local store is read straight from its file into out: one copy, with the GIL
    released during the read, against ~1 ms of Python a 3 MB chunk through zarr's asynchronous
    pipeline, which would hold up a training loop running beside the reader (BENCHMARKS.md).
    Anything else is read through zarr."""
    start = chunk * array.chunks[0]
    root = getattr(array.store, "root", None)  # zarr's LocalStore
    if root is None or not is_raw_layout(array):
        out[...] = array[start:start + len(out)]
        return
    path = chunk_path(Path(root), array, chunk)
    with open(path, "rb", buffering=0) as file:
        got = file.readinto(memoryview(out).cast("B"))
    if got != out.nbytes:
        raise UserError(f"chunk file {path} has {got:,} bytes where {out.nbytes:,} were expected: the store was damaged "
                        "after it was opened; check it with inspect-aug --verify")


def chunk_file_problems(path: Path, group: zarr.Group, splits: list[str]) -> list[tuple[Path, str]]:
    """Image chunk files that are missing or not their full size: a cheap check (one stat a chunk)
    for every reader, since zarr would read a missing chunk as black images without a word."""
    problems = []
    for split in splits:
        images = group[f"{split}/images"]
        expected = int(np.prod(images.chunks)) * images.dtype.itemsize
        for c in range(images.cdata_shape[0]):
            file = chunk_path(path, images, c)
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                problems.append((file, f"chunk file {file} is missing"))
                continue
            if size != expected:
                problems.append((file, f"chunk file {file} has {size:,} bytes, not {expected:,}"))
    return problems


def array_crc32(array: zarr.Array) -> str:
    return crc32_hex(array[:])


def crc32_hex(data: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(data)):08x}"


def size_on_disk(path: Path) -> int:
    total = 0
    for parent, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(parent, name)).st_blocks * 512
            except OSError:
                pass
    return total


def raw_image_bytes(group: zarr.Group) -> int:
    return sum(group[f"{s}/images"].nbytes for s in SPLITS if f"{s}/images" in group)


def remove_store_contents(path: Path, keep: str) -> None:
    """Delete everything in path except the entry named keep."""
    for entry in path.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_atomic(path: Path, data: str | bytes | memoryview) -> None:
    """Replace a file whole: readers see the old contents or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w" if isinstance(data, str) else "wb") as file:
        file.write(data)
    os.replace(tmp, path)
