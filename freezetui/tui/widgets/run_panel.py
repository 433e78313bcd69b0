"""The run in progress: epoch, a progress bar, images/s, elapsed and ETA, device and memory."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class RunPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("no run yet · t trains with the current plan", id="run-status")
        # Hidden until a run starts: an idle indeterminate bar animates for nothing.
        bar = ProgressBar(total=100, show_eta=False, show_percentage=True, id="run-progress")
        bar.display = False
        yield bar

    def start(self, label: str, total_steps: int | None) -> None:
        self.started = time.monotonic()
        bar = self.query_one(ProgressBar)
        bar.display = True
        bar.update(total=total_steps or 100, progress=0)
        self.query_one("#run-status", Static).update(f"run {label}: starting…")

    def progress(self, label: str, epoch: int, epochs: int, step: int, total: int, ips: float, device: str,
                 memory: str = "") -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=total, progress=step)
        elapsed = time.monotonic() - getattr(self, "started", time.monotonic())
        eta = elapsed / step * (total - step) if step else 0
        # layout=False: the status has a fixed height, and a layout pass repaints the whole screen
        self.query_one("#run-status", Static).update(
            f"run {label}: epoch {epoch}/{epochs} · {ips:,.0f} img/s · {_clock(elapsed)} elapsed · "
            f"ETA {_clock(eta)} · {device}{memory}", layout=False
        )

    def finish(self, text: str) -> None:
        self.query_one("#run-status", Static).update(text)
