"""Previews: the first K training images of a store, original then copies, as JPEG
files and one labelled contact sheet, read back from the store itself so they
show exactly what training will see."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont

from augzarr.fonts import dejavu_path, font_with_glyphs

PREFIX = "cifar"  # the notebook's save_prefix
SHEET_NAME = "contact_sheet.png"
MIN_CELL = 96  # small images are enlarged (nearest neighbour) to at least this many pixels
LABEL_WIDTH = 120  # at least; widened to the widest label line
MAX_LABEL_WIDTH = 320  # a longer class name wraps onto more lines (the row grows to fit them)
HEADER_HEIGHT = 24
FONT_SIZE = 13


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
    expected = [
        out_dir / preview_name(source, int(copy)) for source, copies, _ in preview_rows(group, count) for copy in copies
    ]
    return [path for path in [*expected, out_dir / SHEET_NAME] if not path.is_file()]


def write_previews(group: zarr.Group, count: int, out_dir: Path) -> list[Path]:
    """Write <prefix>_<source>_<copy>.jpeg files and the contact sheet; return the paths written."""
    if count <= 0:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob(f"{PREFIX}_*_*.jpeg"), out_dir / SHEET_NAME]:
        stale.unlink(missing_ok=True)
    written = []
    chosen = preview_rows(group, count)
    rows = sheet_rows(group, chosen)
    for (source, _, _), (_, copy_numbers, pictures) in zip(chosen, rows):
        for copy, picture in zip(copy_numbers, pictures):
            path = out_dir / preview_name(source, copy)
            as_image(picture).save(path, quality=95)
            written.append(path)
    if rows:
        contact_sheet(rows).save(out_dir / SHEET_NAME)
        written.append(out_dir / SHEET_NAME)
    return written


def sheet_rows(
    group: zarr.Group, chosen: list[tuple[int, np.ndarray, np.ndarray]]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, copy numbers, pictures) of the sources preview_rows chose: the contact sheet's rows."""
    class_names = group.attrs["class_names"]
    images, labels = group["train/images"], group["train/labels"]
    return [
        (f"{class_names[int(labels[rows[0]])]}\n#{source}", copy_numbers, images.get_orthogonal_selection((rows,)))
        for source, copy_numbers, rows in chosen
    ]


def as_image(picture: np.ndarray) -> Image.Image:
    """A stored row as a PIL image: RGB, or grayscale (mode L) for one channel, which PIL takes as [H, W]."""
    return Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> Image.Image:
    """A row per source image, labelled with its class, its copies left to right. The labels are
    drawn whole, in a font with their glyphs: the label column widens (and long names wrap) to fit."""
    height, width = rows[0][2].shape[1:3]
    zoom = max(1, -(-MIN_CELL // max(height, width)))
    cell_h, cell_w = height * zoom + 4, width * zoom + 4
    columns = max(len(r[1]) for r in rows)
    labels = []
    for label, _, _ in rows:
        font = label_font(label)
        lines = [piece for line in label.split("\n") for piece in wrap_to_width(line, font, MAX_LABEL_WIDTH)]
        labels.append((font, "\n".join(lines)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.multiline_textbbox((0, 0), text, font=font) for font, text in labels]
    label_width = max(LABEL_WIDTH, max(box[2] for box in boxes) + 12)
    row_h = max(cell_h, max(box[3] for box in boxes) + 8)
    sheet = Image.new("RGB", (label_width + columns * cell_w, HEADER_HEIGHT + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    header_font = label_font("original copy 0123456789")
    for c, copy in enumerate(rows[0][1]):
        draw.text(
            (label_width + c * cell_w + 4, 4),
            "original" if copy == 0 else f"copy {copy}",
            fill="black",
            font=header_font,
        )
    for r, ((font, text), box, (_, _copy_numbers, pictures)) in enumerate(zip(labels, boxes, rows)):
        top = HEADER_HEIGHT + r * row_h
        draw.multiline_text((6, top + max(2, (row_h - box[3]) // 2)), text, fill="black", font=font)
        for c, picture in enumerate(pictures):
            tile = as_image(picture).resize((width * zoom, height * zoom), Image.NEAREST)
            sheet.paste(tile, (label_width + c * cell_w + 2, top + 2))
    return sheet


def wrap_to_width(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """text cut into lines no wider than max_width, after a space, '_' or '-' where one is near;
    no character is dropped, so the lines joined give the text back."""
    lines = []
    while text and font.getlength(text) > max_width:
        cut = 1
        while cut < len(text) and font.getlength(text[: cut + 1]) <= max_width:
            cut += 1
        breaks = [i + 1 for i in range(cut // 2, cut) if text[i] in " _-"]
        cut = breaks[-1] if breaks else cut
        lines.append(text[:cut])
        text = text[cut:]
    return [*lines, text] if text or not lines else lines


def label_font(text: str) -> ImageFont.FreeTypeFont:
    """A font with a glyph for every character of text (augzarr.fonts); else DejaVu Sans anyway,
    which draws the missing characters as boxes."""
    return truetype(font_with_glyphs(text) or dejavu_path())


@functools.cache
def truetype(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, FONT_SIZE)
