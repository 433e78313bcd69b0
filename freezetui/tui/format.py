"""Small text helpers shared by the widgets."""


def human(n: int) -> str:
    """11181642 -> '11.2M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


GLYPHS = {"trainable": "□", "frozen": "■", "mixed": "◩", "empty": " "}
STATE_STYLES = {"trainable": "green", "frozen": "cyan", "mixed": "yellow", "empty": "dim"}
