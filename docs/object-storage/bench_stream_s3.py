"""The trainer's stream pattern against each backend: a background reader loads a window of
8 chunks (3 MiB each) while the consumer cuts the previous window into shuffled batches of
128 (np.take gather, like trainer/stream.py). images/s per epoch; median of rounds;
interleaved; client and moto_server CPU seconds per GiB read.

    venv/bin/python bench_stream_s3.py [--chunks 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from s3env import MotoProcess, make_bucket, obstore_s3, s3fs_fs

ROWS, SHAPE, WINDOW, BATCH = 1024, (32, 32, 3), 8, 128
IMG = 32 * 32 * 3


class LoopThread:
    """One event loop kept in the reader thread (obstore's async API needs a loop)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


def fetchers(tmp: Path, bucket: str, x: np.ndarray):
    import obstore as obs
    import zarr
    from zarr.codecs import BytesCodec
    from zarr.storage import FsspecStore, LocalStore, ObjectStore

    n = x.shape[0]
    nchunks = n // ROWS

    def zarr_array(store):
        g = zarr.open_group(store, mode="w")
        a = g.create_array(
            "images", shape=x.shape, chunks=(ROWS,) + SHAPE, dtype="uint8", serializer=BytesCodec(), compressors=None
        )
        a[:] = x
        return a

    out = {}
    # local raw files, readinto straight into the window (today's read_chunk_rows)
    la = zarr_array(LocalStore(tmp / "l.zarr"))
    root = tmp / "l.zarr" / "images" / "c"

    def local_raw(chunks, dst):
        for i, c in enumerate(chunks):
            with open(root / str(c) / "0" / "0" / "0", "rb", buffering=0) as f:
                f.readinto(memoryview(dst[i * ROWS : (i + 1) * ROWS]).cast("B"))

    out["local raw readinto (today)"] = local_raw

    def zarr_window(a):
        """The window's chunks fetched concurrently through zarr's async API on zarr's own
        loop (a FsspecStore's s3fs session is bound to that loop: asyncio.run would fail)."""
        from zarr.core.sync import sync

        def f(chunks, dst):
            async def go():
                return await asyncio.gather(
                    *(a._async_array.getitem((slice(c * ROWS, (c + 1) * ROWS),)) for c in chunks)
                )

            for i, part in enumerate(sync(go())):
                dst[i * ROWS : (i + 1) * ROWS] = part

        return f

    def zarr_per_chunk(a):
        def f(chunks, dst):
            for i, c in enumerate(chunks):
                dst[i * ROWS : (i + 1) * ROWS] = a[c * ROWS : (c + 1) * ROWS]

        return f

    out["zarr LocalStore per chunk"] = zarr_per_chunk(la)

    st = obstore_s3(bucket, prefix="o")
    for c in range(nchunks):
        obs.put(st, f"c/{c}", x[c * ROWS : (c + 1) * ROWS].tobytes())
    lt = LoopThread()

    def obstore_conc(chunks, dst):
        async def one(i, c):
            r = await obs.get_async(st, f"c/{c}")
            b = await r.bytes_async()
            dst[i * ROWS : (i + 1) * ROWS] = np.frombuffer(b, np.uint8).reshape((ROWS,) + SHAPE)

        async def go():
            await asyncio.gather(*(one(i, c) for i, c in enumerate(chunks)))

        lt.run(go())

    def obstore_seq(chunks, dst):
        for i, c in enumerate(chunks):
            b = obs.get(st, f"c/{c}").bytes()
            dst[i * ROWS : (i + 1) * ROWS] = np.frombuffer(b, np.uint8).reshape((ROWS,) + SHAPE)

    out["obstore direct, 8 concurrent"] = obstore_conc
    out["obstore direct, sequential"] = obstore_seq
    oa = zarr_array(ObjectStore(obstore_s3(bucket, prefix="zo.zarr")))
    out["zarr ObjectStore, 8 concurrent (async getitem)"] = zarr_window(oa)
    out["zarr ObjectStore per chunk"] = zarr_per_chunk(oa)

    fs = s3fs_fs()
    fs.pipe({f"{bucket}/s/c/{c}": x[c * ROWS : (c + 1) * ROWS].tobytes() for c in range(nchunks)})

    def s3fs_conc(chunks, dst):
        got = fs.cat([f"{bucket}/s/c/{c}" for c in chunks])
        for i, c in enumerate(chunks):
            dst[i * ROWS : (i + 1) * ROWS] = np.frombuffer(got[f"{bucket}/s/c/{c}"], np.uint8).reshape((ROWS,) + SHAPE)

    out["s3fs direct, 8 concurrent (fs.cat list)"] = s3fs_conc
    fa = zarr_array(FsspecStore.from_url(f"s3://{bucket}/zf.zarr"))
    out["zarr FsspecStore, 8 concurrent (async getitem)"] = zarr_window(fa)
    for a in (la, oa, fa):  # correctness of the window path
        d = np.empty((2 * ROWS,) + SHAPE, np.uint8)
        zarr_window(a)([3, 1], d)
        assert (d[:ROWS] == x[3 * ROWS : 4 * ROWS]).all() and (d[ROWS:] == x[ROWS : 2 * ROWS]).all()
    return out


def epoch(fetch, nchunks, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(nchunks)
    windows = [order[i : i + WINDOW] for i in range(0, nchunks, WINDOW)]

    def load(w):
        chunks = windows[w]
        buf = np.empty((len(chunks) * ROWS,) + SHAPE, np.uint8)
        fetch(chunks.tolist(), buf)
        rows = np.random.default_rng([seed, w]).permutation(len(buf))
        return np.take(buf, rows, axis=0)

    n = 0
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(load, 0)
        for w in range(len(windows)):
            imgs = fut.result()
            if w + 1 < len(windows):
                fut = ex.submit(load, w + 1)
            for b in range(0, len(imgs), BATCH):
                batch = imgs[b : b + BATCH]
                n += len(batch)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    x = np.random.default_rng(0).integers(0, 256, (args.chunks * ROWS,) + SHAPE, dtype=np.uint8)
    tmp = Path(tempfile.mkdtemp(prefix="augzarr-stream-", dir="/work/notes/s3"))
    moto = MotoProcess().start()
    mp = psutil.Process(moto.proc.pid)
    me = psutil.Process()
    make_bucket("augzarr-stream")
    try:
        fs = fetchers(tmp, "augzarr-stream", x)
        names = list(fs)
        rates = {k: [] for k in names}
        cpu = {k: [0.0, 0.0, 0] for k in names}
        for k in names:
            epoch(fs[k], args.chunks, 99)  # warm-up
        for r in range(args.rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                c0, s0 = me.cpu_times(), mp.cpu_times()
                t = time.perf_counter()
                n = epoch(fs[k], args.chunks, r)
                rates[k].append(n / (time.perf_counter() - t))
                c1, s1 = me.cpu_times(), mp.cpu_times()
                cpu[k][0] += (c1.user + c1.system) - (c0.user + c0.system)
                cpu[k][1] += (s1.user + s1.system) - (s0.user + s0.system)
                cpu[k][2] += n
            print(f"round {r + 1} done", flush=True)
    finally:
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(rates[names[0]])
    print(
        f"\nstream pattern: {args.chunks} chunks x 1024 rows (uint8 32x32x3), windows of {WINDOW} chunks, "
        f"batches of {BATCH}; median of {args.rounds} epochs; moto_server in a separate process on the same 2 cores"
    )
    print("| reader | images/s | MiB/s | vs local raw | x deep CNN (1,411/s) | client CPU s/GiB | moto CPU s/GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in names:
        m = statistics.median(rates[k])
        gib = cpu[k][2] * IMG / 2**30
        print(
            f"| {k} | {m:,.0f} | {m * IMG / 2**20:,.0f} | {m / base:.2f} | {m / 1411:,.0f} | "
            f"{cpu[k][0] / gib:.2f} | {cpu[k][1] / gib:.2f} |"
        )
    print("rates:", {k: [round(v) for v in rates[k]] for k in names})


if __name__ == "__main__":
    main()
