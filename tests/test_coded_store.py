"""Issue #23 points 1-4: stores built with an image codec (build-aug --codec), through the commands and the readers.

Small real builds (16x16 JPEG files of an image folder, written here), each read back through augzarr's own readers
and through plain zarr; a raw store of the same arguments is the reference for rows, labels and order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import run_cli, write_image_folder

from augzarr.store_format import BUILD_DIR, chunk_key, open_store, read_chunks, rows_per_chunk, stored_chunk

CHUNK = 8


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("coded") / "images", {"ant": 9, "bee": 8, "cow": 7}, size=16)


def build(images: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "2",
        "--chunk-size",
        str(CHUNK),
        "--preview",
        "0",
        *extra,
        check=check,
    )


@pytest.fixture(scope="module")
def stores(images, tmp_path_factory) -> dict[str, Path]:
    """The same build stored raw, as jpeg:90 and as webp-lossless. Read them, never change them."""
    root = tmp_path_factory.mktemp("coded-stores")
    made = {}
    for codec in ("raw", "jpeg:90", "webp-lossless"):
        made[codec] = root / f"{codec.replace(':', '')}.zarr"
        build(images, made[codec], "--codec", codec, "--workers", "1")
    return made


def files(store: Path) -> dict[str, bytes]:
    found = {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    meta = json.loads(found.pop("zarr.json"))
    meta["attributes"].pop("built")  # when it finished: the one difference between two builds
    return {**found, "zarr.json": json.dumps(meta, sort_keys=True).encode()}


def decoded(store: Path, split: str = "train") -> np.ndarray:
    """A split's images as augzarr's reader decodes them, chunk by chunk."""
    opened = open_store(store)
    images = opened.images(split)
    rows, per = images.shape[0], rows_per_chunk(images)
    out = np.empty(images.shape, np.uint8)
    read_chunks(opened.storage, images, list(range(-(-rows // per))), [out[a : a + per] for a in range(0, rows, per)])
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_coded_stores_are_format_2_with_their_codec_and_hold_the_raw_stores_rows(stores):
    raw = zarr.open_group(str(stores["raw"]), mode="r")
    assert raw.attrs["format_version"] == 1 and "codec" not in raw.attrs  # format 1, key for key
    assert raw.attrs["identity"]["codec"] == "none" and "encoder" not in raw.attrs["identity"]
    assert [c["name"] for c in json.loads((stores["raw"] / "train/images/zarr.json").read_text())["codecs"]] == [
        "bytes"
    ]
    pixels = decoded(stores["raw"])
    for codec, library in (("jpeg:90", "simplejpeg"), ("webp-lossless", "pillow")):
        group = zarr.open_group(str(stores[codec]), mode="r")
        attrs = group.attrs
        assert attrs["format_version"] == 2 and attrs["codec"]["spec"] == codec
        assert library in attrs["codec"]["encoder"] and attrs["identity"]["encoder"] == attrs["codec"]["encoder"]
        assert attrs["identity"]["codec"] == codec and attrs["identity"]["format_version"] == 2
        for split in ("train", "val"):
            for name in ("labels", "source_index", "copy_index"):
                assert np.array_equal(group[f"{split}/{name}"][:], raw[f"{split}/{name}"][:])
        got = decoded(stores[codec])
        if codec == "webp-lossless":
            assert np.array_equal(got, pixels)
        else:
            assert 25 < psnr(got, pixels) < float("inf")  # 4:2:0 chroma on 16x16 images of sharp colour
        shown = run_cli("inspect-aug", "--store", str(stores[codec]), check=True).stdout
        assert "format v2" in shown and f"codec        {codec} (written by {library} " in shown


def test_the_same_bytes_whatever_the_worker_count(stores, images, tmp_path):
    two = tmp_path / "two.zarr"
    build(images, two, "--codec", "jpeg:90", "--workers", "2")
    assert files(two) == files(stores["jpeg:90"])


def test_plain_zarr_reads_a_coded_store_through_the_entry_point_without_importing_augzarr(stores, tmp_path):
    out = tmp_path / "read.npy"
    script = (  # zarr itself loads augzarr's codec, by the entry point named in the array's zarr.json
        "import sys, numpy, zarr\n"
        f"group = zarr.open_group({str(stores['jpeg:90'])!r}, mode='r')\n"
        "assert 'augzarr' not in sys.modules\n"
        "numpy.save(sys.argv[1], group['train/images'][:])\n"
        "assert 'augzarr.codecs' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=tmp_path)
    assert np.array_equal(np.load(out), decoded(stores["jpeg:90"]))


def test_verify_finds_a_flipped_byte_inside_the_compressed_data(stores, tmp_path):
    import shutil

    copy = tmp_path / "flipped.zarr"
    shutil.copytree(stores["jpeg:90"], copy)
    assert "verified" in run_cli("inspect-aug", "--store", str(copy), "--verify", check=True).stdout
    opened = open_store(copy)
    key = chunk_key(opened.images("train"), 1)
    data = bytearray((copy / key).read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the images' bytes, well before the index at the end
    (copy / key).write_bytes(bytes(data))
    result = run_cli("inspect-aug", "--store", str(copy), "--verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"train chunk 1 ({copy / key}) does not match its checksum from the build" in result.stdout + result.stderr


def test_a_damaged_index_is_one_line_from_the_stream(stores, tmp_path):
    import shutil

    from augzarr.errors import UserError
    from augzarr.trainer.stream import StoreStream

    copy = tmp_path / "index.zarr"
    shutil.copytree(stores["jpeg:90"], copy)
    opened = open_store(copy)
    key = chunk_key(opened.images("train"), 0)
    data = bytearray((copy / key).read_bytes())
    data[-10] ^= 0x01  # inside the shard's index
    (copy / key).write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"is damaged: its index does not match its CRC-32C.*inspect-aug --verify"):
        StoreStream(opened, "train", 4, shuffle=False)[0]


def test_the_stream_serves_a_raw_store_of_the_decoded_pixels_batch_for_batch(stores, tmp_path):
    """A coded store streams exactly what a raw store holding its decoded pixels streams: batches and order,
    whatever the decode threads."""
    import shutil

    from augzarr.trainer.stream import StoreStream

    twin = tmp_path / "twin.zarr"  # the raw store's rows, with the jpeg store's decoded pixels in its chunks
    shutil.copytree(stores["raw"], twin)
    coded_pixels = decoded(stores["jpeg:90"])
    raw_twin = open_store(twin)
    images = raw_twin.images("train")
    for c in range(-(-images.shape[0] // CHUNK)):
        data, _ = stored_chunk(raw_twin.codec, coded_pixels[c * CHUNK : (c + 1) * CHUNK], CHUNK)
        raw_twin.storage.write(chunk_key(images, c), data)
    coded = open_store(stores["jpeg:90"])
    for shuffle in (True, False):
        want = StoreStream(open_store(twin), "train", 5, shuffle=shuffle, seed=3, buffer_chunks=2)
        for threads in (1, 3):
            got = StoreStream(coded, "train", 5, shuffle=shuffle, seed=3, buffer_chunks=2, decode_threads=threads)
            for i in range(2 * want.batches_per_epoch if shuffle else want.batches_per_epoch):
                (x, y), (wx, wy) = got[i], want[i]
                assert np.array_equal(x, wx) and np.array_equal(y, wy), (shuffle, threads, i)
            got.close()
        want.close()


def test_the_torch_datasets_read_coded_stores(stores):
    pytest.importorskip("torch")
    from augzarr.torch import StoreDataset, StoreRows

    rows = StoreRows(str(stores["jpeg:90"]), "train")
    pixels = decoded(stores["jpeg:90"])
    picked = [5, 0, 17, 9]
    assert all(np.array_equal(image.numpy(), pixels[i]) for (image, _), i in zip(rows.__getitems__(picked), picked))
    coded = [b for b in StoreDataset(str(stores["jpeg:90"]), "train", batch_size=6, seed=1)]
    twin = [b for b in StoreDataset(str(stores["raw"]), "train", batch_size=6, seed=1)]
    assert len(coded) == len(twin) and all(np.array_equal(a[1], b[1]) for a, b in zip(coded, twin))


def test_kill_9_then_resume_gives_the_uninterrupted_store(tmp_path):
    from test_build import start_build, wait_for_chunks

    folder = write_image_folder(tmp_path / "imgs", {"a": 150, "b": 150}, size=16)
    args = ["--source", str(folder), "--copies", "5", "--chunk-size", "4", "--preview", "0", "--codec", "jpeg:80"]
    reference = tmp_path / "reference.zarr"
    run_cli("build-aug", *args, "--workers", "1", "--out", str(reference), check=True)
    out = tmp_path / "killed.zarr"
    process = start_build([*args, "--workers", "2", "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 20, process)
    os.killpg(process.pid, signal.SIGKILL)  # the build and its workers, as an OOM killer or a power cut would
    process.wait()
    assert (out / BUILD_DIR).is_dir()
    resumed = run_cli("build-aug", *args, "--workers", "2", "--out", str(out), check=True)
    assert resumed.stdout.startswith(f"resumed {out}")
    assert files(out) == files(reference)


def test_another_codec_is_another_build(stores, images, tmp_path):
    other = run_cli("build-aug", "--source", str(images), "--out", str(stores["jpeg:90"]), "--copies", "2")
    assert other.returncode == 1 and "built with other arguments" in other.stderr
    again = build(images, stores["jpeg:90"], "--codec", "jpeg:90")
    assert "already complete" in again.stdout
    changed = build(images, stores["jpeg:90"], "--codec", "jpeg:85", check=False)
    assert changed.returncode == 1 and 'codec "jpeg:90" -> "jpeg:85"' in changed.stderr


@pytest.mark.parametrize("spec", ["jpeg:0", "jpeg:101", "jpeg:q9", "png", "webp-lossless:50", "raw:1"])
def test_a_bad_codec_is_refused_in_one_line_and_nothing_written(images, tmp_path, spec):
    out = tmp_path / "never.zarr"
    result = build(images, out, "--codec", spec, check=False)
    line = result.stderr.strip()
    assert result.returncode == 2 and len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith(f"build-aug: error: --codec {spec!r}") and "jpeg:" in line  # names the right form
    assert not out.exists()


def test_auto_is_raw_for_small_images_and_jpeg_from_the_threshold():
    from augzarr.codecs import AUTO_LOSSY_FROM, DEFAULT_LOSSY, choose_spec

    assert choose_spec("auto", (32, 32, 3)).is_raw
    assert choose_spec("auto", (AUTO_LOSSY_FROM - 1, 500, 3)).is_raw
    assert choose_spec("auto", (AUTO_LOSSY_FROM, AUTO_LOSSY_FROM, 1)).text == DEFAULT_LOSSY
    assert choose_spec("raw", (224, 224, 3)).is_raw


def test_a_store_of_a_codec_this_augzarr_cannot_decode_is_refused_naming_it(stores, tmp_path):
    import shutil

    from augzarr.errors import UserError

    copy = tmp_path / "future.zarr"
    shutil.copytree(stores["jpeg:90"], copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["codec"]["spec"] = "jxl:7"
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r'codec "jxl:7", which this augzarr cannot decode.*upgrade augzarr'):
        open_store(copy)
    meta["attributes"]["codec"]["spec"] = "jpeg:85"  # not the quality its arrays were written with
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"train/images is not stored with codec jpeg:85 .* as the attributes say"):
        open_store(copy)
    meta["attributes"]["codec"] = None  # a format-2 store that says raw: its attributes contradict its arrays
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"format 2 with codec raw, which is format 1"):
        open_store(copy)


def test_train_streams_a_coded_store_and_its_model_card_names_the_codec(stores, tmp_path):
    run = tmp_path / "run"
    args = ["--store", str(stores["jpeg:90"]), "--model", "shallow", "--epochs", "1", "--batch-size", "16"]
    run_cli("train", *args, "--decode-threads", "2", "--out", str(run), check=True)
    card = (run / "model_card.md").read_text()
    assert "augzarr format 2" in card and "- images stored as: jpeg:90 (written by simplejpeg " in card
    refused = run_cli("train", *args, "--decode-threads", "0", "--out", str(tmp_path / "never"))
    assert refused.returncode == 2 and "--decode-threads" in refused.stderr and "Traceback" not in refused.stderr


def test_the_disk_check_expects_a_jpeg_store_at_half_the_raw_size_at_most(images, tmp_path):
    """24 images at 2048x2048 x 10,001 rows (about 1.4 TiB as JPEG): far beyond this disk either way; the estimate
    says how far. (Not 4096: the refusal comes after work on images of that size, 15 s there against 2 s.)"""
    from augzarr.codecs import parse_spec

    def needed(codec: str) -> float:
        args = ["--source", str(images), "--image-size", "2048", "--copies", "10000", "--codec", codec]
        result = run_cli("build-aug", *args, "--out", str(tmp_path / "s.zarr"))
        assert result.returncode == 1 and "GiB are free for --out" in result.stderr, result.stderr
        return float(result.stderr.split("needs about ")[1].split(" GiB")[0].replace(",", ""))

    assert needed("jpeg:90") == pytest.approx(needed("raw") / 2, rel=1e-3)
    # not measured to save at every size: taken as raw
    assert [parse_spec(c).least_saving for c in ("jpeg:95", "webp-lossless", "raw")] == [1, 1, 1]
    assert not (tmp_path / "s.zarr").exists()


def test_verify_decodes_every_image_even_where_the_checksums_agree(stores, tmp_path):
    """A chunk whose recorded CRC-32 was made to match its damage (a build that wrote a bad image) is still found."""
    import shutil
    import zlib

    copy = tmp_path / "undecodable.zarr"
    shutil.copytree(stores["jpeg:90"], copy)
    key = chunk_key(open_store(copy).images("train"), 2)
    data = bytearray((copy / key).read_bytes())
    data[1] ^= 0xFF  # row 0's JPEG start-of-image marker: no decoder takes it
    (copy / key).write_bytes(bytes(data))
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["chunk_crc32"]["train"][2] = f"{zlib.crc32(bytes(data)):08x}"
    (copy / "zarr.json").write_text(json.dumps(meta))
    result = run_cli("inspect-aug", "--store", str(copy), "--verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"chunk file {copy / key} is damaged: row 0 of the shard is not a decodable jpeg image" in (
        result.stdout + result.stderr
    )
