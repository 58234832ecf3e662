"""--source DIR: a folder written by Hugging Face `datasets`' save_to_disk, of a Dataset or a DatasetDict, with one
image column (a datasets.Image feature) and one class-label column (a datasets.ClassLabel feature).

Read without importing `datasets`: its .arrow files (Arrow IPC streams, memory-mapped) with pyarrow, the features
from dataset_info.json, the files of each split from state.json, the splits from dataset_dict.json. A Dataset is
the training split; a DatasetDict's train, test and validation (or val, valid) splits are the store's, as an image
folder's split folders are, and any other split is reported and not used. Class names are the ClassLabel's.

Each image stays encoded in its row: a row is an ArrowRow (the file, the row, the column), which build-aug's
workers and a Dask cluster's read and decode themselves, so a worker needs pyarrow but not `datasets`. Each
image's digest is the sha256 of its encoded bytes, as an image file's is, so evaluate --source recognises a
model's training images across the two kinds. The content hash covers each row's split, label and digest.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augzarr.errors import UserError
from augzarr.wording import count, listed, shown

from .base import SPLIT_NAMES, OpenRequest, Source, SourceKind, Split, encoded_shape, register, source_path

DATASET_DICT = "dataset_dict.json"  # a DatasetDict: {"splits": [...]}, each split a folder beside it
DATASET_INFO = "dataset_info.json"  # a Dataset: its features
DATASET_STATE = "state.json"  # a Dataset: its .arrow files, in order
INSTALL = "pip install 'augzarr[hf]'"
KIND = "hf-datasets"


@register
class HuggingFaceFolderKind(SourceKind):
    described = "a folder saved by Hugging Face datasets (save_to_disk)"

    def claims(self, spec: str) -> bool:
        path = source_path(spec)
        return (path / DATASET_DICT).is_file() or ((path / DATASET_INFO).is_file() and (path / DATASET_STATE).is_file())

    def open(self, spec: str, request: OpenRequest) -> Source:
        return read_saved_dataset(source_path(spec), request.image_size)


@dataclass
class SavedDatasetSource(Source):
    def is_location(self, location: str) -> bool:
        return Path(location).resolve() == Path(self.location).resolve()


@dataclass(frozen=True, slots=True)
class ArrowRow:
    """One image of a saved dataset: row `row` of the image column `column` of the .arrow file `file` (absolute).
    An ImageItem (augzarr/images.py): picklable, and read where it is decoded."""

    file: str
    row: int
    column: str

    def read_bytes(self) -> bytes:
        try:
            data = image_column(self.file, self.column).image(self.row)
        except UserError as exc:
            raise OSError(str(exc)) from None
        if data is None:
            raise OSError(f"row {self.row} holds no image bytes")
        return data

    def is_file(self) -> bool:
        return os.path.isfile(self.file)

    def __str__(self) -> str:
        return f"row {self.row} of {self.file}"


def pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
    except ImportError:
        return None
    return pyarrow


def read_table(file: Path, root: Path | None = None):
    """An .arrow file of save_to_disk (an Arrow IPC stream), memory-mapped: its columns are read when used.
    root: the --source folder, to name the file by in a message."""
    pa = pyarrow()
    named = f"--source {root}: {shown(file.relative_to(root))}" if root is not None else shown(file)
    if pa is None:
        raise UserError(f"{named} is an Arrow file of a Hugging Face dataset: reading it needs pyarrow: {INSTALL}")
    try:
        return pa.ipc.open_stream(pa.memory_map(str(file))).read_all()
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{named} cannot be read as an Arrow file ({reason}); save the dataset again with save_to_disk"
        ) from None


class ImageColumn:
    """The encoded images of one column of one .arrow file, by row."""

    def __init__(self, file: str, column: str):
        chunks = read_table(Path(file)).column(column).chunks
        self.bytes = [chunk.field("bytes") for chunk in chunks]
        self.starts = np.cumsum([0] + [len(chunk) for chunk in chunks]).tolist()

    def image(self, row: int) -> bytes | None:
        at = bisect.bisect_right(self.starts, row) - 1
        return self.bytes[at][row - self.starts[at]].as_py()


OPEN_FILES = 8  # .arrow files a process keeps mapped (a decode task's rows are consecutive: mostly one file)
_columns: OrderedDict[tuple[str, str], ImageColumn] = OrderedDict()
_columns_lock = threading.Lock()  # a Dask worker decodes in several threads


def image_column(file: str, column: str) -> ImageColumn:
    key = (file, column)
    with _columns_lock:
        if key in _columns:
            _columns.move_to_end(key)
            return _columns[key]
    found = ImageColumn(file, column)
    with _columns_lock:
        _columns[key] = found
        while len(_columns) > OPEN_FILES:
            _columns.popitem(last=False)
    return found


def read_json(path: Path, root: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"--source {root}: {shown(path.relative_to(root))} cannot be read ({exc}); save the dataset again with save_to_disk"
        ) from None
    if not isinstance(found, dict):
        raise UserError(
            f"--source {root}: {shown(path.relative_to(root))} is not what save_to_disk writes; save the dataset again"
        )
    return found


def read_saved_dataset(root: Path, image_size: int | None) -> Source:
    """A folder of save_to_disk (the module's docstring), its images left encoded in their rows."""
    root = root.absolute()
    if pyarrow() is None:
        raise UserError(
            f"--source {root} is a folder saved by Hugging Face datasets: reading it needs pyarrow: {INSTALL}"
        )
    ignored: list[str] = []
    folders, layout = split_folders(root, ignored)
    features = Features.of(folders["train"], root)
    splits = {name: read_split(folder, root, features) for name, folder in folders.items()}
    return SavedDatasetSource(
        kind=KIND,
        location=str(root),
        class_names=features.class_names,
        image_shape=encoded_shape(splits["train"].encoded_files(), image_size),
        train=splits["train"],
        test=splits.get("test"),
        ignored=ignored,
        val=splits.get("val"),
        layout=layout,
    )


def split_folders(root: Path, ignored: list[str]) -> tuple[dict[str, Path], str]:
    """The store's split -> the folder of its Dataset, and the layout: "dataset" (one Dataset: the training
    split), or "split (train, ...)" naming a DatasetDict's splits used."""
    if not (root / DATASET_DICT).is_file():
        return {"train": root}, "dataset"
    names = read_json(root / DATASET_DICT, root).get("splits")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"--source {root}: {DATASET_DICT} lists no splits; save the dataset again with save_to_disk")
    chosen: dict[str, str] = {}
    for name in names:
        split = SPLIT_NAMES.get(name.lower())
        if split is None:
            ignored.append(f"{shown(root / name)}: split {name!r}, not train, test or validation: not used")
        elif split in chosen:
            raise UserError(
                f"--source {root}: both its splits {chosen[split]!r} and {name!r} are {split} splits; keep one of them "
                "(DatasetDict.pop) and save it again"
            )
        else:
            chosen[split] = name
    if "train" not in chosen:
        raise UserError(
            f"--source {root}: its splits ({listed(names)}) have no train split; name the training split 'train' "
            "(DatasetDict({'train': ...})) and save it again"
        )
    layout = "split (" + ", ".join(chosen[name] for name in ("train", "val", "test") if name in chosen) + ")"
    return {split: root / name for split, name in chosen.items()}, layout


