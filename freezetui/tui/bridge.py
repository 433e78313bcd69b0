"""The core trainer's callbacks, turned into UI messages: at most 2 per second, coalescing.

Runs on the training thread. It only appends to the RunRecord and posts messages (thread-safe);
it never touches a widget.
"""

from __future__ import annotations

import time

from ..core.events import Callback, EpochEnd, RunStart, StepEnd, TrainResult
from .messages import CachingProgress, EpochDone, RunBegan, RunEnded, TrainProgress

INTERVAL = 0.5  # 2 a second: each progress repaint takes the GIL from the training thread


class UIBridge(Callback):
    def __init__(self, target, record):
        self.target = target  # the app: post_message is safe from any thread
        self.record = record
        self.last = 0.0

    def on_run_start(self, event: RunStart) -> None:
        self.record.total_steps = event.epochs * event.steps_per_epoch
        self.record.device = event.device
        self.target.post_message(RunBegan(self.record.id))

    def on_step(self, event: StepEnd) -> None:
        self.record.steps.append(event.loss)
        now = time.monotonic()
        if now - self.last >= INTERVAL or event.global_step == event.total_steps:
            self.last = now
            self.target.post_message(TrainProgress(self.record.id, event.epoch, self.record.config.epochs,
                                                   event.global_step, event.total_steps, event.loss,
                                                   event.images_per_s))

    def on_caching(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= INTERVAL or done >= total:
            self.last = now
            self.target.post_message(CachingProgress(self.record.id, done, total))

    def on_epoch(self, event: EpochEnd) -> None:
        self.record.epochs.append(event.to_dict())
        self.target.post_message(EpochDone(self.record.id, event.epoch, event.epochs, event.val_acc, event.val_loss))

    def on_run_end(self, result: TrainResult) -> None:
        self.record.seconds = result.seconds
        self.record.frozen_unchanged = result.frozen_unchanged
        self.target.post_message(RunEnded(self.record.id))
