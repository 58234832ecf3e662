"""The source seam: what every kind of --source gives the builder, its workers, the hashing and evaluate --source.

A kind is one class in one module, registered by a decorator (as storage backends are by URL scheme):

    @register
    class ImageFolderKind(SourceKind):
        described = "an image folder"                       # how a message lists it
        def claims(self, spec: str) -> bool: ...            # is --source SPEC one of mine?
        def open(self, spec: str, request: OpenRequest) -> Source: ...

open_source(spec) asks each kind in turn whether it claims SPEC (a fallback kind, the image folder, last) and
opens it with the one that does. The Source it returns holds the class names, the image shape and the splits;
each Split holds its labels and its images, either decoded (`images`, uint8 [n, H, W, C]: the arrays of
keras.datasets and of CIFAR pickles) or encoded (`files`: ImageItems, augzarr/images.py, picklable references
such as absolute paths or (file, row) that build-aug's worker processes and a Dask cluster's workers read and
decode themselves). Decoded sources are hashed when opened; encoded ones from each image's sha256 digest,
computed as the workers decode them (Source.hash_digests, which a kind may override), so that nothing outside
a kind's own module needs to know which kind a source is.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from augzarr.errors import OptionError, UserError
from augzarr.wording import alternatives, shown

# A source's own split names (an image folder's folders, a Hugging Face DatasetDict's splits), matched ignoring
# case -> the store's split. The one list: every kind with splits of its own maps them with it.
SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}


@dataclass
class Split:
    labels: np.ndarray  # int64 [n]
    images: np.ndarray | None = None  # decoded: uint8 [n, H, W, C] (C = 1 for MNIST's grayscale)
    files: list | None = (
        None  # encoded: one ImageItem per row (an image file, a row of a dataset's file), decoded later
    )

    def __len__(self) -> int:
        return len(self.labels)

    def decoded_images(self) -> np.ndarray:
        """The images of a decoded source's split."""
        if self.images is None:
            raise TypeError("this split's images are encoded: its files hold them")
        return self.images

    def encoded_files(self) -> list:
        """The image items of an encoded source's split."""
        if self.files is None:
            raise TypeError("this split's images are decoded: its images hold them")
        return self.files


@dataclass
class Source:
    kind: str  # recorded in the store: "keras-<dataset>" (keras-cifar10, keras-mnist, ...), "cifar10-pickle", "image-folder", ...
    location: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    train: Split
    test: Split | None
    content_hash: str | None = None  # known when opened for decoded images, once decoded (or hashed) for encoded ones
    file_digests: dict[str, list[str]] | None = None  # encoded images, once decoded: each one's sha256, by split
    ignored: list[str] = field(default_factory=list)  # files and folders reported, not used
    val: Split | None = None  # the source's own validation split: then nothing is held out of train
    layout: str | None = (
        None  # how the source's own splits were found ("flat", "split (train, ...)"), where that can vary
    )

    def splits(self) -> dict[str, Split]:
        """The splits that exist, in the order the content hash covers them (val last, so a source without one
        hashes as it always did)."""
        named = {"train": self.train, "test": self.test, "val": self.val}
        return {name: split for name, split in named.items() if split is not None}

    def decoded(self) -> bool:
        """Whether the images arrive decoded (arrays), rather than as ImageItems for the workers to decode."""
        return self.train.images is not None

    def hash_digests(self, digests: dict[str, list[str]]) -> str:
        """The content hash of encoded images from their sha256 digests (by split, in row order): each row's
        split, label and digest."""
        digest = hashlib.sha256()
        for split_name, split in self.splits().items():
            for label, image_hash in zip(split.labels, digests[split_name]):
                digest.update(f"{split_name}\0{label}\0{image_hash}\n".encode())
        return "sha256:" + digest.hexdigest()

    def hash_without_decoding(self) -> str:
        """The content hash, computed from the encoded images' bytes where it is not known yet (nothing decoded)."""
        if self.content_hash is not None:
            return self.content_hash
        from augzarr.images import file_digest

        return self.hash_digests(
            {name: [file_digest(item) for item in split.encoded_files()] for name, split in self.splits().items()}
        )

    def sample_name(self, split: str, index: int) -> str:
        """A source image in a message: its file (or row of a file) where it has one, else its split and index."""
        files = self.splits()[split].files
        if files is not None and index < len(files):
            return f"source image {shown(files[index])}"
        return f"source {split} image {index}"

    def is_location(self, location: str) -> bool:
        """Whether a recorded location (a store's source.location) names this source."""
        return location == self.location


