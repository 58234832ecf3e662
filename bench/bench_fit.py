"""Training the deep CNN from a store vs model.fit on the same images held in a numpy array.

Both fit the same model (same initial weights) on the same training rows with batch 128;
each method runs --epochs epochs per fit call, the first (tracing, warm-up) is dropped, and
the methods alternate --rounds times (A B A B ...) so drift on a shared machine hits both.
Reported: median images/s of each and the ratio store / numpy.

    build-aug --source /tmp/cifar --limit 5000 --copies 1 --out /tmp/stores/fit.zarr --preview 0
    python bench/bench_fit.py --store /tmp/stores/fit.zarr
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import keras
    import zarr

    from trainer.models import build_model
    from trainer.stream import StoreStream

    group = zarr.open_group(args.store, mode="r")
    x, y = group["train/images"][:], group["train/labels"][:].astype("int32")
    keras.utils.set_random_seed(0)
    initial = build_model("deep", x.shape[1:], len(group.attrs["class_names"])).get_weights()

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def run(method: str) -> list[float]:
        model = build_model("deep", x.shape[1:], len(group.attrs["class_names"]))
        model.set_weights(initial)
        model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        timer = Timer()
        if method == "numpy":
            model.fit(x, y, batch_size=128, epochs=args.epochs, shuffle=True, verbose=0, callbacks=[timer])
        else:
            stream = StoreStream(group, "train", batch_size=128, shuffle=True)
            model.fit(stream, steps_per_epoch=stream.batches_per_epoch, epochs=args.epochs, shuffle=False, verbose=0, callbacks=[timer])
            stream.close()
        return [len(x) / t for t in timer.times[1:]]

    rates = {"numpy": [], "store": []}
    for _ in range(args.rounds):
        for method in rates:
            rates[method] += run(method)
            print(method, [round(r) for r in rates[method]], flush=True)
    numpy_rate, store_rate = statistics.median(rates["numpy"]), statistics.median(rates["store"])
    print(f"| method ({len(x):,} rows, batch 128) | images/s (median) |\n| --- | ---: |")
    print(f"| model.fit on a numpy array in memory | {numpy_rate:,.0f} |")
    print(f"| model.fit from the store (StoreStream) | {store_rate:,.0f} |")
    print(f"store / numpy = {store_rate / numpy_rate:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
