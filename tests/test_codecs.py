"""augzarr.codecs: --codec specs, one image's bytes, the zarr codec through its entry point, whole shards."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import zarr

from augzarr import codecs
from augzarr.codecs import DamagedShardError, decode_shard, encode_shard, parse_spec
from augzarr.errors import OptionError

ENCODED = ["jpeg:90", "webp-lossless"]


def photos(n: int, size: tuple[int, int] = (24, 32), channels: int = 3, seed: int = 0) -> np.ndarray:
    """Photo-like images: colours that change smoothly (a random 3x4 grid, resized) and texture in the brightness,
    so JPEG has work to do and its 4:2:0 chroma loses what it loses on photos; channels 1: grayscale."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        colours = cv2.resize(rng.uniform(30, 225, (3, 4, 3)), size[::-1], interpolation=cv2.INTER_CUBIC)
        images.append(np.clip(colours + rng.normal(0, 8, (*size, 1)), 0, 255).astype(np.uint8))
    images = np.stack(images)
    return images[..., :1] if channels == 1 else images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def zarr_images(path, spec, images: np.ndarray, shard_rows: int) -> zarr.Array:
    """An images array written by zarr itself, laid out as augzarr lays out its images arrays."""
    array = zarr.create_array(
        str(path),
        shape=images.shape,
        dtype="uint8",
        fill_value=0,
        config={"write_empty_chunks": True},
        **codecs.zarr_array_layout(spec, shard_rows, images.shape[1:]),
    )
    array[:] = images
    return array


def stored(array: zarr.Array, chunk: int, root) -> bytes:
    return (root / array.metadata.encode_chunk_key((chunk, 0, 0, 0))).read_bytes()


# -- specs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name, quality",
    [
        ("raw", "raw", None),
        ("jpeg", "jpeg", codecs.DEFAULT_JPEG_QUALITY),
        ("jpeg:75", "jpeg", 75),
        ("JPEG:1", "jpeg", 1),
        ("jpeg:100", "jpeg", 100),
        ("webp-lossless", "webp-lossless", None),
        (" WebP-Lossless", "webp-lossless", None),
    ],
)
def test_specs_as_the_cli_spells_them(text, name, quality):
    spec = parse_spec(text)
    assert (spec.name, spec.quality) == (name, quality)
    assert parse_spec(spec.text) == spec  # the recorded spelling reads back as the same codec


