"""inspect-aug's summary of a store: what is in it, how it was made, what it costs on disk."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from augzarr.store_format import SPLITS, OpenStore, describe_codec, rows_per_chunk
from augzarr.wording import count


def summarize(store: OpenStore) -> dict:
    attrs = store.attrs
    counts = {
        split: np.bincount(store.labels(split), minlength=attrs.n_classes).tolist()
        for split in SPLITS
        if split in attrs.splits
    }
    disk = store.size()
    raw = store.raw_image_bytes()
    return {
        "path": store.location,
        "complete": attrs.complete,
        "format_version": attrs.format_version,
        "image_shape": attrs.image_shape,
        "class_names": attrs.class_names,
        "counts": counts,
        "copies": attrs.copies,
        "include_original": attrs.include_original,
        "val_fraction": attrs.val_fraction,
        "seed": attrs.seed,
        "codec": attrs.codec_spec.text,
        "encoder": (attrs.codec or {}).get("encoder", {}),
        "chunk_rows": attrs.chunk_rows,  # as requested; a split smaller than that is one chunk of its size
        "split_chunk_rows": {split: rows_per_chunk(store.images(split)) for split in counts},
        "policy": attrs.policy["name"],
        "policy_transforms": [
            t["__class_fullname__"] for t in attrs.policy["albumentations"]["transform"]["transforms"]
        ],
        "staging": (attrs.identity or {}).get("staging"),  # copies cut above the stored size (--stage-scale)
        "source": asdict(attrs.source),
        "layout": attrs.source.layout,  # an image folder's: "flat" or "split (train, ...)"
        "bytes_on_disk": disk,
        "raw_image_bytes": raw,
        "compression_ratio": raw / disk if disk else None,
        "versions": attrs.versions,
        "built": attrs.built or {},
        "skipped": attrs.skipped,
        "license": attrs.license,
        "provenance": attrs.provenance,
    }


def format_summary(s: dict) -> str:
    src = s["source"]
    lines = [
        f"store        {s['path']}  ({'complete' if s['complete'] else 'INCOMPLETE'}, format v{s['format_version']})",
        f"images       {'x'.join(map(str, s['image_shape']))} uint8, {count(s['chunk_rows'], 'row')} per chunk"
        + "".join(f", {split} {rows}" for split, rows in s["split_chunk_rows"].items() if rows != s["chunk_rows"]),
        f"codec        {describe_codec(s['codec'], s['encoder'])}",
        f"source       {src['kind']} {src['location']} ({src['train_count']} train, {src['test_count']} test"
        + (f", {src['val_count']} val" if src.get("val_count") else "")
        + (f", limit {src['limit']}" if src.get("limit") else "")
        + f") {src['content_hash'][:23]}...",
        f"policy       {s['policy']}: {' + '.join(s['policy_transforms'])}"
        + (
            f"; copies cut from each image staged at up to {s['staging']['scale']:g}x the stored size"
            if s.get("staging")
            else ""
        ),
        f"copies       {s['copies']} per image, originals {'included' if s['include_original'] else 'not included'}, seed {s['seed']}, "
        + (
            f"val fraction {s['val_fraction']}" if s["val_fraction"] is not None else "val from the source's own folder"
        ),
        f"on disk      {human_bytes(s['bytes_on_disk'])} for {human_bytes(s['raw_image_bytes'])} of pixels (ratio {s['compression_ratio']:.2f})",
    ]
    for name in ("license", "provenance"):  # the user's words, every line kept, aligned under the first
        text = s.get(name) or f"not recorded (build-aug --{name} TEXT)"
        lines.append(f"{name:<12} " + text.replace("\n", "\n" + " " * 13))
    if src.get("layout"):
        lines.insert(3, f"layout       {src['layout']}")
    if src.get("ignored"):
        lines.append(
            f"not used     {count(len(src['ignored']), 'file or folder', 'files or folders')} of the source (see the store's attrs)"
        )
    if s["skipped"]:
        lines.append(
            f"skipped      {count(len(s['skipped']), 'bad image')} (--skip-bad): "
            + "; ".join(e["file"] for e in s["skipped"][:3])
            + (" ..." if len(s["skipped"]) > 3 else "")
        )
    splits = list(s["counts"])
    width = max(len(c) for c in s["class_names"] + ["class", "total"])
    lines.append("")
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{n:>9}" for n in splits))
    for i, name in enumerate(s["class_names"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{s['counts'][n][i]:>9,}" for n in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(s['counts'][n]):>9,}" for n in splits))
    return "\n".join(lines)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"
