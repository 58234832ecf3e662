"""Which image codec for the image chunks of real photos? Size a row, encode and decode rates, quality, threads.

Real photos (folders of JPEG or PNG files, searched recursively) are cut as a store holds them: an image that
is already SIZE x SIZE is kept as it is (CIFAR-10's 32x32 files), any other has its shorter side resized to
SIZE * 256/224 (OpenCV INTER_AREA) and is centre-cropped to SIZE x SIZE. Each candidate then encodes every
image on its own (one image = one inner chunk of a shard) and decodes it back into a preallocated array.

Printed per candidate, as a Markdown table:
  kB/row      mean encoded bytes a row; "x smaller" is raw / that
  encode/s    images/s on one thread
  decode/s    images/s on one thread, into place in a [rows, H, W, C] array
  PSNR        dB against the pixels encoded, over the whole set (lossless: exact, checked)
  xN decode/s images/s with N threads, each decoding its own share: the codec must release the GIL to scale
  scaling     xN decode/s / (N x decode/s): 1.0 = perfect, 1/N = the GIL (or the cores) serialise it

The machine may be shared: every figure is the median of REPEATS passes, and each pass measures every candidate
one after the other (round robin), so load that comes and goes falls on all of them alike. Ratios between rows
are measured in the same run; absolute rates are what this machine gave at the time (the header prints the CPU,
its cores and the load average before and after).

The shard section (--shard-rows) compares reading whole shards (one augzarr chunk of rows, one image per inner
chunk, zarr's sharding_indexed codec) through zarr's own pipeline with augzarr.codecs' fast path, on the codec
augzarr uses by default.

    python bench/bench_image_codecs.py --photos /work/data/imagen --size 224 --limit 300
    python bench/bench_image_codecs.py --photos /tmp/cifar/train --size 32 --limit 3000

Needs the bench extra for the comparisons (simplejpeg, imagecodecs); candidates whose library is missing are
skipped with a note.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from machine import cpu_name  # bench/: the folder of the script that runs
from PIL import Image

Encode = Callable[[np.ndarray], bytes]
DecodeInto = Callable[[bytes, np.ndarray], None]


@dataclass
class Candidate:
    name: str
    kind: str  # "lossy" or "lossless"
    encode: Encode
    decode_into: DecodeInto


def cut(image: np.ndarray, size: int) -> np.ndarray:
    """The SIZE x SIZE image a store holds: kept when already that size, else shorter side to SIZE*256/224, centre crop."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size * 256 / 224 / min(h, w)
    image = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def load_photos(folders: list[Path], size: int, limit: int) -> np.ndarray:
    files = sorted(p for folder in folders for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"no .jpg, .jpeg or .png files under {', '.join(map(str, folders))}: give --photos a folder of photos")
    # an even spread over the sorted files, so a limit still samples every class folder
    files = [files[i] for i in np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)]
    return np.stack([cut(np.asarray(Image.open(file).convert("RGB")), size) for file in files])


# -- candidates -------------------------------------------------------------------------------------


def opencv(ext: str, params: list[int]) -> tuple[Encode, DecodeInto]:
    def encode(image: np.ndarray) -> bytes:
        ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        assert ok, ext
        return data.tobytes()

    def decode_into(data: bytes, out: np.ndarray) -> None:
        out[...] = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)

    return encode, decode_into


def pillow(fmt: str, **params) -> tuple[Encode, DecodeInto]:
    def encode(image: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(image).save(out, fmt, **params)
        return out.getvalue()

    def decode_into(data: bytes, out: np.ndarray) -> None:
        out[...] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return encode, decode_into


def simplejpeg_codec(quality: int, subsampling: str = "420") -> tuple[Encode, DecodeInto]:
    import simplejpeg

    def encode(image: np.ndarray) -> bytes:
        return simplejpeg.encode_jpeg(image, quality=quality, colorspace="RGB", colorsubsampling=subsampling)

    def decode_into(data: bytes, out: np.ndarray) -> None:
        simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)

    return encode, decode_into


