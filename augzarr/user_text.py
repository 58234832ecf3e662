"""The free text a person gives a store or a run in their own words (build-aug --license and
--provenance, train --intended-use): checked once here, for the builder and the trainer alike."""

from __future__ import annotations

import unicodedata

from augzarr.errors import OptionError

MAX_TEXT_CHARS = 10_000  # a few paragraphs; the text is repeated in every model card
ALLOWED_CONTROLS = "\n\t"  # line breaks and tabs are part of a text; other control characters would reach terminals raw


def user_text(value: str | None, option: str) -> str | None:
    """value without surrounding blanks (Windows line ends made \\n), or None when not given.
    Raises OptionError, naming the option, for an empty text, one too long, or one holding
    control characters other than line breaks and tabs (an escape sequence inspect-aug would
    print raw to the terminal)."""
    if value is None:
        return None
    text = value.replace("\r\n", "\n").strip()
    if not text:
        raise OptionError(f"{option} is empty: give the text, or leave the option out")
    if len(text) > MAX_TEXT_CHARS:
        raise OptionError(
            f"{option} has {len(text):,} characters; keep it to {MAX_TEXT_CHARS:,} (a summary, with a link to the full text)"
        )
    bad = next((ch for ch in text if unicodedata.category(ch) == "Cc" and ch not in ALLOWED_CONTROLS), None)
    if bad is not None:
        raise OptionError(
            f"{option} holds the control character {bad!r}: write it as plain text (line breaks and tabs are kept)"
        )
    return text
