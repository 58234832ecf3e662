"""--source DIR: a folder of image files, in one of two layouts decided from what is there, never guessed:

    flat   DIR/<class>/<image>
    split  DIR/train/<class>/<image>, optional DIR/test/<class>/... and DIR/val/ (or valid/, validation/) <class>/...

Class names are the sorted folder names. The images are the files themselves (absolute Paths, decoded by the
build's workers); the content hash covers each used file's path relative to DIR, its label and its bytes.
Hidden files, non-images, empty folders and any zarr store inside (the build's own --out) are reported in
`ignored`, never used. Any folder no other kind claims is read as one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augzarr.errors import UserError
from augzarr.wording import listed, shown

from .base import SPLIT_NAMES, OpenRequest, Source, SourceKind, Split, encoded_shape, register, source_path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}
SPLIT_FOLDERS = SPLIT_NAMES  # a top-level folder of one of these names (any case) makes the split layout
# A folder holding one of these is a zarr store (v3, v2 group, v2 array): data, never a class of images
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
UNFINISHED_BUILD_MARKER = (".build", "build.json")  # build-aug's state before the store's zarr.json exists


@register
class ImageFolderKind(SourceKind):
    described = "an image folder"
    fallback = True

    def claims(self, spec: str) -> bool:
        path = source_path(spec)
        return path.exists() and not path.is_file()

    def open(self, spec: str, request: OpenRequest) -> Source:
        return scan_image_folder(source_path(spec), request.image_size, request.exclude)


@dataclass
class ImageFolderSource(Source):
    def hash_digests(self, digests: dict[str, list[str]]) -> str:
        """Hash of every used file's relative path, label and bytes, in source order."""
        digest = hashlib.sha256()
        skip = len(self.location) + 1  # files are listed below the location: their path relative to it, cheaply
        for split_name, split in self.splits().items():
            for file, label, file_hash in zip(split.encoded_files(), split.labels, digests[split_name]):
                # file names as bytes: a name that is not UTF-8 must hash, not crash
                digest.update(os.fsencode(str(file)[skip:]) + f"\0{label}\0{file_hash}\n".encode())
        return "sha256:" + digest.hexdigest()

    def is_location(self, location: str) -> bool:
        return Path(location).resolve() == Path(self.location).resolve()


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in IGNORED_NAMES


def is_store(folder: Path) -> bool:
    return (
        any((folder / marker).is_file() for marker in ZARR_MARKERS)
        or folder.joinpath(*UNFINISHED_BUILD_MARKER).is_file()
    )


def not_scanned(folder: Path, excluded: dict[str, str]) -> str | None:
    """Why a folder below the source is not read for images, or None: the build's own store
    (--out inside --source) or any other zarr store must never become a class."""
    reason = excluded.get(os.path.realpath(folder))
    if reason is None and is_store(folder):
        reason = "a zarr store, not images"
    return reason


