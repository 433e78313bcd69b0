"""Run folders: the plan and settings at the start, a metrics line per epoch as it ends, and the
summary and final weights at the end. Every file but the appended metrics is written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shlex
from dataclasses import dataclass, field
import shutil
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write, write_json
from .errors import TrainingError
from .plan import FreezePlan
from .schedule import short_name
from .readback import Unreadable, loads_json, only_json, state_digest, too_deep, torch_load
from .config import TrainConfig
from .events import Callback, EpochEnd, RunStart, TrainResult


LOCK = ".lock"  # held with flock for the whole run; holds the pid of the process holding it

try:
    import fcntl
except ImportError:  # Windows: no folder lock
    fcntl = None


@contextlib.contextmanager
def hold_run_folder(out: str | os.PathLike):
    """Hold ``out`` for one run: a second run (train, resume, a sweep rung, the TUI), in this
    process or another, gets a sentence naming the process that holds it. The lock is an
    ``flock`` on ``out/.lock``, so the OS releases it when the process ends however it ends;
    holding it, temporaries a killed writer left are removed."""
    out = Path(out)
    if fcntl is None:
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"process {pid}" if pid.isdigit() else "another process"
            raise TrainingError(f"{out} is in use by another run ({who}); wait for it to end, or give "
                                f"this run another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(out)
        try:
            yield
        finally:
            if created and [p.name for p in out.iterdir()] == [LOCK]:  # a run that failed before writing
                with contextlib.suppress(OSError):
                    (out / LOCK).unlink()
                    out.rmdir()
    finally:
        os.close(fd)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporaries (``.checkpoint.pt.*.tmp``) an atomic write killed mid-way left in a
    run folder; call only while holding the folder."""
    removed = []
    for p in out.glob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


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
                 extra: dict | None = None, resume: dict | None = None):
        self.out = Path(out)
        self.model = model
        self.plan = plan
        self.config = config
        self.extra = extra or {}
        self.resume = resume  # the checkpoint a resumed run continues from
        self.out.mkdir(parents=True, exist_ok=True)

    def _guard(self, name: str, write, payload=None) -> None:
        """``write()``, its failure as a sentence; ``payload``: what torch.save writes, for its size."""
        try:
            write()
        except (OSError, RuntimeError) as e:  # torch.save reports a short write as a RuntimeError
            raise TrainingError(f"cannot write {self.out / name} ({write_failure(self.out, e, payload)}); "
                                f"the files written before are intact") from None

    def on_run_start(self, event: RunStart) -> None:
        self._guard("plan.json", lambda: self.plan.save(self.out / "plan.json"))
        self._guard("config.json", lambda: write_json(self.out / "config.json", {
            **config_fields(self.config), **self.extra, "device": event.device, "input_size": event.input_size}))
        # a resumed run's metrics are the checkpoint's epochs: what a stopped or killed epoch after
        # it reported (or a line torn by a full disk) goes
        kept = self.resume["history"] if self.resume is not None else []
        self._guard("metrics.jsonl", lambda: atomic_write(
            self.out / "metrics.jsonl", lambda f: f.write("".join(json.dumps(m) + "\n" for m in kept))))

    def on_epoch(self, event: EpochEnd) -> None:
        def append():
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(event.to_dict()) + "\n")
        self._guard("metrics.jsonl", append)

    def on_checkpoint(self, state: dict) -> None:
        payload = {**state, "plan": self.plan.to_dict(), "config": config_fields(self.config), "extra": self.extra}
        payload["digest"] = state_digest(payload)  # torch.load does not notice a byte changed inside a tensor
        self._guard("checkpoint.pt", lambda: atomic_write(self.out / "checkpoint.pt",
                                                          lambda f: torch.save(payload, f), mode="wb"), payload)

    def on_run_end(self, result: TrainResult) -> None:
        from .adapters import adapters_of, merged_state_dict
        from .peft_export import save_peft_adapter

        # adapters added into their weights: a plain model of the original architecture loads it
        state = {k: v.detach().cpu() for k, v in merged_state_dict(self.model).items()}
        failed = None
        try:
            self._guard("model.pt", lambda: atomic_write(self.out / "model.pt", lambda f: torch.save(state, f),
                                                         mode="wb"), state)
            if adapters_of(self.model) is not None:  # the adapter alone too, in PEFT's layout
                self._guard("adapter", lambda: save_peft_adapter(self.model, self.plan, self.out / "adapter"))
        except TrainingError as e:  # the summary is small: it may fit where the weights did not
            failed = e
        summary = {**result.summary(), **self.extra, "trainable_params": self.plan.counts["trainable"],
                   "total_params": self.plan.counts["total"]}
        if failed is not None and summary["error"] is None:
            summary["error"] = str(failed)
        try:
            self._guard("summary.json", lambda: write_json(self.out / "summary.json", summary))
        except TrainingError as e:
            failed = failed or e
        if failed is not None and result.error is None:  # a run that already failed keeps its first error
            raise failed


