"""The stream's throughput with train --online's operations on, against the stream alone, in one run (issue #12).

Whole shuffled epochs of uint8 batches of 128 (no model), the two cases interleaved epoch by epoch;
medians and the ratio. The issue's target: >= 100,000 images/s with the operations on.

    build-aug --source /tmp/cifar --copies 4 --limit 20000 --val-fraction 0 --out /tmp/online.zarr --preview 0
    python bench/bench_online.py --store /tmp/online.zarr --epochs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import cpu_name  # bench/: the folder of the script that runs


def epoch_rate(store, online: tuple[str, ...], epoch: int) -> float:
    from augzarr.trainer.stream import StoreStream

    stream = StoreStream(store, "train", batch_size=128, shuffle=True, start_epoch=epoch, online=online)
    try:
        start = time.perf_counter()
        n = sum(len(stream[i][0]) for i in range(stream.batches_per_epoch))
        return n / (time.perf_counter() - start)
    finally:
        stream.close()


def main() -> None:
    from augzarr.store_format import open_store
    from augzarr.trainer.online import ONLINE_OPS

    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    store = open_store(args.store)
    cases = {"stream alone": (), **{f"+ {op}": (op,) for op in ONLINE_OPS}, "+ flip, shift, erase": tuple(ONLINE_OPS)}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for epoch in range(args.epochs):
        for name, ops in cases.items():  # interleaved: a noisy minute hits every case alike
            rates[name].append(epoch_rate(store, ops, epoch))
    base = statistics.median(rates["stream alone"])
    print(f"{cpu_name()}; {store.rows('train'):,} rows per epoch; median of {args.epochs} epochs each, interleaved")
    print("| stream | images/s (median) | per epoch | vs stream alone |\n| --- | ---: | --- | ---: |")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