@dataclass(frozen=True)
class Features:
    """The image and class-label columns of a saved Dataset, from its dataset_info.json."""

    image: str
    label: str
    class_names: list[str]

    @classmethod
    def of(cls, folder: Path, root: Path) -> Features:
        features = read_json(folder / DATASET_INFO, root).get("features")
        if not isinstance(features, dict):
            raise UserError(
                f"--source {root}: {shown((folder / DATASET_INFO).relative_to(root))} has no features; save the dataset again"
            )
        typed = {
            name: (feature.get("_type") if isinstance(feature, dict) else type(feature).__name__)
            for name, feature in features.items()
        }
        columns = listed(f"{name} ({kind})" for name, kind in typed.items())
        image = one_column(root, typed, "Image", "image column", columns, "dataset.cast_column(NAME, datasets.Image())")
        label = one_column(
            root, typed, "ClassLabel", "class-label column", columns, "dataset.class_encode_column(NAME)"
        )
        names = features[label].get("names")
        if not isinstance(names, list) or not names:
            raise UserError(
                f"--source {root}: its class-label column {label!r} names no classes; give its ClassLabel names"
            )
        return cls(image, label, [str(name) for name in names])


def one_column(root: Path, typed: dict[str, str | None], feature: str, noun: str, columns: str, make: str) -> str:
    """The one column of a feature type (Image, ClassLabel), or a line saying how to make it the one."""
    found = [name for name, found_type in typed.items() if found_type == feature]
    if not found:
        raise UserError(
            f"--source {root}: no {noun} (a datasets.{feature} feature) among its columns {columns}; "
            f"make one with {make} and save it again"
        )
    if len(found) > 1:
        raise UserError(
            f"--source {root}: {len(found)} {noun}s ({listed(found)}); augzarr reads one: "
            "drop the others with dataset.remove_columns([...]) and save it again"
        )
    return found[0]


