"""augzarr against its closest peer, MosaicML Streaming, on the same rows of real photos (issue #23's Targets).

The rows: the train rows of an augzarr store of --limit photos at 224x224 (originals + 5 copies, built as
bench/bench_photo_store.py builds them), the pixels of the raw store, which are the pixels the jpeg:90 store
encoded. They are written as MDS shards with Streaming's MDSWriter (no compression, its default shard size):

  MDS jpeg      a `jpeg` column fed bytes encoded by Pillow at quality 90 (4:2:0, Pillow's default subsampling):
                Streaming's own `jpeg` encoder saves at Pillow's default quality 75, so each image is encoded at 90
                into a file first and handed over as a JpegImageFile, whose file's bytes the column stores as they
                are; decoded by Streaming (Pillow) and converted to a uint8 array in the dataset
  MDS bytes     the same q90 bytes in a `bytes` column, decoded with simplejpeg (augzarr's JPEG decoder) in the
                dataset: the peer's loader with augzarr's decoder
  MDS raw       an `ndarray:uint8:224,224,3` column

Measured, in one run: the shards' bytes against the augzarr stores' (every file of each folder); images/s of
whole shuffled epochs, decoded to uint8 [128, 224, 224, 3] batches, each batch copied once by the consumer (as a
copy to a device would read it):

  Streaming     StreamingDataset (local, no remote, shuffle=True, batch_size=128) subclassed to decode, in a
                torch DataLoader with num_workers = cores, batch_size=128, persistent workers
  augzarr       StoreStream, the stream train and Store.stream use (decode threads = cores; a fresh stream each
                epoch), and augzarr.torch.StoreDataset in a DataLoader with num_workers = cores (persistent
                workers, one decode thread each); the raw store's StoreStream as a reference

The cases take turns epoch by epoch after one untimed epoch each (workers starting); medians. Targets:
augzarr's jpeg:90 stream >= 1.5x Streaming's JPEG images/s, and its store no larger than the JPEG shards.

Streaming is a benchmark dependency, not augzarr's: it lives in its own virtualenv (--streaming-python), whose
Python runs this same file as a server process (--serve) that writes the shards and times Streaming's epochs on
request, while this process (augzarr's environment) times augzarr's and prints the one table. That venv:

    python3 -m venv /work/venv-streaming
    /work/venv-streaming/bin/pip install mosaicml-streaming==0.13.0 simplejpeg

(Streaming imports torchvision, whose compiled operators need the torch build they were made for: pip takes torch
2.14.1 and torchvision 0.29.1 from the index, CUDA builds of some GB that run on the CPU here. A CPU-only torch
without a torchvision of the same build fails on `import streaming`.)

    python bench/bench_streaming_peer.py --photos /work/data/imagen --limit 220 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the photos, the stores, the machine and the turns as bench_photo_store.py has them (its imports: the stdlib's alone)
from bench_photo_store import (  # noqa: E402
    BATCH,
    JPEG,
    RAW,
    cores,
    folder_bytes,
    in_turns,
    machine_line,
    select_photos,
    stores_of,
    stream_epoch,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPLY = "@@ "  # marks the server's replies among whatever else its libraries print
MDS_VARIANTS = {  # name -> (column encoding, how the dataset decodes it)
    "jpeg": ("jpeg", "Streaming's jpeg column (Pillow)"),
    "bytes": ("bytes", "bytes column, simplejpeg in the dataset"),
    "raw": ("ndarray:uint8:224,224,3", "ndarray column, raw pixels"),
}


def consume(images) -> int:
    """Read the batch once, as a copy to a device would: the same numpy copy in both processes."""
    import numpy as np

    array = images if isinstance(images, np.ndarray) else images.numpy()
    np.copyto(np.empty_like(array), array)
    return len(array)


# -- Streaming's side: runs in the Streaming venv ---------------------------------------------------


def write_shards(rows_file: Path, labels_file: Path, out: Path, quality: int) -> dict[str, int]:
    """The rows as MDS shards of each variant under out/<variant>; their bytes, and the rows' JPEG bytes alone from
    each encoder (Pillow: the shards'; simplejpeg: augzarr's), which tell the encoders' part of a size difference."""
    import numpy as np
    import simplejpeg
    from PIL import Image
    from streaming import MDSWriter

    images, labels = np.load(rows_file, mmap_mode="r"), np.load(labels_file)
    pillow = f"the rows' JPEG bytes alone, Pillow q{quality} (the shards' encoder)"
    sizes = {
        f"the rows' JPEG bytes alone, simplejpeg q{quality} (augzarr's encoder)": sum(
            len(simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality, "RGB", "420")) for image in images
        ),
        pillow: 0,
    }
    with tempfile.TemporaryDirectory() as scratch:
        for variant, (encoding, _) in MDS_VARIANTS.items():
            folder = out / variant
            shutil.rmtree(folder, ignore_errors=True)
            with MDSWriter(out=str(folder), columns={"x": encoding, "y": "int"}) as writer:
                for i, (image, label) in enumerate(zip(images, labels)):
                    if variant == "raw":
                        x = np.ascontiguousarray(image)
                    else:
                        encoded = io.BytesIO()
                        Image.fromarray(image).save(encoded, "JPEG", quality=quality)
                        x = encoded.getvalue()
                        if variant == "bytes":
                            sizes[pillow] += len(x)
                        if variant == "jpeg":  # a JpegImageFile read from a file: the column keeps the file's bytes
                            path = Path(scratch) / f"{i}.jpg"
                            path.write_bytes(x)
                            x = Image.open(path)
                    writer.write({"x": x, "y": int(label)})
                    if variant == "jpeg":
                        x.close()
            sizes[f"MDS shards, {variant}"] = folder_bytes(folder)
    return sizes


