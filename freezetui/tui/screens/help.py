"""Every key of the app, from the bindings themselves so the list cannot drift."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

EXTRA = [
    ("↑ ↓ / j k", "move"),
    ("← → / h l", "collapse / expand"),
    ("Tab", "next panel (tree, runs)"),
    ("Enter (runs)", "overlay that run's curves"),
    ("Ctrl+P", "command palette"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, keys: list[tuple[str, str]]):
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help"):
            yield Label("freezetui keys", classes="dialog-title")
            rows = "\n".join(f"{k:>14}  {d}" for k, d in [*self.keys, *EXTRA])
            yield Static(rows, id="keys")
            yield Label("Esc or ? closes", classes="dialog-help")
