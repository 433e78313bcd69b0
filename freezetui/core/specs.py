"""Plain descriptions of what to build and run, filled in by the CLI, the TUI or a sweep and
carried out by :mod:`freezetui.core.runner`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .plan import FreezePlan
from .config import TrainConfig


@dataclass
class ModelSpec:
    """A model as the command line names it."""

    name: str = "resnet18"
    weights: str | None = "auto"
    num_classes: int | None = None  # None: sized from the data
    small_input: bool = False


@dataclass
class ScheduleSpec:
    """The schedule of a plan made from rules (``plan make``, ``train`` without a plan file):
    ``--stage``, ``--lr-mult``, ``--layer-decay``, ``--recipe`` and ``--auto-rgn``."""

    stages: list[tuple[int, list[str]]] = field(default_factory=list)  # (epoch, globs to unfreeze)
    lr_mult: list[tuple[str, float]] = field(default_factory=list)  # (glob, multiplier), later wins
    layer_decay: float | None = None
    recipe: str | None = None  # "fine-tune"
    train_bn: bool = False  # norm layers train even where frozen (the recipe sets it itself)
    auto_rgn: bool = False  # rates × each tensor's normalised ‖g‖/‖w‖ every step


@dataclass
class RunSpec:
    """One training run. The model comes from ``plan`` (its ``model`` block) or, without a plan,
    from ``model`` with ``rules`` applied; ``model`` given beside a plan names the factory the
    user allows to run (a plan naming ``package.module:function`` is code)."""

    data: str
    config: TrainConfig
    out: Path
    plan: FreezePlan | None = None
    model: ModelSpec | None = None
    rules: list[tuple[str, str]] = field(default_factory=list)  # ("freeze"|"unfreeze", glob), without a plan
    batchnorm: str = "freeze"  # without a plan
    resume: dict | None = None  # a checkpoint: continue that run in ``out``
    force: bool = False  # write into an ``out`` that already holds files
    schedule: ScheduleSpec | None = None  # without a plan: stages and rates on top of the rules
