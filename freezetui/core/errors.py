"""Errors a user can cause and fix: the CLI prints them as one sentence, never a traceback."""


class FreezeTUIError(Exception):
    """A problem with the user's input or environment, stated so they can act on it."""


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
