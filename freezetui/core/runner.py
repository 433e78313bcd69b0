"""The one place a run is put together, whoever starts it: ``freezetui train``, ``--resume``,
torchrun workers, the TUI and sweeps all call :func:`execute` with a :class:`RunSpec`.

Steps: check the output folder, join torchrun's process group, load the data, build the model
and its plan, check the head against the data, lint, then train with a run writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .config import TrainConfig
from .data import BatchTransform, Dataset, load_data
from .devices import resolve_device
from .errors import FreezeTUIError, PlanError, Stopped
from .events import Callback, TrainResult
from .adapters import apply_mode_rules
from .lints import Lint, check
from .models import build_model, check_factory_allowed, first_batch_failure, is_factory, model_info
from .plan import FreezePlan
from .runs import LOCK, RunWriter, hold_run_folder, load_checkpoint
from .specs import ModelSpec, RunSpec, ScheduleSpec
from .split import Prefix, Traced, frozen_prefix, trace
from .train import check_trainable, head_mismatch, output_classes, train

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Reporter:
    """Where a run's notes, warnings, lints and decoding progress go: printed by the CLI,
    ignored by the TUI (which shows them live). Override what you need."""

    def note(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...
    def lints(self, lints: list[Lint]) -> None: ...
    def progress(self, done: int, total: int) -> None: ...


def weights_sizes(name: str | None, weights: str | None) -> tuple[int | None, int | None]:
    """(resize, crop) of a torchvision model's pretrained weights, known before the model is
    built, so a photo folder is decoded once at the size training needs; (None, None) without."""
    if not name or is_factory(name) or name.startswith("timm:") or str(weights).lower() in ("none", "") \
            or weights is None or Path(str(weights)).suffix in (".pt", ".pth", ".bin"):
        return None, None
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
        member = enum.DEFAULT if str(weights).lower() == "auto" else enum[str(weights).split(".")[-1]]
        t = member.transforms()
        return int(t.resize_size[0]), int(t.crop_size[0])
    except (ValueError, KeyError, AttributeError, TypeError, IndexError):
        return None, None


def load_run_data(spec: RunSpec, reporter: Reporter, stop: threading.Event | None = None) -> Dataset:
    """The run's data, sized for its model (the plan's or ``--model``'s weights); ``stop`` ends
    the decoding (:class:`Stopped`)."""
    source = spec.plan.model if spec.plan is not None else (dataclasses.asdict(spec.model) if spec.model else {})
    small = bool(source.get("small_input"))
    resize, crop = (None, None) if small else weights_sizes(source.get("name"), source.get("weights"))
    data = load_data(spec.data, seed=spec.config.seed, size=spec.config.image_size, resize_size=resize,
                     crop_size=crop, progress=reporter.progress, stop=stop)
    for w in data.warnings:
        reporter.warning(w)
    return data


# ----------------------------------------------------------------------------- models and plans


def model_for_plan(plan: FreezePlan, weights: str | None = None, num_classes: int | None = None,
                   allowed_code: str | None = None) -> nn.Module:
    """Build the model a plan describes and check that the plan fits it. ``allowed_code`` is the
    model the command line names beside the plan: it must be the plan's own."""
    spec = plan.model
    if allowed_code is not None and allowed_code != spec["name"]:
        raise PlanError(f"the plan is for {spec['name']}, but --model names {allowed_code}; leave --model out "
                        f"to use the plan's model, or make a plan for {allowed_code} with plan make --model "
                        f"{allowed_code}")
    check_factory_allowed(spec["name"], allowed_code)
    model = build_model(
        spec["name"],
        weights=weights if weights is not None else (spec.get("weights") or "none"),
        num_classes=spec.get("num_classes") or num_classes,
        small_input=bool(spec.get("small_input")),
        allow_code=True,  # checked just above
        image_size=spec.get("image_size"),
    )
    plan.check_fits(model)
    plan.reorder_like(model)
    return model


