"""Write/read throughput of augzarr-shaped chunks: local disk vs moto_server (separate
process) through zarr ObjectStore(obstore), zarr FsspecStore(s3fs), and both clients
directly. uint8 [N,32,32,3], chunks of 1024 rows (3 MiB), BytesCodec only.

    venv/bin/python bench_s3.py [--chunks 16] [--rounds 5] [--json out.json]

Every round runs every case once, in a rotated order (interleaved); the figure is the
median over rounds, and each is also given as a ratio against local in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from s3env import MotoProcess, make_bucket, obstore_s3, s3fs_fs

ROWS = 1024
SHAPE = (32, 32, 3)
CHUNK_BYTES = ROWS * 32 * 32 * 3
WINDOW = 8


def make_array(store, n):
    import zarr
    from zarr.codecs import BytesCodec

    g = zarr.open_group(store, mode="w", zarr_format=3)
    return g.create_array(
        "train/images",
        shape=(n,) + SHAPE,
        chunks=(ROWS,) + SHAPE,
        dtype="uint8",
        serializer=BytesCodec(),
        compressors=None,
        filters=None,
        fill_value=0,
        config={"write_empty_chunks": True},
    )


class ZarrCase:
    """Through zarr's Array API (what augzarr's builder/stream use today)."""

    def __init__(self, name, store, x):
        self.name, self.store, self.x = name, store, x
        self.n = x.shape[0]
        self.nchunks = self.n // ROWS
        self.a = make_array(store, self.n)

    def write_seq(self):
        for c in range(self.nchunks):
            self.a[c * ROWS : (c + 1) * ROWS] = self.x[c * ROWS : (c + 1) * ROWS]

    def write_conc(self):  # zarr writes the chunks of one assignment concurrently
        self.a[:] = self.x

    def read_seq(self):
        for c in range(self.nchunks):
            y = self.a[c * ROWS : (c + 1) * ROWS]
        return y

    def read_conc(self):  # one window of 8 chunks per call: zarr fetches them concurrently
        for w in range(0, self.nchunks, WINDOW):
            y = self.a[w * ROWS : (w + WINDOW) * ROWS]
        return y

    def read_threads(self):  # 8 threads, one chunk each (the stream's thread-pool option)
        with ThreadPoolExecutor(WINDOW) as ex:
            list(ex.map(lambda c: self.a[c * ROWS : (c + 1) * ROWS], range(self.nchunks)))

    def check(self):
        assert (self.a[:] == self.x).all(), self.name


class LocalRawCase:
    """What augzarr's local path does: raw chunk bytes, write tmp + os.replace, read file."""

    def __init__(self, root: Path, x):
        self.name = "local raw files"
        self.root, self.x = root, x
        self.nchunks = x.shape[0] // ROWS
        (root / "c").mkdir(parents=True, exist_ok=True)

    def path(self, c):
        return self.root / "c" / f"{c}"

    def put(self, c):
        p = self.path(c)
        tmp = p.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(self.x[c * ROWS : (c + 1) * ROWS].tobytes())
        os.replace(tmp, p)

    def get(self, c):
        with open(self.path(c), "rb") as f:
            return np.frombuffer(f.read(), np.uint8).reshape((ROWS,) + SHAPE)

    def write_seq(self):
        for c in range(self.nchunks):
            self.put(c)

    def write_conc(self):
        with ThreadPoolExecutor(WINDOW) as ex:
            list(ex.map(self.put, range(self.nchunks)))

    def read_seq(self):
        for c in range(self.nchunks):
            self.get(c)

    def read_conc(self):
        with ThreadPoolExecutor(WINDOW) as ex:
            list(ex.map(self.get, range(self.nchunks)))

    read_threads = read_conc

    def check(self):
        for c in range(self.nchunks):
            assert (self.get(c) == self.x[c * ROWS : (c + 1) * ROWS]).all()


class ObstoreRawCase:
    """obstore directly: one PUT / GET per chunk; concurrency through its async API."""

    def __init__(self, bucket, prefix, x):
        import obstore as obs

        self.obs = obs
        self.name = "obstore direct"
        self.st = obstore_s3(bucket, prefix=prefix)
        self.x = x
        self.nchunks = x.shape[0] // ROWS
        self.blobs = [x[c * ROWS : (c + 1) * ROWS].tobytes() for c in range(self.nchunks)]

    def write_seq(self):
        for c in range(self.nchunks):
            self.obs.put(self.st, f"c/{c}", self.x[c * ROWS : (c + 1) * ROWS].tobytes())

    def write_conc(self):
        async def go():
            await asyncio.gather(
                *(
                    self.obs.put_async(self.st, f"c/{c}", self.x[c * ROWS : (c + 1) * ROWS].tobytes())
                    for c in range(self.nchunks)
                )
            )

        asyncio.run(go())

    def get(self, c):
        b = self.obs.get(self.st, f"c/{c}").bytes()
        return np.frombuffer(b, np.uint8).reshape((ROWS,) + SHAPE)  # zero-copy (buffer protocol)

    def read_seq(self):
        for c in range(self.nchunks):
            self.get(c)

    def read_conc(self):
        async def one(c):
            r = await self.obs.get_async(self.st, f"c/{c}")
            return np.frombuffer(await r.bytes_async(), np.uint8)

        async def go():
            for w in range(0, self.nchunks, WINDOW):
                await asyncio.gather(*(one(c) for c in range(w, min(w + WINDOW, self.nchunks))))

        asyncio.run(go())

    def read_threads(self):
        with ThreadPoolExecutor(WINDOW) as ex:
            list(ex.map(self.get, range(self.nchunks)))

    def check(self):
        for c in range(self.nchunks):
            assert (self.get(c) == self.x[c * ROWS : (c + 1) * ROWS]).all()


