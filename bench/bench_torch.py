"""augzarr.torch against the Keras stream, and how a batch best crosses from a DataLoader worker (issue #25).

For a raw CIFAR-sized store and a raw 224-px store of real photos, images/s of one shuffled epoch (median of
--repeats epochs, after a first one that starts the workers; the cases take turns epoch by epoch), each batch
read once by the consumer (copied, as a host-to-device transfer or pin_memory would read it):

  StoreStream              the Keras PyDataset, in the training process (a reader thread reads ahead)
  torch, 0 workers         StoreDataset in the training process (a reader thread reads ahead)
  torch, 2 workers         StoreDataset, windows built by the workers in shared memory: a batch (a view) crosses as a file descriptor
  torch, 2 workers, copy   the same batches copied out of windows in the worker's own memory: torch copies each into shared memory
  StoreRows, 2 workers     the map-style rows through DataLoader(batch_size=..., shuffle=True): what a plain Dataset does

and the first batch's latency from a new DataLoader. The machine is usually shared: read the ratios of one run.

    python bench/bench_torch.py --work /tmp/bench-torch --cifar ../shared/data/cifar10-train-jpg.tar.gz --photos /work/data/imagen
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BIN = Path(sys.executable).parent


def build(source: Path, out: Path, *extra: str) -> Path:
    if not out.exists():
        subprocess.run(
            [
                str(BIN / "build-aug"),
                "--source",
                str(source),
                "--out",
                str(out),
                "--copies",
                "1",
                "--val-fraction",
                "0",
                "--preview",
                "0",
                "--quiet",
                *extra,
            ],
            check=True,
        )
    return out


def cifar_store(work: Path, archive: Path, limit: int) -> Path:
    folder = work / "cifar-jpg"
    if not folder.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    root = next(p for p in folder.rglob("train") if p.is_dir())
    return build(root, work / f"cifar-{limit}.zarr", "--limit", str(limit))


def photo_store(work: Path, photos: Path) -> Path:
    """The photos in an image folder by the class their name ends with (n00007846_147031_person.jpg: person), linked, not copied."""
    folder = work / "photos"
    if not folder.exists():  # DIR/train/<class>/: one class is called train
        for photo in sorted(photos.glob("*.jpg")):
            label = photo.stem.rsplit("_", 1)[-1]
            (folder / "train" / label).mkdir(parents=True, exist_ok=True)
            (folder / "train" / label / photo.name).symlink_to(photo.resolve())
    return build(folder, work / "photos-224.zarr", "--image-size", "224")


def consume(images) -> int:
    """Read the batch once, as a copy to a device would; the same numpy copy for every case (torch's own clone
    takes fresh pages from the kernel each time, ~7x numpy's copy here, which would hide the loaders' differences)."""
    import numpy as np

    array = images if isinstance(images, np.ndarray) else images.numpy()
    np.copyto(np.empty_like(array), array)
    return len(images)


def interleaved_rates(cases: dict, repeats: int) -> dict[str, list[float]]:
    """images/s of each case's epochs, the cases taking turns epoch by epoch (a shared machine's load then weighs on
    all alike); each case's first epoch (workers starting) is left out."""
    rates: dict[str, list[float]] = {label: [] for label in cases}
    for epoch in range(repeats + 1):
        for label, epoch_batches in cases.items():
            start = time.perf_counter()
            n = sum(consume(batch[0]) for batch in epoch_batches(epoch))
            if epoch:
                rates[label].append(n / (time.perf_counter() - start))
    return rates


def stream_batches(store: str, batch: int):
    from augzarr.store_format import open_store
    from augzarr.trainer.stream import StoreStream

    stream = StoreStream(open_store(store), "train", batch, shuffle=True, seed=0)

    def epoch(e: int):
        return (stream[e * stream.batches_per_epoch + i] for i in range(stream.batches_per_epoch))

    return epoch


def torch_batches(store: str, batch: int, workers: int, private: bool = False):
    from augzarr.torch import StoreDataset

    data = (PrivateBatches if private else StoreDataset)(store, "train", batch, seed=0)
    loader = data.loader(num_workers=workers, persistent_workers=workers > 0)

    def epoch(e: int):
        data.set_epoch(e)
        return iter(loader)

    return epoch


def rows_batches(store: str, batch: int, workers: int):
    import torch
    from torch.utils.data import DataLoader

    from augzarr.torch import StoreRows

    loader = DataLoader(
        StoreRows(store, "train"),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda e: iter(loader)


def first_batch_seconds(store: str, batch: int, workers: int) -> float:
    from augzarr.torch import StoreDataset

    data = StoreDataset(store, "train", batch, seed=0)
    start = time.perf_counter()
    next(iter(data.loader(num_workers=workers)))
    return time.perf_counter() - start


def make_private_batches():
    from augzarr.torch import StoreDataset

    class PrivateBatches(StoreDataset):
        """Windows in the worker's own memory, each batch a copy: torch copies it into shared memory to hand it over."""

        def _window_reader(self, shared):
            return super()._window_reader(False)

        def _serve(self, epoch, batches, shared):
            return ((images.clone(), labels.clone()) for images, labels in super()._serve(epoch, batches, shared))

    return PrivateBatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench/out/torch"))
    parser.add_argument("--cifar", type=Path, default=Path("../shared/data/cifar10-train-jpg.tar.gz"))
    parser.add_argument(
        "--cifar-limit",
        type=int,
        default=10_000,
        help="source images of the CIFAR store (1 copy each, and the original)",
    )
    parser.add_argument("--photos", type=Path, default=Path("/work/data/imagen"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    print(
        f"{machine}, torch {torch.__version__}; "
        f"median images/s of {args.repeats} epochs after a warm-up one, each batch read once by the consumer",
        flush=True,
    )
    stores = [
        ("raw CIFAR-sized 32x32", str(cifar_store(args.work, args.cifar, args.cifar_limit)), 128),
        ("raw 224-px photos", str(photo_store(args.work, args.photos)), 64),
    ]
    w = args.workers
    for name, store, batch in stores:
        from augzarr.store_format import open_store

        rows = open_store(store).rows("train")
        print(f"\n{name}: {rows:,} rows, batch {batch}", flush=True)
        cases = {
            "StoreStream (Keras PyDataset, in process)": stream_batches(store, batch),
            "torch StoreDataset, 0 workers": torch_batches(store, batch, 0),
            f"torch StoreDataset, {w} workers, shared-memory windows": torch_batches(store, batch, w),
            f"torch StoreDataset, {w} workers, batches copied to hand over": torch_batches(
                store, batch, w, private=True
            ),
            f"torch StoreRows (map-style), {w} workers": rows_batches(store, batch, w),
        }
        rates = interleaved_rates(cases, args.repeats)
        reference = statistics.median(rates[next(iter(cases))])
        for label, measured in rates.items():
            rate = statistics.median(measured)
            epochs = [round(r) for r in measured]
            print(
                f"  {label:58s} {rate:10,.0f} images/s  {rate / reference:5.2f}x StoreStream  (epochs {epochs})",
                flush=True,
            )
        for workers in (0, w):
            seconds = first_batch_seconds(store, batch, workers)
            print(f"  first batch from a new DataLoader, {workers} workers: {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    PrivateBatches = make_private_batches()
    main()
