"""The store format, version 1: the one contract between builder/ and trainer/.

What a store is
  A zarr v3 group holding train/, val/ and test/ subgroups (those the build made), each with
  images (uint8 [n, H, W, C], raw chunks: zarr's lone 'bytes' codec), labels (uint8, int32 past
  256 classes), source_index (int32) and copy_index (int16), chunked along the sample axis. A
  split's images are chunked with min(chunk_rows, its rows): readers take each array's own chunk
  shape. The group's attributes are StoreAttrs below, field for field. The train/ group's attributes
  may hold TRAIN_FILE_DIGESTS (image folders, stores built since it was added): which source files
  the training rows were made from, so evaluate --source can tell training images by their content.

How a build commits (what "complete" means), in this order
  1. .build/build.json (the arguments: the build's identity) claims the location;
  2. the skeleton: every array's metadata and the small per-row arrays, then .build/skeleton;
  3. each image chunk, written whole (one atomic file or one PUT), then its marker
     .build/chunks/<build id>/<split>.<chunk> holding its CRC-32; a chunk without a marker of the
     current build id (build.json's) is recomputed;
  4. the root zarr.json with complete: true and every checksum, in one write;
  5. .build/ removed.
  A store is complete only when its attributes say so and no .build/ is left. Every byte goes
  through a Storage (augzarr.storage), so this holds on a local disk and on object storage alike.

Importing this module changes no global setting (no zarr config, no OpenCV, no albumentations).
"""

from __future__ import annotations

import base64
import functools
import json
import zlib
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Literal

import numpy as np
import zarr
from zarr.core.metadata import ArrayV3Metadata

from augzarr.errors import UserError
from augzarr.storage import Storage, open_storage
from augzarr.wording import count

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

FORMAT_NAME = "augzarr"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
IMAGES = "images"
ROW_ARRAYS = ("labels", "source_index", "copy_index")
ROW_DTYPES = {"source_index": "int32", "copy_index": "int16"}  # labels: label_dtype(classes)
# Image chunks are stored raw. bench/bench_codecs.py on real CIFAR-10 chunks (BENCHMARKS.md):
# the best generic codec saves 15% (blosc zstd + bitshuffle) at 10x the write and 6x the read
# time, lz4 saves under 1%; decoded JPEG pixels are close to incompressible for these codecs.
IMAGE_CODEC = "none"
SMALL_ARRAY_CHUNK = 1 << 20  # rows per chunk of labels, source_index, copy_index
ROOT_METADATA = "zarr.json"
BUILD_DIR = ".build"  # present while a build is unfinished; removed when it completes
BUILD_JSON = f"{BUILD_DIR}/build.json"
SKELETON_DONE = f"{BUILD_DIR}/skeleton"
MARKERS = f"{BUILD_DIR}/chunks/"
KEEP_WHEN_CLAIMING = {BUILD_DIR, ".lock"}  # top-level entries a fresh claim leaves: its own state and the lease
# train/'s attribute: the first DIGEST_BYTES of the sha256 of each source file with rows in train/, sorted, as one
# base64 string (50,000 files: 533 kB); two different files share those 8 bytes with a chance of ~1 in 10^19
TRAIN_FILE_DIGESTS = "file_digests"
DIGEST_BYTES = 8


@dataclass
class SourceInfo:
    """Where the images came from."""

    kind: (
        str  # "keras-cifar10" (keras-cifar100, keras-mnist, keras-fashion_mnist), "cifar10-pickle", "image-folder", ...
    )
    location: str
    train_count: int
    test_count: int = 0
    val_count: int = 0
    layout: str | None = None  # an image folder's: "flat" or "split (train, ...)"
    limit: int | None = None
    content_hash: str | None = None
    ignored: list[str] = field(default_factory=list)


