"""Total, trainable and frozen parameters of the current plan."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import human


class Totals(Static):
    def show(self, workspace) -> None:
        t = workspace.totals()
        text = Text()
        text.append(f"{human(t['total'])} params  ")
        text.append(f"trainable {t['trainable']:,} ({t['percent']:.1f}%)", "green")
        text.append("  ")
        text.append(f"frozen {t['frozen']:,}", "cyan")
        text.append(f"  · BN {workspace.batchnorm}")
        stop = workspace.backward_stop()
        if stop:
            text.append(f"\nfrozen prefix ends at {stop}: backward stops there", "dim")
        self.update(text)
