"""Counts, articles and lists in messages: one home, so no message says "1 problems" or "a int", and
none grows with its input (every file, size or class listed)."""

from __future__ import annotations

import os
import re

SHOWN_ITEMS = 5  # a message lists at most this many of its items, then says how many more
SHOWN_LINES = 20  # lines of a report of one line per item (damaged chunks, skipped or unused files), then only a count

# words whose first letter does not give their sound: "an hour", "a uint8", "an ndarray"
_VOWEL_SOUND = ("hour", "honest", "honour", "heir", "ndarray", "rgb")
_CONSONANT_SOUND = ("uint", "uni", "use", "usa", "utf", "one", "once", "eu")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """n and the noun in the number it needs: '1 image', '0 images', '1,234 images' ('1 class', '2 classes')."""
    if n == 1:
        return f"{n:,} {noun}"
    # 'batch' -> 'batches' but 'epoch' -> 'epochs': only a 'ch' said as in 'church' takes 'es'
    return f"{n:,} {plural or (noun + 'es' if noun.endswith(('s', 'sh', 'tch', 'nch', 'x', 'z')) else noun + 's')}"


def article(word: str) -> str:
    """word after 'a' or 'an', by how it is spoken: 'an int', 'a float', 'a uint8', 'an 8x8x3', 'a 16x16x3', 'an 11x11'."""
    text = str(word)
    digits = re.match(r"\d[\d,]*", text)
    if digits:
        number = digits.group().replace(",", "")
        lead = number[: len(number) % 3 or 3]  # the group read first: 11,000 is "eleven thousand"
        vowel = number.startswith("8") or lead in ("11", "18")
    else:
        lower = text.lower()
        if lower.startswith(_VOWEL_SOUND):
            vowel = True
        elif lower.startswith(_CONSONANT_SOUND):
            vowel = False
        else:
            vowel = lower[:1] in ("a", "e", "i", "o", "u")
    return f"{'an' if vowel else 'a'} {text}"


def listed(items, limit: int = SHOWN_ITEMS, sep: str = ", ") -> str:
    """The first `limit` items joined, then 'and N more': a list that cannot grow without bound in a message."""
    items = [str(item) for item in items]
    if len(items) <= limit:
        return sep.join(items)
    return f"{sep.join(items[:limit])} and {len(items) - limit:,} more"


def alternatives(items) -> str:
    """Choices as a sentence names them: 'a', 'a or b', 'a, b or c'."""
    items = [str(item) for item in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def shown(path) -> str:
    """A path (or an image item, augzarr/images.py) fit for a message or JSON: undecodable bytes of a file name (not
    UTF-8) as \\x escapes."""
    text = path if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return os.fsencode(text).decode("utf-8", "backslashreplace")
