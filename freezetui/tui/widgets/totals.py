"""Total, trainable and frozen parameters of the current plan, and where its frozen prefix ends."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import human, share


class Totals(Static):
    def show(self, workspace, config=None) -> None:
        t = workspace.totals()
        text = Text()
        text.append(f"trainable {human(t['trainable'])} of {human(t['total'])} "
                    f"({share(t['trainable'], t['total'])})", "green")
        text.append("\n")
        text.append(f"frozen {human(t['frozen'])}", "cyan")
        if workspace.has_batchnorm():
            text.append(f" · BN stats {'kept' if workspace.batchnorm == 'freeze' else 'updated'} (b)")
        text.append("\n")
        prefix = workspace.frozen_prefix()
        if prefix:
            where, reason = prefix
            text.append("frozen prefix ends at ", "dim")
            text.append(where, "bold")
            text.append(f": {reason}", "dim")
        else:
            text.append("no frozen prefix: backward runs through it all", "dim")
        cost = workspace.cost_line(config.batch_size, config.optimizer) if config is not None else None
        if cost:
            text.append("\n")
            text.append(f"batch {config.batch_size}: {cost}", "dim")
        self.update(text, layout=False)  # fixed height: no layout pass