@dataclass
class StoreAttrs:
    """The root group's attributes, written by the builder and read by every reader."""

    splits: list[str]
    class_names: list[str]
    image_shape: list[int]
    copies: int
    include_original: bool
    val_fraction: float | None  # None: the source's own validation folder is the val split
    seed: int
    chunk_rows: int  # as requested; a split smaller than that is one chunk of its size
    policy: dict  # the albumentations pipeline, serialized (Policy.to_attrs)
    source: SourceInfo
    identity: dict  # every argument that changes the bytes: a resumed or repeated build must match it
    versions: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # bad files left out under --skip-bad: file, reason
    # build-aug --license, --provenance: the user's words on the images' terms and origin (and consent), repeated
    # in every model card trained from the store; None when not given (and in stores built before they existed)
    license: str | None = None
    provenance: str | None = None
    complete: bool = False
    chunk_crc32: dict[str, list[str]] | None = None  # per split, one per image chunk (written at completion)
    array_crc32: dict[str, str] | None = None  # "<split>/<row array>" -> CRC-32 of the whole array
    built: dict | None = None  # finished_utc, seconds
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, attrs: dict, where: str) -> StoreAttrs:
        """The attributes of a format-1 group; fields a store of an older augzarr lacks take their
        defaults, a missing required field or a wrong type is refused naming the store."""
        source = attrs.get("source")
        source_fields = source if isinstance(source, dict) else {}  # not an object: refused below, as garbled
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in attrs
            and f.name != "class_names"  # judged with the class names
            and f.default is MISSING
            and f.default_factory is MISSING
        ]
        if isinstance(source, dict):
            missing += [f"source.{f.name}" for f in fields(SourceInfo) if f.name not in source and f.default is MISSING]
        damaged = f"store {where} is damaged: its attributes ({where}/{ROOT_METADATA})"
        if missing:
            raise UserError(f"{damaged} lack {', '.join(missing)}; rebuild it with build-aug --overwrite")
        try:
            values = {f.name: attrs[f.name] for f in fields(cls) if f.name in attrs}
            values.setdefault("class_names", None)  # reported by class_name_problems, with the other class-name faults
            values["source"] = SourceInfo(
                **{f.name: source_fields[f.name] for f in fields(SourceInfo) if f.name in source_fields}
            )
            return cls(**values)
        except TypeError:
            raise UserError(
                f"{damaged} are garbled: 'source' is not an object; rebuild it with build-aug --overwrite"
            ) from None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def label_dtype(n_classes: int) -> str:
    return "uint8" if n_classes <= 256 else "int32"


def row_dtype(name: str, n_classes: int) -> np.dtype:
    return np.dtype(label_dtype(n_classes) if name == "labels" else ROW_DTYPES[name])


