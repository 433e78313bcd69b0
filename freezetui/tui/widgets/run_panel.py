"""The run in progress: epoch, a progress bar, images/s, elapsed and ETA, device and memory;
after it, how it ended and where its files are."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from ..format import shorten_left, size_text


def work_between(weights: list[float], per_epoch: int, a: int, b: int) -> float:
    """The weighted work of steps a+1..b, step s costing ``weights`` of its epoch."""
    total = 0.0
    for i, w in enumerate(weights):
        lo, hi = i * per_epoch, (i + 1) * per_epoch
        total += w * max(0, min(b, hi) - max(a, lo))
    return total


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class RunPanel(Vertical):
    batch: int | None = None  # the last finished batch of this epoch
    per_epoch = 0  # batches per epoch
    halting = False  # a stop was asked for: the status says what it waits for, not progress
    epoch_costs: list[float] | None = None  # each epoch's relative cost (stages), for the ETA

    def compose(self) -> ComposeResult:
        yield Static("no run yet · t trains with the current plan", id="run-status")
        # Hidden until a run starts: an idle indeterminate bar animates for nothing.
        bar = ProgressBar(total=100, show_eta=False, show_percentage=True, id="run-progress")
        bar.display = False
        yield bar

    def start(self, label: str, total_steps: int | None, resumed_from: int | None = None,
              epoch_costs: list[float] | None = None) -> None:
        self.started = time.monotonic()
        self.batch, self.halting, self.epoch_costs = None, False, epoch_costs
        self.first: tuple[float, int] | None = None  # (time, step) of the first progress seen
        bar = self.query_one(ProgressBar)
        bar.display = True
        self.remove_class("-finished")
        bar.update(total=total_steps or 100, progress=resumed_from or 0)
        what = "resuming" if resumed_from else "starting"
        self.query_one("#run-status", Static).update(f"run {label}: {what}…")

    def caching(self, label: str, done: int, total: int) -> None:
        """Before the first step: the frozen prefix's outputs being cached, with a bar."""
        if self.halting:
            return
        self.query_one(ProgressBar).update(total=max(1, total), progress=done)
        self.query_one("#run-status", Static).update(f"run {label}: caching features {done:,}/{total:,}",
                                                     layout=False)

    def stopping(self, writing: bool = False) -> None:
        """What a stop is waiting for, at once: the batch in flight, then the run's files."""
        self.halting = True
        batch, per_epoch = self.batch, self.per_epoch
        if writing:
            text = "stopping: writing checkpoint…"
        elif batch is None:
            text = "stopping…"
        elif batch >= per_epoch:  # the epoch's batches are done: its evaluation stops at its next batch
            text = "stopping: leaving the evaluation…"
        else:
            text = f"stopping: finishing batch {batch + 1}…"
        self.query_one("#run-status", Static).update(text, layout=False)

    def progress(self, label: str, epoch: int, epochs: int, step: int, total: int, ips: float, device: str,
                 memory: str = "") -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=total, progress=step)
        self.per_epoch = total // max(1, epochs)
        self.batch = step - (epoch - 1) * self.per_epoch  # the last finished batch of this epoch
        if self.halting:  # the status keeps naming the batch the stop waits for
            return
        now = time.monotonic()
        elapsed = now - getattr(self, "started", now)
        if getattr(self, "first", None) is None:
            self.first = (now, step)
        t0, s0 = self.first
        # from the steps of this session only: a resumed run starts with its earlier epochs done
        weights = self.epoch_costs if self.epoch_costs and len(self.epoch_costs) == epochs else None
        if step <= s0:
            eta = "ETA …"
        elif weights:  # later stages that train more take longer per step
            done = work_between(weights, self.per_epoch, s0, step)
            eta = f"ETA {_clock((now - t0) / done * work_between(weights, self.per_epoch, step, total))}"
        else:
            eta = f"ETA {_clock((now - t0) / (step - s0) * (total - step))}"
        # layout=False: the status has a fixed height, and a layout pass repaints the whole screen
        self.query_one("#run-status", Static).update(
            f"run {label}: epoch {epoch}/{epochs} · {ips:,.0f} img/s · {_clock(elapsed)} elapsed · "
            f"{eta} · {device}{memory}", layout=False
        )

    def finish(self, text: str, size: int = 0) -> None:
        """``text``'s ``saved to PATH`` line keeps the end of the path (the run's own folder)
        when the panel is too narrow for all of it; the folder's size joins the first line."""
        status = self.query_one("#run-status", Static)
        width = max(20, status.content_size.width or 40)
        lines = text.split("\n")
        if size:
            lines[0] += f" · {size_text(size)}"
        for i, line in enumerate(lines):
            if line.startswith("saved to ") and len(line) > width:
                lines[i] = shorten_left(line[len("saved to "):], width)
        self.query_one(ProgressBar).display = False
        self.halting = False
        self.add_class("-finished")
        status.update("\n".join(lines))
