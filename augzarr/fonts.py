"""Which font can draw a text: the one home for the contact sheet (Pillow) and the run's plots (matplotlib).

DejaVu Sans (matplotlib ships it) when it has a glyph for every character; else the first font of this
system that has them all (CJK, for one, is not in DejaVu); None when no font here has them."""

from __future__ import annotations

import functools
from pathlib import Path


def font_with_glyphs(text: str) -> str | None:
    """The path of a font with a glyph for every character of text (spaces aside), DejaVu Sans first."""
    needed = {ord(ch) for ch in text if not ch.isspace()}
    return next((path for path in (dejavu_path(), *system_font_paths()) if needed <= font_charmap(path)), None)


def dejavu_path() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))


@functools.lru_cache(maxsize=1)
def system_font_paths() -> tuple[str, ...]:
    from matplotlib import font_manager

    return tuple(sorted(font_manager.findSystemFonts()))


@functools.cache
def font_charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read: no glyphs from it
        return frozenset()
