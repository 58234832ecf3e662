"""augzarr from Python: build a store, open it, look at it, stream it into your own model.fit.

    import augzarr
    store = augzarr.build("cifar10", out="data/aug.zarr", copies=5)   # or augzarr.open_store("data/aug.zarr")
    store.contact_sheet()                                              # shown inline in a notebook
    train = store.stream("train", batch_size=128)
    model.fit(train, steps_per_epoch=train.batches_per_epoch, validation_data=store.stream("val"), epochs=20)

Everything here is a thin layer over what the commands use (builder.build, store_format, trainer.stream),
so a store built from Python is the store build-aug makes, byte for byte. Heavy libraries load on first
use: opening a store needs neither albumentations nor a Keras backend.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import numpy as np

from augzarr.builder.options import BuildOptions, SheetOptions
from augzarr.errors import OptionError, UserError
from augzarr.options import check_arguments, options_of
from augzarr.store_format import OpenStore
from augzarr.store_format import open_store as _open_checked
from augzarr.trainer.options import TrainOptions


def build(
    source: str | os.PathLike = BuildOptions.source,
    out: str | os.PathLike = BuildOptions.out,
    *,
    label_mode: str | None = BuildOptions.label_mode,
    copies: int = BuildOptions.copies,
    include_original: bool = BuildOptions.include_original,
    policy: str = BuildOptions.policy,
    val_fraction: float = BuildOptions.val_fraction,
    seed: int = BuildOptions.seed,
    chunk_size: int | None = BuildOptions.chunk_size,
    codec: str = BuildOptions.codec,
    image_size: str | None = BuildOptions.image_size,  # an int N is taken too, as "N"
    fit: str | None = BuildOptions.fit,
    stage_scale: float | None = BuildOptions.stage_scale,
    limit: int | None = BuildOptions.limit,
    workers: int | None = BuildOptions.workers,
    overwrite: bool = BuildOptions.overwrite,
    skip_bad: bool = BuildOptions.skip_bad,
    license: str | None = BuildOptions.license,
    provenance: str | None = BuildOptions.provenance,
    scheduler: str | None = BuildOptions.scheduler,
    progress: bool = True,
    **unknown: Any,
) -> Store:
    """build-aug as a function: its options as keyword arguments, with its defaults and its checks (the
    reference: docs/reference/build-aug.md). Shows a progress bar unless progress=False; returns the finished store.
    A bad option or input raises augzarr.UserError with the command's one-line message. Previews are not
    written: look at Store.contact_sheet() instead."""
    # each keyword is named above for an editor to complete; its default and its checks are BuildOptions' (builder/options.py)
    from augzarr.builder.build import build_store
    from augzarr.builder.progress import ConsoleReporter, Reporter

    known = [opt.name for opt in options_of(BuildOptions)]
    if unknown:
        raise OptionError(
            f"augzarr.build: unknown option {sorted(unknown)[0]}; the options are {', '.join(sorted(known))}"
        )
    given = {**locals(), "source": fspath(source), "out": fspath(out)}
    options = BuildOptions(**{name: given[name] for name in known})
    if not isinstance(progress, bool):
        raise OptionError(f"progress must be True or False, not {progress!r}")
    options.validate()
    build_store(options, ConsoleReporter() if progress else Reporter())
    return open_store(options.out)


def fspath(value: Any) -> Any:
    """A path object as its text (a source and a store are named by text: a URL is one too); anything else as it is, to be checked."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def open_store(location: str | os.PathLike[str]) -> Store:
    """A complete store (a folder or an object-store URL), checked as train checks it; a store that is
    not complete or is damaged raises augzarr.UserError saying what to do."""
    return Store(_open_checked(str(location)))