def write_failure(folder: Path, e: BaseException, payload=None) -> str:
    """Why a write failed, in words: a full disk says how much room the file needs."""
    from .cost import human_bytes

    if not (getattr(e, "errno", None) == errno.ENOSPC or isinstance(e, RuntimeError)):
        return getattr(e, "strerror", None) or str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    need = tensor_bytes(payload)
    room = f"it needs about {human_bytes(need)} free" if need else "it needs more room"
    room += f", {human_bytes(free)} is" if free is not None else ""
    if isinstance(e, OSError):
        return f"{e.strerror}: {room}"
    if free is None or free > 1.1 * need:  # torch says only "unexpected pos"
        return f"torch.save stopped short, as on a full disk or quota: {room}"
    return f"the disk is full: {room}"


def tensor_bytes(obj, depth: int = 0) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists and tuples), what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if depth > 16:
        return 0
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, depth + 1) for v in obj)
    return 0


def config_fields(config: TrainConfig) -> dict:
    """The settings as given (``lr`` may be None: resolved again on resume), plus the lr used."""
    return {**dataclasses.asdict(config), "effective_lr": config.effective_lr}


def load_checkpoint(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise TrainingError(f"{run_dir} has no checkpoint.pt to resume from (one is written after each epoch)")
    try:
        state = torch_load(path)
    except Unreadable as e:
        raise TrainingError(f"cannot resume from {path}: it {e}") from None
    digest = state.pop("digest", None) if isinstance(state, dict) else None  # older checkpoints have none
    why = checkpoint_problem(state)
    if why:
        raise TrainingError(f"cannot resume from {path}: it is not a freezetui checkpoint ({why})")
    if digest is not None and digest != state_digest(state):
        raise TrainingError(f"cannot resume from {path}: it was damaged on disk (its contents do not match their "
                            f"digest); start the run again, or restore the file from a backup")
    return state


def checkpoint_problem(state) -> str | None:
    """What is missing or of the wrong kind in a loaded checkpoint (see ``checkpoint_state``), or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    kinds = {"epoch": int, "model": dict, "optimizer": dict, "rng": dict, "history": list, "plan": dict,
             "config": dict, "extra": dict}
    for key, kind in kinds.items():
        if key not in state:
            return f"no {key!r}"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"{key!r} is a {type(state[key]).__name__}"
    plain = {k: state[k] for k in ("plan", "config", "extra", "history")}
    if too_deep(plain):
        return "nested too deeply"
    if not only_json(plain):
        return "its plan, settings or history hold more than plain data"
    if state["epoch"] < 1:
        return f"epoch {state['epoch']}"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        return "'model' is not a state_dict"
    if not all(isinstance(state["rng"].get(k), torch.Tensor) for k in ("torch", "generator")):
        return "no random number generator states"
    fields = {f.name for f in dataclasses.fields(EpochEnd)}
    required = {f.name for f in dataclasses.fields(EpochEnd) if f.default is dataclasses.MISSING}
    if not all(isinstance(h, dict) and required <= set(h) <= fields for h in state["history"]) \
            or [h["epoch"] for h in state["history"]] != list(range(1, state["epoch"] + 1)) \
            or not all(isinstance(v, bool) if k == "partial" else isinstance(v, (int, float)) and not isinstance(v, bool)
                       for h in state["history"] for k, v in h.items()):
        return "its history does not match its epoch"
    if not isinstance(state["extra"].get("data"), str):
        return "no data name"
    try:
        TrainConfig.from_dict(state["config"]).validate()
    except (TypeError, ValueError) as e:
        return f"settings of the wrong kind ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    except TrainingError as e:
        return f"settings out of range ({e})"
    return None


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The epochs in ``metrics.jsonl``. A torn last line (appended in place, so a full disk or a
    power cut can leave one) is left out; a bad line before it is a ValueError."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():  # blank lines at the end only: one in between is damage
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        try:
            m = loads_json(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not a metrics record") from None
        if not isinstance(m, dict) or not isinstance(m.get("epoch"), int):
            raise ValueError(f"{path} line {i + 1} is not a metrics record")
        out.append(m)
    return out


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
        value = loads_json(path.read_text())
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
        rows = loads_json((Path(folder) / "sweep.json").read_text())
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