def streaming_loaders(out: Path, workers: int) -> dict:
    """A DataLoader over each variant's shards, decoding to uint8 arrays."""
    import warnings

    import numpy as np
    import simplejpeg
    import torch
    from streaming import StreamingDataset

    # Pillow's array is a read-only view of its decoded bytes: collate copies it into the batch, as it does any
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    class Decoded(StreamingDataset):
        def __init__(self, variant: str, **kwargs):
            super().__init__(**kwargs)
            self.variant = variant

        def __getitem__(self, index):
            row = super().__getitem__(index)
            x = row["x"]
            if self.variant == "jpeg":  # Pillow decodes as the array is taken (RGB JPEGs: no conversion)
                x = np.asarray(x)
            elif self.variant == "bytes":
                x = simplejpeg.decode_jpeg(x, colorspace="RGB")
            return x, row["y"]  # the DataLoader's collate stacks the arrays into a uint8 batch

    loaders = {}
    for variant in MDS_VARIANTS:
        data = Decoded(variant, local=str(out / variant), shuffle=True, shuffle_seed=0, batch_size=BATCH)
        loaders[variant] = torch.utils.data.DataLoader(
            data, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0
        )
    return loaders


def serve(config: dict) -> None:
    """Write the shards, say their sizes, then time an epoch of a variant each time asked ("epoch NAME"; "quit")."""
    import streaming
    import torch
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    out = Path(config["out"])
    sizes = write_shards(Path(config["rows"]), Path(config["labels"]), out, config["quality"])
    versions = f"mosaicml-streaming {streaming.__version__}, torch {torch.__version__}"
    print(REPLY + json.dumps({"sizes": sizes, "versions": versions}), flush=True)
    loaders = streaming_loaders(out, config["workers"])
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        start = time.perf_counter()
        n = sum(consume(images) for images, _ in loaders[command[1]])
        print(REPLY + json.dumps({"images": n, "seconds": time.perf_counter() - start}), flush=True)


