"""App-wide messages. Progress messages coalesce: the numbers live in the RunRecord, so a newer
message may replace an older one still in the queue without losing anything."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class WorkspaceReady(Message):
    workspace: object  # freezetui.core.workspace.Workspace


@dataclass
class WorkspaceFailed(Message):
    error: str


@dataclass
class LoadProgress(Message):
    """Images decoded so far while a folder is decoded into its cache; newer replaces older."""

    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LoadProgress)


@dataclass
class PlanChanged(Message):
    """The freeze state changed; totals, lints and details redraw."""


@dataclass
class TrainProgress(Message):
    run_id: int
    epoch: int
    epochs: int
    global_step: int
    total_steps: int
    loss: float
    images_per_s: float

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TrainProgress) and message.run_id == self.run_id


@dataclass
class CachingProgress(Message):
    """Images whose frozen-prefix outputs are cached so far; newer replaces older."""

    run_id: int
    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CachingProgress) and message.run_id == self.run_id


@dataclass
class EpochDone(Message):
    run_id: int
    epoch: int
    epochs: int
    val_acc: float
    val_loss: float


@dataclass
class RunBegan(Message):
    """A run (or a sweep's rung) has started training: its record exists."""

    run_id: int


@dataclass
class RunEnded(Message):
    """A run (or a sweep's rung) has ended; the worker may go on with the next rung."""

    run_id: int
