"""A sweep's result: best accuracy against trainable parameters and against time, and its
rungs in a table; Enter loads the highlighted rung's plan into the tree."""

from __future__ import annotations

import math
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label
from textual_plotext import PlotextPlot

from ...core.cost import human_bytes
from ..format import human, shorten_left
from ..widgets.keyed_table import KeyedTable


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


class SweepPlot(PlotextPlot):
    """Best validation accuracy of each finished rung against one of its numbers."""

    def __init__(self, rows: list[dict], key: str, title: str, log: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.key, self.log_x = rows, key, log
        self.border_title = title

    def on_mount(self) -> None:
        done = [r for r in self.rows if r.get("best_val_acc") is not None and (r.get(self.key) or 0) > 0]
        plt = self.plt
        plt.clear_data()
        if not done:
            return
        xs = [float(r[self.key]) for r in done]
        ys = [100 * r["best_val_acc"] for r in done]
        plt.plot(xs, ys, color="cyan", marker="braille")
        # each rung's number as its marker (the table's first column): names would overlap
        for x, y, r in zip(xs, ys, done):
            plt.scatter([x], [y], color="yellow", marker=str(self.rows.index(r) + 1)[-1])
        if self.log_x and max(xs) > 10 * min(xs):
            plt.xscale("log")
            lo, hi = math.ceil(math.log10(min(xs))), math.floor(math.log10(max(xs)))
            ticks = [10.0 ** k for k in range(lo, hi + 1)]
            plt.xticks(ticks, [human(int(t)) for t in ticks])
        elif self.log_x:
            ticks = sorted({min(xs), max(xs)})
            plt.xticks(ticks, [human(int(t)) for t in ticks])


class SweepScreen(ModalScreen[str | None]):
    """``load(plan_path)`` loads a rung's plan and returns an error sentence, or None."""

    BINDINGS = [Binding("escape,q,V", "dismiss_screen", "Close"), Binding("c", "continue", "Continue the sweep")]

    def __init__(self, rows: list[dict], folder: str, load: Callable[[str], str | None], running: bool = False,
                 go_on: Callable[[], None] | None = None):
        super().__init__(id="sweep-screen")
        self.rows, self.folder, self.load, self.running, self.go_on = rows, folder, load, running, go_on

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="sweep"):
            state = " (still running: rungs so far)" if self.running else ""
            yield Label(f"sweep{state} · {shorten_left(self.folder, 60)}", classes="dialog-title")
            with Horizontal(id="sweep-plots"):
                yield SweepPlot(self.rows, "trainable", "best val acc % · trainable params (log)", log=True,
                                id="acc-vs-params")
                yield SweepPlot(self.rows, "seconds", "best val acc % · seconds", id="acc-vs-time")
            table = KeyedTable(id="rungs", cursor_type="row")
            yield table
            keys = "j/k: move    Enter: load the rung's plan into the tree    "
            if self.go_on is not None:
                keys += "c: continue the stopped sweep    "
            yield Label(keys + "Esc: close", classes="dialog-help")
            yield Label("", id="error", classes="dialog-error")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in ("rung", "trainable", "activations", "best", "final", "seconds", "img/s", "best/s"):
            table.add_column(col, key=col)
        for i, r in enumerate(self.rows):
            est = r.get("estimate") or {}
            table.add_row(
                f"{i + 1} {r['name']}" + (" (stopped)" if r.get("stopped") else ""),
                human(r.get("trainable") or 0),
                human_bytes(est["activation_bytes"]) if "activation_bytes" in est else "—",
                _pct(r.get("best_val_acc")), _pct(r.get("val_acc")),
                f"{r.get('seconds') or 0:.1f}", f"{r.get('images_per_s') or 0:,.0f}",
                "—" if r.get("accuracy_per_s") is None else f"{100 * r['accuracy_per_s']:.2f}%/s",
                key=str(i))
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a rung."""
        event.stop()
        row = self.rows[int(event.row_key.value)]
        error = self.load(row["plan"])
        if error:
            self.query_one("#error", Label).update(error)
        else:
            self.dismiss(row["name"])

    def action_continue(self) -> None:
        if self.go_on is not None:
            self.dismiss(None)
            self.go_on()

    def action_dismiss_screen(self) -> None:
        self.dismiss(None)
