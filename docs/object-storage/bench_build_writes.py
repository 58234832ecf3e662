"""Build-shaped writes: 2 forkserver worker processes (the builder's pool on 2 cores), each
PUTting its share of 3 MiB chunks plus a marker per chunk, as a build commits them.
Median of rounds, interleaved.     venv/bin/python bench_build_writes.py [--chunks 64] [--rounds 5]"""
import argparse, multiprocessing as mp, os, shutil, statistics, tempfile, time
import numpy as np
from s3env import MotoProcess, make_bucket, obstore_s3, s3fs_fs

CH = 1024 * 32 * 32 * 3

def work(args):
    kind, root, chunks = args
    blob = np.random.default_rng(chunks[0]).integers(0, 256, CH, dtype=np.uint8).tobytes()
    if kind == "local raw (tmp + os.replace)":
        os.makedirs(f"{root}/c", exist_ok=True); os.makedirs(f"{root}/done", exist_ok=True)
        for c in chunks:
            for p, b in ((f"{root}/c/{c}", blob), (f"{root}/done/{c}", b"")):
                with open(p + ".tmp", "wb") as f: f.write(b)
                os.replace(p + ".tmp", p)
    elif kind == "obstore":
        import obstore as obs
        st = obstore_s3("augzarr-build", prefix=root)
        for c in chunks:
            obs.put(st, f"c/{c}", blob, use_multipart=False); obs.put(st, f"done/{c}", b"")
    else:
        fs = s3fs_fs()
        for c in chunks:
            fs.pipe_file(f"augzarr-build/{root}/c/{c}", blob); fs.pipe_file(f"augzarr-build/{root}/done/{c}", b"")
    return len(chunks)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(); ap.add_argument("--chunks", type=int, default=64); ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(dir="/work/notes/s3")
    with MotoProcess() as m:
        make_bucket("augzarr-build")
        ctx = mp.get_context("forkserver")
        kinds = ["local raw (tmp + os.replace)", "obstore", "s3fs"]
        res = {k: [] for k in kinds}
        with ctx.Pool(2) as pool:
            for r in range(a.rounds + 1):
                for k in kinds[r % 3:] + kinds[:r % 3]:
                    root = f"{tmp}/{r}" if k.startswith("local") else f"{k}/{r}"
                    parts = [(k, root, list(range(i, a.chunks, 2))) for i in range(2)]
                    t = time.perf_counter(); pool.map(work, parts); dt = time.perf_counter() - t
                    if r: res[k].append(a.chunks * CH / 2**20 / dt)  # round 0 = warm-up
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(res[kinds[0]])
    print(f"2 forkserver workers, {a.chunks} chunks of 3 MiB + a marker each, median of {a.rounds}; MiB/s, images/s")
    print("| writer | MiB/s | images/s | vs local |"); print("| --- | --- | --- | --- |")
    for k in kinds:
        v = statistics.median(res[k])
        print(f"| {k} | {v:,.0f} | {v * 2**20 / 3072:,.0f} | {v / base:.2f} |")
    print({k: [round(x) for x in v] for k, v in res.items()})