@pytest.mark.parametrize(
    "text",
    [
        "gif",
        "png",
        "webp",
        "",
        "jpeg:0",
        "jpeg:101",
        "jpeg:",
        "jpeg:9.5",
        "jpeg:-5",
        "jpeg:high",
        "webp-lossless:6",
        "raw:1",
        "jpeg:90:1",
        None,
        90,
    ],
)
def test_bad_specs_refused_in_one_line_naming_the_option_and_the_choices(text):
    with pytest.raises(OptionError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert "--codec" in message and "\n" not in message
    assert "jpeg" in message


def test_zarr_configuration_round_trip_and_refusals():
    for text in ENCODED:
        codec = codecs.ImageCodec.from_spec(parse_spec(text))
        assert codecs.ImageCodec.from_dict(json.loads(json.dumps(codec.to_dict()))) == codec
    assert codecs.ImageCodec.from_spec(parse_spec("jpeg:80")) != codecs.ImageCodec.from_spec(parse_spec("jpeg:90"))
    for config in ({"format": "gif"}, {"format": "raw"}, {"format": "jpeg"}, {"format": "jpeg", "quality": 0}, {}):
        with pytest.raises(ValueError, match="augzarr.image"):
            codecs.ImageCodec.from_dict({"name": "augzarr.image", "configuration": config})
    assert not codecs.ImageCodec.from_dict(
        {"name": "augzarr.image", "configuration": {"format": "webp-lossless", "method": 0, "effort": 0}}
    ).spec.quality


def test_settings_augzarr_does_not_write_still_decode_but_are_not_encoded(tmp_path):
    """A store from another augzarr (other settings) decodes: decoding needs only the format."""
    image = photos(1)[0]
    for config, text in (
        ({"format": "webp-lossless", "method": 9, "effort": 0}, "webp-lossless"),
        ({"format": "jpeg", "quality": 90, "subsampling": "3:1:1"}, "jpeg"),
    ):
        other = codecs.spec_from_zarr_config(config)
        out = np.empty_like(image)
        codecs.decode_image_into(other, codecs.encode_image(parse_spec(text), image), out)
        with pytest.raises(ValueError, match=f"cannot encode {text}"):
            codecs.encode_image(other, image)


# -- one image --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("text", ["raw", "webp-lossless"])
def test_lossless_round_trip_is_exact(text, channels):
    spec = parse_spec(text)
    for image in photos(3, channels=channels):
        out = np.empty_like(image)
        codecs.decode_image_into(spec, codecs.encode_image(spec, image), out)
        assert np.array_equal(out, image)


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_round_trip_within_its_quality(channels):
    images = photos(4, channels=channels)
    sizes, quality = {}, {}
    for q in (50, 90):
        spec = parse_spec(f"jpeg:{q}")
        encoded = [codecs.encode_image(spec, image) for image in images]
        decoded = np.empty_like(images)
        for data, out in zip(encoded, decoded):
            codecs.decode_image_into(spec, data, out)
        sizes[q], quality[q] = sum(map(len, encoded)), psnr(images, decoded)
    assert quality[90] > 32 and quality[50] > 26
    assert quality[90] > quality[50] and sizes[90] > sizes[50]  # the quality is the one asked for


def test_jpeg_keeps_the_colours_in_order():
    """OpenCV works in BGR: a pure red image must come back red, and be red to any other JPEG reader."""
    import io

    from PIL import Image

    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    spec = parse_spec("jpeg:95")
    data = codecs.encode_image(spec, red)
    out = np.empty_like(red)
    codecs.decode_image_into(spec, data, out)
    assert out[..., 0].min() > 240 and out[..., 1:].max() < 15
    assert np.asarray(Image.open(io.BytesIO(data)))[..., 0].min() > 240


def test_encode_refuses_what_is_not_an_image():
    spec = parse_spec("webp-lossless")
    for bad in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            codecs.encode_image(spec, bad)


def test_encoder_versions_name_the_library():
    assert codecs.encoder_versions("raw") == {}
    import PIL
    import simplejpeg

    assert codecs.encoder_versions("jpeg") == {"simplejpeg": simplejpeg.__version__}
    versions = codecs.encoder_versions("webp-lossless")
    assert versions["pillow"] == PIL.__version__ and versions["libwebp"][0].isdigit()


# -- shards -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("text", ENCODED)
def test_shard_bytes_are_those_zarr_writes_and_zarr_reads_them(tmp_path, text, channels):
    """Every shard, the last one short (10 rows in shards of 4), the same bytes as zarr's sharding codec writes."""
    spec = parse_spec(text)
    images = photos(10, channels=channels)
    images[5] = 0  # an all-black row is written like any other (zarr's write_empty_chunks=True, as augzarr writes)
    array = zarr_images(tmp_path / "a.zarr", spec, images, shard_rows=4)
    assert codecs.array_spec(zarr.open_array(str(tmp_path / "a.zarr"))) == spec
    for chunk, start in enumerate(range(0, 10, 4)):
        block = images[start : start + 4]
        data = encode_shard(spec, block, 4)
        assert data == stored(array, chunk, tmp_path / "a.zarr")
        out = np.empty_like(block)
        decode_shard(spec, data, out, shard_rows=4, key="k")
        assert np.array_equal(out, array[start : start + 4])
    if spec.lossless:
        assert np.array_equal(array[:], images)
    else:
        assert psnr(array[:], images) > 32


@pytest.mark.parametrize("text", ENCODED)
def test_shards_are_deterministic_whatever_the_threads(text):
    spec = parse_spec(text)
    block = photos(9)
    one = encode_shard(spec, block, 16, threads=1)
    assert encode_shard(spec, block, 16, threads=1) == one
    assert encode_shard(spec, block, 16, threads=4) == one
    outs = [decode_shard(spec, one, np.empty_like(block), shard_rows=16, threads=n) for n in (1, 4, None)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_a_plain_zarr_process_decodes_through_the_entry_point(tmp_path):
    """zarr.open_group(path)["train/images"][i] in a process that never imports augzarr: zarr loads the codec itself."""
    images = photos(6)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    train = group.require_group("train")
    spec = parse_spec("webp-lossless")
    array = train.create_array(
        "images", shape=images.shape, dtype="uint8", fill_value=0, **codecs.zarr_array_layout(spec, 4, images.shape[1:])
    )
    for chunk, start in enumerate(range(0, 6, 4)):  # written by the fast path, as the builder will
        path = tmp_path / "s.zarr" / "train" / "images" / array.metadata.encode_chunk_key((chunk, 0, 0, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_shard(spec, images[start : start + 4], 4))
    np.save(tmp_path / "expected.npy", images)
    script = f"""
import sys, numpy as np, zarr
group = zarr.open_group({str(tmp_path / "s.zarr")!r}, mode="r")
assert not any(m.startswith("augzarr") for m in sys.modules), "augzarr imported before the read"
expected = np.load({str(tmp_path / "expected.npy")!r})
assert np.array_equal(group["train/images"][5], expected[5])
assert np.array_equal(group["train/images"][:], expected)
assert "augzarr.codecs" in sys.modules  # loaded by zarr, through the entry point
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def rewrite_index(data: bytes, shard_rows: int, change) -> bytes:
    """The shard with its index changed by change(entries) and a valid CRC-32C again: damage the checksum misses."""
    size = codecs.index_size(shard_rows)
    entries = np.frombuffer(data[-size:-4], "<u8").reshape(shard_rows, 2).copy()
    change(entries)
    index = entries.astype("<u8").tobytes()
    return data[:-size] + index + codecs._crc32c(index)


def test_a_damaged_shard_is_refused_naming_its_key():
    spec = parse_spec("jpeg:90")
    block = photos(5)
    data = encode_shard(spec, block, 8)
    key = "store/train/images/c/3/0/0/0"
    size = codecs.index_size(8)

    def refused(damaged: bytes, words: str, rows: int = 5):
        with pytest.raises(DamagedShardError, match=words) as caught:
            decode_shard(spec, damaged, np.empty((rows, *block.shape[1:]), np.uint8), shard_rows=8, threads=2, key=key)
        assert key in str(caught.value) and "\n" not in str(caught.value)

    refused(data[: size - 1], "too short")
    refused(data[:-1], "CRC-32C")  # truncated by a byte: the index's checksum no longer matches
    flipped = bytearray(data)
    flipped[-size + 3] ^= 0x10  # inside the index
    refused(bytes(flipped), "CRC-32C")

    def swap(entries):
        entries[[1, 2]] = entries[[2, 1]]

    refused(rewrite_index(data, 8, swap), "row 1")

    def drop(entries):
        entries[3] = codecs.NO_CHUNK

    refused(rewrite_index(data, 8, drop), "row 3 of the shard has no bytes")

    def past_the_end(entries):
        entries[4, 1] += 10**6

    refused(rewrite_index(data, 8, past_the_end), "row 4")
    # a flipped byte that leaves a JPEG undecodable: the start-of-image marker of row 2
    start = int(np.frombuffer(data[-size:-4], "<u8").reshape(8, 2)[2, 0])
    flipped = bytearray(data)
    flipped[start + 1] ^= 0xFF
    refused(bytes(flipped), "row 2 of the shard is not a decodable jpeg")


@pytest.mark.parametrize("text", ENCODED)
def test_a_flipped_byte_inside_a_compressed_image_is_caught_by_the_crc_and_by_decoding(text):
    """Flip one byte in the middle of row 1's compressed bytes: the stored bytes' CRC-32 changes, and the row either
    fails to decode (named) or decodes to other pixels than the intact shard's; the rows around it are untouched."""
    spec = parse_spec(text)
    block = photos(3)
    data = encode_shard(spec, block, 4)
    entries = np.frombuffer(data[-codecs.index_size(4) : -4], "<u8").reshape(4, 2)
    offset, length = (int(v) for v in entries[1])
    row = data[offset : offset + length]
    # the compressed pixels: past JPEG's tables (after the start-of-scan header), past WebP's RIFF and VP8L headers
    sos = row.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(row[sos + 2 : sos + 4], "big") if spec.name == "jpeg" else 25
    flipped = bytearray(data)
    flipped[offset + (start + length) // 2] ^= 0x01
    assert codecs.crc32_hex(bytes(flipped)) != codecs.crc32_hex(data) == f"{zlib.crc32(data):08x}"
    good = decode_shard(spec, data, np.empty_like(block), shard_rows=4)
    try:
        bad = decode_shard(spec, bytes(flipped), np.empty_like(block), shard_rows=4, key="k")
    except DamagedShardError as exc:
        assert "row 1" in str(exc) and "k" in str(exc)
    else:
        assert not np.array_equal(bad[1], good[1])
        assert np.array_equal(bad[[0, 2]], good[[0, 2]])


def test_array_spec_reads_the_layout_back(tmp_path):
    images = photos(4)
    for text in ("raw", *ENCODED):
        spec = parse_spec(text)
        zarr_images(tmp_path / text.replace(":", "_"), spec, images, 2)
        assert codecs.array_spec(zarr.open_array(str(tmp_path / text.replace(":", "_")))) == spec
    other = zarr.create_array(str(tmp_path / "zstd"), shape=images.shape, chunks=(2, 24, 32, 3), dtype="uint8")
    with pytest.raises(ValueError, match="not raw nor one image a chunk"):
        codecs.array_spec(other)


def test_the_codec_refuses_chunks_of_several_images(tmp_path):
    with pytest.raises(ValueError, match="one image a chunk"):
        zarr.create_array(
            str(tmp_path / "x"),
            shape=(4, 8, 8, 3),
            chunks=(2, 8, 8, 3),
            dtype="uint8",
            serializer=codecs.ImageCodec.from_spec(parse_spec("webp-lossless")),
            compressors=None,
        )


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX")
def test_a_forked_child_decodes_on_threads_of_its_own():
    """A process forked after this one decoded on threads (a build's or a stream's workers) has none of its threads:
    it must start its own, not queue work for threads that do not exist in it (a hang)."""
    import multiprocessing

    spec = parse_spec("webp-lossless")
    block = photos(6)
    data = encode_shard(spec, block, 6)
    for _ in range(20):  # the parent's threads exist now, and wait idle
        decode_shard(spec, data, np.empty_like(block), threads=2)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(decode_shard, (spec, data, np.empty_like(block)), {"threads": 2})
        assert np.array_equal(result.get(timeout=60), block)


def shard_of(rows: list[bytes], shard_rows: int) -> bytes:
    """A shard holding these bytes as its rows, its index right: how a writer with a bug would leave it."""
    index, offset = [], 0
    for data in rows:
        index.append((offset, len(data)))
        offset += len(data)
    index += [(codecs.NO_CHUNK, codecs.NO_CHUNK)] * (shard_rows - len(rows))
    packed = np.array(index, "<u8").tobytes()
    return b"".join(rows) + packed + codecs._crc32c(packed)


@pytest.mark.parametrize("text", ENCODED)
def test_a_row_of_another_size_or_cut_short_is_refused(text):
    """Damage the index cannot see: a row encoded at another size, a row cut short (libjpeg would fill the rest grey
    and only warn: simplejpeg's strict mode makes that an error)."""
    spec = parse_spec(text)
    block = photos(3)
    rows = [codecs.encode_image(spec, image) for image in block]
    assert np.array_equal(
        decode_shard(spec, shard_of(rows, 4), np.empty_like(block), shard_rows=4)[0],
        decode_shard(spec, encode_shard(spec, block, 4), np.empty_like(block), shard_rows=4)[0],
    )
    for size in ((16, 16), (32, 40)):
        other = codecs.encode_image(spec, photos(1, size=size)[0])
        with pytest.raises(
            DamagedShardError,
            match=rf"row 1 of the shard decodes to a \[{size[0]}, {size[1]}, 3\] image, not \[24, 32, 3\]",
        ):
            decode_shard(spec, shard_of([rows[0], other, rows[2]], 4), np.empty_like(block), shard_rows=4, key="k")
    cut = rows[2][: len(rows[2]) * 2 // 3]
    with pytest.raises(DamagedShardError, match="row 2 of the shard is not a decodable"):
        decode_shard(spec, shard_of([rows[0], rows[1], cut], 4), np.empty_like(block), shard_rows=4, key="k")


def test_when_a_shard_fails_no_thread_still_writes_into_the_batch():
    """Row 0 is damaged: the error comes only once the other threads have finished their rows, so the caller may
    reuse its array at once (a prefetching stream hands it to the next shard)."""
    spec = parse_spec("jpeg:90")
    block = photos(40, size=(64, 64))
    rows = [codecs.encode_image(spec, image) for image in block]
    expected = decode_shard(spec, shard_of(rows, 40), np.empty_like(block), threads=1)
    out = np.zeros_like(block)
    with pytest.raises(DamagedShardError, match="row 0"):
        decode_shard(spec, shard_of([b"garbage", *rows[1:]], 40), out, threads=2)
    assert np.array_equal(out[20:], expected[20:])
