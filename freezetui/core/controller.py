"""The TUI's runs without the TUI: start, stop, resume, quit while running, hang-up.

The app calls these from its UI thread and runs :meth:`RunController.work` on a worker
thread; nothing here knows about Textual, so the whole lifecycle is testable without Pilot.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Callable

from .errors import FreezeTUIError, PlanError
from .runner import execute, resume_spec
from .runs import new_run_dir
from .specs import RunSpec
from .train import Callback, TrainConfig, TrainResult
from .workspace import RunRecord, Workspace

Trainer = Callable[[Workspace, RunRecord, list, threading.Event, str], TrainResult]


def default_trainer(workspace: Workspace, record: RunRecord, callbacks: list[Callback], stop: threading.Event,
                    runs_dir: str | Path) -> TrainResult:
    """Train from the initial weights under the current plan into a fresh run folder, through
    the same orchestrator as ``freezetui train``. Called on a worker thread."""
    if workspace.data is None:
        raise PlanError("no data loaded")
    record.folder = new_run_dir(runs_dir, f"{workspace.info.name.replace(':', '-')}-{record.id}")
    spec = RunSpec(data=workspace.data_name, config=record.config, out=record.folder, plan=workspace.plan.copy())
    workspace.reset_weights()
    return execute(spec, callbacks, stop, model=workspace.model, data=workspace.data, traced=workspace.traced)


def resume_trainer(workspace: Workspace, record: RunRecord, callbacks: list[Callback],
                   stop: threading.Event) -> TrainResult:
    """Continue a stopped or failed run from its last checkpoint, under the plan it started
    with, into the same folder."""
    spec = resume_spec(record.folder)
    workspace.reset_weights()  # the frozen reference; the checkpoint's weights load over it
    record.epochs = list(spec.resume["history"])
    return execute(spec, callbacks, stop, model=workspace.model, data=workspace.data, traced=workspace.traced)


def error_text(error: BaseException | None) -> str:
    if isinstance(error, FreezeTUIError):
        return str(error)
    if error is not None and "out of memory" in str(error).lower():
        return "out of memory: lower the batch size (c) or the image size"
    return f"{type(error).__name__}: {error}" if error else "unknown error"


class RunController:
    """One run at a time over a workspace; the plan is read-only while it runs."""

    def __init__(self, workspace: Workspace, runs_dir: str | Path = "runs", trainer: Trainer = default_trainer):
        self.workspace = workspace
        self.runs_dir = runs_dir
        self.trainer = trainer
        self.stop_event = threading.Event()
        self.quit_requested = False
        self.running = False
        self.resuming = False

    @property
    def current(self) -> RunRecord | None:
        runs = self.workspace.runs
        return runs[-1] if runs else None

    # ------------------------------------------------------------------ starting

    def start(self, config: TrainConfig) -> RunRecord:
        """A new run of the current plan (call :meth:`work` on a worker thread next)."""
        self.stop_event = threading.Event()
        record = self.workspace.new_run(dataclasses.replace(config))
        self._begin(resuming=False)
        return record

    def resume_refusal(self, record: RunRecord) -> str | None:
        """Why ``record`` cannot be resumed, or None."""
        if self.running:
            return "A run is in progress; stop it first (t)."
        if record.status not in ("stopped", "failed") or record.folder is None \
                or not (Path(record.folder) / "checkpoint.pt").is_file():
            return (f"Run {record.label} has nothing to resume: it is {record.status} "
                    f"or stopped before its first epoch ended.")
        return None

    def start_resume(self, record: RunRecord) -> None:
        self.stop_event = threading.Event()
        self.workspace.runs.remove(record)
        self.workspace.runs.append(record)  # the resumed run is the current one
        record.status, record.error = "running", None
        self._begin(resuming=True)

    def _begin(self, resuming: bool) -> None:
        self.running, self.resuming = True, resuming
        self.workspace.locked = True  # read-only from now, not from when the worker starts

    def work(self, callbacks: list[Callback]) -> TrainResult:
        """The run itself; on the worker thread."""
        record = self.current
        if self.resuming:
            return resume_trainer(self.workspace, record, callbacks, self.stop_event)
        return self.trainer(self.workspace, record, callbacks, self.stop_event, self.runs_dir)

    # ------------------------------------------------------------------ ending

    def request_stop(self) -> None:
        self.stop_event.set()

    def finished(self, result: TrainResult | None, error: BaseException | None = None) -> str:
        """Record how the current run ended; returns the line for the run panel."""
        self.running = False
        self.workspace.locked = False
        record = self.current
        if error is None and result is not None:
            record.status = "stopped" if result.stopped else "done"
            best = f"{100 * record.best_acc:.1f}%" if record.best_acc is not None else "—"
            frozen = "frozen params unchanged" if result.frozen_unchanged else "FROZEN PARAMS CHANGED"
            return f"run {record.label} {record.status} · best val acc {best} · saved to {record.folder} · {frozen}"
        record.status = "failed"
        record.error = error_text(error)
        return f"run {record.label} failed: {record.error}"

    def quit(self) -> bool:
        """True: the app may exit now. False: the run is stopping first (exit when it ends)."""
        if not self.running:
            return True
        self.quit_requested = True
        self.stop_event.set()
        return False

    def hang_up(self) -> bool:
        """The terminal went away: stop the run (its files are kept) and exit as soon as possible."""
        return self.quit()
