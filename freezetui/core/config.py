"""A run's settings (:class:`TrainConfig`), checked in one place, and the defaults they start from."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from .errors import TrainingError
from .schedule import SCHEDULES

OPTIMIZERS = ("adamw", "adam", "sgd")


# 128 keeps two CPU cores or a GPU busy where the seed's 16 leaves them waiting on Python and
# the optimizer step (benchmarks/seed_workload.py: 65 img/s at 64, 98 at 128 on the 2-core CPU).
DEFAULT_BATCH = 128


# Learning rates that work at REFERENCE_BATCH; other batch sizes scale them (linearly for SGD,
# by the square root for Adam-style optimizers).
REFERENCE_BATCH = 64


BASE_LR = {"adamw": 1e-3, "adam": 1e-3, "sgd": 1e-2}


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = DEFAULT_BATCH
    lr: float | None = None  # None: BASE_LR scaled to the batch size
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    image_size: int | None = None
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    cache: bool = True  # cache the frozen prefix's output when that gives the same result
    compile: bool = False  # torch.compile the trainable part
    deterministic: bool = False  # deterministic algorithms, no autotuning: bit-exact resume on CUDA
    channels_last: bool = False  # NHWC on CUDA for convolutional models
    sync_steps: int | None = None  # read the loss every N steps (None: every step on the CPU, ~4/s on CUDA)
    data_budget: int | None = None  # bytes of device memory the data may take (None: a share of what is free)
    schedule: str = "cosine"  # constant, cosine or onecycle (see schedule.schedule_factor)
    warmup_epochs: float = 0.5  # linear warmup (constant and cosine)
    decay_all: bool = False  # weight decay on biases and norm layers too

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "TrainConfig":
        """The settings a run folder, checkpoint or sweep recorded (keys this version does not
        know are ignored), with ``overrides`` on top. TypeError when a value has the wrong shape."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in (d or {}).items() if k in names}
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}
        for f in dataclasses.fields(cls):  # annotations are strings here: "float | None"
            allowed = tuple(t for name in str(f.type).split("|") for t in kinds.get(name.strip(), (object,)))
            v = given.get(f.name, f.default)
            if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
                raise TypeError(f"{f.name} is a {type(v).__name__}, not {str(f.type)}")
        return cls(**{**given, **overrides})

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise TrainingError(f"epochs must be a positive whole number, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TrainingError(f"batch size must be a positive whole number, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"learning rate must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainingError(f"weight decay must be zero or positive, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise TrainingError(f"warmup epochs must be zero or positive, got {self.warmup_epochs}")
        if self.image_size is not None and self.image_size < 8:
            raise TrainingError(f"image size must be at least 8 px, got {self.image_size}")

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        ratio = self.batch_size / REFERENCE_BATCH
        base = BASE_LR[self.optimizer]
        return base * (ratio if self.optimizer == "sgd" else math.sqrt(ratio))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr"] = self.effective_lr
        return d
