"""Every run since the app started; Enter overlays a run's curves on the current ones."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

COLUMNS = ("run", "trainable", "best", "final", "status", "time", "settings")


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


class RunsTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Compare", id="compare"),
        Binding("r", "resume", "Resume run", id="resume"),
    ]

    @dataclass
    class ResumeRequested(Message):
        run_id: int

    def action_resume(self) -> None:
        if self.row_count:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
            self.post_message(self.ResumeRequested(int(key.value)))

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns(*COLUMNS)

    def upsert(self, record, compared: bool = False) -> None:
        c = record.config
        cells = (
            record.label + (" ◆" if compared else ""),
            f"{record.trainable:,} ({100 * record.trainable / max(1, record.total):.0f}%)",
            _pct(record.best_acc),
            _pct(record.final_acc),
            record.status,
            f"{record.seconds:.0f}s",
            f"{c.optimizer} lr {c.effective_lr:g} bs {c.batch_size} ep {c.epochs}",
        )
        key = str(record.id)
        if key in self.rows:
            for col, value in zip(self.columns, cells):
                self.update_cell(key, col, value)
        else:
            self.add_row(*cells, key=key)
