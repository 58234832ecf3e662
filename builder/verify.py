"""inspect-aug --verify: read every chunk back and check it against the checksums recorded at build time,
and check that the attributes agree with the arrays."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import zarr

from .store import chunk_file_problems, chunk_path, row_array_problems, shape_problems


def verify_store(path: Path, group: zarr.Group) -> tuple[int, list[str]]:
    """(chunks checked, problems found); no problems means every byte is as built."""
    attrs = dict(group.attrs)
    splits = attrs.get("splits", [])
    damaged = chunk_file_problems(path, group, splits)
    damaged_files = {file for file, _ in damaged}
    problems = shape_problems(group, attrs) + [message for _, message in damaged] + row_array_problems(path, group, attrs)
    recorded = attrs.get("chunk_crc32", {})
    checked = 0
    for split in splits:
        images = group[f"{split}/images"]
        rows = images.shape[0]
        crcs = recorded.get(split, [])
        if len(crcs) != images.cdata_shape[0]:
            problems.append(f"{split}: {len(crcs)} chunk checksums recorded for {images.cdata_shape[0]} chunks")
            continue
        chunk_rows = images.chunks[0]
        for c, expected in enumerate(crcs):
            file = chunk_path(path, images, c)
            if file in damaged_files:
                continue
            block = np.ascontiguousarray(images[c * chunk_rows:min((c + 1) * chunk_rows, rows)])
            checked += 1
            if f"{zlib.crc32(block):08x}" != expected:
                problems.append(f"{split} chunk {c} ({file}) does not match its checksum from the build")
    return checked, problems