def default_chunk_rows(image_shape: tuple[int, ...], target_bytes: int = 4 << 20, max_rows: int | None = None) -> int:
    """The largest power of two of rows whose raw size stays within ~4 MiB (1024 at 32x32x3),
    and no larger than the power of two that holds max_rows (a chunk is written whole,
    so a tiny dataset in a 4 MiB chunk would be mostly padding)."""
    rows = max(1, target_bytes // int(np.prod(image_shape)))
    if max_rows is not None:
        rows = min(rows, 1 << max(0, (max_rows - 1).bit_length()))
    return 1 << (rows.bit_length() - 1)


def split_chunk_rows(chunk_rows: int, rows: int) -> int:
    """Rows per image chunk of one split: the requested chunk_rows, but no more than the split holds,
    since a chunk is stored whole (a 60-row val split would otherwise fill a 1024-row chunk)."""
    return max(1, min(chunk_rows, rows))


def marker_prefix(build_id: str) -> str:
    """The build's own marker folder: markers a stopped build's late tasks write under another id never
    count (builds claimed before build ids existed keep theirs directly in .build/chunks/)."""
    return f"{MARKERS}{build_id}/" if build_id else MARKERS


def marker_key(split: str, chunk: int, build_id: str = "") -> str:
    return f"{marker_prefix(build_id)}{split}.{chunk}"


def chunk_key(array: zarr.Array, chunk: int) -> str:
    """The key of chunk `chunk` along an array's rows (each chunk spans the other axes whole)."""
    return f"{array.path}/{array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))}"


def is_raw_layout(array: zarr.Array) -> bool:
    """Whether a chunk is the chunk's uint8 pixels in C order, nothing else (zarr v3's lone
    'bytes' codec, as IMAGE_CODEC stores images): such chunks are written and read directly."""
    meta = array.metadata
    return (
        isinstance(meta, ArrayV3Metadata)
        and len(meta.codecs) == 1
        and type(meta.codecs[0]).__name__ == "BytesCodec"
        and array.dtype == np.uint8
        and meta.fill_value == 0
    )


def open_group(storage: Storage, mode: Literal["r", "r+", "a", "w", "w-"] = "r") -> zarr.Group:
    return zarr.open_group(store=storage.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3)


# -- writing (the builder) --------------------------------------------------------------------------


def create_skeleton(
    storage: Storage,
    splits: dict,
    image_shape: tuple[int, ...],
    n_classes: int,
    chunk_rows: int,
    attrs: StoreAttrs,
    train_file_digests: str | None = None,
) -> None:
    """Step 2: the group, every array, and the small per-row arrays. Images come later, chunk by chunk."""
    root = open_group(storage, mode="a")
    root.attrs.put({**attrs.to_json(), "complete": False})
    # every chunk is written even when it is all zeros, so a missing chunk is always a fault
    config: ArrayConfigParams = {"write_empty_chunks": True}
    for name, rows in splits.items():
        group = root.require_group(name)
        if name == "train" and train_file_digests is not None:
            group.attrs.put({TRAIN_FILE_DIGESTS: train_file_digests})
        n = len(rows)
        # per-row arrays are tiny: few big chunks (one object each) rather than one per image chunk
        row_chunks = (max(1, min(n, SMALL_ARRAY_CHUNK)),)
        group.create_array(
            IMAGES,
            shape=(n, *image_shape),
            chunks=(split_chunk_rows(chunk_rows, n), *image_shape),
            dtype="uint8",
            compressors=None,
            fill_value=0,
            overwrite=True,
            config=config,
        )  # IMAGE_CODEC
        for array in ROW_ARRAYS:
            group.create_array(
                array, shape=(n,), dtype=row_dtype(array, n_classes), chunks=row_chunks, overwrite=True, config=config
            )[:] = getattr(rows, array)


def digest_set(hex_digests) -> str:
    """The TRAIN_FILE_DIGESTS form of these sha256 hex digests (each file's, as build-aug computes it)."""
    keys = sorted({bytes.fromhex(d[: 2 * DIGEST_BYTES]) for d in hex_digests})
    return base64.b64encode(b"".join(keys)).decode("ascii")


def digest_keys(hex_digests) -> list[bytes]:
    """What digest_set keeps of each digest, in order: to look files up in a recorded set."""
    return [bytes.fromhex(d[: 2 * DIGEST_BYTES]) for d in hex_digests]


def train_file_digests(storage: Storage) -> set[bytes] | None:
    """The set recorded in train/'s attributes, or None for a store that has none (an array source, or built
    before it was recorded) or whose record cannot be read."""
    try:
        encoded = storage.read_json(f"train/{ROOT_METADATA}").get("attributes", {}).get(TRAIN_FILE_DIGESTS)
        raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
    except (KeyError, ValueError, AttributeError):
        return None
    if raw is None or len(raw) % DIGEST_BYTES:
        return None
    return {raw[i : i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)}


def write_chunk(storage: Storage, array: zarr.Array, chunk: int, block: np.ndarray, build_id: str = "") -> str:
    """Step 3: chunk `chunk` of an images array, whole, then its marker; returns its CRC-32.
    The last, partial chunk is padded to full size with the fill value, as zarr stores it."""
    crc = crc32_hex(block)
    if len(block) < array.chunks[0]:
        block = np.concatenate([block, np.zeros((array.chunks[0] - len(block), *block.shape[1:]), np.uint8)])
    storage.write(chunk_key(array, chunk), np.ascontiguousarray(block).data.cast("B"))
    storage.write(marker_key(array.path.split("/")[0], chunk, build_id), crc.encode())
    return crc


def committed_chunks(storage: Storage, build_id: str) -> dict[tuple[str, int], str]:
    """(split, chunk) -> marker key of every chunk the unfinished build has committed, from one listing."""
    done, prefix = {}, marker_prefix(build_id)
    for key in storage.list(prefix):
        split, _, chunk = key[len(prefix) :].rpartition(".")
        if split in SPLITS and chunk.isdigit():  # (a legacy listing also meets other builds' folders: not these)
            done[(split, int(chunk))] = key
    return done


def mark_complete(storage: Storage, group: zarr.Group, splits: list[str], built: dict, build_id: str) -> None:
    """Steps 4 and 5: checksums and complete: true in the root metadata (one write), then .build/ goes."""
    chunk_crc32 = {}
    for split in splits:
        images = array_at(group, f"{split}/{IMAGES}")
        chunk_crc32[split] = [
            storage.read(marker_key(split, c, build_id)).decode() for c in range(images.cdata_shape[0])
        ]
    array_crc32 = {
        f"{s}/{name}": crc32_hex(read_whole(array_at(group, f"{s}/{name}"))) for s in splits for name in ROW_ARRAYS
    }
    group.attrs.update({"complete": True, "chunk_crc32": chunk_crc32, "array_crc32": array_crc32, "built": built})
    storage.remove(BUILD_DIR)
    storage.discard_partial_writes()  # a worker killed mid-write (its chunk since rewritten whole) left its temporary file


# -- reading (every reader) -------------------------------------------------------------------------


@dataclass
class OpenStore:
    """A complete, checked store: its storage, its zarr group and its typed attributes."""

    storage: Storage
    group: zarr.Group
    attrs: StoreAttrs

    @property
    def location(self) -> str:
        return self.storage.location

    def has(self, split: str) -> bool:
        return split in self.attrs.splits and self.rows(split) > 0

    def rows(self, split: str) -> int:
        return self.images(split).shape[0] if split in self.attrs.splits else 0

    def images(self, split: str) -> zarr.Array:
        return array_at(self.group, f"{split}/{IMAGES}")

    def row_array(self, split: str, name: str) -> zarr.Array:
        return array_at(self.group, f"{split}/{name}")

    def labels(self, split: str) -> np.ndarray:
        return read_whole(self.row_array(split, "labels"))

    def read_chunk_rows(self, array: zarr.Array, chunk: int, out: np.ndarray) -> None:
        read_chunks(self.storage, array, [chunk], [out])

    @functools.cached_property
    def objects(self) -> dict[str, int]:
        """Key -> size of every object, listed once for the checks made on opening (and by --verify)."""
        return self.storage.list()

    def size(self) -> int:
        return self.storage.usage()

    def raw_image_bytes(self) -> int:
        return sum(self.images(s).nbytes for s in self.attrs.splits)


def read_raw_attrs(storage: Storage) -> dict | None:
    """The root group's attributes as stored, or None when there is no readable group metadata."""
    try:
        meta = storage.read_json(ROOT_METADATA)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    return meta.get("attributes", {})


def is_build_in_progress(storage: Storage) -> bool:
    return bool(storage.list(BUILD_DIR + "/"))


def unfinished_message(where: str) -> str:
    return (
        f"store {where} is incomplete, an unfinished build (it stopped or is still running): rerun the same build-aug "
        "command to finish it, or start over with build-aug --overwrite"
    )


def open_store(location, require_complete: bool = True, check_chunks: bool = True) -> OpenStore:
    """Open a store for reading, refusing anything that is not a complete format-1 store whose
    arrays, per-row data and attributes agree (check_chunks=False: only the format and the arrays' metadata)."""
    storage = location if isinstance(location, Storage) else open_storage(location)
    where = storage.location
    if not storage.exists():
        raise UserError(f"store {where} does not exist: build one with build-aug --out {where}")
    local = storage.local_path()
    if local is not None and local.is_file():
        raise UserError(
            f"{where} is a file, not an augzarr store (a store is a folder): give the store's folder, as build-aug --out made it"
        )
    raw = read_raw_attrs(storage)
    if raw is None or raw.get("format") != FORMAT_NAME:
        if storage.has(BUILD_JSON):  # a build that stopped before it wrote the group
            raise UserError(unfinished_message(where))
        raise UserError(
            f"{where} is not an augzarr store (no augzarr group metadata in {storage.where(ROOT_METADATA)})"
        )
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"store {where} has format version {version}, newer than this augzarr reads ({FORMAT_VERSION}): upgrade augzarr"
        )
    if require_complete and (not raw.get("complete") or is_build_in_progress(storage)):
        raise UserError(unfinished_message(where))
    attrs = StoreAttrs.from_json(raw, where)
    group = open_group(storage)
    missing, unreadable = [], []
    for split in attrs.splits:
        for key in (split, *(f"{split}/{a}" for a in (IMAGES, *ROW_ARRAYS))):
            try:
                node = group[key]
            except KeyError:
                missing.append(key)
            except Exception as exc:  # a damaged zarr.json of the array or its split: zarr's own parse error
                unreadable.append(f"{storage.where(key + '/' + ROOT_METADATA)} cannot be read ({first_line(exc)})")
            else:
                if isinstance(node, zarr.Array) != (key != split):
                    kind = "an array" if isinstance(node, zarr.Array) else "a group"
                    unreadable.append(f"{key} is {kind} ({storage.where(key + '/' + ROOT_METADATA)})")
    if missing or unreadable:
        problems = ([f"missing arrays {', '.join(missing)}"] if missing else []) + unreadable[:3]
        raise UserError(f"store {where} is damaged: {'; '.join(problems)}; rebuild it with build-aug --overwrite")
    store = OpenStore(storage, group, attrs)
    if check_chunks:  # without: the caller (inspect-aug --verify) reports these with the rest of what it finds
        problems = shape_problems(store)
        problems += [message for _, message in chunk_problems(store)]
        problems += row_array_problems(store)  # read whole: a few bytes a row, cheap for a big store too
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise UserError(
                f"store {where} is damaged: {'; '.join(problems[:3])}{more}; rebuild it with build-aug --overwrite"
            )
    return store


