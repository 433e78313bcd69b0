"""Sweeps from the TUI (issue 12): S trains the ladder of plans, each rung a run in the runs
table; V shows the results and loads a rung's plan. A mixin of
:class:`~freezetui.tui.app.FreezeApp`."""

from __future__ import annotations

from ..core.runs import folder_size, prune_run_folder
from ..core.errors import FreezeTUIError
from .format import explain, fix_keys, plural
from .messages import RunBegan, RunEnded
from .screens.confirm import ConfirmScreen
from .screens.sweep import SweepScreen
from .widgets.charts import Charts
from .widgets.run_panel import RunPanel
from .widgets.runs_table import RunsTable


class SweepActions:
    """Methods of the app; they use its workspace, controller, config and widgets."""

    def action_sweep(self) -> None:
        if self.controller is None:
            self.notify("Still loading the model.", severity="warning")
            return
        if self.training:
            self.notify("A run is in progress; t stops it.", severity="warning")
            return
        from ..core.sweep import ladder

        try:
            names = [name for name, _ in ladder(self.workspace.model, self.workspace.traced)]
        except FreezeTUIError as e:
            self.notify(explain(e), severity="warning")
            return
        c = self.config

        def answered(yes: bool | None) -> None:
            if yes:
                self.begin_sweep(f"sweep ({len(names)} rungs)")

        self.push_screen(ConfirmScreen(
            f"Train {len(names)} plans from the same weights with the current settings ({plural(c.epochs, 'epoch')} each, "
            f"lr {c.effective_lr:.3g}, batch {c.batch_size}): {', '.join(names)}?\n\n"
            f"The plan being edited is not changed; pick a rung in the results (V) to load its plan."), answered)

    def begin_sweep(self, title: str, folder=None) -> None:
        """Start the sweep (``folder``: go on with that stopped one) on the train worker."""
        if self.training:
            return
        try:
            folder = self.controller.start_sweep(self.config, folder=folder)
        except FreezeTUIError as e:
            self.notify(explain(e), severity="warning")
            return
        self.main(RunPanel).start(title, None)
        self.notify(f"Sweep into {folder}: each rung is a run in the runs table; t stops it, V shows it.")
        self.train_worker()

    def action_sweep_results(self) -> None:
        if self.controller is None:
            return
        from ..core.runs import latest_sweep

        rows, folder = self.controller.sweep_rows, self.controller.sweep_dir
        if not rows and folder is None:
            found = latest_sweep(self.options.runs_dir, self.workspace.info.name)
            if found is None:
                self.notify("No sweep yet: S runs one.", severity="warning")
                return
            folder, rows = found
        elif self.controller.sweeping:
            rows = self.controller.live_sweep_rows()

        def done(name: str | None) -> None:
            if name:
                self.notify(f"Loaded the plan of rung {name}; e exports it, t trains it.")

        def go_on() -> None:
            if self.training:
                self.notify("A run is in progress; t stops it.", severity="warning")
            else:
                self.begin_sweep("sweep (continued)", folder)

        unfinished = not self.controller.sweeping and self.controller.sweep_unfinished(folder, rows)
        self.push_screen(SweepScreen(rows, str(folder), self.load_plan_file, running=self.controller.sweeping,
                                     go_on=go_on if unfinished else None), done)

    def on_run_began(self, m: RunBegan) -> None:
        record = self.run_record(m.run_id)
        if record is not None and self.controller.sweeping:
            self.main(RunsTable).upsert(record)
            self.main(RunPanel).start(record.label, record.total_steps)
            self.main(Charts).dirty = True
            self.set_runs_clock(True)  # this rung's time

    def on_run_ended(self, m: RunEnded) -> None:
        record = self.run_record(m.run_id)
        if self.controller.stop_event.is_set() and self.training:
            self.main(RunPanel).stopping(writing=True)  # the run's files are being written now
        if record is not None and self.controller.sweeping:
            self.main(RunsTable).upsert(record, record.id == self.compare_id, folder_size(record.folder))

    def sweep_ended(self, ok: bool, text: str) -> None:
        if ok:
            line, _, rest = text.partition("\n")
            text = f"{line} · V shows it\n{rest}"
        folder = self.controller.sweep_dir
        for record in self.workspace.runs:
            if record.folder is not None and record.folder.parent == folder:  # this sweep's rungs
                if ok and self.options.keep_only_model and record.status == "done":
                    prune_run_folder(record.folder)
                self.main(RunsTable).upsert(record, record.id == self.compare_id, folder_size(record.folder))
        self.main(RunPanel).finish(text, folder_size(folder))
        if not ok:
            self.notify(text.split("\n")[0], title="sweep failed", severity="error", timeout=15)
        self.main(Charts).dirty = True
        self.redraw_charts(force=True)
        if self.controller.quit_requested:
            self.exit(message=self.controller.exit_message(fix_keys))
        elif ok and self.controller.sweep_rows and not self.controller.sweep_rows[-1].get("stopped") \
                and len(self.screen_stack) == 1:
            self.action_sweep_results()  # a finished sweep shows its results; a stopped one leaves the screen be
