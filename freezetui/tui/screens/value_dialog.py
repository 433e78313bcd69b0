"""One value asked for by name (an epoch, a rate multiplier, a layer decay). The error of a
value that cannot be used shows inside the dialog, which stays open until the value is applied
or the user presses Escape."""

from __future__ import annotations

from typing import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class ValueDialog(ModalScreen[str | None]):
    """``submit(text)`` applies the value and returns an error sentence, or None when done."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, initial: str, submit: Callable[[str], str | None], hint: str = "",
                 id: str | None = None):
        super().__init__(id=id)
        self.title_text = title
        self.initial = initial
        self.submit = submit
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.initial, id="value")
            if self.hint:
                yield Label(self.hint, classes="dialog-help")
            yield Label("Enter: apply    Esc: cancel", classes="dialog-help")
            yield Label("", id="error", classes="dialog-error")

    @on(Input.Submitted)
    def on_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        error = self.submit(text)
        if error:
            self.query_one("#error", Label).update(error)
        else:
            self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