def shape_problems(store: OpenStore) -> list[str]:
    """Attributes that disagree with the arrays (an edited zarr.json, a mixed-up copy)."""
    attrs, problems = store.attrs, class_name_problems(store.attrs)
    shape = tuple(attrs.image_shape)
    for split in attrs.splits:
        images = store.images(split)
        if tuple(images.shape[1:]) != shape:
            problems.append(f"{split}/images holds {tuple(images.shape[1:])} images but the attributes say {shape}")
        if not is_raw_layout(images):
            problems.append(
                f"{split}/images is not stored raw (uint8, zarr's lone bytes codec) as format {FORMAT_VERSION} stores images"
            )
        for name in ROW_ARRAYS:
            rows = store.row_array(split, name).shape[0]
            if rows != images.shape[0]:
                problems.append(f"{split}/{name} has {rows} rows, {split}/images {images.shape[0]}")
    return problems


def class_name_problems(attrs: StoreAttrs) -> list[str]:
    """class_names must be distinct, non-empty strings equal to those the build recorded in its identity:
    an edit of class_names alone (fewer, renamed, reordered) is caught here; an edit of both copies
    is caught only where it leaves labels beyond the names (row_array_problems)."""
    names = attrs.class_names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return [f"class_names {short_json(names)} is not a list of non-empty names"]
    problems = []
    if len(set(names)) != len(names):
        problems.append(f"class_names {short_json(names)} repeats a name")
    built = attrs.identity.get("class_names", names) if isinstance(attrs.identity, dict) else names
    if built != names:
        problems.append(f"class_names {short_json(names)} differ from those it was built with {short_json(built)}")
    return problems


