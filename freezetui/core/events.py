"""What a run tells its callbacks (the CLI's progress, the TUI's bridge, the run writer) as it
goes, and what it returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .split import Prefix

@dataclass
class RunStart:
    epochs: int
    steps_per_epoch: int
    device: str
    train_images: int
    val_images: int
    input_size: int
    lr: float
    feature_cache: bool = False  # training reads cached prefix outputs
    prefix: Prefix | None = None  # where backward stops (split.frozen_prefix; None: it runs to the input)
    cached_at: str | None = None  # the module whose outputs are cached, when features are
    schedule: list[str] = field(default_factory=list)  # the plan's stages and rates in words
    precision: str = "fp32"  # the run's arithmetic ("bf16 autocast", "fp32, matmuls ... in TF32")
    notes: list[str] = field(default_factory=list)  # what the user should know before it starts


@dataclass
class StepEnd:
    epoch: int  # 1-based
    step: int  # 1-based within the epoch
    global_step: int
    total_steps: int
    loss: float
    images_per_s: float


@dataclass
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_acc: float
    images_per_s: float
    seconds: float
    partial: bool = False  # a run stopped in the middle of this epoch (older runs' metrics: no longer written)
    stage: int = 1  # 1: the plan's own frozen/trainable; k + 1: after its k-th stage
    trainable: int = 0  # trainable scalars this epoch
    lr: float = 0.0  # the head's rate at the end of the epoch

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    epochs: int  # completed epochs
    history: list[EpochEnd] = field(default_factory=list)
    stopped: bool = False
    frozen_unchanged: bool = True
    changed: list[str] = field(default_factory=list)
    train_images_per_s: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"
    error: str | None = None
    feature_cache: bool = False
    frozen_prefix: str | None = None
    peak_memory_bytes: int | None = None  # CUDA: the most allocated at once during the run
    nondeterministic: list[str] = field(default_factory=list)  # --deterministic: operations without a deterministic version

    @property
    def val_acc(self) -> float | None:
        return self.history[-1].val_acc if self.history else None

    @property
    def best_val_acc(self) -> float | None:
        return max(e.val_acc for e in self.history) if self.history else None

    def summary(self) -> dict:
        return {
            "val_acc": self.val_acc,
            "best_val_acc": self.best_val_acc,
            "epochs": self.epochs,
            "train_images_per_s": self.train_images_per_s,
            "frozen_unchanged": self.frozen_unchanged,
            "frozen_changed": self.changed,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "device": self.device,
            "error": self.error,
            "feature_cache": self.feature_cache,
            "frozen_prefix": self.frozen_prefix,
            "peak_memory_bytes": self.peak_memory_bytes,
            "nondeterministic": self.nondeterministic,
        }


class StopInside(Exception):
    """A stop request seen inside a step that has no batch loop of its own to leave (caching the
    prefix's outputs, evaluating): the run ends there, as a stop, within one batch. (Not
    :class:`~freezetui.core.errors.Stopped`, the error of a stop before any training began.)"""


class Callback:
    """Receives a run's events. Override what you need; all run on the training thread."""

    def on_run_start(self, event: RunStart) -> None: ...
    def on_step(self, event: StepEnd) -> None: ...
    def on_epoch(self, event: EpochEnd) -> None: ...
    def on_caching(self, done: int, total: int) -> None:
        """While the frozen prefix's outputs are cached (before the first epoch, and at a stage
        that moves the cut): images done of ``total`` (training and validation together)."""

    def on_checkpoint(self, state: dict) -> None:
        """After each complete epoch: model, optimizer, epoch, RNG states and history, enough
        for :func:`train` to continue bit-identically with ``resume=state``."""

    def on_run_end(self, result: TrainResult) -> None: ...
