"""Issue #11's performance figures, side by side in one run: the local disk vs a local S3-compatible
server in its own process (moto_server, tests/s3server.py), today's code vs the code before the
storage seam, augzarr's object-store client (obstore) vs the one it did not choose (s3fs).

Every round runs every case once, in a rotated order; each figure is the median over rounds, with
the spread (min-max) and the same-round ratios. Every case runs in a fresh process of its own:
    build    `build-aug` to a local folder (before the seam, today) and to s3:// (today):
             wall time of the whole command and the summary's own seconds
    stream   StoreStream over whole epochs, no model, batches of 128: from the local store (before,
             today) and from the same store on moto (today)
    clients  the two patterns the study measured, obstore vs s3fs (vs local): build-shaped writes
             (2 forkserver workers PUTting the store's chunk objects and a marker each) and the
             stream's window pattern (8 chunks fetched concurrently, then a np.take gather; and obstore's
             fetches alone, the ceiling of a stream from this server)
    deep     the deep CNN's CPU training rate from in-memory arrays (10 warm-up + 50 timed steps of 128)

    git -C /work/main worktree add /work/wt-before 06d8feb    # the code before the seam, with a venv
    .venv/bin/python bench/bench_storage.py --images /tmp/cifar-sb --before /work/wt-before --rounds 7 --epochs 5

--before names a checkout of the older code with its own .venv (its build-aug and python are used);
leave it out to skip the before/after rows. The s3fs rows need s3fs (pip install s3fs) and are left
out without it. The script starts and stops moto_server itself; nothing is left behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 128
WINDOW = 8  # chunks per window, the stream's DEFAULT_BUFFER_CHUNKS
BUCKET = "augzarr-bench"


# -- children: each measurement in a process of its own -----------------------------------------------


def child_stream(api: str, store: str, epochs: int) -> dict:
    """images/s of StoreStream over whole epochs (epoch e reads in epoch e's order)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from augzarr.trainer.stream import StoreStream

    if api == "before":  # the API before the seam: a zarr group
        import zarr

        source = zarr.open_group(store, mode="r")
    else:
        from augzarr.store_format import open_store

        source = open_store(store)
    rates = []
    for epoch in range(epochs):
        stream = StoreStream(source, "train", batch_size=BATCH, shuffle=True, start_epoch=epoch)
        start = time.perf_counter()
        n = sum(len(stream[i][0]) for i in range(stream.batches_per_epoch))
        rates.append(n / (time.perf_counter() - start))
        stream.close()
    return {"rates": rates, "rows": n}


def child_deep(steps: int) -> dict:
    """The deep CNN's training images/s on CPU, from in-memory uint8 arrays (no input pipeline cost)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from augzarr.trainer.models import build_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH * 20, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int32)
    model = build_model("deep", (32, 32, 3), 10)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=BATCH, steps_per_epoch=10, epochs=1, verbose=0)  # compile and warm up
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"rate": steps * BATCH / (time.perf_counter() - start)}


def chunk_keys(store: str) -> tuple[list[str], int]:
    from augzarr.store_format import chunk_key, open_store

    images = open_store(store).images("train")
    n = -(-images.shape[0] // images.chunks[0])
    return [chunk_key(images, c) for c in range(n)], images.nbytes // images.shape[0] * images.chunks[0]


def write_part(client: str, location: str, keys: list[str], blob: bytes) -> None:
    """One build worker's share: each chunk object, then its marker (as store_format.write_chunk)."""
    if client == "s3fs":
        import s3fs

        fs, root = s3fs.S3FileSystem(), location.removeprefix("s3://")
        for key in keys:
            fs.pipe_file(f"{root}/{key}", blob)
            fs.pipe_file(f"{root}/.build/chunks/{key.replace('/', '.')}", b"00000000")
    else:  # augzarr's own backends: obstore for s3://, tmp + rename for a folder
        from augzarr.storage import open_storage

        storage = open_storage(location)
        for key in keys:
            storage.write(key, blob)
            storage.write(f".build/chunks/{key.replace('/', '.')}", b"00000000")


def child_write(client: str, store: str, out: str) -> dict:
    """Build-shaped writes: 2 forkserver workers (the builder's pool here) PUT the store's chunk keys."""
    import multiprocessing

    keys, chunk_bytes = chunk_keys(store)
    blob = os.urandom(chunk_bytes)
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        pool.apply(len, ([],))  # the workers are up before the clock starts
        start = time.perf_counter()
        pool.starmap(write_part, [(client, out, keys[i::2], blob) for i in range(2)])
        seconds = time.perf_counter() - start
    return {"mib_s": len(keys) * chunk_bytes / 2**20 / seconds, "chunks": len(keys)}


def child_read(client: str, store: str, epochs: int, gather: bool = True) -> dict:
    """The stream's window pattern with one client: a reader thread fetches window w+1 (8 chunks at
    once, into one buffer) and gathers its rows with np.take while window w is cut into batches.
    gather=False: the fetches alone, the ceiling a stream from this server can reach."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from augzarr.store_format import open_store

    opened = open_store(store)
    images = opened.images("train")
    keys, chunk_bytes = chunk_keys(store)
    rows = images.chunks[0]
    if client == "s3fs":
        import s3fs

        fs, root = s3fs.S3FileSystem(), store.removeprefix("s3://")

        def fetch(chunk_keys, outs):
            got = fs.cat([f"{root}/{k}" for k in chunk_keys])
            for k, out in zip(chunk_keys, outs):
                out[:] = np.frombuffer(got[f"{root}/{k}"], np.uint8)
    else:
        fetch = opened.storage.read_many_into

    def load(epoch: int, chunks: list[int]):
        buf = np.empty((len(chunks) * rows, *images.shape[1:]), np.uint8)
        flat = memoryview(buf).cast("B")
        fetch([keys[c] for c in chunks], [flat[i * chunk_bytes : (i + 1) * chunk_bytes] for i in range(len(chunks))])
        return np.take(buf, np.random.default_rng([epoch, chunks[0]]).permutation(len(buf)), axis=0) if gather else buf

    rates = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(keys)).tolist()
        windows = [order[i : i + WINDOW] for i in range(0, len(order), WINDOW)]
        n = 0
        start = time.perf_counter()
        with ThreadPoolExecutor(1) as reader:
            upcoming = reader.submit(load, epoch, windows[0])
            for w in range(len(windows)):
                batch_rows = upcoming.result()
                if w + 1 < len(windows):
                    upcoming = reader.submit(load, epoch, windows[w + 1])
                n += sum(len(batch_rows[b : b + BATCH]) for b in range(0, len(batch_rows), BATCH))
        rates.append(n / (time.perf_counter() - start))
    return {"rates": rates}


# -- the parent --------------------------------------------------------------------------------------


def run_child(python: Path, env: dict, *args) -> dict:
    done = subprocess.run([str(python), __file__, "--child", *map(str, args)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_build(bin_dir: Path, env: dict, images: str, out: str, limit: int, copies: int) -> dict:
    command = [
        str(bin_dir / "build-aug"),
        "--source",
        images,
        "--out",
        out,
        "--limit",
        str(limit),
        "--copies",
        str(copies),
        "--preview",
        "0",
        "--seed",
        "0",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = re.search(r"\(([\d,]+) computed\) in ([\d.]+) s", done.stdout)
    if not summary:
        raise SystemExit(f"{' '.join(command)}: no summary line in its output:\n{done.stdout[-2000:]}")
    rows = int(summary.group(1).replace(",", ""))
    return {"wall": wall, "seconds": float(summary.group(2)), "rows": rows}


def remove(location: str, env: dict) -> None:
    if location.startswith("s3://"):
        os.environ.update(env)
        from augzarr.storage import open_storage

        open_storage(location).remove("")
    else:
        shutil.rmtree(location, ignore_errors=True)


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="an image folder (the CIFAR-10 JPEGs)")
    parser.add_argument("--before", type=Path, help="a checkout of the code before the storage seam, with its .venv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--build-limit", type=int, default=10000, help="source images per timed build")
    parser.add_argument("--build-copies", type=int, default=3)
    parser.add_argument("--stream-limit", type=int, default=25000, help="source images of the streamed store")
    parser.add_argument("--stream-copies", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="stream epochs per process")
    parser.add_argument("--deep-steps", type=int, default=50)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--json", type=Path, help="also write every timing here")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from s3server import MotoServer

    here = Path(sys.executable).parent
    before = args.before / ".venv" / "bin" if args.before else None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        ),
        "?",
    )
    print(f"CPU {cpu}, {os.cpu_count()} cores; {args.rounds} rounds", flush=True)

    with MotoServer() as moto:
        moto.make_bucket(BUCKET)
        s3env = {**os.environ, **moto.env}
        local_store, s3_store = str(work / "stream.zarr"), f"s3://{BUCKET}/stream/aug.zarr"
        for out in (local_store, s3_store):  # the streamed store, the same bytes in both places (not timed)
            remove(out, s3env)
            timed_build(here, s3env, args.images, out, args.stream_limit, args.stream_copies)
        info = run_child(here / "python", s3env, "info", local_store)
        print(
            f"streamed store: {info['rows']:,} training rows in {info['chunks']} chunks of {info['chunk_bytes'] / 2**20:.0f} MiB",
            end="",
            flush=True,
        )

        cases = {
            "build local (today)": lambda r: timed_build(
                here, s3env, args.images, str(work / f"b{r}.zarr"), args.build_limit, args.build_copies
            ),
            "build s3 obstore (today)": lambda r: timed_build(
                here, s3env, args.images, f"s3://{BUCKET}/b{r}/aug.zarr", args.build_limit, args.build_copies
            ),
            "stream local (today)": lambda r: run_child(
                here / "python", s3env, "stream", "after", local_store, args.epochs
            ),
            "stream s3 obstore (today)": lambda r: run_child(
                here / "python", s3env, "stream", "after", s3_store, args.epochs
            ),
            "write local (augzarr)": lambda r: run_child(
                here / "python", s3env, "write", "augzarr", local_store, str(work / f"w{r}")
            ),
            "write s3 obstore (augzarr)": lambda r: run_child(
                here / "python", s3env, "write", "augzarr", local_store, f"s3://{BUCKET}/wo{r}"
            ),
            "write s3 s3fs": lambda r: run_child(
                here / "python", s3env, "write", "s3fs", local_store, f"s3://{BUCKET}/ws{r}"
            ),
            "window local (augzarr)": lambda r: run_child(
                here / "python", s3env, "read", "augzarr", local_store, args.epochs
            ),
            "window s3 obstore (augzarr)": lambda r: run_child(
                here / "python", s3env, "read", "augzarr", s3_store, args.epochs
            ),
            "window s3 s3fs": lambda r: run_child(here / "python", s3env, "read", "s3fs", s3_store, args.epochs),
            "fetch only s3 obstore (augzarr)": lambda r: run_child(
                here / "python", s3env, "read", "augzarr", s3_store, args.epochs, "fetch"
            ),
            "deep CNN training": lambda r: run_child(here / "python", s3env, "deep", args.deep_steps),
        }
        if before:
            cases["build local (before)"] = lambda r: timed_build(
                before, s3env, args.images, str(work / f"p{r}.zarr"), args.build_limit, args.build_copies
            )
            cases["stream local (before)"] = lambda r: run_child(
                before / "python", s3env, "stream", "before", local_store, args.epochs
            )
        if importlib.util.find_spec("s3fs") is None:
            print("s3fs is not installed: no s3fs rows (pip install s3fs)", flush=True)
            del cases["write s3 s3fs"], cases["window s3 s3fs"]
        cleanup = {
            "build local (today)": lambda r: str(work / f"b{r}.zarr"),
            "build local (before)": lambda r: str(work / f"p{r}.zarr"),
            "build s3 obstore (today)": lambda r: f"s3://{BUCKET}/b{r}/aug.zarr",
            "write local (augzarr)": lambda r: str(work / f"w{r}"),
            "write s3 obstore (augzarr)": lambda r: f"s3://{BUCKET}/wo{r}",
            "write s3 s3fs": lambda r: f"s3://{BUCKET}/ws{r}",
        }
        names = list(cases)
        results: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(args.rounds):
            start = time.perf_counter()
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(cases[name](r))
                if name in cleanup:
                    remove(cleanup[name](r), s3env)
            print(f"\nround {r + 1}/{args.rounds}: {time.perf_counter() - start:.0f} s", end="", flush=True)
        print(flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": cpu, "info": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                indent=1,
            )
        )
    report(results, info, args, cpu)


def report(results: dict, info: dict, args, cpu: str) -> None:
    def per_round(name: str) -> list[float]:
        """One figure per round: images/s (builds, streams: the median of the process's epochs), MiB/s (writes)."""
        out = []
        for result in results[name]:
            if "rates" in result:
                out.append(statistics.median(result["rates"]))
            elif "mib_s" in result:
                out.append(result["mib_s"])
            elif "rate" in result:
                out.append(result["rate"])
            else:
                out.append(result["rows"] / result["wall"])
        return out

    def summary_rate(name: str) -> list[float]:
        return [result["rows"] / result["seconds"] for result in results[name]]

    def ratio(a: str, b: str, of=None) -> list[float]:
        of = of or per_round
        return [x / y for x, y in zip(of(a), of(b))]

    has = results.__contains__
    n = args.rounds
    print(
        f"\nCPU: {cpu}, {os.cpu_count()} cores. Medians of {n} rounds (min-max); ratios are per round, then the median."
    )
    print(
        f"Streamed store: --limit {args.stream_limit} --copies {args.stream_copies}: {info['rows']:,} training rows, "
        f"{info['chunks']} chunks of {info['chunk_bytes'] / 2**20:.0f} MiB; {args.epochs} epochs per process."
    )
    build_rows = results["build local (today)"][0]["rows"]
    print(f"Builds: --limit {args.build_limit} --copies {args.build_copies}: {build_rows:,} rows computed.\n")
    print("| case | images/s (whole command) | images/s (summary's seconds) | whole command s |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("build local (before)", "build local (today)", "build s3 obstore (today)"):
        if has(name):
            print(
                f"| {name} | {spread(per_round(name))} | {spread(summary_rate(name))} | "
                f"{spread([x['wall'] for x in results[name]], '.2f')} |"
            )
    print("\n| case | images/s | x deep CNN |")
    print("| --- | ---: | ---: |")
    deep = statistics.median(per_round("deep CNN training"))
    for name in (
        "stream local (before)",
        "stream local (today)",
        "stream s3 obstore (today)",
        "window local (augzarr)",
        "window s3 obstore (augzarr)",
        "window s3 s3fs",
        "fetch only s3 obstore (augzarr)",
        "deep CNN training",
    ):
        if has(name):
            print(f"| {name} | {spread(per_round(name))} | {statistics.median(per_round(name)) / deep:,.0f} |")
    print("\n| case | MiB/s | images/s |")
    print("| --- | ---: | ---: |")
    image_bytes = info["chunk_bytes"] / info["chunk_rows"]
    for name in ("write local (augzarr)", "write s3 obstore (augzarr)", "write s3 s3fs"):
        if not has(name):
            continue
        v = per_round(name)
        print(f"| {name} | {spread(v)} | {spread([x * 2**20 / image_bytes for x in v])} |")
    print("\nSame-round ratios, median (min-max):")
    lines = []
    if has("build local (before)"):
        lines += [
            ("build today / before, whole command", ratio("build local (today)", "build local (before)")),
            (
                "build today / before, summary seconds",
                ratio("build local (today)", "build local (before)", summary_rate),
            ),
            ("stream today / before", ratio("stream local (today)", "stream local (before)")),
        ]
    lines += [
        ("build s3 / local (today), whole command", ratio("build s3 obstore (today)", "build local (today)")),
        ("stream s3 / local (today)", ratio("stream s3 obstore (today)", "stream local (today)")),
        ("stream s3 / fetch only s3 (obstore)", ratio("stream s3 obstore (today)", "fetch only s3 obstore (augzarr)")),
        ("fetch only s3 / stream local (today)", ratio("fetch only s3 obstore (augzarr)", "stream local (today)")),
        ("stream s3 / deep CNN", ratio("stream s3 obstore (today)", "deep CNN training")),
    ]
    if has("window s3 s3fs"):
        lines += [
            ("window pattern obstore / s3fs", ratio("window s3 obstore (augzarr)", "window s3 s3fs")),
            ("write pattern obstore / s3fs", ratio("write s3 obstore (augzarr)", "write s3 s3fs")),
        ]
    for label, values in lines:
        print(f"- {label}: {spread(values, '.2f')}")


def child_main(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "stream":
        result = child_stream(rest[0], rest[1], int(rest[2]))
    elif kind == "deep":
        result = child_deep(int(rest[0]))
    elif kind == "write":
        result = child_write(*rest)
    elif kind == "read":
        result = child_read(rest[0], rest[1], int(rest[2]), gather=rest[3:] != ["fetch"])
    else:  # info
        from augzarr.store_format import open_store

        images = open_store(rest[0]).images("train")
        result = {
            "rows": images.shape[0],
            "chunk_rows": images.chunks[0],
            "chunks": -(-images.shape[0] // images.chunks[0]),
            "chunk_bytes": images.nbytes // images.shape[0] * images.chunks[0],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