class StreamingServer:
    """The --serve process in the Streaming venv, asked for one thing at a time."""

    def __init__(self, python: str, config: dict):
        self.process = subprocess.Popen(
            [python, __file__, "--serve", json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def reply(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
            sys.stderr.write(line)
        sys.exit(f"the Streaming process ended (exit {self.process.wait()}); its errors are above")

    def epoch(self, variant: str) -> tuple[int, float]:
        self.process.stdin.write(f"epoch {variant}\n")
        self.process.stdin.flush()
        answer = self.reply()
        return answer["images"], answer["seconds"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


# -- augzarr's side ---------------------------------------------------------------------------------


def torch_epochs(store_path: Path, workers: int):
    from augzarr.torch import StoreDataset

    data = StoreDataset(str(store_path), "train", BATCH, seed=0)
    loader = data.loader(num_workers=workers, persistent_workers=workers > 0)

    def epoch(e: int) -> tuple[int, float]:
        data.set_epoch(e)
        start = time.perf_counter()
        n = sum(consume(images) for images, _ in loader)
        return n, time.perf_counter() - start

    return epoch


def dump_rows(raw_store: Path, work: Path) -> tuple[Path, Path, int]:
    """The raw store's train rows and labels as .npy files for the Streaming process."""
    import numpy as np

    import augzarr

    images, labels = augzarr.open_store(raw_store).arrays("train")
    rows, label_file = work / "rows.npy", work / "labels.npy"
    np.save(rows, images)
    np.save(label_file, labels.astype(np.int64))
    return rows, label_file, len(images)


def loader_cases(stores: dict[str, Path], server: StreamingServer, workers: int) -> dict:
    """Each loader as case(epoch) -> (images, seconds)."""
    from augzarr.store_format import open_store

    jpeg, raw = open_store(str(stores[JPEG])), open_store(str(stores[RAW]))
    return {
        f"augzarr StoreStream, jpeg:90 store, {workers} decode threads": lambda e: stream_epoch(jpeg, e, take=consume),
        f"augzarr.torch StoreDataset, jpeg:90 store, DataLoader {workers} workers": torch_epochs(stores[JPEG], workers),
        **{
            f"Streaming, MDS {variant} ({how}), DataLoader {workers} workers": lambda e, v=variant: server.epoch(v)
            for variant, (_, how) in MDS_VARIANTS.items()
        },
        f"augzarr.torch StoreDataset, raw store, DataLoader {workers} workers": torch_epochs(stores[RAW], workers),
        "augzarr StoreStream, raw store (reference)": lambda e: stream_epoch(raw, e, take=consume),
    }


def report(args, header: str, rows: int, sizes: dict[str, int], rates: dict[str, list[float]]) -> None:
    print(header)
    print("\n| what | bytes | MiB | kB a row |\n| --- | ---: | ---: | ---: |")
    for name, size in sizes.items():
        print(f"| {name} | {size:,} | {size / 2**20:.1f} | {size / rows / 1000:.1f} |")
    jpeg_store, jpeg_shards = sizes[f"augzarr store, {JPEG}"], sizes["MDS shards, jpeg"]
    print(f"\naugzarr {JPEG} store / MDS q{args.quality} JPEG shards: **{jpeg_store / jpeg_shards:.2f}** (target <= 1)")
    print(
        f"\nimages/s of whole shuffled epochs of {rows:,} rows, batches of {BATCH}, median of {args.repeats} "
        "after an untimed one, the cases in turn:\n"
    )
    peer = statistics.median(rates[next(k for k in rates if "MDS jpeg" in k)])
    print("| loader | images/s (median) | vs Streaming JPEG | epochs |\n| --- | ---: | ---: | --- |")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:,.0f} | {rate / peer:.2f}x | {', '.join(f'{v:,.0f}' for v in values)} |")
    ours = max(statistics.median(v) for k, v in rates.items() if JPEG in k)
    print(f"\nthe faster augzarr {JPEG} loader / Streaming's JPEG: **{ours / peer:.2f}x** (target >= 1.5)")
    raw_peer = statistics.median(rates[next(k for k in rates if "MDS raw" in k)])
    raw_torch = statistics.median(rates[next(k for k in rates if "StoreDataset, raw" in k)])
    print(
        f"augzarr.torch on the raw store / Streaming's raw shards, the same workers: **{raw_torch / raw_peer:.2f}x** (target >= 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("/work/data/imagen"), help="a folder of photos")
    parser.add_argument("--limit", type=int, default=220, help="photos used, spread over the sorted files (220)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each case (5)")
    parser.add_argument("--quality", type=int, default=90, help="the MDS JPEG quality (90: the store's)")
    parser.add_argument("--streaming-python", type=Path, default=Path("/work/venv-streaming/bin/python"))
    parser.add_argument("--work", type=Path, default=Path("bench/out/streaming-peer"), help="stores and shards")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not args.streaming_python.is_file():
        sys.exit(f"--streaming-python {args.streaming_python}: no such file; make Streaming's venv (see --help)")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    workers = cores()
    photos = select_photos(args.photos, args.limit)
    stores = stores_of(photos, args.work, workers)  # built first: no TensorFlow in this process yet
    rows_file, labels_file, rows = dump_rows(stores[RAW], args.work)
    config = {"out": str(args.work / "mds"), "rows": str(rows_file), "labels": str(labels_file)}
    server = StreamingServer(str(args.streaming_python), {**config, "quality": args.quality, "workers": workers})
    try:
        shards = server.reply()
        rates = in_turns(loader_cases(stores, server, workers), args.repeats)
    finally:
        server.close()
    loads = (load_before, os.getloadavg())
    sizes = {f"augzarr store, {name}": folder_bytes(stores[name]) for name in (JPEG, RAW)}
    sizes[f"augzarr store, {JPEG}: its train/images array alone"] = folder_bytes(stores[JPEG] / "train" / "images")
    sizes |= shards["sizes"]
    header = (
        f"{len(photos)} photos of {args.photos}, {rows:,} rows at 224x224 (originals + 5 copies); "
        f"{machine_line(*loads)}; {shards['versions']}"
    )
    report(args, header, rows, sizes, rates)
    if args.json:
        result = {"rows": rows, "bytes": sizes, "images_per_s": rates, "loads": loads, "header": header}
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(json.loads(sys.argv[2]))
    else:
        main()
