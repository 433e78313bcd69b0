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
    ("↑ ↓ / j k", "move"),
    ("← → / h l", "collapse / expand"),
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
    text.append(f"{'@2':>12}  ", "bold yellow")
    text.append("unfreezes at the start of epoch 2 (E); shown while the plan has a schedule\n")
    text.append(f"{'×0.1':>12}  ", "yellow")
    text.append("trains at 0.1 × the learning rate (x, L, R)\n")
    text.append(f"{'│':>12}  ", "yellow")
    text.append("in the charts: a stage starts (g shows the learning rate)")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, groups: list[tuple[str, list[tuple[str, str]]]]):
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        # two columns (the app-wide keys, then the rest): the whole help fits 120×40 unscrolled
        wide = [g for g in self.groups if g[0] == "anywhere"]
        rest = [g for g in self.groups if g[0] != "anywhere"] + [("moving around", EXTRA)]
        with Vertical(classes="dialog", id="help"):
            with VerticalScroll(id="help-body"):
                yield Label("freezetui keys", classes="dialog-title")
                with Horizontal(id="key-columns"):
                    yield Static(key_rows(rest), id="keys")
                    yield Static(key_rows(wide), id="keys-anywhere")
                yield Static(legend(), id="legend")
            yield Label("Esc, ? or q closes", classes="dialog-help")  # outside the scroll: always in view
