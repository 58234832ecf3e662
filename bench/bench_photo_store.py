"""A store of real photos at 224x224 with the default lossy codec against issue #23's targets, in one run.

From --limit photos of a folder (spread evenly over its sorted files; a photo's class is the last "_" part of its
name, n01443537_2625_goldfish.jpg: goldfish, or its folder's name), each store built as `build-aug --copies 5
--image-size 224 --val-fraction 0` builds it (originals + 5 copies, the default fit: crop; the default policy),
through augzarr.build with --workers = the cores and no previews, each build into a fresh folder:

  a. size      the selected source JPEG files' bytes; the store with --codec jpeg:90 and with --codec raw, every
               file of each folder counted; the ratios (targets: jpeg store <= source JPEGs, raw / jpeg >= 8)
  b. build     images (rows) a second of the jpeg:90 build and of the raw build, the builds alternated raw, jpeg,
               raw, jpeg... --repeats times each after one untimed pair (the first build of a process pays its
               imports); medians and the ratio (target: jpeg / raw >= 0.7)
  c. stream    the jpeg:90 store's whole shuffled epochs of uint8 batches of 128 (no model) through train's
               stream (StoreStream, a fresh one each epoch) with 1 decode thread and with one a core, the cases
               taking turns epoch by epoch after one untimed epoch each; medians, cores x the one-thread rate,
               and all cores / (cores x one thread) (target >= 0.85)
  d. online    what a user would otherwise run on the same cores: a keras.utils.PyDataset with workers = cores
               that decodes each source JPEG (OpenCV, as the build does), fits it to 224x224 as the store does
               (augzarr.images.fit_to: the same crop), applies the store's recorded albumentations policy
               (albumentations' own call) and returns uint8 batches of 128; an epoch is as many images as the
               store's (each photo 6 times, shuffled), iterated as model.fit does (Keras' PyDatasetAdapter: a
               new pool each epoch), with worker processes and with worker threads, in turn with the stream's
               epochs; ratio stream (all cores) / the faster online (target >= 5)

Medians, the CPU as /proc/cpuinfo names it, the cores and the load average before and after are printed with
Markdown tables. The machine may be shared: the cases of each part take turns so that load falls on all alike;
read the ratios of one run.

    python bench/bench_photo_store.py --photos /work/data/imagen --limit 220 --repeats 2 --epochs 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from machine import cpu_name  # bench/: the folder of the script that runs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
SIZE = 224
COPIES = 5
JPEG = "jpeg:90"
RAW = "raw"
BATCH = 128


# -- the machine ------------------------------------------------------------------------------------


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_line(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    return (
        f"{cpu_name()}, {cores()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"Python {platform.python_version()}, augzarr at {git_commit()}"
    )


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"


# -- the photos and the stores ----------------------------------------------------------------------


def select_photos(folder: Path, limit: int) -> list[Path]:
    """limit photos spread evenly over the folder's sorted files (searched recursively), so every class is sampled."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not files:
        sys.exit(f"--photos {folder}: no .jpg, .jpeg or .png files in it; give a folder of photos")
    if limit >= len(files):
        return files
    return [files[round(i * (len(files) - 1) / max(1, limit - 1))] for i in range(limit)] if limit > 1 else files[:1]


def photo_class(photo: Path) -> str:
    return photo.stem.rsplit("_", 1)[-1] if "_" in photo.stem else photo.parent.name


def source_folder(photos: list[Path], work: Path) -> Path:
    """An image folder DIR/train/<class>/<photo> of links to the photos (DIR/train/: a class may be called train)."""
    folder = work / f"source-{len(photos)}"
    shutil.rmtree(folder, ignore_errors=True)
    for photo in photos:
        place = folder / "train" / photo_class(photo)
        place.mkdir(parents=True, exist_ok=True)
        (place / photo.name).symlink_to(photo.resolve())
    return folder


