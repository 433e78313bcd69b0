"""A small workspace and deterministic fake trainers for the TUI tests."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from freezetui.core.data import load_data
from freezetui.core.models import build_model
from freezetui.core.train import EpochEnd, RunStart, StepEnd, TrainResult
from freezetui.core.workspace import Workspace

_DATA = None


def small_workspace() -> Workspace:
    global _DATA
    if _DATA is None:
        _DATA = load_data("shapes", shapes_train=256, shapes_val=64)
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=10)
    return Workspace(model, _DATA, data_name="shapes", device="cpu")


def fake_trainer(workspace, record, callbacks, stop, runs_dir):
    """Three epochs of four steps whose numbers depend only on the plan's trainable share."""
    share = record.trainable / max(1, record.total)
    epochs, steps = record.config.epochs, 4
    record.folder = Path(runs_dir) / f"fake-{record.id}"
    for cb in callbacks:
        cb.on_run_start(RunStart(epochs, steps, "cpu", 256, 64, 32, record.config.effective_lr))
    result = TrainResult(epochs=0, device="cpu", seconds=1.0)
    for e in range(1, epochs + 1):
        for s in range(1, steps + 1):
            g = (e - 1) * steps + s
            for cb in callbacks:
                cb.on_step(StepEnd(e, s, g, epochs * steps, 2.3 * math.exp(-0.1 * g * (0.5 + share)), 100.0))
        ev = EpochEnd(e, epochs, 1.0 / e, 1.2 / e, min(0.99, 0.3 + 0.2 * e * share), 100.0, 1.0)
        result.history.append(ev)
        result.epochs = e
        for cb in callbacks:
            cb.on_epoch(ev)
    for cb in callbacks:
        cb.on_run_end(result)
    return result


def blocking_trainer(workspace, record, callbacks, stop, runs_dir):
    """Runs 'batches' until asked to stop, like the real loop; gives up after 20 s."""
    record.folder = Path(runs_dir) / f"fake-{record.id}"
    for cb in callbacks:
        cb.on_run_start(RunStart(1, 10**6, "cpu", 256, 64, 32, 0.001))
    step, deadline = 0, time.monotonic() + 20
    while not stop.is_set() and time.monotonic() < deadline:
        step += 1
        for cb in callbacks:
            cb.on_step(StepEnd(1, step, step, 10**6, 1.0, 100.0))
        time.sleep(0.01)
    return TrainResult(epochs=0, stopped=stop.is_set(), device="cpu")


def failing_trainer(workspace, record, callbacks, stop, runs_dir):
    from freezetui.core.errors import TrainingError

    raise TrainingError("loss became nan at epoch 1, step 3; lower the learning rate (now 0.001) or check the data")


def make_app(tmp_path, trainer=fake_trainer, **config):
    """The app on the small workspace, runs under tmp_path, settings from keyword arguments."""
    from freezetui.core.train import TrainConfig
    from freezetui.core.specs import ModelSpec
    from freezetui.tui.app import AppOptions, create_app

    options = AppOptions(model=ModelSpec("tiny:tiny_cnn", weights="none"), runs_dir=str(tmp_path / "runs"),
                         config=TrainConfig(epochs=config.pop("epochs", 3), device="cpu", **config))
    return create_app(options, workspace=small_workspace(), trainer=trainer)


def paused_trainer(workspace, record, callbacks, stop, runs_dir):
    """Half of epoch 2 of 3, then waits for the stop (up to 8 s): a run in progress, frozen in
    place for a snapshot."""
    record.folder = Path(runs_dir) / f"fake-{record.id}"
    for cb in callbacks:
        cb.on_run_start(RunStart(3, 8, "cpu", 256, 64, 32, record.config.effective_lr))
    for g in range(1, 13):
        e, s = (g - 1) // 8 + 1, (g - 1) % 8 + 1
        for cb in callbacks:
            cb.on_step(StepEnd(e, s, g, 24, 2.3 * math.exp(-0.05 * g), 100.0))
        if s == 8:
            ev = EpochEnd(e, 3, 1.5, 1.4, 0.42, 100.0, 1.0)
            for cb in callbacks:
                cb.on_epoch(ev)
    stop.wait(8)
    return TrainResult(epochs=1, stopped=True, device="cpu", seconds=1.0)


def fake_sweep_trainer(workspace, config, out, rungs, callbacks_for, stop, batchnorm=None):
    """The ladder's rungs, each a fake run; the last one stays in progress until the stop."""
    from freezetui.core.sweep import ladder

    plans = ladder(workspace.model, workspace.traced, base=workspace.plan)
    rows = []
    for i, (name, plan) in enumerate(plans):
        record = workspace.new_run(config, plan=plan, name=name, folder=Path(out) / f"{i:02d}")
        callbacks = callbacks_for(i, name, record)
        record.status = "running"
        if i == len(plans) - 1:
            paused_trainer(workspace, record, callbacks, stop, out)
            record.folder = Path(out) / f"{i:02d}"
            rows.append({"name": name, "stopped": True})
            break
        fake_trainer(workspace, record, callbacks, stop, out)
        record.folder = Path(out) / f"{i:02d}"
        record.status = "done"
        rows.append({"name": name, "stopped": False})
    return rows
