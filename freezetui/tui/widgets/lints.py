"""The core's lints for the current plan, in a panel of fixed height: it never appears or
disappears, because a layout pass of the whole screen on every edit costs more than the edit."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import lint_text

STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}


class LintsPanel(Static):
    def show(self, lints) -> None:
        self.set_class(any(l.severity == "error" for l in lints), "has-error")
        self.set_class(not lints, "clean")
        self.border_title = f"lints ({len(lints)})" if lints else "lints"
        if not lints:
            self.update(Text("no problems found", "dim"), layout=False)
            return
        width = max(10, self.content_size.width or 40)
        room = max(1, self.content_size.height or 3)
        text, used = Text(), 0
        for i, lint in enumerate(lints):
            advice = lint_text(lint)
            line = Text.assemble((f"{lint.severity.upper()} ", STYLES[lint.severity]), advice)
            lines = len(line.wrap(self.app.console, width))
            rest = len(lints) - i
            if used + lines > room and i:
                text.append(f"\n… {rest} more: move to a module for its finding, or see the help (?)", "dim")
                break
            if used:
                text.append("\n")
            text.append_text(line)
            used += lines
        self.update(text, layout=False)

    def on_resize(self) -> None:
        app = self.app
        if getattr(app, "workspace", None) is not None:
            self.show(app.workspace.lints(app.config.image_size))