def plan_from_rules(model: nn.Module, rules: list[tuple[str, str]], batchnorm: str = "freeze",
                    schedule: ScheduleSpec | None = None) -> FreezePlan:
    """Everything trainable, then ``("freeze"|"unfreeze", glob)`` rules in order, then the
    ``schedule`` (stages, rates or a recipe) when given."""
    from .. import __version__

    for p in model.parameters():
        p.requires_grad_(True)
    plan = FreezePlan.from_model(model, batchnorm=batchnorm)
    rules = list(rules or [])
    if schedule is not None and schedule.recipe and rules:
        raise PlanError(f"--recipe {schedule.recipe} sets the stages and rates itself; give it without "
                        f"--freeze/--unfreeze, --stage, --lr-mult or --layer-decay")
    apply_mode_rules(plan, model, rules)
    plan.extra["rules"] = [{"action": a, "glob": g} for a, g in rules]
    plan.extra["freezetui_version"] = __version__
    if schedule is not None:
        add_schedule(plan, model, schedule)
    return plan


def add_schedule(plan: FreezePlan, model: nn.Module, schedule: ScheduleSpec) -> FreezePlan:
    """``--recipe``, ``--stage``, ``--lr-mult`` and ``--layer-decay`` onto a plan from rules."""
    from .schedule import fine_tune_recipe

    s = schedule
    if s.recipe and (s.stages or s.lr_mult or s.layer_decay):
        raise PlanError(f"--recipe {s.recipe} sets the stages and rates itself; give it without "
                        f"--freeze/--unfreeze, --stage, --lr-mult or --layer-decay")
    if s.lr_mult and s.layer_decay:
        raise PlanError("give either --lr-mult or --layer-decay, not both")
    plan.auto_rgn = bool(s.auto_rgn)
    if s.recipe:
        traced = trace(model)
        fine_tune_recipe(plan, model, traced.param_order if traced else None)
        plan.extra["recipe"] = s.recipe
        return plan
    by_epoch: dict[int, list[str]] = {}
    for epoch, globs in s.stages:  # --stage 3:a --stage 3:b is one stage
        by_epoch.setdefault(epoch, []).extend(globs)
    for epoch in sorted(by_epoch):
        plan.add_stage(epoch, unfreeze=by_epoch[epoch])
    for glob, f in s.lr_mult:
        plan.set_lr_mult(glob, f)
    if s.layer_decay:
        plan.set_layer_decay(s.layer_decay)
    if s.train_bn:
        plan.set_train_bn(True)
    return plan


def check_rules_early(spec: RunSpec) -> None:
    """A run from ``--model`` and rules: its rules and schedule checked against the model's
    parameter names before any image is decoded, on a model built without memory or weights
    (the meta device). A model that cannot be built there is checked when built for real."""
    m = spec.model
    if spec.plan is not None or spec.resume is not None or m is None or not (spec.rules or spec.schedule):
        return
    try:
        with torch.device("meta"):
            model = build_model(m.name, weights="none", num_classes=m.num_classes, small_input=m.small_input,
                                image_size=spec.config.image_size)
            plan_from_rules(model, spec.rules, spec.batchnorm, spec.schedule)
    except FreezeTUIError:
        raise
    except Exception:  # noqa: BLE001 - not buildable on the meta device: the real build checks
        return


def build_for_run(spec: RunSpec, data: Dataset, reporter: Reporter) -> tuple[nn.Module, FreezePlan]:
    """The model and plan of a run: from the plan file, or from ``--model`` and rules."""
    if spec.plan is not None:
        allowed = spec.model.name if spec.model is not None else None
        model = model_for_plan(spec.plan, num_classes=data.num_classes, allowed_code=allowed)
        plan = spec.plan
    elif spec.model is not None:
        m = spec.model
        model = build_model(m.name, weights=m.weights, num_classes=m.num_classes or data.num_classes,
                            small_input=m.small_input, image_size=spec.config.image_size)
        plan = plan_from_rules(model, spec.rules, spec.batchnorm, spec.schedule)
    else:
        raise PlanError("train needs --plan PLAN or --model NAME (with --freeze/--unfreeze rules)")
    info = model_info(model)
    if info is not None and info.note:
        reporter.note(info.note)
    if plan.model.get("num_classes") is None:  # the head was sized from the data just now
        plan.model["num_classes"] = data.num_classes
        plan.model["new_modules"] = sorted(set(plan.new_modules) | set(info.new_modules if info else ()))
    return model, plan


def seen_size(model: nn.Module, data: Dataset, config: TrainConfig) -> int:
    """The size of the images the model will see, after the input transform."""
    return BatchTransform.for_data(model_info(model), data, config.image_size).size


