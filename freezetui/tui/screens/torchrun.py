"""The torchrun command that runs the current plan and settings on N GPUs, ready to copy."""

from __future__ import annotations

import shlex

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static


def torchrun_command(plan_path: str, data: str, config, gpus: int, out: str = "runs/torchrun") -> str:
    """The headless equivalent of pressing t, on ``gpus`` processes."""
    args = ["torchrun", "--standalone", "--nproc-per-node", str(max(1, gpus)), "-m", "freezetui", "train",
            "--plan", plan_path, "--data", data, "--epochs", str(config.epochs),
            "--batch-size", str(config.batch_size), "--optimizer", config.optimizer,
            "--weight-decay", f"{config.weight_decay:g}", "--seed", str(config.seed)]
    if config.lr is not None:
        args += ["--lr", f"{config.lr:g}"]
    if config.image_size:
        args += ["--image-size", str(config.image_size)]
    if not config.augment:
        args.append("--no-augment")
    if not config.cache:
        args.append("--no-cache")
    args += ["--out", out]
    return shlex.join(args)


class TorchrunScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter,T", "dismiss", "Close")]

    def __init__(self, command: str, note: str):
        super().__init__()
        self.command = command
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Run this plan on several GPUs (copied to the clipboard)", classes="dialog-title")
            yield Static(self.command, id="command")
            yield Label(self.note, classes="dialog-help")
            yield Label("Esc closes. The batch size is per process; see the README on torchrun.",
                        classes="dialog-help")
