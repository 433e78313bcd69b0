"""Training settings, checked field by field as they are typed (by the core's own TrainConfig
checks), each showing the value a run will use. A blank field means its default."""

from __future__ import annotations

import dataclasses
from typing import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Select

from ...core.errors import FreezeTUIError
from ...core.config import OPTIMIZERS, TrainConfig

DEFAULTS = TrainConfig()

FIELDS = [  # (id, label, attribute, parse)
    ("epochs", "epochs", "epochs", int),
    ("batch", "batch size", "batch_size", int),
    ("lr", "learning rate", "lr", float),
    ("wd", "weight decay", "weight_decay", float),
    ("size", "image size", "image_size", int),
]
AUTO = ("lr", "image_size")  # blank: chosen at run time, not a fixed default


def _number(text: str, parse) -> object:
    try:
        return parse(text)
    except ValueError:
        kind = "a whole number" if parse is int else "a number"
        raise FreezeTUIError(f"{text!r} is not {kind}") from None


class TickBox(Checkbox, inherit_bindings=False):
    """A checkbox that space toggles (Enter saves the dialog), ticked ✓ and unticked blank: the
    states differ by more than colour."""

    BINDINGS = [Binding("space", "toggle_button", "Toggle", show=False)]

    @property
    def _button(self):
        self.BUTTON_INNER = "✓" if self.value else " "
        return super()._button


class OptionSelect(Select, inherit_bindings=False):
    """A Select that space or the arrows open (Enter saves the dialog)."""

    BINDINGS = [Binding("down,space,up", "show_overlay", "Show menu", show=False)]


class SettingsScreen(ModalScreen[TrainConfig | None]):
    """``seen_size(image_size)`` says what size the model will see (the app's workspace)."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s,enter", "save", "Save"),
    ]

    def __init__(self, config: TrainConfig, seen_size: Callable[[int | None], int | None] | None = None,
                 keep_only_model: bool = False):
        super().__init__()
        self.config = config
        self.seen_size = seen_size
        self.keep_only_model = keep_only_model

    def compose(self) -> ComposeResult:
        c = self.config
        with Vertical(classes="dialog", id="settings"):
            with VerticalScroll(id="settings-fields"):
                yield Label("Training settings", classes="dialog-title")
                for fid, label, attr, _ in FIELDS:
                    value = getattr(c, attr)
                    with Horizontal(classes="field"):
                        yield Label(label, classes="field-label")
                        yield Input("" if value is None else f"{value:g}" if isinstance(value, float) else str(value),
                                    id=fid, compact=True, placeholder="auto" if attr in AUTO else "default")
                    yield Label("", id=f"{fid}-hint", classes="field-hint")
                with Horizontal(classes="field"):
                    yield Label("optimizer", classes="field-label")
                    yield OptionSelect([(o, o) for o in OPTIMIZERS], value=c.optimizer, allow_blank=False,
                                       id="optimizer", compact=True)
                yield TickBox("augmentation: random crop + flip", value=c.augment, id="augment", compact=True)
                yield TickBox("after a finished run keep only model.pt (no checkpoint: it cannot be resumed)",
                              value=self.keep_only_model, id="keep-only-model", compact=True)
                yield Label("", id="error", classes="dialog-error")
            # outside the scrolling part: the way out stays in view at 80×24
            yield Label("Enter: save    space: tick/untick    Esc: cancel    blank: default",
                        classes="dialog-help", id="settings-keys")

    def on_mount(self) -> None:
        self.check_all()
        self.query_one("#epochs", Input).focus()

    # ------------------------------------------------------------------ checking

    def field_value(self, fid: str):
        """The parsed value of one field (its default when blank); raises with a sentence."""
        _, label, attr, parse = next(f for f in FIELDS if f[0] == fid)
        text = self.query_one(f"#{fid}", Input).value.strip()
        if not text:
            return None if attr in AUTO else getattr(DEFAULTS, attr)
        value = _number(text, parse)
        try:  # the core's check, on this field alone
            dataclasses.replace(DEFAULTS, **{attr: value}).validate()
        except FreezeTUIError as e:
            raise FreezeTUIError(str(e)) from None
        return value

    def check_field(self, fid: str) -> str | None:
        """Show the field's error, or the value a run will use; returns the error."""
        hint = self.query_one(f"#{fid}-hint", Label)
        field = self.query_one(f"#{fid}", Input)
        try:
            value = self.field_value(fid)
        except FreezeTUIError as e:
            hint.update(str(e))
            hint.set_class(True, "error")
            field.set_class(True, "-invalid")
            return f"{fid}: {e}"
        hint.set_class(False, "error")
        field.set_class(False, "-invalid")
        hint.update(self.effective(fid, value))
        return None

    def effective(self, fid: str, value) -> str:
        if fid == "lr":
            try:
                batch = self.field_value("batch")
            except FreezeTUIError:
                batch = DEFAULTS.batch_size
            optimizer = self.query_one("#optimizer", Select).value
            auto = dataclasses.replace(DEFAULTS, lr=None, batch_size=batch, optimizer=optimizer).effective_lr
            return f"auto: {auto:.3g} for {optimizer}, batch {batch}" if value is None else \
                f"auto would be {auto:.3g}"
        if fid == "size":
            seen = self.seen_size(value) if self.seen_size else value
            if value is None:
                return f"blank: the model's default, {seen} px" if seen else "blank: the data's own size"
            return f"the model sees {seen} px" if seen and seen != value else f"{value} px"
        blank = not self.query_one(f"#{fid}", Input).value.strip()
        return f"blank: {value:g}" if blank and isinstance(value, float) else f"blank: {value}" if blank else ""

    def check_all(self) -> list[str]:
        return [e for e in (self.check_field(f[0]) for f in FIELDS) if e]

    @on(Input.Changed)
    def on_changed(self, event: Input.Changed) -> None:
        self.check_field(event.input.id)
        if event.input.id == "batch":
            self.check_field("lr")
        self.query_one("#error", Label).update("")

    @on(Select.Changed)
    def on_optimizer(self) -> None:
        self.check_field("lr")

    def read(self) -> TrainConfig:
        errors = self.check_all()
        if errors:
            raise FreezeTUIError(f"fix the marked field first: {errors[0].split(': ', 1)[1]}")
        values = {attr: self.field_value(fid) for fid, _, attr, _ in FIELDS}
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
        self.keep_only_model = self.query_one("#keep-only-model", Checkbox).value
        self.dismiss(config)

    def action_cancel(self) -> None:
        self.dismiss(None)