class Store:
    """An open augzarr store: what is in it, how it was made, its splits as arrays or as a stream."""

    def __init__(self, opened: OpenStore):
        self._store = opened

    def __repr__(self) -> str:
        rows = ", ".join(f"{self.rows(split):,} {split}" for split in self.splits)
        return f"<augzarr.Store {self.location}: {rows} rows of {'x'.join(map(str, self.image_shape))}, {len(self.class_names)} classes>"

    @property
    def location(self) -> str:
        return self._store.location

    @property
    def splits(self) -> list[str]:
        """The splits it holds, of train, val and test."""
        return list(self._store.attrs.splits)

    @property
    def class_names(self) -> list[str]:
        """Label i is class_names[i]."""
        return list(self._store.attrs.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self._store.attrs.image_shape)

    @property
    def provenance(self) -> dict:
        """How the store was made: its source (kind, location, counts, content hash), the policy, copies,
        seed and the package versions of the build, when it finished, and the license and provenance
        text given to build-aug (None when not given)."""
        attrs = self._store.attrs
        return {
            "source": asdict(attrs.source),
            "policy": attrs.policy,
            "copies": attrs.copies,
            "include_original": attrs.include_original,
            "val_fraction": attrs.val_fraction,
            "seed": attrs.seed,
            "versions": attrs.versions,
            "built": attrs.built,
            "license": attrs.license,
            "provenance": attrs.provenance,
        }

    def rows(self, split: str) -> int:
        self._check_split(split)
        return self._store.rows(split)

    def summary(self) -> str:
        """inspect-aug's summary: what is in the store, how it was made, what it costs on disk."""
        from augzarr.builder.summary import format_summary, summarize

        return format_summary(summarize(self._store))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, H, W, C], labels int [n]) of a whole split, read into memory."""
        self._check_split(split)
        return np.asarray(self._store.images(split)[:]), self._store.labels(split)

    def stream(
        self,
        split: str = "train",
        batch_size: int = TrainOptions.batch_size,
        *,
        shuffle: bool | None = None,
        seed: int = TrainOptions.seed,
        online: str = TrainOptions.online,
        buffer_chunks: int = TrainOptions.buffer_chunks,
        decode_threads: int | None = TrainOptions.decode_threads,
    ):
        """A keras.utils.PyDataset of (images uint8, labels int32) batches for model.fit, evaluate or predict,
        on any Keras backend.

        The training split is shuffled by default, as train shuffles it (chunk windows; the same seed gives
        the same batches), in a new order every epoch: an endless stream, so give fit
        steps_per_epoch=stream.batches_per_epoch (Keras would otherwise shuffle a finite PyDataset's batch
        indices itself, unseeded, reading windows out of order). Other splits come once, in stored order,
        for validation_data, evaluate and predict. batch_size, seed, online, buffer_chunks and decode_threads
        are train's options of those names, checked as train checks them; online: e.g. "flip,shift,erase"
        (shuffled streams only); decode_threads: the threads decoding a coded store's images (None: the cores)."""
        from augzarr.trainer.options import parse_online
        from augzarr.trainer.stream import StoreStream

        self._check_split(split)
        if shuffle is not None and not isinstance(shuffle, bool):
            raise OptionError(f"shuffle must be True, False or None, not {shuffle!r}")
        online = "" if online is None else online  # None was the way to say none before
        buffer_chunks = TrainOptions.buffer_chunks if buffer_chunks is None else buffer_chunks
        checked = check_arguments(
            TrainOptions,
            batch_size=batch_size,
            seed=seed,
            online=online,
            buffer_chunks=buffer_chunks,
            decode_threads=decode_threads,
        )
        shuffle = split == "train" if shuffle is None else shuffle
        if checked["online"] and not shuffle:
            raise OptionError(
                "online operations apply to a shuffled (training) stream: pass shuffle=True, or no online"
            )
        return StoreStream(
            self._store,
            split,
            checked["batch_size"],
            shuffle,
            seed=checked["seed"],
            online=parse_online(checked["online"]),
            buffer_chunks=checked["buffer_chunks"],
            decode_threads=checked["decode_threads"],
        )

    def contact_sheet(self, count: int = SheetOptions.count):
        """A PIL image: the first `count` training images, each original beside its copies, labelled with its
        class (a notebook shows it inline; .save("sheet.png") keeps it)."""
        from augzarr.builder.preview import contact_sheet, preview_rows, sheet_rows

        count = check_arguments(SheetOptions, count=count)["count"]
        rows = sheet_rows(self._store.group, preview_rows(self._store.group, count))
        if not rows:
            raise UserError(f"{self.location} has no training images to show")
        return contact_sheet(rows)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise OptionError(f"{self.location} has no split {split!r}; it has {', '.join(self.splits)}")
