"""Which layers should train (issue 23): m measures each module's relative gradient norm on the
open model and data in a worker (the tree gains a heat column), M makes the suggestion the plan
being edited, N turns Auto-RGN rates on and off. A mixin of :class:`~freezetui.tui.app.FreezeApp`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from textual import work
from textual.message import Message
from textual.worker import Worker, WorkerState

from ..core.errors import FreezeTUIError
from .format import explain
from .widgets.module_tree import ModuleTree


@dataclass
class SignalProgress(Message):
    """Batches measured so far; newer replaces older."""

    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SignalProgress)


class SuggestActions:
    """Methods of the app; they use its workspace, config and widgets."""

    suggestion = None  # core.suggest.Suggestion, while it describes the open model, data and plan
    signal_stop: threading.Event | None = None

    @property
    def measuring(self) -> bool:
        return any(w.group == "signal" and w.is_running for w in self.workers)

    def action_measure_signal(self) -> None:
        if self.workspace is None or self.workspace.inputs is None:
            self.notify("Still loading the model and data.", severity="warning")
            return
        if self.training:
            self.notify("A run is in progress; t stops it, then m measures.", severity="warning")
            return
        if self.measuring:
            self.signal_stop.set()
            return
        self.signal_stop = threading.Event()
        self.main("#tree-box").border_subtitle = "measuring ‖g‖/‖w‖…"
        self.signal_worker()

    @work(thread=True, exclusive=True, group="signal", exit_on_error=False)
    def signal_worker(self):
        from ..core.suggest import suggest

        ws, stop = self.workspace, self.signal_stop
        last = [0.0]

        def progress(done: int, total: int) -> None:  # at most ~10 a second
            now = time.monotonic()
            if done >= total or now - last[0] >= 0.1:
                last[0] = now
                self.post_message(SignalProgress(done, total))

        ws.reset_weights()  # the weights the model was opened with, as every run starts from
        return suggest(ws.inputs, self.config, batchnorm=ws.plan.batchnorm, stop=stop, progress=progress), ws.version

    def on_signal_progress(self, m: SignalProgress) -> None:
        bar = "█" * (10 * m.done // max(1, m.total))
        self.main("#tree-box").border_subtitle = f"measuring ‖g‖/‖w‖ {bar:░<10} batch {m.done}/{m.total} · m stops"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The measurement's end. Textual calls this handler of every class in the app's MRO, so
        RunActions' (the "train" group's) runs too; each looks at its own group only."""
        worker, state = event.worker, event.state
        if worker.group != "signal" or state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        box = self.main("#tree-box")
        box.border_subtitle = ""
        if state != WorkerState.SUCCESS:
            error = worker.error
            if not (self.signal_stop is not None and self.signal_stop.is_set()):
                self.notify(explain(error) if isinstance(error, FreezeTUIError) else f"measuring failed: {error}",
                            severity="error")
            return
        suggestion, version = worker.result
        self.suggestion = suggestion
        self.main(ModuleTree).show_heat(suggestion.signal.module_signal(), version)
        s = suggestion.signal
        self.notify(f"‖g‖/‖w‖ over {s.batches} batches in {s.seconds:.1f}s: the heat column shows it. "
                    f"Suggested: the head + {', '.join(suggestion.blocks) or 'nothing else'} (M uses it).",
                    title="signal", timeout=10)

    def action_apply_suggestion(self) -> None:
        if self.suggestion is None or not self.main(ModuleTree).heat_shown:
            self.notify("No measurement for this plan yet: m measures.", severity="warning")
            return
        if self._read_only():
            return
        plan = self.suggestion.plan

        def load() -> None:
            auto = self.workspace.plan.auto_rgn  # the suggestion is frozen/trainable; rates stay
            self.workspace.load_plan_object(plan)
            if auto:
                self.workspace.set_auto_rgn(True)

        if self.edit_plan(load):
            self.main(ModuleTree).heat_version = self.workspace.version  # our own edit keeps the numbers
            self.notify(f"The plan is now the head + {', '.join(self.suggestion.blocks) or 'nothing else'}.")

    def action_toggle_auto_rgn(self) -> None:
        if self.workspace is None or self._read_only():
            return
        on = not self.workspace.plan.auto_rgn
        if self.edit_plan(self.workspace.set_auto_rgn, on):
            self.notify("Auto-RGN on: every step, each trainable tensor's rate × its ‖g‖/‖w‖ over the largest."
                        if on else "Auto-RGN off.")

    def on_plan_changed_heat(self) -> None:
        """Called by the app on every plan change: a stale heat column leaves the screen."""
        tree = self.main(ModuleTree)
        if tree.heat is not None and self.workspace is not None and tree.heat_version != self.workspace.version:
            tree.show_heat(None, None)
            self.suggestion = None
