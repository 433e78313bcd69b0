"""The torchrun command that runs the current plan and settings on N GPUs, ready to copy."""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ...core.models import is_factory
from ...core.schedule import OWN_LOOP


def next_torchrun_dir(runs_dir: str, model: str) -> Path:
    """A folder name no run uses yet (the command creates it; nothing is made here)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{stamp}-{model.replace(':', '-').replace('/', '-')}-torchrun"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def torchrun_args(plan_path: str, data: str, config, gpus: int, out: str, model: str | None = None,
                  device: str = "auto") -> list[list[str]]:
    """The headless equivalent of pressing t, on ``gpus`` processes (0: none here, so torchrun's
    ``gpu``, one process per GPU where it runs): the words, an option and its value kept together."""
    groups = [["torchrun"], ["--standalone"], ["--nproc-per-node", str(gpus) if gpus > 0 else "gpu"], ["-m", "freezetui", "train"],
              ["--plan", plan_path], ["--data", data]]
    if model and is_factory(model):  # a plan naming code runs only when the command names it too
        groups.append(["--model", model])
    groups += [["--epochs", str(config.epochs)], ["--batch-size", str(config.batch_size)],
               ["--optimizer", config.optimizer], ["--weight-decay", f"{config.weight_decay:g}"]]
    if config.lr is not None:
        groups.append(["--lr", f"{config.lr:g}"])
    if config.optimizer == "sgd":
        groups.append(["--momentum", f"{config.momentum:g}"])
    groups.append(["--seed", str(config.seed)])
    if config.image_size:
        groups.append(["--image-size", str(config.image_size)])
    if device and device != "auto":
        groups.append(["--device", device])
    for flag, on in (("--no-augment", not config.augment), ("--no-cache", not config.cache),
                     ("--no-amp", not config.amp), ("--compile", config.compile)):
        if on:
            groups.append([flag])
    groups.append(["--out", out])
    return groups


def torchrun_command(plan_path: str, data: str, config, gpus: int, out: str = "runs/torchrun",
                     model: str | None = None, device: str = "auto", width: int = 50) -> str:
    """The command as a shell reads it, continued over lines of about ``width`` columns with
    ``\\`` (it fits an 80-column dialog, so no line wraps without one)."""
    lines: list[str] = []
    for group in torchrun_args(plan_path, data, config, gpus, out, model, device):
        words = shlex.join(group)
        if lines and len(lines[-1]) + 1 + len(words) <= width and not group[0] == "--out":
            lines[-1] += " " + words
        else:
            lines.append(words)
    return " \\\n    ".join(lines)


def osc52_note(app) -> str:
    """Textual copies through the terminal (OSC 52); say honestly when that may not reach the
    system clipboard."""
    import os

    if os.environ.get("TMUX"):
        return ("Copied through the terminal (OSC 52); under tmux that reaches the clipboard only with "
                "`set -g set-clipboard on`. Otherwise select the command above.")
    return "Copied through the terminal (OSC 52) where the terminal allows it; otherwise select the command above."


class TorchrunScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter,q,T", "dismiss", "Close"), Binding("e", "export", "Export the plan")]

    def __init__(self, command: str, note: str, gpu_note: str = ""):
        super().__init__()
        self.command = command
        self.note = note
        self.gpu_note = gpu_note

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="torchrun"):
            yield Label("Run this plan on several GPUs", classes="dialog-title")
            yield Static(self.command, id="command")
            yield Label(osc52_note(self.app), classes="dialog-help", id="copy-note")
            yield Label(self.note, classes="dialog-help")
            if self.gpu_note:
                yield Label(self.gpu_note, classes="dialog-help")
            yield Label(OWN_LOOP, classes="dialog-help")
            yield Label("The batch size is per process; see the README on torchrun.  e: export the plan  "
                        "Esc / q: close", classes="dialog-help")

    def action_export(self) -> None:
        self.dismiss()
        self.app.action_export()
