"""Run folders: the plan and settings at the start, a metrics line per epoch as it ends, and the
summary and final weights at the end. Every file but the appended metrics is written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write, write_json
from .errors import TrainingError
from .plan import FreezePlan
from .schedule import short_name
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
    """Writes ``plan.json``, ``config.json``, ``metrics.jsonl`` (a line per epoch, as it ends),
    ``checkpoint.pt`` (after every complete epoch), ``summary.json`` and ``model.pt``.

    A write that fails (a full disk, a folder that went away) ends the run with a sentence
    naming the file; what was written before is intact, every file but the metrics being
    replaced atomically.
    """

    def __init__(self, out: str | os.PathLike, model: nn.Module, plan: FreezePlan, config: TrainConfig,
                 extra: dict | None = None, resume_epoch: int | None = None):
        self.out = Path(out)
        self.model = model
        self.plan = plan
        self.config = config
        self.extra = extra or {}
        self.resume_epoch = resume_epoch
        self.out.mkdir(parents=True, exist_ok=True)

    def _guard(self, name: str, write) -> None:
        try:
            write()
        except OSError as e:
            raise TrainingError(f"cannot write {self.out / name} ({e.strerror or e}); "
                                f"the files written before are intact") from None

    def on_run_start(self, event: RunStart) -> None:
        self._guard("plan.json", lambda: self.plan.save(self.out / "plan.json"))
        self._guard("config.json", lambda: write_json(self.out / "config.json", {
            **config_fields(self.config), **self.extra, "device": event.device, "input_size": event.input_size}))
        if self.resume_epoch is None:
            self._guard("metrics.jsonl", lambda: (self.out / "metrics.jsonl").write_text(""))
        else:  # drop what a stopped epoch after the checkpoint had reported
            kept = [m for m in read_metrics(self.out) if m["epoch"] <= self.resume_epoch]
            self._guard("metrics.jsonl", lambda: atomic_write(
                self.out / "metrics.jsonl", lambda f: f.write("".join(json.dumps(m) + "\n" for m in kept))))

    def on_epoch(self, event: EpochEnd) -> None:
        def append():
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(event.to_dict()) + "\n")
        self._guard("metrics.jsonl", append)

    def on_checkpoint(self, state: dict) -> None:
        payload = {**state, "plan": self.plan.to_dict(), "config": config_fields(self.config), "extra": self.extra}
        self._guard("checkpoint.pt", lambda: atomic_write(self.out / "checkpoint.pt",
                                                          lambda f: torch.save(payload, f), mode="wb"))

    def on_run_end(self, result: TrainResult) -> None:
        from .adapters import adapters_of, merged_state_dict
        from .peft_export import save_peft_adapter

        state = merged_state_dict(self.model)  # adapters added into their weights: the original architecture
        try:
            self._guard("model.pt", lambda: atomic_write(self.out / "model.pt", lambda f: torch.save(state, f),
                                                         mode="wb"))
            if adapters_of(self.model) is not None:  # the adapter alone too, in PEFT's layout
                self._guard("adapter", lambda: save_peft_adapter(self.model, self.plan, self.out / "adapter"))
            self._guard("summary.json", lambda: write_json(self.out / "summary.json", {
                **result.summary(), **self.extra, "trainable_params": self.plan.counts["trainable"],
                "total_params": self.plan.counts["total"]}))
        except TrainingError:
            if result.error is None:  # a run that already failed keeps its first error
                raise


def config_fields(config: TrainConfig) -> dict:
    """The settings as given (``lr`` may be None: resolved again on resume), plus the lr used."""
    return {**dataclasses.asdict(config), "effective_lr": config.effective_lr}


def load_checkpoint(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise TrainingError(f"{run_dir} has no checkpoint.pt to resume from (one is written after each epoch)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one sentence
        raise TrainingError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- runs as the TUI lists them


@dataclass
class RunRecord:
    """One training run of this session, as the runs table and the charts see it."""

    id: int
    label: str
    trainable: int
    total: int
    config: TrainConfig
    folder: Path | None = None
    steps: list[float] = field(default_factory=list)  # loss per step
    epochs: list[dict] = field(default_factory=list)  # EpochEnd.to_dict() per epoch
    status: str = "running"  # running | done | stopped | failed
    error: str | None = None
    seconds: float = 0.0
    frozen_unchanged: bool | None = None
    total_steps: int = 0
    device: str = ""
    schedule: str = "static"  # the plan's schedule in a few words (schedule.short_name)
    stages: list[dict] = field(default_factory=list)  # the plan's stages as its file holds them

    @property
    def best_acc(self) -> float | None:
        return max((e["val_acc"] for e in self.epochs), default=None)

    @property
    def final_acc(self) -> float | None:
        return self.epochs[-1]["val_acc"] if self.epochs else None


def folder_size(folder: str | os.PathLike | None) -> int:
    """Bytes under a run folder (0 when it is gone)."""
    if folder is None:
        return 0
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def prune_run_folder(folder: str | os.PathLike | None) -> int:
    """Delete a finished run's ``checkpoint.pt`` (its weights are in ``model.pt``; the checkpoint
    only serves resuming); returns the bytes freed."""
    if folder is None:
        return 0
    path = Path(folder) / "checkpoint.pt"
    if not (Path(folder) / "model.pt").is_file() or not path.is_file():
        return 0
    size = path.stat().st_size
    path.unlink()
    return size


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_past_run(folder: Path, run_id: int) -> RunRecord | None:
    """A run folder written by an earlier session, as a :class:`RunRecord`; None when it is not
    a run folder. Reads ``config.json``, ``plan.json``, ``metrics.jsonl`` and ``summary.json``."""
    config_json = read_json(folder / "config.json")
    plan_json = read_json(folder / "plan.json")
    if not config_json or not plan_json:
        return None
    try:
        config = TrainConfig.from_dict(config_json)
    except TypeError:
        return None
    try:
        epochs = read_metrics(folder)
    except (OSError, ValueError):
        epochs = []
    summary = read_json(folder / "summary.json")
    counts = plan_json.get("counts") or {}
    total = summary.get("total_params") or counts.get("total") or 0
    trainable = summary.get("trainable_params", counts.get("trainable", 0))
    if summary:
        status = "failed" if summary.get("error") else "stopped" if summary.get("stopped") else "done"
    else:  # the session ended without a summary: what the checkpoint holds can be resumed
        status = "stopped"
    record = RunRecord(run_id, f"#{run_id}", int(trainable or 0), int(total or 0), config, folder=folder,
                       epochs=epochs, status=status, error=summary.get("error"),
                       seconds=float(summary.get("seconds") or 0.0),
                       frozen_unchanged=summary.get("frozen_unchanged"), device=str(config_json.get("device", "")),
                       schedule=short_name(plan_json), stages=[s for s in plan_json.get("stages") or []
                                                               if isinstance(s, dict)])
    return record


def run_number(folder: Path) -> int | None:
    """The run number the TUI put at the end of a folder's name (``…-resnet18-3`` is 3)."""
    m = re.search(r"-(\d+)$", folder.name)
    return int(m.group(1)) if m else None