def list_class_folders(root: Path, ignored: list[str], excluded: dict[str, str]) -> dict[str, list[Path]]:
    """class name -> sorted image files (subfolders included), reporting all that is not used."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            ignored.append(f"{shown(entry)}: hidden")
        elif not entry.is_dir():
            ignored.append(f"{shown(entry)}: not in a class folder")
        elif reason := not_scanned(entry, excluded):
            ignored.append(f"{shown(entry)}: {reason}")
        else:
            files = list_images(entry, ignored, excluded)
            if files:
                classes[entry.name] = files
            else:
                ignored.append(f"{shown(entry)}: empty class folder, not used as a class")
    return classes


def walk_images(folder: Path, ignored: list[str], excluded: dict[str, str]):
    """Yield the image files below folder (as strings, in no set order), reporting what is not used."""
    # os.walk does not follow symbolic links to folders, so a link loop cannot trap it
    for parent, dirs, names in os.walk(folder):
        dirs.sort()  # the report's order does not depend on the file system's
        for name in list(dirs):
            path = os.path.join(parent, name)
            reason: str | None
            if name.startswith("."):
                reason = "hidden"
            elif os.path.islink(path):
                reason = "a symbolic link to a folder, not followed"
            else:
                reason = not_scanned(Path(path), excluded)
            if reason:
                ignored.append(f"{shown(path)}: {reason}")
                dirs.remove(name)
        for name in names:
            if name.startswith(".") or name in IGNORED_NAMES:
                ignored.append(f"{shown(Path(parent, name))}: hidden")
            elif os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                ignored.append(f"{shown(Path(parent, name))}: not an image file (.jpg .jpeg .png .bmp .webp)")
            else:
                yield os.path.join(parent, name)


def list_images(folder: Path, ignored: list[str], excluded: dict[str, str]) -> list[Path]:
    files = list(walk_images(folder, ignored, excluded))
    # strings, sorted by path components as Path objects sort, are ~10x cheaper than sorting Paths
    return [Path(file) for file in sorted(files, key=lambda file: file.split(os.sep))]


def has_images(folder: Path, excluded: dict[str, str]) -> bool:
    return next(walk_images(folder, [], excluded), None) is not None


@dataclass
class TopLevel:
    """What the source folder holds at its top, sorted: folders with images, empty folders, loose files."""

    folders: list[Path]
    empty: list[Path]
    loose: list[Path]


def top_level(root: Path, excluded: dict[str, str], ignored: list[str]) -> TopLevel:
    found = TopLevel([], [], [])
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            ignored.append(f"{shown(entry)}: hidden")
        elif not entry.is_dir():
            found.loose.append(entry)
        elif reason := not_scanned(entry, excluded):
            ignored.append(f"{shown(entry)}: {reason}")
        elif has_images(entry, excluded):
            found.folders.append(entry)
        else:
            found.empty.append(entry)
    return found


def scan_image_folder(root: Path, image_size: int | None, exclude: dict | None = None) -> Source:
    """An image folder in the flat or the split layout (the module's docstring); split-folder names beside
    other folders are ambiguous and refused. exclude: real paths never read as images -> why."""
    if not root.is_dir():
        raise UserError(f"--source {root}: not a folder")
    root = root.absolute()  # every file below it, so the content hash can name them relative to it
    if is_store(root):
        raise UserError(
            f"--source {root} is a zarr store, not an image folder; pass the folder of images (or the CIFAR-10 archive) to build from"
        )
    excluded = {os.path.realpath(path): reason for path, reason in (exclude or {}).items()}
    ignored: list[str] = []
    layout, chosen, train_classes = read_layout(root, top_level(root, excluded, ignored), ignored, excluded)
    if not train_classes:
        raise UserError(
            f"--source {root}: no images found; expected {root}/<class>/<image> or {root}/train/<class>/<image>"
        )
    class_names = sorted(train_classes)
    held = {
        name: held_out_split(root, chosen[name], chosen["train"], class_names, ignored, excluded)
        for name in ("test", "val")
        if name in chosen
    }
    train_split = folder_split(train_classes, class_names)
    return ImageFolderSource(
        kind="image-folder",
        location=str(root),
        class_names=class_names,
        image_shape=encoded_shape(train_split.encoded_files(), image_size),
        train=train_split,
        test=held.get("test"),
        ignored=ignored,
        val=held.get("val"),
        layout=layout,
    )


def read_layout(
    root: Path, top: TopLevel, ignored: list[str], excluded: dict[str, str]
) -> tuple[str, dict[str, Path], dict[str, list[Path]]]:
    """(the layout's name, the store's split -> its folder for the split layout, train's class -> files)."""
    splits = [f for f in top.folders if f.name.lower() in SPLIT_FOLDERS]
    if not splits:
        ignored.extend(f"{shown(f)}: not in a class folder" for f in top.loose)
        ignored.extend(f"{shown(f)}: empty class folder, not used as a class" for f in top.empty)
        return "flat", {}, {f.name: list_images(f, ignored, excluded) for f in top.folders}
    chosen = choose_split_folders(root, top.folders, splits)
    ignored.extend(f"{shown(f)}: not in a split folder" for f in top.loose)
    ignored.extend(f"{shown(f)}: empty folder, not used" for f in top.empty)
    layout = "split (" + ", ".join(chosen[name].name for name in ("train", "val", "test") if name in chosen) + ")"
    train_classes = list_class_folders(chosen["train"], ignored, excluded)
    if not train_classes:
        raise UserError(
            f"--source {root}: {chosen['train'].name}/ holds no class folders with images; expected "
            f"{root}/{chosen['train'].name}/<class>/<image>"
        )
    return layout, chosen, train_classes


def choose_split_folders(root: Path, folders: list[Path], splits: list[Path]) -> dict[str, Path]:
    """The store's split -> its folder, for a source whose non-empty folders include split names;
    refuse every case that could be read two ways."""
    names = lambda paths: listed(f"{p.name}/" for p in paths)
    others = [f for f in folders if f not in splits]
    if others:
        raise UserError(
            f"--source {root}: cannot tell its layout: split folders ({names(splits)}) beside other folders "
            f"({names(others)}); for DIR/train/<class>/... move {names(others)} out of it, for DIR/<class>/... rename "
            f"{names(splits)}, or point --source at the folder that holds only class folders"
        )
    chosen: dict[str, Path] = {}
    for folder in splits:
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in chosen:
            raise UserError(
                f"--source {root}: both {chosen[split].name}/ and {folder.name}/ hold {split} images; "
                "keep one of them (merge or move the other out)"
            )
        chosen[split] = folder
    if "train" not in chosen:
        raise UserError(
            f"--source {root}: {names(splits)} without train/: the split layout needs {root}/train/<class>/<image>; "
            f"add train/, or point --source at {names(splits[:1])} itself to read it as DIR/<class>/<image>"
        )
    return chosen


def held_out_split(
    root: Path, folder: Path, train: Path, class_names: list[str], ignored: list[str], excluded: dict[str, str]
) -> Split:
    """A test/ or val/ folder's images: its classes must be train/'s."""
    classes = list_class_folders(folder, ignored, excluded)
    if not classes:
        raise UserError(
            f"--source {root}: {folder.name}/ holds no class folders with images; expected {root}/{folder.name}/<class>/<image>"
        )
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise UserError(f"--source {root}: {folder.name}/ has classes that {train.name}/ lacks: {listed(unknown)}")
    return folder_split(classes, class_names)


def folder_split(classes: dict[str, list[Path]], class_names: list[str]) -> Split:
    """A folder's order takes the classes in turn (1st file of each class, then the 2nd, ...),
    so the first N images (--limit) sample every class, as CIFAR-10's own batches do."""
    entries = [
        (position, label, file)
        for label, name in enumerate(class_names)
        for position, file in enumerate(classes.get(name, []))
    ]
    entries.sort(key=lambda e: (e[0], e[1]))
    return Split(labels=np.array([e[1] for e in entries], dtype=np.int64), files=[e[2] for e in entries])
