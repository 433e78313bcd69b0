"""Freeze or unfreeze every parameter or module matching a glob."""

from __future__ import annotations

from typing import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, RadioButton, RadioSet


class GlobDialog(ModalScreen[int | None]):
    """``apply(glob, freeze)`` returns how many parameters matched, or raises with a sentence."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, apply: Callable[[str, bool], int]):
        super().__init__()
        self.apply = apply

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Select by glob (matches parameter and module names, e.g. layer1, features.*, *.bn*)",
                        classes="dialog-title")
            yield Input(placeholder="glob", id="glob")
            with RadioSet(id="action"):
                yield RadioButton("freeze matches", value=True, id="do-freeze")
                yield RadioButton("unfreeze matches", id="do-unfreeze")
            yield Label("Enter: apply    Tab: choose freeze/unfreeze    Esc: cancel", classes="dialog-help")
            yield Label("", id="error", classes="dialog-error")

    @on(Input.Submitted)
    def on_submitted(self, event: Input.Submitted) -> None:
        pattern = event.value.strip()
        freeze = self.query_one("#do-freeze", RadioButton).value
        if not pattern:
            self.query_one("#error", Label).update("Type a glob first.")
            return
        try:
            count = self.apply(pattern, freeze)
        except ValueError as e:
            self.query_one("#error", Label).update(str(e))
            return
        self.dismiss(count)

    def action_cancel(self) -> None:
        self.dismiss(None)
