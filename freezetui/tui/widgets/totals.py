"""Total, trainable and frozen parameters of the current plan."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import human



def count(n: int) -> str:
    """Exact below a million, short above: the panel is narrow at 80 columns."""
    return f"{n:,}" if n < 1_000_000 else human(n)


class Totals(Static):
    def show(self, workspace) -> None:
        t = workspace.totals()
        text = Text()
        text.append(f"trainable {count(t['trainable'])} of {count(t['total'])} ({t['percent']:.1f}%)", "green")
        text.append("\n")
        text.append(f"frozen {count(t['frozen'])}", "cyan")
        text.append(f" · BN stats {'kept' if workspace.batchnorm == 'freeze' else 'updated'}")
        text.append("\n")
        stop = workspace.backward_stop()
        if stop:
            text.append(f"frozen prefix ends at {stop}", "dim")
        else:
            text.append("no frozen prefix", "dim")
        self.update(text, layout=False)  # fixed height: no layout pass
