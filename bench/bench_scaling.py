"""How far two processes on this machine's cores are from twice one: the floor's loop
(the notebook albumentations policy over decoded images) in 1 process, then in 2 at once.

    python bench/bench_scaling.py [--images-per-process 40000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np

from augzarr.builder.policies import load_policy


def augment(n: int) -> float:
    pipeline = load_policy("notebook", (32, 32, 3)).pipeline
    images = np.random.default_rng(0).integers(0, 255, (1000, 32, 32, 3), dtype=np.uint8)
    start = time.perf_counter()
    for i in range(n):
        pipeline(image=images[i % 1000])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images-per-process", type=int, default=40000)
    n = parser.parse_args().images_per_process
    one = augment(n)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(augment, [n, n])
    both = time.perf_counter() - start
    print(
        f"1 process: {n / one:,.0f} images/s; 2 processes at once: {2 * n / both:,.0f} images/s in total; "
        f"scaling {2 * one / both:.2f}x (2.00 would be perfect)"
    )


if __name__ == "__main__":
    main()
