"""Details of the highlighted module or parameter."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import STATE_STYLES, lint_text, schedule_cells


class Details(Static):
    def show(self, workspace, name: str | None) -> None:
        if workspace is None or name is None:
            self.update("", layout=False)
            return
        node = workspace.nodes[name]
        total, trainable = workspace.counts(name)
        state = workspace.state(name)
        text = Text()
        text.append(name or "(whole model)", "bold")
        text.append(f"  {node.kind}")
        if node.is_param:
            text.append(f"  shape {tuple(node.shape)}")
        text.append("\n")
        # the counts say it once: "all trainable", not "480 trainable  trainable"
        if state == "mixed":
            text.append(f"{total:,} params, {trainable:,} trainable · ")
            text.append("partly frozen", STATE_STYLES[state])
        else:
            text.append(f"{total:,} params · ")
            text.append({"trainable": "all trainable", "frozen": "all frozen"}.get(state, state), STATE_STYLES[state])
        origin = "new (random init)" if node.new else ("pretrained" if workspace.info.weights else "random init")
        text.append(f" · {origin}", "bold magenta" if node.new else "dim")
        if workspace.has_schedule():
            when, rate = schedule_cells(workspace.schedule_span(name))
            if when or rate:
                text.append("\n")
                if when:
                    text.append(f"unfreezes at epoch {when[1:]} (E)", "yellow")
                if rate:
                    text.append((" · " if when else "") + f"rate {rate} lr (x)", "yellow")
        for lint in workspace.lints():
            if lint.module and (lint.module == name or lint.module.startswith(name + ".") if name else True):
                text.append(f"\n{lint.severity}: {lint_text(lint)}", "red" if lint.severity == "error" else "yellow")
                break
        self.update(text, layout=False)  # fixed height: no layout pass
