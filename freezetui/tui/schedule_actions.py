"""The schedule keys (issue 11): unfreeze a subtree at an epoch (E), its rate multiplier (x),
the recipe (R) and layer-decay (L) presets, clearing them (X), the learning-rate chart (g).
A mixin of :class:`~freezetui.tui.app.FreezeApp`."""

from __future__ import annotations

from ..core.errors import FreezeTUIError
from .format import explain
from .messages import PlanChanged
from .screens.value_dialog import ValueDialog
from .widgets.charts import Charts


class ScheduleActions:
    """Methods of the app; they use its workspace, controller, config and widgets."""

    def ask_unfreeze_at(self, name: str) -> None:
        """E on a tree row: the subtree trains from the epoch asked for."""
        if self.workspace is None or self._read_only():
            return
        ws = self.workspace
        label = name or "the whole model"
        epochs = ws.schedule_span(name).epochs
        current = str(epochs[1]) if epochs is not None and epochs[1] > 1 else "2"

        def submit(text: str) -> str | None:
            try:
                epoch = int(text)
            except ValueError:
                epoch = 0
            if epoch < 1:
                return "Give an epoch: a whole number from 1 (1 trains it from the start)."
            try:
                first = ws.unfreeze_at(name, epoch)
            except FreezeTUIError as e:
                return explain(e)
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
        rates = ws.schedule_span(name).rates
        current = f"{rates[0]:g}" if rates is not None and rates != (1.0, 1.0) else "0.1"

        def submit(text: str) -> str | None:
            try:
                mult = None if text in ("", "1") else float(text)
            except ValueError:
                return f"{text!r} is not a number; give a multiplier such as 0.1, or leave it empty for 1."
            try:
                ws.set_rate(name, mult)
            except FreezeTUIError as e:
                return explain(e)
            self.post_message(PlanChanged())
            return None

        self.push_screen(ValueDialog(f"Learning-rate multiplier for {label}", current, submit,
                                     hint=f"Its rate is this × lr ({self.config.effective_lr:.3g}). Empty or 1: no "
                                          f"rule of its own (a rule set on a module around it still applies). "
                                          f"Later rules win over earlier ones.", id="rate-dialog"))

    def action_recipe(self) -> None:
        if self.workspace is None or self._read_only():
            return
        if self.edit_plan(self.workspace.apply_recipe):
            self.notify("Fine-tune recipe: the head and the norm layers alone in epoch 1, then everything at "
                        "half the rate, spread 100× over fastai's parameter groups (fastai's fine_tune).", timeout=8)

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
                return explain(e)
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

    def planned_rates(self, limit: int = 400) -> tuple[tuple[list[int], list[float]], list[int]] | None:
        """The head's rate at up to ``limit`` steps of the next run under the plan being
        edited, and the steps where its stages start (the LR chart's view between runs)."""
        ws = self.workspace
        if ws is None or ws.data is None:
            return None
        from ..core.schedule import head_rates, sample_steps

        c = self.config
        steps = max(1, len(ws.data.train) // max(1, c.batch_size))
        stages = [st.to_dict() for st in ws.plan.stages]
        xs = sample_steps(c.epochs * steps, limit)
        return ((xs, head_rates(stages, c.schedule, c.effective_lr, steps, c.epochs, c.warmup_epochs, at=xs)),
                [(st["epoch"] - 1) * steps + 1 for st in stages])
