"""FreezeApp: composes the widgets, binds the keys, and routes messages between the widgets and
the core. Model loading and training run in thread workers; the run lifecycle itself lives in
the Textual-free :class:`~freezetui.core.controller.RunController`. Only this thread touches
widgets."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import Worker, WorkerState

from ..core.controller import RunController, default_trainer, error_text, folder_size, prune_run_folder
from ..core.lints import render
from ..core.errors import FreezeTUIError
from ..core.train import TrainConfig, gpu_count, memory_in_use
from ..core.workspace import Workspace
from .bridge import UIBridge
from .commands import binding_commands, key_table
from .messages import (EpochDone, LoadProgress, PlanChanged, RunBegan, RunEnded, TrainProgress, WorkspaceFailed,
                       WorkspaceReady)
from .plan_watch import PlanFileWatch
from .screens.confirm import ConfirmScreen
from .screens.glob_dialog import GlobDialog
from .screens.help import HelpScreen
from .screens.path_dialog import PathDialog
from .screens.settings import SettingsScreen
from .screens.sweep import SweepScreen
from .screens.torchrun import TorchrunScreen, next_torchrun_dir, torchrun_command
from .screens.value_dialog import ValueDialog
from .widgets.charts import Charts
from .widgets.details import Details
from .widgets.lints import LintsPanel
from .widgets.module_tree import ModuleTree
from .widgets.run_panel import RunPanel
from .widgets.runs_table import RunsTable
from .widgets.totals import Totals

__all__ = ["AppOptions", "FreezeApp", "create_app", "default_trainer", "run_app"]


@dataclass
class AppOptions:
    """What the app opens: a model (or the plan's), data, and the training settings."""

    model: str = "resnet18"
    weights: str | None = "auto"
    data: str = "shapes"
    num_classes: int | None = None
    small_input: bool = False
    plan: str | None = None
    device: str = "auto"
    seed: int = 0
    runs_dir: str = "runs"
    config: TrainConfig = field(default_factory=TrainConfig)
    keep_only_model: bool = False  # after a finished run, delete its checkpoint (keep model.pt)


class FreezeApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "freezetui"
    # The footer shows what a new user needs first and fits 80 columns; every key is in the
    # help (?) and the command palette (tests/tui/test_keys.py checks both).
    BINDINGS = [
        Binding("t", "train", "Train/stop", id="train"),
        Binding("c", "settings", "Settings", id="settings"),
        Binding("e", "export", "Export plan", id="export", show=False),
        Binding("o", "open_plan", "Open plan", id="open", show=False),
        Binding("slash", "glob", "Freeze/unfreeze by glob", key_display="/", id="glob", show=False),
        Binding("H", "head_only", "Train only the head", id="head_only", show=False),
        Binding("A", "all_trainable", "Train everything", id="all_trainable", show=False),
        Binding("b", "toggle_batchnorm", "Keep/update BatchNorm statistics", id="batchnorm", show=False),
        Binding("R", "recipe", "Fine-tune recipe (head, then all)", id="recipe", show=False),
        Binding("L", "layer_decay", "Layer-wise rate decay…", id="layer_decay", show=False),
        Binding("X", "clear_schedule", "Clear stages and rates", id="clear_schedule", show=False),
        Binding("g", "toggle_lr", "Chart: learning rate / loss", id="toggle_lr", show=False),
        Binding("T", "torchrun", "torchrun command for several GPUs", id="torchrun", show=False),
        Binding("S", "sweep", "Sweep plans: head, +block, …, all", id="sweep", show=False),
        Binding("V", "sweep_results", "Sweep results", id="sweep_results", show=False),
        Binding("question_mark", "help", "Keys", key_display="?", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, options: AppOptions | None = None, workspace: Workspace | None = None,
                 trainer: Callable = default_trainer):
        super().__init__()
        self.options = options or AppOptions()
        self.workspace: Workspace | None = workspace
        self.trainer = trainer
        self.controller: RunController | None = None
        self.config = self.options.config
        self.compare_id: int | None = None
        self.plan_watch = PlanFileWatch(self.options.plan)
        self.exported_version: int | None = None  # the plan version last exported or opened
        self.saved_version: int | None = None  # the version q may quit without asking about

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                with Vertical(id="tree-box"):
                    yield Static("", id="tree-header")
                    yield ModuleTree(id="tree")
                yield Details(id="details")
            with Vertical(id="right"):
                yield Totals(id="totals")
                yield LintsPanel(id="lints")
                yield RunPanel(id="run")
                yield Charts(id="charts")
                yield RunsTable(id="runs")
        yield Footer()

    def on_mount(self) -> None:
        self.main("#tree-box").border_title = "model"
        self.main(LintsPanel).border_title = "lints"
        self.main(RunsTable).border_title = "runs · Enter compare · r resume"
        self.set_interval(0.5, self.redraw_charts)
        self.set_interval(2.0, self.check_plan_file)
        try:  # the SSH session dropping: stop the run within a batch, keep its files, exit
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass
        if self.workspace is not None:
            self.show_workspace()
        else:
            self.sub_title = f"loading {self.options.model} on {self.options.data}…"
            self.load_workspace()

    def load_workspace(self) -> None:
        """Open the model and data on a daemon thread, not a Textual worker: a worker is joined
        when the app exits, so `q` (or a hang-up) during a long load or download would wait for it."""
        o = self.options

        last = [0.0]

        def progress(done: int, total: int) -> None:  # from the decoding, at most ~5 a second
            now = time.monotonic()
            if done >= total or now - last[0] >= 0.2:
                last[0] = now
                self.post_message(LoadProgress(done, total))

        def load() -> None:
            try:
                ws = Workspace.open(o.model, o.weights, o.data, o.num_classes, o.small_input, o.plan, o.device,
                                    o.seed, self.config.image_size, progress=progress)
            except BaseException as e:  # noqa: BLE001 - reported on the UI thread
                self.post_message(WorkspaceFailed(error_text(e)))
            else:
                self.post_message(WorkspaceReady(ws))

        threading.Thread(target=load, name="freezetui-load", daemon=True).start()

    @on(LoadProgress)
    def on_load_progress(self, m: LoadProgress) -> None:
        if self.workspace is None:
            bar = "█" * (20 * m.done // max(1, m.total))
            self.sub_title = (f"loading {self.options.model} on {self.options.data}: decoding images "
                              f"{bar:░<20} {m.done:,}/{m.total:,}")

    @on(WorkspaceReady)
    def on_workspace_ready(self, m: WorkspaceReady) -> None:
        self.workspace = m.workspace
        self.show_workspace()
        ws = m.workspace

        def profile() -> None:  # after the tree is up: start-up does not wait for it
            ws.compute_cost_profile()
            try:
                self.call_from_thread(self.refresh_plan)
            except RuntimeError:  # the app has already exited
                pass

        threading.Thread(target=profile, name="freezetui-cost", daemon=True).start()

    @on(WorkspaceFailed)
    def on_workspace_failed(self, m: WorkspaceFailed) -> None:
        self.exit(return_code=1, message=f"freezetui: error: {m.error}")

    def on_resize(self, event) -> None:
        # below 100 columns one chart (accuracy) gets the right column's width
        self.screen_stack[0].set_class(event.size.width < 100, "narrow")

    def on_unmount(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass

    def hang_up(self) -> None:
        if self.leave_after_hang_up:
            threading.Thread(target=self._leave_after_hang_up, name="freezetui-hangup", daemon=True).start()
        if self.controller is None or self.controller.hang_up():
            self.exit(return_code=128 + signal.SIGHUP)

    # Set by run_app for a real terminal (never under Pilot, where it would end the test process).
    leave_after_hang_up = False

    def _leave_after_hang_up(self) -> None:
        """The terminal is gone: Textual's shutdown can block writing to it, and nobody is left to
        see the screen. Once the run (if any) has stopped and written its files, leave for sure."""
        deadline = time.monotonic() + 600
        while self.training and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # a normal exit usually comes first
        os._exit(128 + signal.SIGHUP)

    def check_plan_file(self) -> None:
        change = self.plan_watch.check()
        if change:
            self.notify(change, severity="warning", timeout=10)

    def show_workspace(self) -> None:
        ws = self.workspace
        self.controller = RunController(ws, self.options.runs_dir, self.trainer)
        self.saved_version = ws.version  # what was opened needs no export before quitting
        if self.options.plan:
            self.exported_version = ws.version  # the plan file holds it
        self.sub_title = ws.describe()
        tree = self.main(ModuleTree)
        tree.load(ws)
        tree.focus()
        self.refresh_plan()
        past = self.controller.load_past_runs()
        for record in past:
            self.main(RunsTable).upsert(record, size=folder_size(record.folder))
        if past:
            self.main(Charts).dirty = True
        if ws.info.note:
            self.notify(ws.info.note, title="weights", timeout=8)
        for w in (ws.data.warnings if ws.data else []):
            self.notify(w, title="data", severity="warning", timeout=10)

    def main(self, selector):
        """A widget of the main screen, even while a dialog is on top."""
        return self.screen_stack[0].query_one(selector)

    # ------------------------------------------------------------------ plan views

    def refresh_plan(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        self.main(Totals).show(ws, self.config)
        box = self.main("#tree-box")
        if ws.has_schedule():
            from ..core.schedule import short_name

            box.border_title = f"model · [yellow]{short_name(ws.plan)}[/]"
        else:
            box.border_title = "model"
        self.main(LintsPanel).show(ws.lints(self.config.image_size))
        node = self.main(ModuleTree).cursor_node
        self.main(Details).show(ws, node.data if node is not None else None)

    @on(PlanChanged)
    def on_plan_changed(self) -> None:
        tree = self.main(ModuleTree)
        tree.repaint()
        tree.show_header()  # the schedule columns come and go with the schedule
        self.refresh_plan()
        if self.main(Charts).show_lr:
            self.main(Charts).dirty = True  # the next run's rates follow the plan

    @on(ModuleTree.NodeHighlighted)
    def on_node_highlighted(self, event: ModuleTree.NodeHighlighted) -> None:
        if self.workspace is not None and event.node.data is not None:
            self.main(Details).show(self.workspace, event.node.data)

    def edit_plan(self, fn, *args) -> bool:
        """Run a workspace edit; say why in a notification when it cannot be done."""
        if self.workspace is None:
            self.notify("Still loading the model.", severity="warning")
            return False
        try:
            fn(*args)
        except FreezeTUIError as e:
            self.notify(str(e), severity="warning")
            return False
        self.post_message(PlanChanged())
        return True

    # ------------------------------------------------------------------ actions

    def action_head_only(self) -> None:
        if self.workspace and self.edit_plan(self.workspace.head_only):
            self.notify(f"Training only the head: {', '.join(self.workspace.heads)}")

    def action_all_trainable(self) -> None:
        if self.workspace:
            self.edit_plan(self.workspace.all_trainable)

    def action_toggle_batchnorm(self) -> None:
        if self.workspace is None:
            return
        mode = "train" if self.workspace.batchnorm == "freeze" else "freeze"
        if self.edit_plan(self.workspace.set_batchnorm, mode):
            self.notify(f"Frozen BatchNorm statistics: {'kept' if mode == 'freeze' else 'updated'} ({mode})")

    # ------------------------------------------------------------------ the schedule

    def ask_unfreeze_at(self, name: str) -> None:
        """E on a tree row: the subtree trains from the epoch asked for."""
        if self.workspace is None or self._read_only():
            return
        ws = self.workspace
        label = name or "the whole model"
        current = ws.schedule_cells(name)[0].lstrip("@").split("-")[0] or "2"

        def submit(text: str) -> str | None:
            if not text.isdigit() or int(text) < 1:
                return "Give an epoch: a whole number from 1 (1 trains it from the start)."
            epoch = int(text)
            try:
                first = ws.unfreeze_at(name, epoch)
            except FreezeTUIError as e:
                return str(e)
            self.post_message(PlanChanged())
            if epoch > 1 and first < epoch:
                self.notify(f"{label} trains from epoch {first}: an earlier stage already unfreezes it.",
                            severity="warning")
            elif epoch > self.config.epochs:
                self.notify(f"Runs are {self.config.epochs} epochs long (c): {label} would never train.",
                            severity="warning")
            return None

        self.push_screen(ValueDialog(f"Unfreeze {label} at the start of epoch…", current, submit,
                                     hint="Frozen until then, trained from then on, its rate warming up over that "
                                          "epoch. 1: train it from the start.", id="epoch-dialog"))

    def ask_rate(self, name: str) -> None:
        """x on a tree row: the subtree's learning-rate multiplier."""
        if self.workspace is None or self._read_only():
            return
        ws = self.workspace
        label = name or "the whole model"
        current = ws.schedule_cells(name)[1].lstrip("×").split("-")[0] or "0.1"

        def submit(text: str) -> str | None:
            try:
                mult = None if text in ("", "1") else float(text)
            except ValueError:
                return f"{text!r} is not a number; give a multiplier such as 0.1, or leave it empty for 1."
            try:
                ws.set_rate(name, mult)
            except FreezeTUIError as e:
                return str(e)
            self.post_message(PlanChanged())
            return None

        self.push_screen(ValueDialog(f"Learning-rate multiplier for {label}", current, submit,
                                     hint=f"Its rate is this × lr ({self.config.effective_lr:.3g}). Empty or 1: "
                                          f"the full rate. Later rules win over earlier ones.", id="rate-dialog"))

    def action_recipe(self) -> None:
        if self.workspace is None or self._read_only():
            return
        if self.edit_plan(self.workspace.apply_recipe):
            self.notify("Fine-tune recipe: the head alone in epoch 1, then everything at half the rate, "
                        "rates spread 100× from the first block to the head (fastai's fine_tune).", timeout=8)

    def action_layer_decay(self) -> None:
        if self.workspace is None or self._read_only():
            return
        ws = self.workspace
        current = "" if ws.plan.layer_decay is None else f"{ws.plan.layer_decay:.4g}"

        def submit(text: str) -> str | None:
            try:
                decay = None if text == "" else float(text)
            except ValueError:
                return f"{text!r} is not a number; give a decay in (0, 1] such as 0.65, or leave it empty for none."
            try:
                ws.set_layer_decay(decay)
            except FreezeTUIError as e:
                return str(e)
            self.post_message(PlanChanged())
            return None

        self.push_screen(ValueDialog("Layer-wise learning-rate decay", current or "0.65", submit,
                                     hint="The head trains at the full rate, the block before it at d×, then d², … "
                                          "(BEiT/MAE use 0.65–0.75). It replaces per-module rates. Empty: off.",
                                     id="decay-dialog"))

    def action_clear_schedule(self) -> None:
        if self.workspace is not None and not self._read_only() and self.workspace.has_schedule():
            if self.edit_plan(self.workspace.clear_schedule):
                self.notify("No stages and no rate rules now; what trains in epoch 1 is unchanged.")

    def action_toggle_lr(self) -> None:
        charts = self.main(Charts)
        charts.show_lr = not charts.show_lr
        charts.dirty = True
        self.redraw_charts(force=True)

    def planned_rates(self) -> tuple[list[float], list[int]] | None:
        """The head's rate per step of the next run under the plan being edited, and the steps
        where its stages start (the LR chart's view between runs)."""
        ws = self.workspace
        if ws is None or ws.data is None:
            return None
        from ..core.schedule import head_rates

        c = self.config
        steps = max(1, len(ws.data.train) // max(1, c.batch_size))
        stages = [st.to_dict() for st in ws.plan.stages]
        return (head_rates(stages, c.schedule, c.effective_lr, steps, c.epochs, c.warmup_epochs),
                [(st["epoch"] - 1) * steps + 1 for st in stages])

    def action_glob(self) -> None:
        if self.workspace is None or self._read_only():
            return

        def apply(pattern: str, freeze: bool) -> int:
            count = self.workspace.apply_glob(pattern, freeze)
            self.post_message(PlanChanged())
            return count

        def done(count: int | None) -> None:
            if count:
                self.notify(f"{count} parameter tensor(s) changed")

        self.push_screen(GlobDialog(apply), done)

    def action_export(self) -> None:
        if self.workspace is None:
            return

        def save(path: str) -> str | None:
            try:
                self.workspace.export(path)
            except OSError as e:
                return f"Cannot write {path}: {e.strerror or e}"
            return None

        def done(path: str | None) -> None:
            if path:
                self.exported_version = self.saved_version = self.workspace.version
                self.plan_watch.watch(path)
                self.notify(f"Plan saved to {path}")

        self.push_screen(PathDialog("Export the freeze plan", "freeze-plan.json", save, confirm_overwrite=True,
                                    id="export-dialog"), done)

    def action_open_plan(self) -> None:
        if self.workspace is None or self._read_only():
            return

        def load(path: str) -> str | None:
            try:
                self.workspace.load_plan(path)
            except FreezeTUIError as e:
                return str(e)
            self.post_message(PlanChanged())
            return None

        def done(path: str | None) -> None:
            if path:
                self.exported_version = self.saved_version = self.workspace.version
                self.plan_watch.watch(path)
                self.notify(f"Plan loaded from {path}")

        self.push_screen(PathDialog("Open a freeze plan", "freeze-plan.json", load, id="open-dialog"), done)

    def action_settings(self) -> None:
        seen = self.workspace.seen_size if self.workspace is not None else None
        screen = SettingsScreen(self.config, seen, self.options.keep_only_model)

        def done(config: TrainConfig | None) -> None:
            if config is not None:
                self.config = config
                self.options.keep_only_model = screen.keep_only_model
                self.refresh_plan()
                self.notify("Settings saved; t trains with them")

        self.push_screen(screen, done)

    def action_torchrun(self) -> None:
        if self.workspace is None:
            return
        path = str(self.plan_watch.path or "freeze-plan.json")
        gpus = gpu_count()
        out = str(next_torchrun_dir(self.options.runs_dir, self.workspace.info.name))
        command = torchrun_command(path, self.options.data, self.config, gpus or 2, out=out,
                                   model=self.options.model,
                                   device=self.config.device if self.config.device != "auto" else self.options.device)
        stale = self.exported_version != self.workspace.version
        note = (f"Export the current plan to {path} first (e): the command reads that file." if stale
                else f"It reads {path}, which holds the current plan.")
        gpu_note = (f"{gpus} GPU(s) found on this machine." if gpus else
                    "No GPU on this machine: set --nproc-per-node to the GPUs where you run it.")
        self.copy_to_clipboard(command)
        self.push_screen(TorchrunScreen(command, note, gpu_note))

    def key_groups(self) -> list[tuple[str, list]]:
        """Every binding with an id, by where it works: the help and the palette list these."""
        return [("model tree", ModuleTree.BINDINGS), ("anywhere", self.BINDINGS), ("runs table", RunsTable.BINDINGS)]

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(title, key_table(b)) for title, b in self.key_groups()]))

    def get_system_commands(self, screen):
        # Textual's own Quit and Keys stay; ours replace neither, so each shows once.
        for command in super().get_system_commands(screen):
            if command.title != "Keys":
                yield command
        tree = self.main(ModuleTree)
        yield from binding_commands(tree.BINDINGS, lambda a: getattr(tree, f"action_{a}")())
        yield from binding_commands([b for b in self.BINDINGS if b.action != "quit"], lambda a: self.run_action(a))
        runs = self.main(RunsTable)
        yield from binding_commands(RunsTable.BINDINGS, lambda a: getattr(runs, f"action_{a}")())

    def _read_only(self) -> bool:
        if self.workspace is not None and self.training:
            self.notify("The plan is read-only while a run is in progress (t stops it).", severity="warning")
            return True
        return False

    # ------------------------------------------------------------------ training

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
        if self.training:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.controller.request_stop()
                    self.main(RunPanel).finish("stopping after this batch…")
            self.push_screen(ConfirmScreen("Stop the run? What it trained so far is kept."), answered)
            return
        refusal = self.controller.next_run_refusal()
        if refusal:
            self.notify(refusal, severity="warning")
            return
        errors = [l for l in self.workspace.lints(self.config.image_size) if l.severity == "error"]
        if errors:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.start_run()
            self.push_screen(ConfirmScreen(f"The plan has an error: {render(errors[0], 'tui')}\n\nTrain anyway?"),
                             confirmed)
            return
        self.start_run()

    def start_run(self) -> None:
        if self.training:
            return
        record = self.controller.start(self.config)
        self.main(RunsTable).upsert(record)
        self.main(RunPanel).start(record.label, None)
        self.main(Charts).dirty = True
        self.set_runs_clock(True)
        self.train_worker()

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def train_worker(self):
        if self.controller.sweeping:
            return self.controller.work_sweep(lambda i, name, record: [UIBridge(self, record)])
        return self.controller.work([UIBridge(self, self.controller.current)])

    # ------------------------------------------------------------------ sweeps

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
            self.notify(str(e), severity="warning")
            return
        c = self.config

        def answered(yes: bool | None) -> None:
            if yes and not self.training:
                folder = self.controller.start_sweep(self.config)
                self.main(RunPanel).start(f"sweep ({len(names)} rungs)", None)
                self.notify(f"Sweep into {folder}: each rung is a run in the runs table; t stops it, V shows it.")
                self.train_worker()

        self.push_screen(ConfirmScreen(
            f"Train {len(names)} plans from the same weights with the current settings ({c.epochs} epoch(s) each, "
            f"lr {c.effective_lr:.3g}, batch {c.batch_size}): {', '.join(names)}?\n\n"
            f"The plan being edited is not changed; pick a rung in the results (V) to load its plan."), answered)

    def action_sweep_results(self) -> None:
        if self.controller is None:
            return
        from ..core.controller import latest_sweep

        rows, folder = self.controller.sweep_rows, self.controller.sweep_dir
        if not rows and folder is None:
            found = latest_sweep(self.options.runs_dir, self.workspace.info.name)
            if found is None:
                self.notify("No sweep yet: S runs one.", severity="warning")
                return
            folder, rows = found
        elif self.controller.sweeping:
            rows = self.controller.live_sweep_rows()

        def load(path: str) -> str | None:
            if self.training:
                return "The plan is read-only while a run is in progress (t stops it)."
            try:
                self.workspace.load_plan(path)
            except FreezeTUIError as e:
                return str(e)
            self.post_message(PlanChanged())
            return None

        def done(name: str | None) -> None:
            if name:
                self.notify(f"Loaded the plan of rung {name}; e exports it, t trains it.")

        self.push_screen(SweepScreen(rows, str(folder), load, running=self.controller.sweeping), done)

    @on(RunBegan)
    def on_run_began(self, m: RunBegan) -> None:
        record = self.controller.current
        if record is not None and record.id == m.run_id and self.controller.sweeping:
            self.main(RunsTable).upsert(record)
            self.main(RunPanel).start(record.label, record.total_steps)
            self.main(Charts).dirty = True
            self.set_runs_clock(True)  # this rung's time

    @on(RunEnded)
    def on_run_ended(self, m: RunEnded) -> None:
        record = next((r for r in self.workspace.runs if r.id == m.run_id), None)
        if record is not None and self.controller.sweeping:
            self.main(RunsTable).upsert(record, record.id == self.compare_id, folder_size(record.folder))

    @on(RunsTable.ResumeRequested)
    def on_resume_requested(self, event: RunsTable.ResumeRequested) -> None:
        record = next(r for r in self.workspace.runs if r.id == event.run_id)
        refusal = self.controller.resume_refusal(record)
        if refusal or self.training:
            self.notify(refusal or "A run is in progress; stop it first (t).", severity="warning")
            return
        done_steps = record.total_steps and len(record.epochs) * record.total_steps // max(1, record.config.epochs)
        self.controller.start_resume(record)
        self.main(RunsTable).upsert(record)
        self.main(RunPanel).start(record.label, None, resumed_from=done_steps or None)
        self.set_runs_clock(True)
        self.train_worker()

    @on(TrainProgress)
    def on_train_progress(self, m: TrainProgress) -> None:
        record = self.controller.current
        self.main(RunPanel).progress(record.label, m.epoch, m.epochs, m.global_step, m.total_steps,
                                     m.images_per_s, record.device, memory_in_use(record.device or "cpu"))
        self.main(Charts).dirty = True

    @on(EpochDone)
    def on_epoch_done(self, m: EpochDone) -> None:
        self.main(RunsTable).upsert(self.controller.current, False)
        self.main(Charts).dirty = True

    @on(Worker.StateChanged)
    def on_worker_state(self, event: Worker.StateChanged) -> None:
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
            self.exit(message=self.controller.exit_message())

    def sweep_ended(self, ok: bool, text: str) -> None:
        folder = self.controller.sweep_dir
        rung_dirs = {str(r.folder) for r in self.workspace.runs if r.folder is not None
                     and folder is not None and r.folder.parent == folder}
        for record in self.workspace.runs:
            if str(record.folder) in rung_dirs:
                if ok and self.options.keep_only_model and record.status == "done":
                    prune_run_folder(record.folder)
                self.main(RunsTable).upsert(record, record.id == self.compare_id, folder_size(record.folder))
        self.main(RunPanel).finish(text, folder_size(folder))
        if not ok:
            self.notify(text.split("\n")[0], title="sweep failed", severity="error", timeout=15)
        self.main(Charts).dirty = True
        self.redraw_charts(force=True)
        if self.controller.quit_requested:
            self.exit(message=self.controller.exit_message())
        elif ok and self.controller.sweep_rows and len(self.screen_stack) == 1:
            self.action_sweep_results()

    @on(DataTable.RowSelected)
    def on_run_selected(self, event: DataTable.RowSelected) -> None:
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

    @property
    def unexported_edits(self) -> bool:
        return self.workspace is not None and self.saved_version != self.workspace.version

    async def action_quit(self) -> None:
        if self.controller is not None and not self.controller.running and self.unexported_edits:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.exit()
            self.push_screen(ConfirmScreen("The plan was edited and not exported (e exports it). Quit anyway?"),
                             answered)
            return
        if self.controller is None or self.controller.quit():
            self.exit()
            return
        self.main(RunPanel).finish("stopping the run to quit; keeping what it trained…")


def create_app(options: AppOptions | None = None, workspace: Workspace | None = None,
               trainer: Callable = default_trainer) -> FreezeApp:
    """The one factory the CLI and the tests use."""
    return FreezeApp(options, workspace=workspace, trainer=trainer)


def options_from_args(args) -> AppOptions:
    from ..options import config_from_args

    return AppOptions(model=args.model, weights=args.weights, data=args.data, num_classes=args.num_classes,
                      small_input=args.small_input, plan=args.plan, device=args.device, seed=args.seed,
                      runs_dir=args.runs_dir, config=config_from_args(args),
                      keep_only_model=getattr(args, "keep_only_model", False))


def run_app(args) -> int:
    from ..core.plan import FreezePlan
    from ..core.runner import check_code_allowed
    from ..core.train import resolve_device

    # Cheap checks first, so a bad argument is one sentence before the screen is taken over.
    resolve_device(args.device)
    if args.plan:
        check_code_allowed(FreezePlan.load(args.plan).model["name"], args.model)
    app = create_app(options_from_args(args))
    app.leave_after_hang_up = True
    app.run()
    return app.return_code or 0