def hash_arrays(source: Source) -> str:
    """The content hash of decoded images: their bytes and labels, train then test."""
    digest = hashlib.sha256()
    for split in (source.train, source.test):
        if split is not None:
            digest.update(np.ascontiguousarray(split.images).data)
            digest.update(split.labels.astype("<i8").tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class OpenRequest:
    """What build-aug (or evaluate) asks of a source beside its spec."""

    image_size: int | None = None  # resize to NxN; None: the images' own size (encoded ones must then agree)
    exclude: dict[str, str] = field(default_factory=dict)  # real paths never read as images (the build's --out) -> why
    label_mode: str | None = None  # the kind's label modes (label_modes()), checked before open


class SourceKind(ABC):
    """One kind of --source. Subclasses are registered with @register and found by open_source."""

    described: ClassVar[str]  # as the list of what --source takes names it: "an image folder"
    file_hint: ClassVar[str | None] = None  # the single files it reads, for the message about a file no kind reads
    fallback: ClassVar[bool] = False  # asked after every other kind (the image folder: any folder)

    @abstractmethod
    def claims(self, spec: str) -> bool:
        """Whether --source SPEC is of this kind; cheap (names, and a look at what is at the path)."""

    @abstractmethod
    def open(self, spec: str, request: OpenRequest) -> Source:
        """The source, or a one-line UserError naming --source SPEC and what to do."""

    def label_modes(self) -> dict[str, tuple[str, ...]]:
        """--source names that take --label-mode -> their modes, the default first."""
        return {}


_KINDS: list[SourceKind] = []


def register(cls: type[SourceKind]) -> type[SourceKind]:
    """Class decorator: a kind of --source, asked in the order registered (fallback kinds last)."""
    _KINDS.append(cls())
    _KINDS.sort(key=lambda kind: kind.fallback)  # stable: registration order otherwise
    return cls


def source_kinds() -> list[SourceKind]:
    return list(_KINDS)


def source_path(spec: str) -> Path:
    return Path(spec).expanduser()


def kind_of(spec: str) -> SourceKind:
    """The kind that claims --source SPEC, or a one-line error saying what --source takes."""
    for kind in _KINDS:
        if kind.claims(spec):
            return kind
    if source_path(spec).exists():
        hints = [kind.file_hint for kind in _KINDS if kind.file_hint]
        raise UserError(f"--source {spec}: a file must be {' or '.join(hints)}; for images pass their folder")
    described = [kind.described for kind in _KINDS]
    raise UserError(f"--source {spec}: no such file or folder (use {alternatives(described)})")


def open_source(
    spec: str,
    image_size: int | None = None,
    limit: int | None = None,
    exclude: dict | None = None,
    label_mode: str | None = None,
) -> Source:
    """Resolve --source (a keras.datasets name such as 'cifar10', or a path) into a Source.

    exclude: folders that must not be read as images even when they sit inside the source (the build's own
    --out), mapped to the reason to report. label_mode: the label modes of a source that has them (CIFAR-100's
    fine or coarse; None: its default); refused for every other source."""
    check_label_mode(spec, label_mode)
    excluded = {os.path.realpath(path): reason for path, reason in (exclude or {}).items()}
    source = kind_of(spec).open(spec, OpenRequest(image_size, excluded, label_mode))
    if limit is not None:
        source.train = take_first(source.train, limit)
    if source.decoded():
        if image_size is not None:
            from augzarr.images import resize_all

            for split in source.splits().values():
                split.images = resize_all(split.decoded_images(), image_size)
            source.image_shape = (image_size, image_size, source.image_shape[2])
        source.content_hash = hash_arrays(source)
    return source


def check_label_mode(spec: str, label_mode: str | None) -> None:
    """--label-mode: one of the source's label modes, and only for a source that has them."""
    if label_mode is None:
        return
    offered = {name: modes for kind in _KINDS for name, modes in kind.label_modes().items()}
    if spec not in offered:
        raise OptionError(
            f"--label-mode applies to --source {', '.join(offered)} only, not to --source {spec}; leave it out"
        )
    if label_mode not in offered[spec]:
        raise OptionError(f"--label-mode must be {' or '.join(offered[spec])}, not {label_mode!r}")


def take_first(split: Split, limit: int) -> Split:
    return Split(
        labels=split.labels[:limit],
        images=None if split.images is None else split.images[:limit],
        files=None if split.files is None else split.files[:limit],
    )


def encoded_shape(files: list, image_size: int | None) -> tuple[int, int, int]:
    """The stored image shape of encoded images: NxN with --image-size, else the first readable image's size (RGB)."""
    if image_size is not None:
        return (image_size, image_size, 3)
    from augzarr.images import first_readable_size

    return (*first_readable_size(files), 3)