def load_past_runs(runs_dir: str | os.PathLike, model_name: str, data_name: str | None = None) -> list[RunRecord]:
    """Earlier runs of this model (and data) under ``runs_dir``, oldest first, numbered as
    their folders are."""
    base = Path(runs_dir)
    if not base.is_dir():
        return []
    found: list[RunRecord] = []
    used: set[int] = set()
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        extra = read_json(folder / "config.json")
        plan = read_json(folder / "plan.json")
        if (plan.get("model") or {}).get("name") != model_name:
            continue
        if data_name and extra.get("data") not in (None, data_name):
            continue
        number = run_number(folder)
        if number is None or number in used:
            number = max(used | {0}) + 1
        record = load_past_run(folder, number)
        if record is not None:
            used.add(number)
            found.append(record)
    return sorted(found, key=lambda r: r.id)


def read_sweep(folder: str | os.PathLike) -> list[dict]:
    """The rows of a sweep folder's ``sweep.json`` (empty when it has none yet), with the
    rungs' paths found under ``folder`` wherever the sweep was run from."""
    try:
        rows = json.loads((Path(folder) / "sweep.json").read_text())
    except (OSError, ValueError):
        return []
    out = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and "name" in r and isinstance(r.get("run"), str):
            run = Path(folder) / Path(r["run"]).name
            out.append({**r, "run": str(run), "plan": str(run / "plan.json")})
    return out


def latest_sweep(runs_dir: str | os.PathLike, model_name: str) -> tuple[Path, list[dict]] | None:
    """The newest sweep of this model under ``runs_dir`` (an earlier session's): its folder
    and rows, or None."""
    base = Path(runs_dir)
    if not base.is_dir():
        return None
    for folder in sorted((p for p in base.iterdir() if (p / "sweep.json").is_file()), reverse=True):
        rows = read_sweep(folder)
        plan = read_json(Path(rows[0]["plan"])) if rows else {}
        if rows and (plan.get("model") or {}).get("name") == model_name:
            return folder, rows
    return None


def resume_command(folder: str | os.PathLike) -> str:
    return shlex.join(["freezetui", "train", "--resume", str(folder)])
