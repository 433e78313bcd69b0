"""The mode key (i): the highlighted subtree cycles through frozen → trainable → bias-only →
norm-only → LoRA; the LoRA rank and alpha are asked the first time and remembered. A mixin of
:class:`~freezetui.tui.app.FreezeApp`."""

from __future__ import annotations

from ..core.adapters import available_modes, next_mode
from ..core.errors import FreezeTUIError
from .format import explain
from .messages import PlanChanged
from .screens.value_dialog import ValueDialog


class ModeActions:
    """Methods of the app; they use its workspace and widgets."""

    lora_rank: tuple[int, float] | None = None  # (r, alpha) once asked

    def cycle_mode(self, name: str) -> None:
        ws = self.workspace
        if ws is None or self._read_only():
            return
        if next_mode(ws.mode(name), available_modes(ws.plan, ws.model, name)) == "lora" and self.lora_rank is None:
            self.ask_lora_rank(lambda: self.cycle_mode(name))
            return
        r, alpha = self.lora_rank or (8, 16.0)
        try:
            mode = ws.cycle_mode(name, r, alpha)
        except FreezeTUIError as e:
            self.notify(explain(e), severity="warning")
            return
        self.post_message(PlanChanged())
        extra = f" (r {r}, alpha {alpha:g})" if mode == "lora" else ""
        self.notify(f"{name or 'the whole model'}: {mode}{extra}")

    def ask_lora_rank(self, then) -> None:
        def submit(text: str) -> str | None:
            r_text, _, alpha_text = text.strip().partition(":")
            try:
                r = int(r_text)
                alpha = float(alpha_text) if alpha_text else 2.0 * r
            except ValueError:
                return f"{text!r}: give the rank and alpha as R:ALPHA, e.g. 8:16"
            if r < 1 or alpha <= 0:
                return "the rank must be a positive whole number and alpha positive"
            self.lora_rank = (r, alpha)
            self.call_later(then)
            return None

        self.push_screen(ValueDialog("LoRA rank and alpha (R:ALPHA)", "8:16", submit,
                                     hint="Asked once: every LoRA subtree after this uses it. The update is "
                                          "(alpha / R)·B·A, B starting at zero.", id="lora-dialog"))
