"""Run folders: the plan and settings at the start, a metrics line per epoch as it ends, and the
summary and final weights at the end. Every file but the appended metrics is written atomically."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write, write_json
from .plan import FreezePlan
from .train import Callback, EpochEnd, RunStart, TrainConfig, TrainResult


def new_run_dir(base: str | os.PathLike = "runs", label: str = "run") -> Path:
    """A fresh folder under ``base`` named by time, never one that exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(base)
    for i in range(1000):
        path = base / (f"{stamp}-{label}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder under {base}")


class RunWriter(Callback):
    """Writes ``plan.json``, ``config.json``, ``metrics.jsonl``, ``summary.json`` and ``model.pt``."""

    def __init__(self, out: str | os.PathLike, model: nn.Module, plan: FreezePlan, config: TrainConfig,
                 extra: dict | None = None):
        self.out = Path(out)
        self.model = model
        self.plan = plan
        self.config = config
        self.extra = extra or {}
        self.out.mkdir(parents=True, exist_ok=True)

    def on_run_start(self, event: RunStart) -> None:
        self.plan.save(self.out / "plan.json")
        write_json(self.out / "config.json", {**self.config.to_dict(), **self.extra,
                                              "device": event.device, "input_size": event.input_size})
        (self.out / "metrics.jsonl").write_text("")

    def on_epoch(self, event: EpochEnd) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    def on_run_end(self, result: TrainResult) -> None:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        atomic_write(self.out / "model.pt", lambda f: torch.save(state, f), mode="wb")
        write_json(self.out / "summary.json", {**result.summary(), **self.extra,
                                               "trainable_params": self.plan.counts["trainable"],
                                               "total_params": self.plan.counts["total"]})


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
