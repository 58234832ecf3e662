"""inspect-aug --verify: read every chunk back and check it against the checksums recorded at build time (a
coded chunk's stored bytes, then every image of it decoded), and check that the attributes agree with the arrays."""

from __future__ import annotations

import numpy as np

from augzarr import codecs
from augzarr.codecs import DamagedShardError
from augzarr.store_format import (
    OpenStore,
    chunk_count,
    chunk_key,
    chunk_problems,
    crc32_hex,
    read_chunks,
    read_objects,
    row_array_problems,
    rows_per_chunk,
    shape_problems,
)
from augzarr.wording import count

WINDOW = 8  # chunks fetched together (concurrently from an object store)


def verify_store(store: OpenStore) -> tuple[int, list[str]]:
    """(chunks checked, problems found); no problems means every byte is as built."""
    attrs, spec = store.attrs, store.codec
    damaged = chunk_problems(store)
    damaged_keys = {key for key, _ in damaged}
    problems = shape_problems(store) + [message for _, message in damaged] + row_array_problems(store)
    recorded = attrs.chunk_crc32 or {}
    checked = 0
    for split in attrs.splits:
        images = store.images(split)
        rows, chunk_rows = images.shape[0], rows_per_chunk(images)
        crcs = recorded.get(split, [])
        if len(crcs) != chunk_count(images):
            problems.append(
                f"{split}: {count(len(crcs), 'chunk checksum')} recorded for {count(chunk_count(images), 'chunk')}"
            )
            continue
        intact = [c for c in range(len(crcs)) if chunk_key(images, c) not in damaged_keys]
        for at in range(0, len(intact), WINDOW):
            chunks = intact[at : at + WINDOW]
            blocks = [np.empty((min(chunk_rows, rows - c * chunk_rows), *images.shape[1:]), np.uint8) for c in chunks]
            if spec.is_raw:
                read_chunks(store.storage, images, chunks, blocks)
                found = [crc32_hex(block) for block in blocks]
            else:
                keys = [chunk_key(images, c) for c in chunks]
                datas = read_objects(store.storage, keys)
                found = [codecs.crc32_hex(data) for data in datas]
            for i, (c, crc) in enumerate(zip(chunks, found)):
                checked += 1
                where = store.storage.where(chunk_key(images, c))
                if crc != crcs[c]:
                    problems.append(f"{split} chunk {c} ({where}) does not match its checksum from the build")
                elif not spec.is_raw:  # stored as built; and every image must decode (a wrong build would not)
                    problems += decode_problems(spec, datas[i], blocks[i], chunk_rows, where)
    return checked, problems


def decode_problems(spec, data, out: np.ndarray, chunk_rows: int, where: str) -> list[str]:
    try:
        codecs.decode_shard(spec, data, out, chunk_rows, key=where)
    except DamagedShardError as exc:
        return [str(exc)]
    return []