def folder_bytes(path: Path) -> int:
    """Bytes of every file under path (the files' sizes, as an object store would bill them)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_store(source: Path, out: Path, codec: str, workers: int) -> float:
    """Seconds to build the store as build-aug --copies 5 --image-size 224 --val-fraction 0 --preview 0 does."""
    import augzarr

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    augzarr.build(
        str(source),
        str(out),
        copies=COPIES,
        codec=codec,
        image_size=str(SIZE),
        val_fraction=0,
        workers=workers,
        progress=False,
    )
    return time.perf_counter() - start


def stores_of(photos: list[Path], work: Path, workers: int) -> dict[str, Path]:
    """The raw and the jpeg:90 store of these photos in work, built unless a complete one of the same photos is there."""
    import augzarr
    from augzarr.errors import UserError

    selection = hashlib.sha256("\n".join(str(p.resolve()) for p in photos).encode()).hexdigest()[:12]
    source = None
    stores = {}
    for codec in (RAW, JPEG):
        out = work / f"{len(photos)}-photos-{selection}-{codec.replace(':', '')}.zarr"
        try:
            augzarr.open_store(out)
        except UserError:  # none there, or not complete
            source = source or source_folder(photos, work)
            print(f"building {out} ...", file=sys.stderr, flush=True)
            build_store(source, out, codec, workers)
        stores[codec] = out
    return stores


# -- a: size, b: build rate -------------------------------------------------------------------------


def measure_builds(source: Path, work: Path, rows: int, repeats: int, workers: int) -> tuple[dict, dict]:
    """({codec: store bytes}, {codec: [rows/s of each timed build]}); the first pair untimed, every store of a codec
    the same size (a build is deterministic); work/build-jpeg90.zarr is kept for the stream."""
    sizes: dict[str, int] = {}
    rates: dict[str, list[float]] = {RAW: [], JPEG: []}
    for round_ in range(repeats + 1):
        for codec in (RAW, JPEG):  # alternated: a noisy minute falls on both
            out = work / f"build-{codec.replace(':', '')}.zarr"
            seconds = build_store(source, out, codec, workers)
            size = folder_bytes(out)
            if sizes.setdefault(codec, size) != size:
                print(
                    f"note: the {codec} store was {size:,} bytes in round {round_}, {sizes[codec]:,} before", flush=True
                )
            if round_:
                rates[codec].append(rows / seconds)
            print(
                f"  build {codec:8s} round {round_}: {seconds:6.2f} s, {rows / seconds:8,.0f} images/s"
                + ("" if round_ else " (untimed)"),
                file=sys.stderr,
                flush=True,
            )
            if codec == RAW:
                shutil.rmtree(out)  # the raw store is big and read by nothing here
    return sizes, rates


def in_turns(cases: dict, epochs: int) -> dict[str, list[float]]:
    """images/s of each case's epochs, the cases taking turns epoch by epoch (load that comes and goes falls on all
    alike) after one untimed epoch each (workers, pools and caches starting); case(epoch) -> (images, seconds)."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    width = max(map(len, cases))
    for epoch in range(epochs + 1):
        for name, run in cases.items():
            images, seconds = run(epoch)
            if epoch:
                rates[name].append(images / seconds)
            untimed = "" if epoch else " (untimed)"
            print(
                f"  {name:{width}s} epoch {epoch}: {images:,} images, {images / seconds:8,.0f} images/s{untimed}",
                file=sys.stderr,
                flush=True,
            )
    return rates


# -- c: the stream, d: the online pipeline ----------------------------------------------------------


def stream_epoch(store, epoch: int, threads: int | None = None, take: Callable = len) -> tuple[int, float]:
    """(images, seconds) of one whole shuffled epoch of train's stream, a fresh stream (none reading ahead meanwhile):
    threads decode threads (None: the cores), take(images) of each batch the images it counts."""
    from augzarr.trainer.stream import StoreStream

    stream = StoreStream(store, "train", BATCH, shuffle=True, start_epoch=epoch, decode_threads=threads)
    try:
        start = time.perf_counter()
        n = sum(take(stream[i][0]) for i in range(stream.batches_per_epoch))
        return n, time.perf_counter() - start
    finally:
        stream.close()


def online_dataset_class():
    import cv2
    import keras
    import numpy as np

    from augzarr.images import fit_to

    class OnlinePhotos(keras.utils.PyDataset):
        """Each source photo `repeats` times an epoch, shuffled: decoded, fitted to SIZE x SIZE as the store fits it,
        augmented by the policy; uint8 batches of BATCH."""

        def __init__(self, files, labels, repeats, pipeline, workers, use_multiprocessing, seed=0):
            super().__init__(workers=workers, use_multiprocessing=use_multiprocessing)
            self.files, self.labels, self.pipeline = [str(f) for f in files], np.asarray(labels), pipeline
            self.items = np.arange(len(files) * repeats) % len(files)
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def on_epoch_end(self):
            self.order = self.rng.permutation(self.items)  # set before the next epoch's pool starts

        def __len__(self):
            return math.ceil(len(self.order) / BATCH)

        def __getitem__(self, index):
            items = self.order[index * BATCH : (index + 1) * BATCH]
            images = np.empty((len(items), SIZE, SIZE, 3), np.uint8)
            for k, item in enumerate(items):
                image = cv2.imdecode(np.fromfile(self.files[item], np.uint8), cv2.IMREAD_COLOR_RGB)
                images[k] = self.pipeline(image=fit_to(image, SIZE, SIZE, "crop"))["image"]
            return images, self.labels[items]

    return OnlinePhotos


