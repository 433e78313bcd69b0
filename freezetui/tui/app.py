"""FreezeApp: composes the widgets, binds the keys, loads the model and routes messages between
the widgets and the core. What the keys do lives in mixins by subject (``plan_actions``,
``schedule_actions``, ``run_actions``, ``sweep_actions``); the run lifecycle itself is the
Textual-free :class:`~freezetui.core.controller.RunController`. Only this thread touches
widgets."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Static

from ..core.controller import RunController, default_trainer, error_text
from ..core.runs import folder_size
from ..core.specs import ModelSpec
from ..core.config import TrainConfig
from ..core.workspace import Workspace
from .commands import binding_commands, key_table
from .messages import LoadProgress, PlanChanged, WorkspaceFailed, WorkspaceReady
from .mode_actions import ModeActions
from .plan_actions import PlanActions
from .plan_watch import PlanFileWatch
from .run_actions import RunActions
from .schedule_actions import ScheduleActions
from .suggest_actions import SuggestActions
from .screens.confirm import ConfirmScreen
from .screens.help import HelpScreen
from .sweep_actions import SweepActions
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

    model: ModelSpec = field(default_factory=ModelSpec)
    data: str = "shapes"
    plan: str | None = None  # the plan file
    runs_dir: str = "runs"
    config: TrainConfig = field(default_factory=TrainConfig)  # device, seed and image size too
    keep_only_model: bool = False  # after a finished run, delete its checkpoint (keep model.pt)
    loaded_plan: object | None = None  # the FreezePlan the CLI read from ``plan`` (read once)


def header_text(ws: Workspace) -> str:
    """Model · weights · data · device, for the header."""
    from ..core.devices import resolve_device

    info = ws.info
    # the note says why there are no weights; a download's note is a toast, not header text
    w = (info.weights or "random init") + (f" ({info.note})" if info.note and not info.weights else "")
    small = ", small input" if info.small_input else ""
    return f"{info.name}{small} · {w} · {ws.data_name} · {resolve_device(ws.device)}"


class FreezeApp(PlanActions, ModeActions, ScheduleActions, RunActions, SweepActions, SuggestActions, App):
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
        Binding("m", "measure_signal", "Measure which layers the data pulls on (‖g‖/‖w‖)", id="measure_signal",
                show=False),
        Binding("M", "apply_suggestion", "Use the suggested plan (head + strongest blocks)", id="apply_suggestion",
                show=False),
        Binding("N", "toggle_auto_rgn", "Auto-RGN rates on/off", id="auto_rgn", show=False),
        Binding("w", "lints", "Read the lints in full", id="lints", show=False),
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
        self.measuring_cost = False  # the cost profile is being taken (the totals say so)

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
            self.sub_title = f"loading {self.options.model.name} on {self.options.data}…"
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
                ws = Workspace.open(o.model, o.data, o.loaded_plan or o.plan, self.config, progress=progress)
            except BaseException as e:  # noqa: BLE001 - reported on the UI thread
                self.post_message(WorkspaceFailed(error_text(e)))
            else:
                self.post_message(WorkspaceReady(ws))

        threading.Thread(target=load, name="freezetui-load", daemon=True).start()

    @on(LoadProgress)
    def on_load_progress(self, m: LoadProgress) -> None:
        if self.workspace is None:
            bar = "█" * (20 * m.done // max(1, m.total))
            self.sub_title = (f"loading {self.options.model.name} on {self.options.data}: decoding images "
                              f"{bar:░<20} {m.done:,}/{m.total:,}")

    @on(WorkspaceReady)
    def on_workspace_ready(self, m: WorkspaceReady) -> None:
        self.workspace = m.workspace
        self.show_workspace()
        self.measure_cost()

    def measure_cost(self) -> None:
        """Profile the model for the cost line at the size it will see, on a daemon thread (after
        the tree is up: start-up does not wait for it); again when the image size changes."""
        ws, size = self.workspace, self.config.image_size
        self.measuring_cost = True

        def profile() -> None:
            ws.compute_cost_profile(size)

            def done() -> None:
                self.measuring_cost = False
                self.refresh_plan()
            try:
                self.call_from_thread(done)
            except RuntimeError:  # the app has already exited
                pass

        threading.Thread(target=profile, name="freezetui-cost", daemon=True).start()

    @on(WorkspaceFailed)
    def on_workspace_failed(self, m: WorkspaceFailed) -> None:
        self.exit(return_code=1, message=f"freezetui: error: {m.error}")

    def on_resize(self, event) -> None:
        # below 100 columns one chart (accuracy) gets the right column's width; below 30 rows the
        # charts give their rows to the runs table (the run in progress, and how the others did)
        self.screen_stack[0].set_class(event.size.width < 100, "narrow")
        self.screen_stack[0].set_class(event.size.height < 30, "short")

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
        self.sub_title = header_text(ws)
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

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """One toast at a time, short: a new one replaces the last (the keys' toasts come in bursts)."""
        self.clear_notifications()
        limit = 8.0 if severity == "error" else 5.0 if severity == "warning" else 3.0
        super().notify(message, title=title, severity=severity, markup=markup,
                       timeout=min(timeout, limit) if timeout is not None else limit)

    def main(self, selector):
        """A widget of the main screen, even while a dialog is on top."""
        return self.screen_stack[0].query_one(selector)

    # ------------------------------------------------------------------ plan views

    def refresh_plan(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        self.main(Totals).show(ws, self.config, self.measuring_cost)
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
        self.on_plan_changed_heat()
        self.refresh_plan()
        if self.main(Charts).show_lr:
            self.main(Charts).dirty = True  # the next run's rates follow the plan

    @on(LintsPanel.ModuleRequested)
    def on_lint_module_requested(self, m: LintsPanel.ModuleRequested) -> None:
        """Enter on a lint: the tree's cursor on its module (expanding the way), the tree focused."""
        tree = self.main(ModuleTree)
        node, parts = tree.root, m.module.split(".")
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            if not node.children and self.workspace.nodes[node.data].children:
                tree._add_children(node)
            node.expand()
            node = next((c for c in node.children if c.data == name), None)
            if node is None:
                return
        tree.move_cursor(node)
        tree.focus()

    def action_lints(self) -> None:
        self.main(LintsPanel).focus()

    @on(ModuleTree.NodeHighlighted)
    def on_node_highlighted(self, event: ModuleTree.NodeHighlighted) -> None:
        if self.workspace is not None and event.node.data is not None:
            self.main(Details).show(self.workspace, event.node.data)

    # ------------------------------------------------------------------ keys

    def key_groups(self) -> list[tuple[str, list]]:
        """Every binding with an id, by where it works: the help and the palette list these."""
        return [("model tree", ModuleTree.BINDINGS), ("anywhere", self.BINDINGS), ("runs table", RunsTable.BINDINGS),
                ("lints (w)", LintsPanel.BINDINGS)]

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(title, key_table(b)) for title, b in self.key_groups()]))

    def get_system_commands(self, screen):
        # Textual's own Quit and Keys stay; ours replace neither, so each shows once.
        for command in super().get_system_commands(screen):
            if command.title != "Keys":
                yield command
        tree = self.main(ModuleTree)
        yield from binding_commands(tree.BINDINGS, lambda a: getattr(tree, f"action_{a}")(), "in the model tree")
        yield from binding_commands([b for b in self.BINDINGS if b.action != "quit"], lambda a: self.run_action(a))
        runs = self.main(RunsTable)
        yield from binding_commands(RunsTable.BINDINGS, lambda a: getattr(runs, f"action_{a}")(), "in the runs table")
        lints = self.main(LintsPanel)
        yield from binding_commands(LintsPanel.BINDINGS, lambda a: getattr(lints, f"action_{a}")(), "in the lints (w)")

    @property
    def unexported_edits(self) -> bool:
        return self.workspace is not None and self.saved_version != self.workspace.version

    async def action_quit(self) -> None:
        controller = self.controller
        if controller is not None and controller.quit_requested:
            return  # already stopping to quit: the app exits when the run has
        running = controller is not None and controller.running
        if not running and not self.unexported_edits:
            self.exit()
            return
        lines = []
        if running:
            lines.append("The sweep is running: stop it and quit? Finished rungs are kept." if controller.sweeping
                         else "A run is in progress: stop it and quit? What it trained so far is kept.")
        if self.unexported_edits:
            lines.append("The plan was edited and not exported (e exports it)."
                         + ("" if running else " Quit anyway?"))

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            if self.controller is None or self.controller.quit():
                self.exit()
                return
            self.main(RunPanel).stopping()

        self.push_screen(ConfirmScreen("\n\n".join(lines)), answered)


def create_app(options: AppOptions | None = None, workspace: Workspace | None = None,
               trainer: Callable = default_trainer) -> FreezeApp:
    """The one factory the CLI and the tests use."""
    return FreezeApp(options, workspace=workspace, trainer=trainer)


def options_from_args(args) -> AppOptions:
    from ..options import config_from_args, model_spec_from_args

    return AppOptions(model=model_spec_from_args(args), data=args.data, plan=args.plan, runs_dir=args.runs_dir,
                      config=config_from_args(args), keep_only_model=getattr(args, "keep_only_model", False))


def run_app(args) -> int:
    from ..core.models import check_factory_allowed
    from ..core.plan import FreezePlan
    from ..core.devices import resolve_device

    # Cheap checks first, so a bad argument is one sentence before the screen is taken over.
    resolve_device(args.device)
    options = options_from_args(args)
    if args.plan:
        options.loaded_plan = FreezePlan.load(args.plan)  # read once: the workspace opens this object
        check_factory_allowed(options.loaded_plan.model["name"], options.model.name)
    app = create_app(options)
    app.leave_after_hang_up = True
    app.run()
    return app.return_code or 0
