"""The stream alone vs the deep CNN's training rate, and the stream's peak memory vs store size.

1. Shuffled uint8 batches (batch 128, default buffer) from a large store, no model: images/s,
   median of --repeats full epochs; against the deep CNN's training images/s measured in the
   same run (fit on batches from the same stream), so the ratio says how far ahead the stream is.
2. Peak memory of `train` (one epoch, shallow model) from a store with 1 copy vs one with 10
   copies of the same images: the largest process's max RSS.

    build-aug --source /tmp/cifar --copies 5 --no-include-original --val-fraction 0 --out /tmp/stores/s250k.zarr --preview 0
    python bench/bench_stream.py --store /tmp/stores/s250k.zarr --images /tmp/cifar --work /tmp/stores
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BIN = Path(sys.executable).parent


def stream_rate(store: str, repeats: int) -> float:

    from augzarr.store_format import open_store
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    rates = []
    for epoch in range(repeats):
        stream = StoreStream(opened, "train", batch_size=128, shuffle=True, start_epoch=epoch)
        start = time.perf_counter()
        n = sum(len(stream[i][0]) for i in range(stream.batches_per_epoch))
        rates.append(n / (time.perf_counter() - start))
        stream.close()
    print(f"stream: {n:,} images per epoch, rates {[round(r) for r in rates]}", flush=True)
    return statistics.median(rates)


def training_rate(store: str, steps: int) -> float:
    import keras

    from augzarr.store_format import open_store
    from augzarr.trainer.models import build_model
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    group = opened.group
    stream = StoreStream(opened, "train", batch_size=128, shuffle=True)
    model = build_model("deep", tuple(group.attrs["image_shape"]), len(group.attrs["class_names"]))
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(stream, steps_per_epoch=10, epochs=1, shuffle=False, verbose=0)  # compile and warm up
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(stream, steps_per_epoch=steps, epochs=3, shuffle=False, verbose=0, callbacks=[Timer()])
    stream.close()
    return steps * 128 / statistics.median(times)


def peak_rss_of_training(store: Path, run_dir: Path) -> float:
    """Max RSS in MB of `train` for one epoch; measured in a fresh child so the parent's size does not count."""
    code = (
        "import resource, subprocess, sys; "
        f"subprocess.run([{str(BIN / 'train')!r}, '--store', {str(store)!r}, '--epochs', '1', '--model', 'shallow', "
        f"'--out', {str(run_dir)!r}, '--quiet'], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def build(images: str, out: Path, copies: int, limit: int) -> Path:
    if not (out / "zarr.json").exists():
        subprocess.run(
            [
                str(BIN / "build-aug"),
                "--source",
                images,
                "--out",
                str(out),
                "--copies",
                str(copies),
                "--limit",
                str(limit),
                "--preview",
                "0",
                "--quiet",
            ],
            check=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True, help="a large store (250,000 training rows for the issue's figure)")
    parser.add_argument("--images", required=True, help="image folder for the two memory stores")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="deep CNN steps per timed epoch")
    parser.add_argument("--memory-limit", type=int, default=5000, help="source images in the memory stores")
    args = parser.parse_args()

    stream = stream_rate(args.store, args.repeats)
    train = training_rate(args.store, args.steps)
    print("| measure | images/s |\n| --- | ---: |")
    print(f"| stream alone, shuffled uint8 batches of 128 (median of {args.repeats} epochs) | {stream:,.0f} |")
    print(f"| deep CNN training from the stream (median of 3 x {args.steps} steps) | {train:,.0f} |")
    print(f"stream / training = {stream / train:.0f}x (target >= 50x); stream >= 150,000 images/s: {stream >= 150_000}")

    import shutil

    rows = {}
    for copies in (1, 10):
        store = build(args.images, args.work / f"mem-{copies}.zarr", copies, args.memory_limit)
        run_dir = args.work / f"mem-run-{copies}"
        shutil.rmtree(run_dir, ignore_errors=True)
        import zarr

        n = zarr.open_group(str(store), mode="r")["train/images"].shape[0]
        rows[copies] = (n, peak_rss_of_training(store, run_dir))
    print("| store | training rows | peak RSS of train (1 epoch) |\n| --- | ---: | ---: |")
    for copies, (n, rss) in rows.items():
        print(f"| --copies {copies} | {n:,} | {rss:,.0f} MB |")
    print(f"peak RSS 10 copies / 1 copy = {rows[10][1] / rows[1][1]:.3f}")


if __name__ == "__main__":
    main()