def online_epoch(adapter) -> tuple[int, float]:
    """(images, seconds) of one epoch of a PyDataset as model.fit draws it: its adapter starts the workers' pool."""
    start = time.perf_counter()
    adapter.on_epoch_begin()
    n = sum(len(batch[0]) for batch in adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    return n, time.perf_counter() - start


def measure_streams(store_path: Path, photos: list[Path], epochs: int, online: bool) -> dict[str, list[float]]:
    """images/s of each case's epochs, the cases taking turns epoch by epoch after one untimed epoch each."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter  # what model.fit iterates

    from augzarr.builder.policies import Policy
    from augzarr.store_format import open_store

    store = open_store(str(store_path))
    n = cores()
    cases = {
        "stream, 1 decode thread": lambda e: stream_epoch(store, e, 1),
        f"stream, {n} decode threads": lambda e: stream_epoch(store, e, n),
    }
    if online:
        pipeline = Policy.from_attrs(store.attrs.policy).pipeline
        OnlinePhotos = online_dataset_class()
        labels = [sorted({photo_class(p) for p in photos}).index(photo_class(p)) for p in photos]
        for processes in (True, False):
            data = OnlinePhotos(photos, labels, COPIES + 1, pipeline, n, use_multiprocessing=processes)
            adapter = PyDatasetAdapter(data, shuffle=False)
            kind = "processes" if processes else "threads"
            cases[f"online PyDataset, {n} worker {kind}"] = lambda e, adapter=adapter: online_epoch(adapter)
    return in_turns(cases, epochs)


# -- the report -------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def epochs_text(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def report(args, photos, source_bytes, sizes, build_rates, stream_rates, loads) -> dict:
    n, rows = cores(), len(photos) * (COPIES + 1)
    print(
        f"{len(photos)} photos of {args.photos} ({source_bytes:,} bytes of source files), {rows:,} rows "
        f"(originals + {COPIES} copies) at {SIZE}x{SIZE}; {machine_line(*loads)}"
    )
    jpeg, raw = sizes[JPEG], sizes[RAW]
    print("\n**a. Size** (every file of the store folder)\n")
    print("| what | bytes | MiB | kB a row | vs source JPEGs |\n| --- | ---: | ---: | ---: | ---: |")
    for name, size in (
        ("source JPEG files", source_bytes),
        (f"store, --codec {JPEG}", jpeg),
        ("store, --codec raw", raw),
    ):
        print(f"| {name} | {size:,} | {size / 2**20:.1f} | {size / rows / 1000:.1f} | {size / source_bytes:.2f}x |")
    print(
        f"\njpeg:90 store / source JPEGs: **{jpeg / source_bytes:.2f}** (target <= 1); "
        f"raw store / jpeg:90 store: **{raw / jpeg:.1f}x** (target >= 8)"
    )
    b_jpeg, b_raw = median(build_rates[JPEG]), median(build_rates[RAW])
    print(f"\n**b. Build rate** (rows a second, {n} workers, median of {args.repeats} alternated builds each)\n")
    print("| codec | images/s (median) | builds |\n| --- | ---: | --- |")
    for codec in (RAW, JPEG):
        print(f"| {codec} | {median(build_rates[codec]):,.0f} | {epochs_text(build_rates[codec])} |")
    print(f"\njpeg:90 / raw build rate: **{b_jpeg / b_raw:.2f}** (target >= 0.7)")
    result = {
        "photos": len(photos),
        "rows": rows,
        "cpu": cpu_name(),
        "cores": n,
        "load": loads,
        "bytes": {"source": source_bytes, **sizes},
        "build_images_per_s": build_rates,
    }
    if stream_rates:
        one, all_ = median(stream_rates["stream, 1 decode thread"]), median(stream_rates[f"stream, {n} decode threads"])
        print(
            f"\n**c, d. Stream and online pipeline** (images/s of whole shuffled epochs of {rows:,} images, "
            f"batches of {BATCH}, median of {args.epochs} after an untimed one, the cases in turn)\n"
        )
        print("| case | images/s (median) | epochs |\n| --- | ---: | --- |")
        for name, values in stream_rates.items():
            print(f"| {name} | {median(values):,.0f} | {epochs_text(values)} |")
        print(
            f"\n{n} x the one-thread rate: {n * one:,.0f} images/s; all cores / ({n} x one thread): "
            f"**{all_ / (n * one):.2f}** (target >= 0.85)"
        )
        online = {k: median(v) for k, v in stream_rates.items() if k.startswith("online")}
        if online:
            best = max(online, key=online.get)
            print(
                f"stream ({n} threads) / the faster online pipeline ({best}): **{all_ / online[best]:.1f}x** "
                "(target >= 5)"
            )
        result["stream_images_per_s"] = stream_rates
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("/work/data/imagen"), help="a folder of photos")
    parser.add_argument("--limit", type=int, default=220, help="photos used, spread over the sorted files (220)")
    parser.add_argument("--repeats", type=int, default=2, help="timed builds of each codec (2)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs of each stream case (5)")
    parser.add_argument("--no-online", action="store_true", help="leave out the online pipeline (part d)")
    parser.add_argument("--work", type=Path, default=Path("bench/out/photo-store"), help="where the stores go")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    photos = select_photos(args.photos, args.limit)
    source_bytes = sum(p.stat().st_size for p in photos)
    source = source_folder(photos, args.work)
    rows = len(photos) * (COPIES + 1)
    # the builds first: a process that has started TensorFlow (the stream's Keras) builds with forkserver workers
    sizes, build_rates = measure_builds(source, args.work, rows, args.repeats, cores())
    stream_rates = measure_streams(args.work / "build-jpeg90.zarr", photos, args.epochs, not args.no_online)
    loads = (load_before, os.getloadavg())
    result = report(args, photos, source_bytes, sizes, build_rates, stream_rates, loads)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