class S3fsRawCase:
    """s3fs directly (sync API; fs.cat/pipe with a list run concurrently on fsspec's loop)."""

    def __init__(self, bucket, prefix, x):
        self.name = "s3fs direct"
        self.fs = s3fs_fs()
        self.root = f"{bucket}/{prefix}"
        self.x = x
        self.nchunks = x.shape[0] // ROWS

    def p(self, c):
        return f"{self.root}/c/{c}"

    def write_seq(self):
        for c in range(self.nchunks):
            self.fs.pipe_file(self.p(c), self.x[c * ROWS : (c + 1) * ROWS].tobytes())

    def write_conc(self):
        self.fs.pipe({self.p(c): self.x[c * ROWS : (c + 1) * ROWS].tobytes() for c in range(self.nchunks)})

    def get(self, c):
        return np.frombuffer(self.fs.cat_file(self.p(c)), np.uint8).reshape((ROWS,) + SHAPE)

    def read_seq(self):
        for c in range(self.nchunks):
            self.get(c)

    def read_conc(self):
        for w in range(0, self.nchunks, WINDOW):
            self.fs.cat([self.p(c) for c in range(w, min(w + WINDOW, self.nchunks))])

    def read_threads(self):
        with ThreadPoolExecutor(WINDOW) as ex:
            list(ex.map(self.get, range(self.nchunks)))

    def check(self):
        for c in range(self.nchunks):
            assert (self.get(c) == self.x[c * ROWS : (c + 1) * ROWS]).all()


OPS = ["write_seq", "write_conc", "read_seq", "read_conc", "read_threads"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="bench_s3.json")
    args = ap.parse_args()

    from zarr.storage import FsspecStore, LocalStore, ObjectStore

    n = args.chunks * ROWS
    x = np.random.default_rng(0).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)
    mib = n * 32 * 32 * 3 / 2**20
    tmp = Path(tempfile.mkdtemp(prefix="augzarr-bench-", dir="/work/notes/s3"))
    moto = MotoProcess().start()
    bucket = "augzarr-bench"
    make_bucket(bucket)
    try:
        cases = [
            LocalRawCase(tmp / "raw", x),
            ZarrCase("zarr LocalStore", LocalStore(tmp / "local.zarr"), x),
            ObstoreRawCase(bucket, "raw-obstore", x),
            ZarrCase("zarr ObjectStore(obstore)", ObjectStore(obstore_s3(bucket, prefix="zo/aug.zarr")), x),
            S3fsRawCase(bucket, "raw-s3fs", x),
            ZarrCase("zarr FsspecStore(s3fs)", FsspecStore.from_url(f"s3://{bucket}/zf/aug.zarr"), x),
        ]
        for c in cases:  # warm-up + correctness
            c.write_conc()
            c.check()
        times = {c.name: {op: [] for op in OPS} for c in cases}
        for r in range(args.rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for op in OPS:
                for c in order:
                    t = time.perf_counter()
                    getattr(c, op)()
                    times[c.name][op].append(time.perf_counter() - t)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        med = {name: {op: mib / statistics.median(v) for op, v in d.items()} for name, d in times.items()}
    finally:
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    cpu = (
        subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True)
        .stdout.split(":")[-1]
        .strip()
    )
    print(
        f"\n{mib:.0f} MiB per op ({args.chunks} chunks of 3 MiB), median of {args.rounds} rounds, "
        f"MiB/s; CPU {cpu}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    hdr = "| case | " + " | ".join(OPS) + " |"
    print(hdr)
    print("|" + " --- |" * (len(OPS) + 1))
    for name, d in med.items():
        print(f"| {name} | " + " | ".join(f"{d[op]:.0f}" for op in OPS) + " |")
    for base in ("local raw files", "zarr LocalStore"):
        print(f"\nratio vs {base} (same op, same run)")
        print(hdr)
        print("|" + " --- |" * (len(OPS) + 1))
        for name, d in med.items():
            print(f"| {name} | " + " | ".join(f"{d[op] / med[base][op]:.2f}" for op in OPS) + " |")
    Path(args.json).write_text(
        json.dumps({"mib": mib, "rounds": args.rounds, "cpu": cpu, "times_s": times, "median_mib_s": med}, indent=1)
    )


if __name__ == "__main__":
    main()
