"""The plan keys that need a dialog or the whole app: presets, glob, export, open, settings,
the torchrun command. A mixin of :class:`~freezetui.tui.app.FreezeApp`."""

from __future__ import annotations

from ..core.errors import FreezeTUIError
from ..core.config import TrainConfig
from ..core.devices import gpu_count
from .format import explain, lint_text, plural
from .messages import PlanChanged
from .screens.confirm import ConfirmScreen
from .screens.glob_dialog import GlobDialog
from .screens.path_dialog import PathDialog
from .screens.settings import SettingsScreen
from .widgets.charts import Charts
from .screens.torchrun import TorchrunScreen, next_torchrun_dir, torchrun_command


class PlanActions:
    """Methods of the app; they use its workspace, controller, config and widgets."""

    def edit_plan(self, fn, *args) -> bool:
        """Run a workspace edit; say why in a notification when it cannot be done."""
        if self.workspace is None:
            self.notify("Still loading the model.", severity="warning")
            return False
        try:
            fn(*args)
        except FreezeTUIError as e:
            self.notify(explain(e), severity="warning")
            return False
        self.post_message(PlanChanged())
        return True

    def _read_only(self) -> bool:
        if self.workspace is not None and self.training:
            self.notify("The plan is read-only while a run is in progress (t stops it).", severity="warning")
            return True
        return False

    def action_head_only(self) -> None:
        if self.workspace and self.edit_plan(self.workspace.head_only):
            ws = self.workspace
            new = [m for m in ws.plan.new_modules if m not in ws.heads]
            extra = f", and the new {', '.join(new)}" if new else ""
            self.notify(f"Training only the head: {', '.join(ws.heads)}{extra}")

    def action_all_trainable(self) -> None:
        if self.workspace:
            self.edit_plan(self.workspace.all_trainable)

    def action_toggle_batchnorm(self) -> None:
        if self.workspace is None:
            return
        mode = "train" if self.workspace.batchnorm == "freeze" else "freeze"
        if self.edit_plan(self.workspace.set_batchnorm, mode):
            self.notify(f"Frozen BatchNorm statistics: {'kept' if mode == 'freeze' else 'updated'} ({mode})")

    def action_glob(self) -> None:
        if self.workspace is None or self._read_only():
            return

        def apply(pattern: str, freeze: bool) -> int:
            count = self.workspace.apply_glob(pattern, freeze)
            self.post_message(PlanChanged())
            return count

        def done(count: int | None) -> None:
            if count:
                self.notify(f"{plural(count, 'parameter tensor')} changed")

        self.push_screen(GlobDialog(apply), done)

    def action_export(self) -> None:
        if self.workspace is None:
            return
        errors = [l for l in self.workspace.lints(self.config.image_size) if l.severity == "error"]
        if errors:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.export_dialog()
            self.push_screen(ConfirmScreen(f"The plan has an error: {lint_text(errors[0])}\n\n"
                                           f"Export it anyway?"), confirmed)
            return
        self.export_dialog()

    def export_dialog(self) -> None:
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

    def load_plan_file(self, path: str) -> str | None:
        """Load a plan file into the tree, all or nothing; the reason it cannot, or None."""
        try:
            self.workspace.load_plan(path)
        except FreezeTUIError as e:
            return explain(e)
        self.post_message(PlanChanged())
        return None

    def action_open_plan(self) -> None:
        if self.workspace is None or self._read_only():
            return

        def done(path: str | None) -> None:
            if path:
                self.exported_version = self.saved_version = self.workspace.version
                self.plan_watch.watch(path)
                self.notify(f"Plan loaded from {path}")

        self.push_screen(PathDialog("Open a freeze plan", "freeze-plan.json", self.load_plan_file, id="open-dialog"),
                         done)

    def action_settings(self) -> None:
        seen = self.workspace.seen_size if self.workspace is not None else None
        screen = SettingsScreen(self.config, seen, self.options.keep_only_model)

        def done(config: TrainConfig | None) -> None:
            if config is not None:
                resize = self.workspace is not None and self.workspace.cost_profile is not None and \
                    self.workspace.seen_size(config.image_size) != self.workspace.cost_profile.image_size
                self.config = config
                if resize:  # the cost line priced another image size: measure again
                    self.workspace.cost_profile = None
                    self.measure_cost()
                self.options.keep_only_model = screen.keep_only_model
                self.refresh_plan()
                self.main(Charts).dirty = True  # the next run's rates follow the epochs and batch
                self.notify("Settings saved; t trains with them")

        self.push_screen(screen, done)

    def action_torchrun(self) -> None:
        if self.workspace is None:
            return
        path = str(self.plan_watch.path or "freeze-plan.json")
        gpus = gpu_count()
        out = str(next_torchrun_dir(self.options.runs_dir, self.workspace.info.name))
        command = torchrun_command(path, self.options.data, self.config, gpus, out=out,
                                   model=self.options.model.name, device=self.config.device)
        stale = self.exported_version != self.workspace.version
        note = (f"Export the current plan to {path} first (e): the command reads that file." if stale
                else f"It reads {path}, which holds the current plan.")
        gpu_note = (f"{plural(gpus, 'GPU')} found on this machine." if gpus else
                    "No GPU on this machine: --nproc-per-node gpu starts one process per GPU where you run it.")
        self.copy_to_clipboard(command)
        self.push_screen(TorchrunScreen(command, note, gpu_note))
