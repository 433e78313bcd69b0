"""Every key of the app, from the bindings themselves so the list cannot drift, and what the
tree's glyphs and columns mean."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ..format import LEGEND, STATE_STYLES

EXTRA = [
    ("↑↓←→ / jkhl", "move; collapse / expand"),
    ("Tab", "next panel (tree, lints, runs)"),
    ("Ctrl+P", "command palette: every key, by name"),
]


def key_rows(groups: list[tuple[str, list[tuple[str, str]]]]) -> Text:
    text = Text()
    for title, keys in groups:
        text.append(f"{title}\n", "bold")
        for key, description in keys:
            text.append(f"{key:>12}  ", "bold cyan")
            text.append(f"{description}\n")
    return text


def legend() -> Text:
    styles = [STATE_STYLES["trainable"], STATE_STYLES["frozen"], STATE_STYLES["mixed"], "bold magenta"]
    text = Text("the tree\n", "bold")
    for (glyph, meaning), style in zip(LEGEND, styles):
        text.append(f"{glyph:>12}  ", style)
        text.append(f"{meaning}\n")
    text.append(f"{'+new':>12}  ", "bold magenta")
    text.append("a new module is inside (expand to see it)\n")
    text.append(f"{'params':>12}  parameters under the row; ")
    text.append("trainable", "green")
    text.append(": how many of them train\n")
    text.append(f"{'@2':>7}", "bold yellow")
    text.append(f"{'×0.1':>5}  ", "yellow")
    text.append("unfreezes at epoch 2 (E), trains at 0.1 × the rate (x, L, R); shown with a schedule\n")
    text.append(f"{'│':>12}  ", "yellow")
    text.append("in the charts: a stage starts (g shows the learning rate)")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, groups: list[tuple[str, list[tuple[str, str]]]]):
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        # two columns of about equal length, groups kept whole: the whole help fits 120×40 unscrolled
        groups = []
        for title, keys in [*self.groups, ("moving around", EXTRA)]:  # a long group goes in two halves
            half = (len(keys) + 1) // 2 if len(keys) > 12 else len(keys)
            groups += [(title, keys[:half])] + ([(f"{title} (more)", keys[half:])] if keys[half:] else [])
        size = [1 + len(keys) for _, keys in groups]
        best = min(range(1 << len(groups)),  # the split whose longer column is shortest (a few groups)
                   key=lambda m: max(sum(s for i, s in enumerate(size) if m >> i & 1),
                                     sum(s for i, s in enumerate(size) if not m >> i & 1)))
        left = [g for i, g in enumerate(groups) if best >> i & 1]
        groups = [g for i, g in enumerate(groups) if not best >> i & 1]
        with Vertical(classes="dialog", id="help"):
            with VerticalScroll(id="help-body"):
                yield Label("freezetui keys", classes="dialog-title")
                with Horizontal(id="key-columns"):
                    yield Static(key_rows(left), id="keys")
                    yield Static(key_rows(groups), id="keys-anywhere")
                yield Static(legend(), id="legend")
            yield Label("Esc, ? or q closes", classes="dialog-help")  # outside the scroll: always in view