def cost_profile(inputs: RunInputs, config: TrainConfig, reporter: Reporter):
    """The inputs' cost profile at the size this run sees, measured once and kept on them; None
    (with a note) for a model that cannot be profiled."""
    from .cost import PROFILE_BATCHES, profile_model

    size = inputs.seen_size(config)
    if inputs.profile is None or getattr(inputs.profile, "image_size", None) != size:
        try:
            inputs.profile = profile_model(inputs.model, size)
        except Exception as e:  # noqa: BLE001 - an estimate is advice; the run goes on without it
            shape = (PROFILE_BATCHES[0], 3, size, size)
            name = inputs.plan.model.get("name") or type(inputs.model).__name__
            reporter.note(f"no cost estimate: {first_batch_failure(name, shape, e, inputs.model)}")
            return None
    return inputs.profile


def plan_estimate(inputs: RunInputs, plan: FreezePlan, config: TrainConfig, reporter: Reporter) -> dict | None:
    """The plan's predicted cost (recorded in summary.json beside what was measured); a model
    that cannot be profiled gets a note, never a failed run."""
    from .cost import estimate

    profile = cost_profile(inputs, config, reporter)
    if profile is None:
        return None
    return estimate(profile, plan, min(config.batch_size, len(inputs.data.train)), config.optimizer,
                    config.momentum, prefix=inputs.prefix(plan))


# ----------------------------------------------------------------------------- run folders


def check_out(out: Path, force: bool) -> None:
    """A run folder is never overwritten by accident."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"--out {out} is a file; give a folder for the run")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not force:
        raise PlanError(f"--out {out} already holds files; continue that run with --resume {out}, "
                        f"write into it anyway with --force, or choose another folder")


def resume_spec(run_dir: str | os.PathLike, epochs: int | None = None, device: str | None = None) -> RunSpec:
    """The spec that continues the run in ``run_dir`` from its last checkpoint, with its own
    settings; ``epochs`` extends it, ``device`` moves it (its RNG state follows)."""
    state = load_checkpoint(run_dir)
    plan = FreezePlan.from_dict(state["plan"], source=f"the checkpoint in {run_dir}")
    config = TrainConfig.from_dict(state["config"])
    if epochs is not None:
        config.epochs = epochs
    if device is not None:
        config.device = device
    config.validate()
    return RunSpec(data=state["extra"]["data"], config=config, out=Path(run_dir), plan=plan, resume=state,
                   model=ModelSpec(plan.model["name"]))  # the run's own factory was allowed when it started


# ----------------------------------------------------------------------------- signals


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, stream=None):
    """Ctrl-C, kill and a dropped SSH session end a headless run the same way: after this
    batch, with the files written. Yields the list of signals caught. A signal that was ignored
    when we started (``nohup`` ignores SIGHUP) stays ignored; a second signal aborts."""
    caught: list[int] = []

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()  # first: a write to a dead terminal below must not lose the stop
        caught.append(signum)
        with contextlib.suppress(OSError, ValueError):
            print(f"\n{signal.Signals(signum).name}: stopping after this batch (again to abort)",
                  file=stream or sys.stderr, flush=True)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, on_signal)
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the run


@dataclass
class RunInputs:
    """What a run is made of, built and checked once by :func:`prepare_run`: the model (its head
    sized to the data), the plan it was built with, the data, its forward graph and, once
    measured, its cost profile. The TUI keeps the inputs it prepared when the model was opened
    and runs every plan on them; a sweep runs every rung on them."""

    model: nn.Module
    plan: FreezePlan  # the plan file's, or the one made from --model and rules
    data: Dataset
    traced: Traced | None
    device: torch.device
    profile: object | None = None  # cost.ModelProfile, when measured

    def prefix(self, plan: FreezePlan) -> Prefix | None:
        """Where backward stops under ``plan`` (the one answer, see :func:`split.frozen_prefix`)."""
        return frozen_prefix(self.traced, plan.prefix_frozen(), [n for n, _ in self.model.named_parameters()])

    def seen_size(self, config: TrainConfig) -> int:
        """The size of the images the model will see, after the input transform."""
        return seen_size(self.model, self.data, config)


def check_settings(spec: RunSpec) -> torch.device:
    """The cheap checks, before any file is read or image decoded: the settings, the device
    (a missing GPU is one sentence), the output folder, the rules against the model's names."""
    spec.config.validate()
    device = resolve_device(spec.config.device)
    if spec.resume is None and spec.out is not None:
        check_out(spec.out, spec.force)
    check_rules_early(spec)
    return device


