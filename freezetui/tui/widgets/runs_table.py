"""Every run of this model under the runs folder (earlier sessions' too); Enter overlays a run's
curves on the current ones, r resumes a stopped one."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message

from .keyed_table import KeyedTable

from ..format import share, size_text

# what a person compares first comes first: the 80-column layout shows the first four; the
# schedule's words are long, so it comes after the short columns
COLUMNS = ("run", "best", "status", "trainable", "time", "size", "final", "schedule", "settings")


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def _trainable(record) -> str:
    """The share that trained; a staged run's from its first to its largest stage: ``0.05%→100%``."""
    first = share(record.trainable, record.total)
    largest = max((e.get("trainable") or 0 for e in record.epochs), default=0)
    return f"{first}→{share(largest, record.total)}" if largest > record.trainable else first


class RunsTable(KeyedTable):
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
        self.sizes: dict[int, int] = {}
        for name in COLUMNS:
            self.add_column(name, key=name)

    def upsert(self, record, compared: bool = False, size: int | None = None) -> None:
        c = record.config
        if size is not None:
            self.sizes[record.id] = size
        cells = {
            "run": record.label + (" ◆" if compared else ""),
            "best": _pct(record.best_acc),
            "status": record.status,
            "trainable": _trainable(record),
            "schedule": record.schedule,
            "time": _time(record.seconds),
            "size": size_text(self.sizes[record.id]) if self.sizes.get(record.id) else "—",
            "final": _pct(record.final_acc),
            "settings": f"{c.optimizer} lr {c.effective_lr:.3g} {c.schedule} bs {c.batch_size} ep {c.epochs}",
        }
        key = str(record.id)
        if key in self.rows:
            for col, value in cells.items():
                self.update_cell(key, col, value, update_width=True)
        else:
            self.add_row(*(cells[c] for c in COLUMNS), key=key)
        if record.status == "running" and not self.has_focus:  # the run in progress stays in view
            self.move_cursor(row=self.get_row_index(key), animate=False)

    def update_time(self, record) -> None:
        key = str(record.id)
        if key in self.rows:
            self.update_cell(key, "time", _time(record.seconds), update_width=True)
