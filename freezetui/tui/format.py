"""Small text helpers shared by the widgets: one style for counts, shares, sizes and paths."""

from __future__ import annotations

import math


def human(n: int) -> str:
    """11181642 -> '11.2M'; below 10,000 the exact number."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size and (unit != "k" or abs(n) >= 10_000):
            return f"{n / size:.1f}{unit}"
    return f"{n:,}"


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``, ``1,234 images``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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


def lint_advice(fix) -> str:
    """A lint's fix (data from the core) as this app's keys."""
    kind, value = fix
    if kind == "unfreeze":
        return f"unfreeze {value} (space on it, or / glob)"
    if kind == "batchnorm":
        return "b keeps BatchNorm statistics" if value == "freeze" else "b lets BatchNorm statistics train"
    if kind == "image_size":
        return "set image size in settings (c)"
    if kind in ("image_size_or_small_input", "small_input"):
        return "set image size or small input in settings (c)"
    return ""


def lint_text(lint) -> str:
    """``message; advice``, the advice as keys (the severity is the caller's to show)."""
    advice = lint_advice(lint.fix) if lint.fix is not None else ""
    return lint.message + (f"; {advice}" if advice else "")


# The core's fixes (core.errors.FIXES) as this app's keys.
FIX_KEYS = {
    "stop-run": "t",
    "train-something": "H: head only, A: all",
    "layer-decay-off": "L, then an empty value",
    "continue-sweep": "V, then c",
    "settings": "c",
}


def fix_keys(fix: str) -> str:
    return FIX_KEYS.get(fix, fix)


def explain(error) -> str:
    """A refusal from the core with its fix as keys: "A run is in progress; stop it first (t)."."""
    text = str(error)
    keys = FIX_KEYS.get(getattr(error, "fix", None) or "")
    if not keys:
        return text
    return f"{text[:-1]} ({keys})." if text.endswith(".") else f"{text} ({keys})"


def _short(x: float) -> str:
    """A rate multiplier in a few columns: 0.025 -> '.025', 1.0 -> '1'."""
    text = f"{x:.2g}"
    return text[1:] if text.startswith("0.") else text


def schedule_cells(span) -> tuple[str, str]:
    """The tree's schedule columns for a :class:`ScheduleSpan`: ("@2", "×0.1"); "" where nothing
    is special (it trains from epoch 1, or never, at the full rate). Mixed subtrees show a
    range ("@1–3": parts from the start, parts from epoch 3)."""
    when = rate = ""
    if span.epochs is not None and span.epochs[1] > 1:
        lo, hi = span.epochs
        when = f"@{lo}" if lo == hi else f"@{lo}–{hi}"
    if span.rates is not None and span.rates != (1.0, 1.0):
        lo, hi = span.rates
        rate = f"×{lo:.2g}" if lo == hi else f"×{_short(lo)}–{_short(hi)}"
    if span.auto_rgn and span.rates is not None:  # and × the tensor's signal, every step
        rate = f"{rate}·rgn" if rate else "×rgn"
    return when, rate
