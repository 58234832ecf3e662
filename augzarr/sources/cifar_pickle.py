"""--source PATH of the official CIFAR-10 python format: cifar-10-python.tar.gz, or its extracted cifar-10-batches-py
folder (or the folder holding it). The batches are pickles of arrays: read with an unpickler that allows arrays and
nothing else. keras_datasets.py reads Keras' cached CIFAR archives with the same helpers."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np

from augzarr.errors import UserError
from augzarr.wording import article, count

from .base import OpenRequest, Source, SourceKind, Split, register, source_path

ARCHIVE_NAME = re.compile(r"\.(tar\.gz|tgz|tar)$")


@register
class CifarPickleKind(SourceKind):
    described = "a CIFAR-10 archive"
    file_hint = "the official cifar-10-python.tar.gz"

    def claims(self, spec: str) -> bool:
        path = source_path(spec)
        return (path.is_file() and ARCHIVE_NAME.search(path.name) is not None) or (
            path.is_dir() and find_pickle_dir(path) is not None
        )

    def open(self, spec: str, request: OpenRequest) -> Source:
        return load_cifar10_pickle(source_path(spec))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """The batches are pickles: allow what numpy arrays need and nothing else, never
    arbitrary code (the same globals as Keras' own RestrictedUnpickler)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a pickle of arrays")


def named(location: Path | str) -> str:
    """A message's subject: --source PATH, or (a str) the words given, for a file of Keras' cache."""
    return location if isinstance(location, str) else f"--source {location}"


def unpickle_batch(data: bytes, name: str, location: Path | str, title: str = "CIFAR-10") -> dict:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise UserError(f"{named(location)}: {name} is not {article(title)} pickle batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise UserError(f"{named(location)}: {name} is not {article(title)} pickle batch")
    return batch


def find_pickle_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "batches.meta").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def read_pickle_members(path: Path) -> dict[str, bytes]:
    """Map file name -> bytes for every file of the archive or folder."""
    wanted = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta)$")
    members: dict[str, bytes] = {}
    if path.is_file():
        try:
            with tarfile.open(path) as archive:
                for member in archive:
                    name = Path(member.name).name
                    if member.isfile() and wanted.match(name) and (data := archive.extractfile(member)) is not None:
                        members[name] = data.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(
                f"--source {path}: cannot read the archive ({exc}); is it the official cifar-10-python.tar.gz?"
            ) from exc
    else:
        folder = find_pickle_dir(path)
        if folder is None:
            raise UserError(
                f"--source {path}: no CIFAR-10 batches (data_batch_1, batches.meta) in it or in cifar-10-batches-py/"
            )
        for file in sorted(folder.iterdir()):
            if file.is_file() and wanted.match(file.name):
                members[file.name] = file.read_bytes()
    return members


def decode_batch(
    batch: dict, name: str, location: Path | str, label_key: bytes = b"labels", title: str = "CIFAR-10"
) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as exc:
        raise UserError(
            f"{named(location)}: {name} lacks the {title} 'data'/'{label_key.decode()}' layout ({exc})"
        ) from exc
    if len(images) != len(labels):
        raise UserError(
            f"{named(location)}: {name} has {count(len(images), 'image')} but {count(len(labels), 'label')}"
        )
    return np.ascontiguousarray(images), labels


def load_cifar10_pickle(path: Path) -> Source:
    members = read_pickle_members(path)
    batch_names = sorted((n for n in members if n.startswith("data_batch_")), key=lambda n: int(n.rsplit("_", 1)[1]))
    if not batch_names:
        raise UserError(f"--source {path}: no data_batch_* files found; expected the official CIFAR-10 python format")
    if "batches.meta" not in members:
        raise UserError(f"--source {path}: batches.meta (the class names) is missing")
    meta = unpickle_batch(members["batches.meta"], "batches.meta", path)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if not class_names:
        raise UserError(f"--source {path}: batches.meta has no label_names")
    train = [decode_batch(unpickle_batch(members[n], n, path), n, path) for n in batch_names]
    test = None
    if "test_batch" in members:
        test_images, test_labels = decode_batch(
            unpickle_batch(members["test_batch"], "test_batch", path), "test_batch", path
        )
        test = Split(labels=test_labels, images=test_images)
    labels = np.concatenate([t[1] for t in train])
    # every batch's labels, the test batch's too: a bad test label would only surface after a whole training run
    for name, batch_labels in [
        *zip(batch_names, (t[1] for t in train)),
        *([("test_batch", test.labels)] if test else []),
    ]:
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= len(class_names)):
            bad = int(batch_labels.min() if batch_labels.min() < 0 else batch_labels.max())
            raise UserError(
                f"--source {path}: {name} has label {bad}, outside the {count(len(class_names), 'class')} of batches.meta"
            )
    return Source(
        kind="cifar10-pickle",
        location=str(path.resolve()),
        class_names=class_names,
        image_shape=(32, 32, 3),
        train=Split(labels=labels, images=np.concatenate([t[0] for t in train])),
        test=test,
    )
