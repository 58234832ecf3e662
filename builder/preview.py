"""Previews: the first K training images of a store, original then copies, as JPEG
files and one labelled contact sheet, read back from the store itself so they
show exactly what training will see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont

PREFIX = "cifar"  # the notebook's save_prefix
SHEET_NAME = "contact_sheet.png"
MIN_CELL = 96  # small images are enlarged (nearest neighbour) to at least this many pixels
LABEL_WIDTH = 120
HEADER_HEIGHT = 24


def preview_rows(group: zarr.Group, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(source index, copy indices, store rows) for the first `count` training sources, copies in order."""
    train = group["train"]
    sources = train["source_index"][:]
    copies = train["copy_index"][:]
    chosen = np.unique(sources)[:count]
    result = []
    for s in chosen:
        rows = np.flatnonzero(sources == s)
        rows = rows[np.argsort(copies[rows], kind="stable")]
        result.append((int(s), copies[rows], rows))
    return result


def preview_name(source: int, copy: int) -> str:
    return f"{PREFIX}_{source}_{copy}.jpeg"


def missing_previews(group: zarr.Group, count: int, out_dir: Path) -> list[Path]:
    """The preview files write_previews would write that are not in out_dir."""
    expected = [out_dir / preview_name(source, int(copy)) for source, copies, _ in preview_rows(group, count) for copy in copies]
    return [path for path in [*expected, out_dir / SHEET_NAME] if not path.is_file()]


def write_previews(group: zarr.Group, count: int, out_dir: Path) -> list[Path]:
    """Write <prefix>_<source>_<copy>.jpeg files and the contact sheet; return the paths written."""
    if count <= 0:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob(f"{PREFIX}_*_*.jpeg"), out_dir / SHEET_NAME]:
        stale.unlink(missing_ok=True)
    class_names = group.attrs["class_names"]
    images = group["train/images"]
    labels = group["train/labels"]
    written, sheet_rows = [], []
    for source, copy_numbers, rows in preview_rows(group, count):
        pictures = images.get_orthogonal_selection((rows,))
        for copy, picture in zip(copy_numbers, pictures):
            path = out_dir / preview_name(source, copy)
            Image.fromarray(picture).save(path, quality=95)
            written.append(path)
        sheet_rows.append((f"{class_names[int(labels[rows[0]])]}\n#{source}", copy_numbers, pictures))
    if sheet_rows:
        sheet = contact_sheet(sheet_rows)
        sheet.save(out_dir / SHEET_NAME)
        written.append(out_dir / SHEET_NAME)
    return written


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> Image.Image:
    """A row per source image, labelled with its class, its copies left to right."""
    height, width = rows[0][2].shape[1:3]
    zoom = max(1, -(-MIN_CELL // max(height, width)))
    cell_h, cell_w = height * zoom + 4, width * zoom + 4
    columns = max(len(r[1]) for r in rows)
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * cell_w, HEADER_HEIGHT + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, copy in enumerate(rows[0][1]):
        draw.text((LABEL_WIDTH + c * cell_w + 4, 6), "original" if copy == 0 else f"copy {copy}", fill="black", font=font)
    for r, (label, copy_numbers, pictures) in enumerate(rows):
        top = HEADER_HEIGHT + r * cell_h
        draw.multiline_text((6, top + cell_h // 3), label, fill="black", font=font)
        for c, picture in enumerate(pictures):
            tile = Image.fromarray(picture).resize((width * zoom, height * zoom), Image.NEAREST)
            sheet.paste(tile, (LABEL_WIDTH + c * cell_w + 2, top + 2))
    return sheet
