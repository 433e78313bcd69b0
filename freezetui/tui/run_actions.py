"""Runs from the UI thread: start, stop, resume, progress, how a run ended, comparing runs and
the charts' redraws. The lifecycle itself is the Textual-free RunController; the training runs
in a thread worker. A mixin of :class:`~freezetui.tui.app.FreezeApp`."""

from __future__ import annotations

import time

from textual import work
from textual.widgets import DataTable
from textual.worker import Worker, WorkerState

from ..core.runs import folder_size, prune_run_folder
from .format import explain, fix_keys, lint_text
from ..core.devices import memory_in_use
from .bridge import UIBridge
from .messages import CachingProgress, EpochDone, TrainProgress
from .screens.confirm import ConfirmScreen
from .widgets.charts import Charts
from .widgets.run_panel import RunPanel
from .widgets.runs_table import RunsTable


class RunActions:
    """Methods of the app; they use its workspace, controller, config and widgets."""

    @property
    def training(self) -> bool:
        return any(w.group == "train" and w.is_running for w in self.workers)

    @property
    def stop_event(self):
        return self.controller.stop_event

    def action_train(self) -> None:
        if self.controller is None:
            self.notify("Still loading the model.", severity="warning")
            return
        if self.measuring:
            self.notify("Measuring the signal on the model (m stops it); train after it.", severity="warning")
            return
        if self.training:
            def answered(yes: bool | None) -> None:
                if yes and self.training:
                    self.controller.request_stop()
                    self.main(RunPanel).stopping()
            question = ("Stop the sweep? Finished rungs are kept, and V, then c goes on with it later."
                        if self.controller.sweeping else "Stop the run? What it trained so far is kept.")
            self.push_screen(ConfirmScreen(question), answered)
            return
        refusal = self.controller.next_run_refusal()
        if refusal:
            self.notify(explain(refusal), severity="warning")
            return
        errors = [l for l in self.workspace.lints(self.config.image_size) if l.severity == "error"]
        if errors:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.start_run()
            self.push_screen(ConfirmScreen(f"The plan has an error: {lint_text(errors[0])}\n\nTrain anyway?"),
                             confirmed)
            return
        self.start_run()

    def start_run(self) -> None:
        if self.training:
            return
        record = self.controller.start(self.config)
        self.main(RunsTable).upsert(record)
        self.main(RunPanel).start(record.label, None, epoch_costs=self.workspace.epoch_costs(self.config.epochs))
        self.main(Charts).dirty = True
        self.set_runs_clock(True)
        self.train_worker()

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def train_worker(self):
        if self.controller.sweeping:
            return self.controller.work_sweep(lambda i, name, record: [UIBridge(self, record)])
        return self.controller.work([UIBridge(self, self.controller.current)])

    def on_runs_table_resume_requested(self, event: RunsTable.ResumeRequested) -> None:
        record = next(r for r in self.workspace.runs if r.id == event.run_id)
        refusal = self.controller.resume_refusal(record)
        if refusal or self.training:
            self.notify(explain(refusal) if refusal else "A run is in progress; stop it first (t).",
                        severity="warning")
            return
        done_steps = record.total_steps and len(record.epochs) * record.total_steps // max(1, record.config.epochs)
        self.controller.start_resume(record)
        self.main(RunsTable).upsert(record)
        self.main(RunPanel).start(record.label, None, resumed_from=done_steps or None)
        self.set_runs_clock(True)
        self.train_worker()

    def run_record(self, run_id: int):
        """The run a message is about (a sweep's next rung may have started since it was sent)."""
        return next((r for r in reversed(self.workspace.runs) if r.id == run_id), None)

    def on_train_progress(self, m: TrainProgress) -> None:
        record = self.run_record(m.run_id)
        if record is None or record is not self.controller.current:
            return  # a late message from a rung that has ended
        self.main(RunPanel).progress(record.label, m.epoch, m.epochs, m.global_step, m.total_steps,
                                     m.images_per_s, record.device, memory_in_use(record.device or "cpu"))
        self.main(Charts).dirty = True

    def on_caching_progress(self, m: CachingProgress) -> None:
        record = self.run_record(m.run_id)
        if record is not None and record is self.controller.current:
            self.main(RunPanel).caching(record.label, m.done, m.total)

    def on_epoch_done(self, m: EpochDone) -> None:
        record = self.run_record(m.run_id)
        if record is not None:
            self.main(RunsTable).upsert(record, record.id == self.compare_id)
        self.main(Charts).dirty = True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker, state = event.worker, event.state
        if worker.group != "train" or state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        ok = state == WorkerState.SUCCESS
        was_sweep = self.controller.sweeping
        text = self.controller.finished(worker.result if ok else None,
                                        None if ok else worker.error or RuntimeError("cancelled"))
        record = self.controller.current
        self.set_runs_clock(False)
        if was_sweep:
            self.sweep_ended(ok, text)
            return
        if ok and self.options.keep_only_model and record.status == "done":
            prune_run_folder(record.folder)
        self.main(RunPanel).finish(text, folder_size(record.folder))
        if not ok:  # the run panel says where a finished run is; a failure also gets a toast
            self.notify(record.error, title=f"run {record.label} failed", severity="error", timeout=15)
        self.main(RunsTable).upsert(record, record.id == self.compare_id, folder_size(record.folder))
        self.main(Charts).dirty = True
        self.redraw_charts(force=True)
        if self.controller.quit_requested:
            self.exit(message=self.controller.exit_message(fix_keys))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        run_id = int(event.row_key.value)
        self.compare_id = None if self.compare_id == run_id else run_id
        for record in self.workspace.runs:
            self.main(RunsTable).upsert(record, record.id == self.compare_id)
        self.main(Charts).dirty = True
        self.redraw_charts(force=True)

    def redraw_charts(self, force: bool = False) -> None:
        current = self.controller.current if self.controller is not None else None
        charts = self.screen_stack[0].query(Charts)  # none while the app shuts down
        show_lr = bool(charts) and charts.first().show_lr
        if current is None and not show_lr:
            return
        runs = {r.id: r for r in self.workspace.runs}
        compare = runs.get(self.compare_id) if self.compare_id != (current.id if current else None) else None
        planned = self.planned_rates() if show_lr and charts.first().dirty else None
        for widget in charts:
            widget.redraw(current, compare, force, planned)

    def set_runs_clock(self, running: bool) -> None:
        """Tick the runs table's time column while a run is in progress."""
        timer = getattr(self, "_runs_clock", None)
        if timer is not None:
            timer.stop()
            self._runs_clock = None
        if running:
            started = time.monotonic()
            record = self.controller.current
            base = record.seconds

            def tick() -> None:
                if self.controller.running and self.controller.current is record:
                    record.seconds = base + time.monotonic() - started
                    self.main(RunsTable).update_time(record)

            # every 5 s: a repaint of the table costs the UI thread ~25 ms, and the GIL with it
            self._runs_clock = self.set_interval(5.0, tick)
