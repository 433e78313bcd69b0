"""Training settings, validated by the core's own TrainConfig checks."""

from __future__ import annotations

import dataclasses

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Select

from ...core.errors import FreezeTUIError
from ...core.train import OPTIMIZERS, TrainConfig

FIELDS = [  # (id, label, attribute, parse)
    ("epochs", "epochs", "epochs", int),
    ("batch", "batch size", "batch_size", int),
    ("lr", "learning rate (blank: auto)", "lr", float),
    ("wd", "weight decay", "weight_decay", float),
    ("size", "image size (blank: default)", "image_size", int),
]


class SettingsScreen(ModalScreen[TrainConfig | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config

    def compose(self) -> ComposeResult:
        c = self.config
        with Vertical(classes="dialog"):
            yield Label("Training settings", classes="dialog-title")
            with Grid(id="settings-grid"):
                for fid, label, attr, _ in FIELDS:
                    value = getattr(c, attr)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=fid)
                yield Label("optimizer")
                yield Select([(o, o) for o in OPTIMIZERS], value=c.optimizer, allow_blank=False, id="optimizer")
                yield Label("augmentation")
                yield Checkbox("random crop + flip", value=c.augment, id="augment")
            yield Label("Enter or Ctrl+S: save    Esc: cancel", classes="dialog-help")
            yield Label("", id="error", classes="dialog-error")

    def read(self) -> TrainConfig:
        values = {}
        for fid, label, attr, parse in FIELDS:
            text = self.query_one(f"#{fid}", Input).value.strip()
            if not text and attr in ("lr", "image_size"):
                values[attr] = None
                continue
            try:
                values[attr] = parse(text)
            except ValueError:
                raise FreezeTUIError(f"{label}: {text!r} is not a number") from None
        values["optimizer"] = self.query_one("#optimizer", Select).value
        values["augment"] = self.query_one("#augment", Checkbox).value
        config = dataclasses.replace(self.config, **values)
        config.validate()
        return config

    @on(Input.Submitted)
    def action_save(self) -> None:
        try:
            config = self.read()
        except FreezeTUIError as e:
            self.query_one("#error", Label).update(str(e))
            return
        self.dismiss(config)

    def action_cancel(self) -> None:
        self.dismiss(None)
