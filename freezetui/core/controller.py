"""The TUI's runs without the TUI: start, stop, resume, quit while running, hang-up.

The app calls these from its UI thread and runs :meth:`RunController.work` on a worker
thread; nothing here knows about Textual, so the whole lifecycle is testable without Pilot.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
import threading
from pathlib import Path
from typing import Callable

from .errors import FIXES, FreezeTUIError, PlanError
from .runner import execute, resume_spec
from .runs import RunRecord, load_past_runs, new_run_dir, read_json, read_sweep, resume_command
from .specs import ModelSpec, RunSpec
from .config import TrainConfig
from .events import Callback, TrainResult
from .workspace import Workspace

Trainer = Callable[[Workspace, RunRecord, list, threading.Event, str], TrainResult]


def default_trainer(workspace: Workspace, record: RunRecord, callbacks: list[Callback], stop: threading.Event,
                    runs_dir: str | Path) -> TrainResult:
    """Train from the initial weights under the current plan into a fresh run folder, through
    the same orchestrator as ``freezetui train``. Called on a worker thread."""
    if workspace.data is None:
        raise PlanError("no data loaded")
    record.folder = new_run_dir(runs_dir, f"{workspace.info.name.replace(':', '-')}-{record.id}")
    spec = RunSpec(data=workspace.data_name, config=record.config, out=record.folder, plan=workspace.plan.copy())
    workspace.reset_weights()
    return execute(spec, callbacks, stop, inputs=workspace.inputs)


def resume_trainer(workspace: Workspace, record: RunRecord, callbacks: list[Callback],
                   stop: threading.Event) -> TrainResult:
    """Continue a stopped or failed run from its last checkpoint, under the plan it started
    with, into the same folder."""
    spec = resume_spec(record.folder)
    workspace.reset_weights()  # the frozen reference; the checkpoint's weights load over it
    record.epochs = list(spec.resume["history"])
    return execute(spec, callbacks, stop, inputs=workspace.inputs)


class RungStatus(Callback):
    """Marks a sweep rung's record done or stopped when its run ends (a single run's record is
    marked by :meth:`RunController.finished`)."""

    def __init__(self, record: RunRecord):
        self.record = record

    def on_run_end(self, result: TrainResult) -> None:
        self.record.status = "stopped" if result.stopped else "done"
        self.record.seconds = result.seconds
        self.record.frozen_unchanged = result.frozen_unchanged


def sweep_trainer(workspace: Workspace, config: TrainConfig, out: Path, rungs: int | None,
                  callbacks_for: Callable[[int, str, RunRecord], list[Callback]], stop: threading.Event,
                  batchnorm: str | None = None) -> list[dict]:
    """Train the sweep's ladder from the initial weights, each rung a run of the workspace
    (``callbacks_for`` makes its callbacks once its record exists), through the same
    :func:`~freezetui.core.sweep.run_sweep` as ``freezetui sweep``. On a worker thread."""
    from .sweep import ladder, rung_folder, run_sweep

    if workspace.data is None:
        raise PlanError("no data loaded")
    batchnorm = batchnorm or workspace.batchnorm
    workspace.reset_weights()
    plans = dict(ladder(workspace.model, workspace.traced, base=workspace.inputs.plan, rungs=rungs,
                        batchnorm=batchnorm))

    def factory(i: int, name: str) -> list[Callback]:
        folder = out / rung_folder(i, name)
        record = next((r for r in workspace.runs if r.folder == folder), None)
        if record is not None:  # a stopped rung of this sweep goes on in its own row
            record.status, record.error, record.steps = "running", None, []
            try:
                record.epochs = list(resume_spec(folder).resume["history"])
            except FreezeTUIError:  # no checkpoint: the rung starts again
                record.epochs = []
            workspace.runs.remove(record)
            workspace.runs.append(record)
        else:
            record = workspace.new_run(dataclasses.replace(config), plan=plans[name], name=name, folder=folder)
        return [RungStatus(record), *callbacks_for(i, name, record)]

    spec = ModelSpec(workspace.info.name, workspace.info.weights or "none", workspace.data.num_classes,
                     workspace.info.small_input)
    return run_sweep(spec, workspace.data_name, config, out, rungs, batchnorm, factory, stop,
                     inputs=workspace.inputs)


def error_text(error: BaseException | None) -> str:
    if isinstance(error, FreezeTUIError):
        return str(error)
    if error is not None and "out of memory" in str(error).lower():
        return "out of memory: lower the batch size or the image size"
    return f"{type(error).__name__}: {error}" if error else "unknown error"


class Phase(enum.Enum):
    """What the controller is doing: one value instead of flags that could disagree."""

    IDLE = "idle"
    RUNNING = "running"  # a new run of the plan being edited
    RESUMING = "resuming"  # a stopped run, from its checkpoint
    SWEEPING = "sweeping"  # a sweep (one record per rung)


class RunController:
    """One run at a time over a workspace; the plan is read-only while it runs."""

    def __init__(self, workspace: Workspace, runs_dir: str | Path = "runs", trainer: Trainer = default_trainer):
        self.workspace = workspace
        self.runs_dir = runs_dir
        self.trainer = trainer
        self.stop_event = threading.Event()
        self.phase = Phase.IDLE
        self.quit_requested = False
        self.stopped_for_quit: RunRecord | None = None
        self.sweep_dir: Path | None = None
        self.sweep_rows: list[dict] = []  # the last sweep's sweep.json rows
        self.sweep_batchnorm: str | None = None  # a continued sweep's own BatchNorm setting
        self.quit_in_sweep = False

    @property
    def running(self) -> bool:
        return self.phase is not Phase.IDLE

    @property
    def sweeping(self) -> bool:
        return self.phase is Phase.SWEEPING

    @property
    def current(self) -> RunRecord | None:
        runs = self.workspace.runs
        return runs[-1] if runs else None

    # ------------------------------------------------------------------ starting

    def start(self, config: TrainConfig) -> RunRecord:
        """A new run of the current plan (call :meth:`work` on a worker thread next)."""
        self.stop_event = threading.Event()
        record = self.workspace.new_run(dataclasses.replace(config))
        self._begin(Phase.RUNNING)
        return record

    def start_sweep(self, config: TrainConfig, rungs: int | None = None, folder: Path | None = None) -> Path:
        """A sweep of the current model (call :meth:`work_sweep` on a worker thread next);
        returns its folder. Its rungs join the workspace's runs as they start. With ``folder``
        (a stopped sweep) it goes on with that sweep's own settings: finished rungs are kept, a
        stopped rung resumes; only the device may differ."""
        if folder is not None:
            settings = read_json(Path(folder) / "sweep-settings.json")
            try:
                config = TrainConfig.from_dict(settings.get("config"), device=config.device)
            except TypeError:
                raise PlanError(f"cannot read the settings of the sweep in {folder}") from None
            rungs = settings.get("rungs")
        self.sweep_batchnorm = settings.get("batchnorm") if folder is not None else None
        self.stop_event = threading.Event()
        self.sweep_config = dataclasses.replace(config)
        self.sweep_rungs = rungs
        self.sweep_dir = Path(folder) if folder is not None else new_run_dir(
            self.runs_dir, f"{self.workspace.info.name.replace(':', '-')}-sweep")
        self.sweep_rows = []
        self._begin(Phase.SWEEPING)
        return self.sweep_dir

    def work_sweep(self, callbacks_for: Callable[[int, str, RunRecord], list[Callback]]) -> TrainResult:
        """The sweep itself; on the worker thread. The result stands for the whole ladder."""
        rows = sweep_trainer(self.workspace, self.sweep_config, self.sweep_dir, self.sweep_rungs, callbacks_for,
                             self.stop_event, self.sweep_batchnorm)
        self.sweep_rows = rows
        stopped = bool(rows and rows[-1].get("stopped"))
        return TrainResult(epochs=len(rows), stopped=stopped or self.stop_event.is_set(),
                           frozen_unchanged=all(r.get("frozen_unchanged") is not False for r in rows))

    def sweep_unfinished(self, folder: Path, rows: list[dict]) -> bool:
        """Whether the sweep in ``folder`` has rungs left to train."""
        from .sweep import ladder

        settings = read_json(Path(folder) / "sweep-settings.json")
        ws = self.workspace
        model = settings.get("model") or {}
        if not settings or model.get("name") != ws.info.name or settings.get("data") != ws.data_name:
            return False  # another model or data: it can only go on from the command line
        total = len(ladder(ws.model, ws.traced, rungs=settings.get("rungs")))
        done = [r for r in rows if not r.get("stopped")]
        return len(done) < total

    def live_sweep_rows(self) -> list[dict]:
        """The running sweep's finished rungs so far."""
        return read_sweep(self.sweep_dir) if self.sweep_dir is not None else []

    def resume_refusal(self, record: RunRecord) -> PlanError | None:
        """Why ``record`` cannot be resumed (its ``fix`` as data), or None."""
        if self.running:
            return PlanError("A run is in progress; stop it first.", fix="stop-run")
        if record.status not in ("stopped", "failed") or record.folder is None \
                or not (Path(record.folder) / "checkpoint.pt").is_file():
            return PlanError(f"Run {record.label} has nothing to resume: it is {record.status} "
                             f"or stopped before its first epoch ended.")
        return None

    def start_resume(self, record: RunRecord) -> None:
        self.stop_event = threading.Event()
        self.workspace.runs.remove(record)
        self.workspace.runs.append(record)  # the resumed run is the current one
        record.status, record.error = "running", None
        self._begin(Phase.RESUMING)

    def _begin(self, phase: Phase) -> None:
        self.phase = phase
        self.workspace.locked = True  # read-only from now, not from when the worker starts

    def work(self, callbacks: list[Callback]) -> TrainResult:
        """The run itself; on the worker thread."""
        record = self.current
        if self.phase is Phase.RESUMING:
            return resume_trainer(self.workspace, record, callbacks, self.stop_event)
        return self.trainer(self.workspace, record, callbacks, self.stop_event, self.runs_dir)

    # ------------------------------------------------------------------ ending

    def request_stop(self) -> None:
        self.stop_event.set()

    def finished(self, result: TrainResult | None, error: BaseException | None = None) -> str:
        """Record how the current run (or sweep) ended; returns the line for the run panel."""
        phase, self.phase = self.phase, Phase.IDLE
        self.workspace.locked = False
        if phase is Phase.SWEEPING:
            return self._sweep_finished(result, error)
        record = self.current
        if error is None and result is not None:
            record.status = "stopped" if result.stopped else "done"
            best = f"{100 * record.best_acc:.1f}%" if record.best_acc is not None else "—"
            frozen = "frozen params unchanged" if result.frozen_unchanged else "FROZEN PARAMS CHANGED"
            return f"run {record.label} {record.status} · best val acc {best} · {frozen}\nsaved to {record.folder}"
        record.status = "failed"
        record.error = error_text(error)
        return f"run {record.label} failed: {record.error}"

    def _sweep_finished(self, result: TrainResult | None, error: BaseException | None) -> str:
        from .sweep import SWEEP, best

        record = self.current
        if record is not None and record.status == "running":  # the rung it was on
            record.status = "failed" if error is not None else "stopped"
            record.error = error_text(error) if error is not None else None
        if error is not None:
            self.sweep_rows = read_sweep(self.sweep_dir)  # the rungs that finished before it failed
            return f"sweep failed: {error_text(error)}\nrungs so far in {self.sweep_dir / SWEEP}"
        rows = self.sweep_rows
        b = best(rows)
        how = "stopped" if result is not None and result.stopped else "done"
        line = f"sweep {how}: {len(rows)} rung{'' if len(rows) == 1 else 's'}"
        if b["accuracy"] is not None:
            r = b["accuracy"]
            line += f" · best {r['name']} {100 * r['best_val_acc']:.1f}%"
        if b["accuracy_per_s"] is not None and b["accuracy_per_s"] is not b["accuracy"]:
            line += f" · best per second {b['accuracy_per_s']['name']}"
        return f"{line}\nsaved to {self.sweep_dir}"

    def quit(self) -> bool:
        """True: the app may exit now. False: the run is stopping first (exit when it ends)."""
        if not self.running:
            return True
        self.quit_requested = True
        self.stopped_for_quit = self.current
        self.quit_in_sweep = self.sweeping
        self.stop_event.set()
        return False

    def load_past_runs(self) -> list[RunRecord]:
        """Put the earlier runs of this model under the runs folder in the workspace's runs,
        so they can be compared and resumed, and new runs number on from them."""
        ws = self.workspace
        past = load_past_runs(self.runs_dir, ws.info.name, ws.data_name or None)
        known = {str(r.folder) for r in ws.runs}
        past = [r for r in past if str(r.folder) not in known]
        ws.runs[:0] = past
        return past

    def next_run_refusal(self) -> PlanError | None:
        """Why a new run cannot start with the current plan (before any folder is made), its
        ``fix`` as data; None when it can."""
        if self.running:
            return PlanError("A run is in progress.", fix="stop-run")
        if self.workspace.totals()["trainable"] == 0:
            return PlanError("Nothing is trainable, so a run would change nothing: unfreeze something first.",
                             fix="train-something")
        return None

    def exit_message(self, fix_words: Callable[[str], str] = FIXES.__getitem__) -> str | None:
        """What to print on the terminal after the app has exited: where the run that quitting
        stopped is, and how to go on with it (``fix_words``: how the app names a fix)."""
        record = self.stopped_for_quit
        if self.quit_in_sweep:
            return (f"freezetui: sweep stopped; its rungs are in {self.sweep_dir}\n"
                    f"continue it in freezetui ({fix_words('continue-sweep')}), or with: freezetui sweep --out "
                    f"{shlex.quote(str(self.sweep_dir))} and the options it started with (in "
                    f"{shlex.quote(str(self.sweep_dir / 'sweep-settings.json'))})")
        if record is None or record.folder is None:
            return None
        lines = [f"freezetui: run {record.label} {record.status}; its files are in {record.folder}"]
        if (Path(record.folder) / "checkpoint.pt").is_file() and record.status != "done":
            lines.append(f"resume it with: {resume_command(record.folder)}")
        elif record.status != "done":
            lines.append("it stopped before its first epoch ended, so there is no checkpoint to resume from")
        return "\n".join(lines)

    def hang_up(self) -> bool:
        """The terminal went away: stop the run (its files are kept) and exit as soon as possible."""
        return self.quit()
