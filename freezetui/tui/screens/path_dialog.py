"""A path field for exporting or opening a plan. Errors show inside the dialog, which stays
open until the action succeeds or the user presses Escape."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from .confirm import ConfirmScreen


class PathDialog(ModalScreen[str | None]):
    """``submit(path)`` does the work and returns an error sentence, or None when done."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, initial: str, submit: Callable[[str], str | None], confirm_overwrite: bool = False,
                 id: str | None = None):
        super().__init__(id=id)
        self.title_text = title
        self.initial = initial
        self.submit = submit
        self.confirm_overwrite = confirm_overwrite

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.initial, id="path")
            yield Label("Enter: confirm    Esc: cancel", classes="dialog-help")
            yield Label("", id="error", classes="dialog-error")

    @on(Input.Submitted)
    def on_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            self.query_one("#error", Label).update("Give a file path.")
            return
        if self.confirm_overwrite and Path(path).exists():
            def answered(yes: bool | None) -> None:
                if yes:
                    self._finish(path)
            self.app.push_screen(ConfirmScreen(f"{path} exists. Overwrite it?"), answered)
            return
        self._finish(path)

    def _finish(self, path: str) -> None:
        error = self.submit(path)
        if error:
            self.query_one("#error", Label).update(error)
        else:
            self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
