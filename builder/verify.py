"""inspect-aug --verify: read every chunk back and check it against the checksums recorded at build time,
and check that the attributes agree with the arrays."""

from __future__ import annotations

import numpy as np

from augzarr.store_format import (
    OpenStore,
    chunk_key,
    chunk_problems,
    crc32_hex,
    read_chunks,
    row_array_problems,
    shape_problems,
)
from augzarr.wording import count

WINDOW = 8  # chunks fetched together (concurrently from an object store)


def verify_store(store: OpenStore) -> tuple[int, list[str]]:
    """(chunks checked, problems found); no problems means every byte is as built."""
    attrs = store.attrs
    damaged = chunk_problems(store)
    damaged_keys = {key for key, _ in damaged}
    problems = shape_problems(store) + [message for _, message in damaged] + row_array_problems(store)
    recorded = attrs.chunk_crc32 or {}
    checked = 0
    for split in attrs.splits:
        images = store.images(split)
        rows, chunk_rows = images.shape[0], images.chunks[0]
        crcs = recorded.get(split, [])
        if len(crcs) != images.cdata_shape[0]:
            problems.append(
                f"{split}: {count(len(crcs), 'chunk checksum')} recorded for {count(images.cdata_shape[0], 'chunk')}"
            )
            continue
        intact = [c for c in range(len(crcs)) if chunk_key(images, c) not in damaged_keys]
        for at in range(0, len(intact), WINDOW):
            chunks = intact[at : at + WINDOW]
            blocks = [np.empty((min(chunk_rows, rows - c * chunk_rows), *images.shape[1:]), np.uint8) for c in chunks]
            read_chunks(store.storage, images, chunks, blocks)
            for c, block in zip(chunks, blocks):
                checked += 1
                if crc32_hex(block) != crcs[c]:
                    problems.append(
                        f"{split} chunk {c} ({store.storage.where(chunk_key(images, c))}) does not match its checksum from the build"
                    )
    return checked, problems
