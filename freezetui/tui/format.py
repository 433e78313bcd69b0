"""Small text helpers shared by the widgets: one style for counts, shares, sizes and paths."""

from __future__ import annotations

import math


def human(n: int) -> str:
    """11181642 -> '11.2M'; below 10,000 the exact number."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size and (unit != "k" or abs(n) >= 10_000):
            return f"{n / size:.1f}{unit}"
    return f"{n:,}"


def share(part: int, total: int) -> str:
    """A percentage with enough digits to tell a small share from none: 0.046%, 4.6%, 100%."""
    if total <= 0 or part <= 0:
        return "0%"
    if part >= total:
        return "100%"
    p = 100.0 * part / total
    if p >= 1:
        return f"{min(p, 99.9):.1f}%"  # 99.96% of a model is not all of it
    decimals = 1 - math.floor(math.log10(p))  # two significant digits
    return f"{p:.{decimals}f}%"


def size_text(n: int) -> str:
    """Bytes as a person reads them: 93 MB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.0f} {unit}" if n / size >= 10 else f"{n / size:.1f} {unit}"
    return f"{n} B"


def shorten_left(text: str, width: int) -> str:
    """Keep the end of a path (its most telling part) within ``width`` columns."""
    if len(text) <= width:
        return text
    return "…" + text[-max(1, width - 1):]


GLYPHS = {"trainable": "□", "frozen": "■", "mixed": "◩", "empty": " "}
STATE_STYLES = {"trainable": "green", "frozen": "cyan", "mixed": "yellow", "empty": "dim"}
LEGEND = [("□", "trainable"), ("■", "frozen"), ("◩", "partly frozen"), ("new", "new module: random init, train it")]