def imagecodecs_codec(name: str, decode_params: dict | None = None, **params) -> tuple[Encode, DecodeInto]:
    import imagecodecs

    enc, dec = getattr(imagecodecs, f"{name}_encode"), getattr(imagecodecs, f"{name}_decode")
    decode_params = decode_params or {}

    def encode(image: np.ndarray) -> bytes:
        return bytes(enc(image, **params))

    def decode_into(data: bytes, out: np.ndarray) -> None:
        out[...] = dec(data, **decode_params)

    return encode, decode_into


def candidates(only: list[str] | None) -> tuple[list[Candidate], list[str]]:
    """Every candidate whose library is here, and a note for each one skipped."""

    def raw_decode(data: bytes, out: np.ndarray) -> None:
        out[...] = np.frombuffer(data, np.uint8).reshape(out.shape)

    jpeg = cv2.IMWRITE_JPEG_QUALITY
    subsampling = cv2.IMWRITE_JPEG_SAMPLING_FACTOR
    png = cv2.IMWRITE_PNG_COMPRESSION
    makers: list[tuple[str, str, Callable[[], tuple[Encode, DecodeInto]]]] = [
        ("raw", "lossless", lambda: (lambda image: image.tobytes(), raw_decode)),
        ("jpeg q75 4:2:0 (opencv)", "lossy", lambda: opencv(".jpg", [jpeg, 75])),
        ("jpeg q85 4:2:0 (opencv)", "lossy", lambda: opencv(".jpg", [jpeg, 85])),
        ("jpeg q90 4:2:0 (opencv)", "lossy", lambda: opencv(".jpg", [jpeg, 90])),
        (
            "jpeg q90 4:2:0 optimized (opencv)",
            "lossy",
            lambda: opencv(".jpg", [jpeg, 90, cv2.IMWRITE_JPEG_OPTIMIZE, 1]),
        ),
        (
            "jpeg q90 4:4:4 (opencv)",
            "lossy",
            lambda: opencv(".jpg", [jpeg, 90, subsampling, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
        ),
        ("jpeg q95 4:2:0 (opencv)", "lossy", lambda: opencv(".jpg", [jpeg, 95])),
        (
            "jpeg q95 4:4:4 (opencv)",
            "lossy",
            lambda: opencv(".jpg", [jpeg, 95, subsampling, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
        ),
        ("jpeg q90 4:2:0 (pillow)", "lossy", lambda: pillow("JPEG", quality=90)),
        ("jpeg q90 4:2:0 (simplejpeg)", "lossy", lambda: simplejpeg_codec(90)),
        ("jpeg q90 4:4:4 (simplejpeg)", "lossy", lambda: simplejpeg_codec(90, "444")),
        ("webp q90 (opencv)", "lossy", lambda: opencv(".webp", [cv2.IMWRITE_WEBP_QUALITY, 90])),
        ("png level 1 (opencv)", "lossless", lambda: opencv(".png", [png, 1])),
        (
            "png level 1 rle (opencv)",
            "lossless",
            lambda: opencv(".png", [png, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]),
        ),
        ("png level 6 (opencv)", "lossless", lambda: opencv(".png", [png, 6])),
        # libwebp's fastest lossless preset (method 0, quality 0), which OpenCV cannot ask for; OpenCV decodes it
        (
            "webp lossless fastest (pillow; opencv decodes)",
            "lossless",
            lambda: (pillow("WEBP", lossless=True, method=0, quality=0)[0], opencv(".webp", [])[1]),
        ),
        (
            "webp lossless (opencv, its only effort)",
            "lossless",
            lambda: opencv(".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        ),
        (
            "jxl lossless effort 1 (imagecodecs)",
            "lossless",
            lambda: imagecodecs_codec("jpegxl", {"numthreads": 1}, lossless=True, effort=1, numthreads=1),
        ),
        (
            "jxl lossless effort 3 (imagecodecs)",
            "lossless",
            lambda: imagecodecs_codec("jpegxl", {"numthreads": 1}, lossless=True, effort=3, numthreads=1),
        ),
        ("qoi (imagecodecs)", "lossless", lambda: imagecodecs_codec("qoi")),
    ]
    found, skipped = [], []
    for name, kind, make in makers:
        if only and not any(word in name for word in only):
            continue
        try:
            found.append(Candidate(name, kind, *make()))
        except (ImportError, AttributeError) as exc:  # a library or one of its codecs missing here
            skipped.append(f"{name}: {exc}")
    return found, skipped


# -- measuring --------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def encode_rate(images: np.ndarray, encode: Encode) -> float:
    start = time.perf_counter()
    for image in images:
        encode(image)
    return len(images) / (time.perf_counter() - start)


def decode_rate(
    encoded: list[bytes], out: np.ndarray, decode_into: DecodeInto, pool: ThreadPoolExecutor | None, threads: int
) -> float:
    """Images/s decoding every row into out, on `threads` threads each with a contiguous share (1: this thread)."""

    def share(bounds: tuple[int, int]) -> None:
        for i in range(*bounds):
            decode_into(encoded[i], out[i])

    edges = np.linspace(0, len(encoded), threads + 1).astype(int)
    start = time.perf_counter()
    if threads == 1:
        share((0, len(encoded)))
    else:
        list(pool.map(share, zip(edges[:-1], edges[1:])))
    return len(encoded) / (time.perf_counter() - start)


def measure(images: np.ndarray, found: list[Candidate], threads: list[int], repeats: int) -> dict[str, dict]:
    results = {}
    encoded = {}
    for c in found:
        encoded[c.name] = [c.encode(image) for image in images]
        decoded = np.empty_like(images)
        for i, data in enumerate(encoded[c.name]):
            c.decode_into(data, decoded[i])
        quality = psnr(images, decoded)
        if c.kind == "lossless" and quality != float("inf"):
            sys.exit(
                f"{c.name} is listed as lossless but does not give back the pixels it encoded (PSNR {quality:.1f} dB)"
            )
        results[c.name] = {
            "kind": c.kind,
            "bytes": float(np.mean([len(d) for d in encoded[c.name]])),
            "psnr": quality,
            "encode": [],
            "decode": {n: [] for n in [1, *threads]},
        }
    out = np.empty_like(images)
    with ThreadPoolExecutor(max(threads, default=1)) as pool:
        for _ in range(repeats):
            for c in found:  # round robin: passing load falls on every candidate alike
                r = results[c.name]
                r["encode"].append(encode_rate(images, c.encode))
                for n in r["decode"]:
                    r["decode"][n].append(decode_rate(encoded[c.name], out, c.decode_into, pool, n))
    for r in results.values():
        r["encode"] = statistics.median(r["encode"])
        r["decode"] = {n: statistics.median(rates) for n, rates in r["decode"].items()}
    return results


def shard_section(images: np.ndarray, shard_rows: int, threads: list[int], repeats: int) -> list[str]:
    """Reading whole shards: zarr's pipeline (array[a:b]) against augzarr.codecs.decode_shard, on the same bytes."""
    import zarr

    from augzarr import codecs

    spec = codecs.parse_spec(codecs.DEFAULT_LOSSY)
    rows = len(images) // shard_rows * shard_rows
    images = images[:rows]
    shape = images.shape[1:]
    with tempfile.TemporaryDirectory() as tmp:
        array = zarr.create_array(
            tmp, shape=images.shape, dtype="uint8", fill_value=0, **codecs.zarr_array_layout(spec, shard_rows, shape)
        )
        blobs = [codecs.encode_shard(spec, images[s : s + shard_rows], shard_rows) for s in range(0, rows, shard_rows)]
        for i, blob in enumerate(blobs):  # what the builder will do: the shard's bytes, written whole
            path = Path(tmp, array.metadata.encode_chunk_key((i, 0, 0, 0)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        out = np.empty_like(images)

        def via_zarr() -> float:
            start = time.perf_counter()
            for s in range(0, rows, shard_rows):
                out[s : s + shard_rows] = array[s : s + shard_rows]
            return rows / (time.perf_counter() - start)

        def fast(n: int) -> float:
            start = time.perf_counter()
            for i, blob in enumerate(blobs):
                codecs.decode_shard(spec, blob, out[i * shard_rows : (i + 1) * shard_rows], threads=n, key=f"shard {i}")
            return rows / (time.perf_counter() - start)

        zarr_rates, fast_rates = [], {n: [] for n in [1, *threads]}
        for _ in range(repeats):
            zarr_rates.append(via_zarr())
            for n in fast_rates:
                fast_rates[n].append(fast(n))
    base = statistics.median(zarr_rates)
    lines = [
        f"Whole shards of {shard_rows} rows, {spec.text}, {rows} rows, from memory (median of {repeats}):",
        "",
        "| read | images/s | x zarr's pipeline |",
        "| --- | ---: | ---: |",
        f"| zarr `array[a:b]` | {base:,.0f} | 1.00 |",
    ]
    for n, rates in fast_rates.items():
        rate = statistics.median(rates)
        lines.append(
            f"| augzarr.codecs.decode_shard, {n} thread{'s' if n > 1 else ''} | {rate:,.0f} | {rate / base:.2f} |"
        )
    return lines


def versions() -> str:
    found = [f"opencv {cv2.__version__}", f"pillow {Image.__version__}"]
    for name in ("simplejpeg", "imagecodecs", "zarr"):
        try:
            found.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    jpeg = [
        line.split(":", 1)[1].strip()
        for line in cv2.getBuildInformation().splitlines()
        if line.strip().startswith("JPEG:")
    ]
    return ", ".join(found) + (f" (opencv's JPEG: {jpeg[0]})" if jpeg else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--photos", type=Path, nargs="+", required=True, help="folders of photos (searched recursively)"
    )
    parser.add_argument("--size", type=int, default=224, help="stored image side (default 224)")
    parser.add_argument(
        "--limit", type=int, default=300, help="photos used, spread evenly over the sorted files (default 300)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="passes; each figure is the median (default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="*",
        default=[os.cpu_count() or 1],
        help="thread counts for the decode scaling (default: this machine's cores)",
    )
    parser.add_argument("--only", nargs="*", help="only candidates whose name holds one of these words")
    parser.add_argument(
        "--shard-rows", type=int, default=0, help="also compare whole-shard reads with this many rows a shard"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core per decode: OpenCV's own pool would blur the per-core rates
    threads = sorted({n for n in args.threads if n > 1})
    load_before = os.getloadavg()
    images = load_photos(args.photos, args.size, args.limit)
    found, skipped = candidates(args.only)
    results = measure(images, found, threads, args.repeats)
    shard_lines = shard_section(images, args.shard_rows, threads, args.repeats) if args.shard_rows else []
    load_after = os.getloadavg()

    raw = images[0].nbytes
    print(
        f"{len(images)} photos from {', '.join(map(str, args.photos))} at {args.size}x{args.size} ({raw:,} bytes raw a row); "
        f"{cpu_name()}, {os.cpu_count()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"median of {args.repeats}; {versions()}"
    )
    for note in skipped:
        print(f"skipped {note}")
    scaling = "".join(f" x{n} decode/s | scaling x{n} |" for n in threads)
    print(f"\n| codec | kB/row | x smaller | encode/s | decode/s | PSNR dB |{scaling}")
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: | ---: |" * len(threads))
    for name, r in results.items():
        quality = "exact" if r["psnr"] == float("inf") else f"{r['psnr']:.1f}"
        cells = "".join(f" {r['decode'][n]:,.0f} | {r['decode'][n] / (n * r['decode'][1]):.2f} |" for n in threads)
        print(
            f"| {name} | {r['bytes'] / 1000:.1f} | {raw / r['bytes']:.2f} | {r['encode']:,.0f} | {r['decode'][1]:,.0f} | {quality} |{cells}"
        )
    if shard_lines:
        print("\n" + "\n".join(shard_lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "photos": [str(p) for p in args.photos],
                    "size": args.size,
                    "rows": len(images),
                    "cpu": cpu_name(),
                    "cores": os.cpu_count(),
                    "load": [load_before, load_after],
                    "versions": versions(),
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