def short_json(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def row_array_problems(store: OpenStore) -> list[str]:
    """labels, source_index and copy_index of every split, read whole and checked: every chunk
    present and decodable, the dtype, the CRC-32 recorded at build time (stores built before it
    was recorded skip that), and labels within the class names."""
    problems = []
    attrs = store.attrs
    n_classes = attrs.n_classes if isinstance(attrs.class_names, list) else 0
    present = store.objects
    for split in attrs.splits:
        for name in ROW_ARRAYS:
            key, array = f"{split}/{name}", store.row_array(split, name)
            dtype = row_dtype(name, n_classes)
            if array.dtype != dtype:
                problems.append(f"{key} is {array.dtype}, not {dtype}")
                continue
            data, problem = read_row_array(store.storage, array, present)
            if data is None:
                problems.append(problem or f"{key} cannot be read")
                continue
            if attrs.array_crc32 is not None and crc32_hex(data) != attrs.array_crc32.get(key):
                problems.append(f"{key} ({store.storage.where(array.path)}) does not match its checksum from the build")
            elif name == "labels" and len(data) and int(data.min()) < 0:
                problems.append(f"{key} hold label {int(data.min())}, below 0")
            elif name == "labels" and len(data) and int(data.max()) >= n_classes:
                problems.append(
                    f"{key} go up to {int(data.max())}, but the attributes name {count(n_classes, 'class')}"
                )
    return problems


def read_row_array(
    storage: Storage, array: zarr.Array, present: dict[str, int]
) -> tuple[np.ndarray | None, str | None]:
    """(the array's data, None), or (None, what is wrong with the first bad chunk)."""
    rows, parts = array.chunks[0], []
    for c in range(array.cdata_shape[0]):
        key = chunk_key(array, c)
        if key not in present:  # zarr would read it as zeros
            return None, f"chunk file {storage.where(key)} is missing"
        try:
            parts.append(array[c * rows : (c + 1) * rows])
        except Exception as exc:  # whatever the codec raises on damaged bytes (zstd: RuntimeError)
            return None, f"chunk file {storage.where(key)} cannot be decoded ({first_line(exc)})"
    return (np.concatenate(parts) if parts else np.empty(0, array.dtype)), None


def first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def chunk_problems(store: OpenStore) -> list[tuple[str, str]]:
    """(key, message) of image chunks missing or not their full size, from one listing: a cheap check
    for every reader, since zarr would read a missing chunk as black images without a word."""
    present = store.objects
    problems = []
    for split in store.attrs.splits:
        images = store.images(split)
        expected = int(np.prod(images.chunks)) * images.dtype.itemsize
        for c in range(images.cdata_shape[0]):
            key = chunk_key(images, c)
            size = present.get(key)
            if size is None:
                problems.append((key, f"chunk file {store.storage.where(key)} is missing"))
            elif size != expected:
                problems.append(
                    (key, f"chunk file {store.storage.where(key)} has {count(size, 'byte')}, not {expected:,}")
                )
    return problems


def read_chunks(storage: Storage, array: zarr.Array, chunks: list[int], outs: list[np.ndarray]) -> None:
    """Fill each out with the first len(out) rows of its chunk of a raw images array, straight from
    storage into place (concurrently where the backend has latency): no copy through zarr's pipeline,
    which would cost ~1 ms of Python a 3 MB chunk beside a training loop (BENCHMARKS.md)."""
    expected = int(np.prod(array.chunks)) * array.dtype.itemsize
    keys = [chunk_key(array, c) for c in chunks]
    try:
        sizes = storage.read_many_into(keys, [out.data.cast("B") for out in outs])
    except KeyError as exc:
        raise UserError(
            f"chunk file {storage.where(exc.args[0])} is missing: the store was damaged after it was opened; "
            "check it with inspect-aug --verify"
        ) from None
    for key, size in zip(keys, sizes):
        if size != expected:
            raise UserError(
                f"chunk file {storage.where(key)} has {count(size, 'byte')} where {expected:,} were expected: the store "
                "was damaged after it was opened; check it with inspect-aug --verify"
            )


def crc32_hex(data: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(data).data):08x}"


def array_at(group: zarr.Group, path: str) -> zarr.Array:
    """The array at path (open_store has refused a store where a group stands in an array's place)."""
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise TypeError(f"{path} is a group, not an array")
    return node


def read_whole(array: zarr.Array) -> np.ndarray:
    return np.asarray(array[:])
