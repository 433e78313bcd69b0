"""The core's lints for the current plan, in a panel of fixed height: it never appears or
disappears, because a layout pass of the whole screen on every edit costs more than the edit.
Focused (w), it grows to show the highlighted lint in full, its fix as keys; j/k move."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static

from ..format import lint_text

STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}


class LintsPanel(Static, can_focus=True):
    BINDINGS = [
        Binding("j,down", "move(1)", "Next lint", show=False),
        Binding("k,up", "move(-1)", "Previous lint", show=False),
        Binding("g,home", "move(-1000)", "First lint", show=False),
        Binding("G,end", "move(1000)", "Last lint", show=False),
        Binding("enter", "go_to_module", "Go to the lint's module", id="lint_module", show=False),
        Binding("escape", "leave", "Back to the tree", show=False),
    ]

    @dataclass
    class ModuleRequested(Message):
        module: str

    lints: list = []
    index = 0

    def show(self, lints) -> None:
        self.lints = list(lints)
        self.index = min(self.index, max(0, len(self.lints) - 1))
        self.set_class(any(l.severity == "error" for l in lints), "has-error")
        self.set_class(not lints, "clean")
        self.border_title = f"lints ({len(lints)})" if lints else "lints"
        if not lints:
            self.update(Text("no problems found", "dim"), layout=self.has_focus)
            return
        if self.has_focus:
            self.update(self.full(), layout=True)
            return
        width = max(10, self.content_size.width or 40)
        room = max(1, self.content_size.height or 3)
        shown: list[Text] = []
        for lint in lints:
            line = Text.assemble((f"{lint.severity.upper()} ", STYLES[lint.severity]), lint_text(lint))
            shown.extend(line.wrap(self.app.console, width))
        if len(shown) > room:  # the rest is one key away
            shown = shown[:room - 1] + [Text("… w reads the lints in full", "dim")]
        self.update(Text("\n").join(line.rstrip() or line for line in shown), layout=False)

    def full(self) -> Text:
        """The highlighted lint in full, its fix worded as keys."""
        lint = self.lints[self.index]
        text = Text()
        if len(self.lints) > 1:
            text.append(f"{self.index + 1} of {len(self.lints)} · ", "dim")
        text.append(lint.severity.upper(), STYLES[lint.severity])
        text.append(f" {lint_text(lint)}")
        keys = ["j/k: next" if len(self.lints) > 1 else "", "Enter: go to it" if lint.module else "", "Esc: back"]
        text.append("\n" + " · ".join(k for k in keys if k), "dim")
        return text

    def action_move(self, by: int) -> None:
        if self.lints:
            self.index = max(0, min(len(self.lints) - 1, self.index + by))
            self.update(self.full(), layout=True)

    def action_go_to_module(self) -> None:
        if self.lints and self.lints[self.index].module:
            self.post_message(self.ModuleRequested(self.lints[self.index].module))

    def action_leave(self) -> None:
        self.app.set_focus(self.screen.query_one("ModuleTree"))

    def on_focus(self) -> None:
        self.call_later(self.show, self.lints)  # after Widget._on_focus has set has_focus

    def on_blur(self) -> None:
        self.update("", layout=True)  # back to its fixed height, then the compact list
        self.call_after_refresh(self.show, self.lints)

    def on_resize(self) -> None:
        app = self.app
        if getattr(app, "workspace", None) is not None:
            self.show(app.workspace.lints(app.config.image_size))
