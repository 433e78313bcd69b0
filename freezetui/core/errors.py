"""Errors a user can cause and fix: the CLI prints them as one sentence, never a traceback."""


# What a user can do about a refusal, as data: each front end words it (the TUI as its keys).
FIXES = {
    "stop-run": "stop the run in progress",
    "train-something": "make something trainable (the head only, or everything)",
    "layer-decay-off": "turn layer decay off",
    "continue-sweep": "continue the sweep",
    "settings": "change the training settings",
}


class FreezeTUIError(Exception):
    """A problem with the user's input or environment, stated so they can act on it.
    ``fix``: one of :data:`FIXES`, the remedy as data for a front end to word."""

    def __init__(self, message: str = "", fix: str | None = None):
        super().__init__(message)
        self.fix = fix


class PlanError(FreezeTUIError, ValueError):
    """A freeze plan that is malformed or does not fit the model."""


class ModelError(FreezeTUIError):
    """An unknown model, unusable weights, or an unsupported adaptation."""


class DataError(FreezeTUIError):
    """A dataset that cannot be found, read or used."""


class TrainingError(FreezeTUIError):
    """A run that had to stop: NaN loss, bad settings, a device that is not there."""


class Stopped(FreezeTUIError):
    """A run stopped (Ctrl-C, kill) before it had anything to keep: nothing to resume."""
