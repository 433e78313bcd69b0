"""The core's lints for the current plan; hidden when there are none."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ...core.lints import render

STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}


class LintsPanel(Static):
    def show(self, lints) -> None:
        self.display = bool(lints)
        self.set_class(any(l.severity == "error" for l in lints), "has-error")
        text = Text()
        for i, lint in enumerate(lints):
            if i:
                text.append("\n")
            text.append(f"{lint.severity.upper()} ", STYLES[lint.severity])
            text.append(render(lint, "tui"))
        self.update(text)