def prepare_run(spec: RunSpec, reporter: Reporter | None = None, device: torch.device | None = None,
                data: Dataset | None = None, stop: threading.Event | None = None) -> RunInputs:
    """The one way a run's inputs are assembled, for ``freezetui train``, ``--resume``, torchrun
    workers, ``freezetui sweep`` and the TUI: the data sized for the model's weights, the model
    built and seeded, its head checked against the data, its plan checked against it, its graph
    traced. Call :func:`check_settings` first (``device`` is what it returned); ``data``: the
    spec's data, when the caller has loaded it already; ``stop`` ends the decoding
    (:class:`Stopped`: nothing trained, nothing to resume)."""
    reporter = reporter or Reporter()
    if data is None:
        data = load_run_data(spec, reporter, stop)
        if stop is not None and stop.is_set():
            raise Stopped("stopped while loading the data, before training began: nothing to resume")
    torch.manual_seed(spec.config.seed)
    model, plan = build_for_run(spec, data, reporter)
    error = head_mismatch(output_classes(model), data)
    if error:
        raise error
    return RunInputs(model, plan, data, trace(model), device or resolve_device(spec.config.device))


def check_plan(inputs: RunInputs, plan: FreezePlan) -> None:
    """A plan run on prepared inputs fits their model and trains something."""
    if plan is not inputs.plan:
        plan.check_fits(inputs.model)
    check_trainable(plan.at_epoch(1))


def execute(spec: RunSpec, callbacks: list[Callback] | tuple = (), stop: threading.Event | None = None,
            reporter: Reporter | None = None, inputs: RunInputs | None = None) -> TrainResult:
    """Carry out ``spec``: on ``inputs`` when the caller prepared them (the TUI, a sweep's
    rungs; the run's plan is then ``spec.plan``), else on inputs prepared from the spec. Under
    torchrun only rank 0 reports and writes files."""
    reporter = reporter or Reporter()
    check_settings(spec)
    with contextlib.ExitStack() as held:
        if distributed.rank_from_env() == 0:  # rank 0 alone writes the folder
            held.enter_context(hold_run_folder(spec.out))
            if spec.resume is None:
                check_out(spec.out, spec.force)  # again, held: a run that ended meanwhile may have filled it
        return _execute(spec, callbacks, stop, reporter, inputs)


def _execute(spec: RunSpec, callbacks, stop, reporter: Reporter, inputs: RunInputs | None) -> TrainResult:
    config = spec.config
    with distributed.process_group(config.device) as (rank, world):
        if rank:
            distributed.quiet_stdout()
            reporter = Reporter()
        if inputs is None:
            with distributed.rank_zero_first():  # downloads and caches are written once
                inputs = prepare_run(spec, reporter, stop=stop)
        plan = spec.plan if spec.plan is not None else inputs.plan
        check_plan(inputs, plan)
        model, data = inputs.model, inputs.data
        reporter.lints(check(plan, model, image_size=inputs.seen_size(config),
                             order=inputs.traced.param_order if inputs.traced else None))
        estimate = plan_estimate(inputs, plan, config, reporter) if rank == 0 else None
        writers = []
        if rank == 0:
            writers = [*callbacks, RunWriter(spec.out, model, plan, config,
                                             extra={"data": spec.data, "model": plan.model["name"],
                                                    "world_size": world, "data_seconds": round(data.load_seconds, 3),
                                                    "train_images": len(data.train), "val_images": len(data.val),
                                                    "classes": list(data.classes), "estimate": estimate},
                                             resume=spec.resume)]
        return train(model, plan, data, config, callbacks=writers, stop=stop, resume=spec.resume,
                     traced=inputs.traced)


def finished_message(result: TrainResult, out: Path) -> str:
    frozen = "unchanged" if result.frozen_unchanged else f"CHANGED: {', '.join(result.changed[:5])}"
    acc = f"{100 * result.val_acc:.1f}%" if result.val_acc is not None else "n/a"
    return (f"done: val acc {acc} (best {100 * (result.best_val_acc or 0):.1f}%), "
            f"{result.train_images_per_s:,.0f} img/s, frozen parameters {frozen}; wrote {out}/")

