"""Where a build's time goes: seconds at which each phase of build_store starts and ends.

python bench/bench_phases.py --images /tmp/cifar [--copies 5] [--out /tmp/phases.zarr]
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import shutil  # noqa: E402

from augzarr.builder.build import BuildOptions, build_store  # noqa: E402
from augzarr.builder.progress import Reporter  # noqa: E402

IMPORTED = time.perf_counter()


class PhaseClock(Reporter):
    @contextlib.contextmanager
    def task(self, description: str, total: int, unit: str = "images"):
        began = time.perf_counter()
        yield lambda n=1: None
        print(f"{description[:24]:<24} {began - START:6.2f} s -> {time.perf_counter() - START:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--out", default="/tmp/phases.zarr")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    print(f"{'imports':<24} {0:6.2f} s -> {IMPORTED - START:6.2f} s")
    build_store(
        BuildOptions(
            source=args.images, out=args.out, copies=args.copies, policy="notebook", val_fraction=0, workers=2
        ),
        PhaseClock(),
    )
    print(f"{'total (no previews)':<24} {0:6.2f} s -> {time.perf_counter() - START:6.2f} s")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