def read_split(folder: Path, root: Path, features: Features) -> Split:
    """One saved Dataset's labels (checked) and its images, as ArrowRows of its files in order."""
    if folder != root and Features.of(folder, root) != features:
        raise UserError(
            f"--source {root}: its {folder.name} split has other image or class-label columns, or other class names, "
            "than its train split; give every split the train split's features"
        )
    labels, files = [], []
    for file in data_files(folder, root):
        table = read_table(file, root)
        found = [name for name in (features.image, features.label) if name not in table.column_names]
        if found:
            raise UserError(
                f"--source {root}: {shown(file.relative_to(root))} lacks the column {found[0]!r} its "
                f"{DATASET_INFO} names; save the dataset again with save_to_disk"
            )
        check_images(table.column(features.image), file, root)
        labels.append(checked_labels(table.column(features.label), len(features.class_names), file, root))
        name = str(file)  # one string for all its rows: a decode task pickles it once
        files += [ArrowRow(name, row, features.image) for row in range(table.num_rows)]
    if not files:
        raise UserError(
            f"--source {root}: its {'split ' + repr(folder.name) if folder != root else 'dataset'} has no rows; "
            "leave out an empty split (DatasetDict.pop) and save it again"
        )
    return Split(labels=np.concatenate(labels), files=files)


def data_files(folder: Path, root: Path) -> list[Path]:
    listed_files = read_json(folder / DATASET_STATE, root).get("_data_files")
    if not isinstance(listed_files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("filename"), str) for f in listed_files
    ):
        raise UserError(
            f"--source {root}: {shown((folder / DATASET_STATE).relative_to(root))} lists no .arrow files; save the dataset again"
        )
    files = [folder / entry["filename"] for entry in listed_files]
    missing = [file for file in files if not file.is_file()]
    if missing:
        raise UserError(
            f"--source {root}: {shown(missing[0].relative_to(root))} is missing; restore it or save the dataset again"
        )
    return files


def check_images(column, file: Path, root: Path) -> None:
    """Every row holds an image's bytes (not an empty row, nor only the path of a file elsewhere)."""
    start = 0
    for chunk in column.chunks:
        data = chunk.field("bytes")
        if chunk.null_count or data.null_count:
            row = start + next(i for i in range(len(chunk)) if not chunk[i].is_valid or not data[i].is_valid)
            raise UserError(
                f"--source {root}: row {row} of {shown(file.relative_to(root))} holds no image bytes (an empty row, or only "
                "a path to a file elsewhere); drop such rows, or save the dataset again with its images in it"
            )
        start += len(chunk)


def checked_labels(column, n_classes: int, file: Path, root: Path) -> np.ndarray:
    if column.null_count:
        row, value = next(i for i, v in enumerate(column.to_pylist()) if v is None), "no label"
    else:
        labels = column.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if not len(bad):
            return labels.astype(np.int64)
        row = int(bad[0])
        value = f"label {labels[row]}"
    raise UserError(
        f"--source {root}: row {row} of {shown(file.relative_to(root))} has {value}, outside its {count(n_classes, 'class')} "
        "(-1 is a ClassLabel's 'no label'); drop the unlabelled rows (dataset.filter) and save it again"
    )
