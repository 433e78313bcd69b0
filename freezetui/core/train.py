"""The training loop: trainable parameters only, events out, a stop request in, and a check
afterwards that every frozen parameter is bit-identical to what it was before."""

from __future__ import annotations

import dataclasses

import gc
import math
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data import BatchTransform, Dataset, Split, StreamedSplit, placement
from .errors import TrainingError
from .imagecache import available_ram
from .models import find_heads, model_info
from .plan import FreezePlan, frozen_batchnorms
from .precision import Deterministic, run_precision
from .schedule import SCHEDULES, describe, param_groups, schedule_factor, unfreeze_warmup, warmup_steps
from .split import Prefix, find_cut, frozen_prefix, split, trace

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
        return cls(**{**{k: v for k, v in (d or {}).items() if k in names}, **overrides})

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


# ----------------------------------------------------------------------------- events


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


class Stopped(Exception):
    """A stop request seen inside a step that has no batch loop of its own to leave (caching the
    prefix's outputs, evaluating): the run ends there, as a stop, within one batch."""


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


# ----------------------------------------------------------------------------- helpers


_model_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """Held while a run moves ``model`` to its device or memory format. Whoever copies a model
    another thread may be training (the TUI's cost profile) copies under it: never a model
    with half its tensors moved."""
    with _model_locks_guard:
        return _model_locks.setdefault(model, threading.Lock())


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name} asked for CUDA, but torch sees no CUDA GPU here; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise TrainingError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def logits_of(out) -> torch.Tensor:
    """GoogLeNet and Inception return named tuples with aux logits in training mode."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def output_classes(model: nn.Module) -> int | None:
    heads = find_heads(model)
    if not heads:
        return None
    m = model.get_submodule(heads[-1])
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def make_optimizer(params: list, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """``params``: parameters, or group dicts (their own ``lr``/``weight_decay`` win)."""
    lr, wd = config.effective_lr, config.weight_decay
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=config.momentum, **fused)


def frozen_snapshot(model: nn.Module, plan: FreezePlan) -> dict[str, torch.Tensor]:
    """CPU copies of every frozen parameter, and of the statistics of frozen BatchNorm layers
    when the plan keeps them (``batchnorm: "freeze"``)."""
    snap = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if plan.params.get(n)}
    if plan.batchnorm == "freeze":
        names = {id(m): n for n, m in model.named_modules()}
        for m in frozen_batchnorms(model):
            for b, t in m.named_buffers(recurse=False):
                snap[f"{names[id(m)]}.{b}"] = t.detach().to("cpu", copy=True)
    return snap


def optimizer_groups(model: nn.Module, plan: FreezePlan, config: TrainConfig, order: list[str] | None = None) -> list[dict]:
    """Every parameter, frozen ones included (no gradient: no state, no decay), grouped by rate
    multiplier, first training epoch and weight decay; ``lr_mult`` and ``first_epoch`` ride in
    the group for :meth:`_Run.set_rates`."""
    params = dict(model.named_parameters())
    return [{"params": [params[n] for n in g.names], "lr": config.effective_lr * g.mult, "lr_mult": g.mult,
             "first_epoch": g.first_epoch, "weight_decay": config.weight_decay if g.decay else 0.0}
            for g in param_groups(plan, model, order, config.decay_all)]


def changed_since(model: nn.Module, snap: dict[str, torch.Tensor]) -> list[str]:
    now = dict(model.named_parameters())
    now.update(dict(model.named_buffers()))
    return [n for n, t in snap.items() if not torch.equal(now[n].detach().cpu(), t)]


def evaluate(model: nn.Module, split: Split, transform: BatchTransform, batch_size: int,
             device: torch.device, amp: bool, features: "FeatureStore | None" = None,
             rest: nn.Module | None = None) -> tuple[float, float]:
    """Validation loss and accuracy, from cached prefix features when given; under torchrun
    each process evaluates its own contiguous share, then the sums are added."""
    total_loss, correct, n = distributed.sum_all(
        *evaluation_sums(model, split, transform, batch_size, device, amp, features, rest), device=device)
    n = max(1.0, n)
    return total_loss / n, correct / n


@torch.no_grad()
def evaluation_sums(model: nn.Module, split: Split, transform: BatchTransform, batch_size: int,
                    device: torch.device, amp: bool, features: "FeatureStore | None" = None,
                    rest: nn.Module | None = None, stop: threading.Event | None = None) -> tuple[float, int, int]:
    """(summed loss, correct, images) over this process's share of ``split``. ``stop`` (one
    process only: ranks would part ways) is checked per batch and raises :class:`Stopped`."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)  # on the device: one read at the end
    correct = torch.zeros((), dtype=torch.int64, device=device)
    lo, hi = len(split) * distributed.rank() // distributed.world(), len(split) * (distributed.rank() + 1) // distributed.world()
    for i in range(lo, hi, batch_size):
        if stop is not None and stop.is_set():
            model.train(was_training)
            raise Stopped
        j = min(i + batch_size, hi)
        y = split.labels[i:j].to(device, non_blocking=True)
        # the batch is built in fp32: autocast would resize it in bf16
        x = None if features is not None else transform(split.images[i:j].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = logits_of(rest(features.get(slice(i, j))) if features is not None else model(x))
        total_loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    return total_loss.item(), correct.item(), hi - lo


def device_budget(device: torch.device) -> int | None:
    """Bytes a feature store may take on ``device``: half of what is free there, counting the
    allocator's cached blocks as free (None: no limit, the CPU)."""
    if device.type != "cuda":
        return None
    free = torch.cuda.mem_get_info(device)[0]
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(0.5 * (free + cached))


def store_layout(need: int, limit: int | None, device: torch.device, ram: int | None = None) -> tuple[torch.device, bool]:
    """Where a feature store of ``need`` bytes lives, and whether it is pinned: on ``device``
    within ``limit`` (None: no limit), else on the CPU, pinned when it feeds a GPU so that each
    batch goes up with ``non_blocking=True`` — unless ``ram`` (bytes available) is short: torch
    rounds pinned blocks up to a power of two, so a store is pinned only when twice its size
    fits in half the RAM."""
    if limit is None or need <= limit:
        return device, False
    return torch.device("cpu"), device.type == "cuda" and (ram is None or 2 * need <= ram // 2)


class FeatureStore:
    """A frozen prefix's outputs for a whole split, computed once: on the training device when
    they fit its budget (:func:`device_budget`, injectable), else on the CPU (pinned for a GPU)
    and moved per batch. Computed ``chunk`` images at a time: the run's batch size, which the
    user lowers to fit the device."""

    def __init__(self, prefix: nn.Module, images: torch.Tensor, transform: BatchTransform, device: torch.device,
                 amp: bool, chunk: int = 256, budget: int | None = None, budget_fn=None, progress=None):
        self.features: torch.Tensor | None = None
        self.device = device
        self.pinned = False
        budget_fn = budget_fn or device_budget  # looked up per call: a patched device_budget is seen
        n = len(images)
        with torch.no_grad():
            for i in range(0, n, chunk):
                x = transform(images[i:i + chunk].to(device, non_blocking=True))  # fp32, outside autocast
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    f = prefix(x)
                if self.features is None:  # one tensor for the whole split: no second copy to concatenate
                    need = f[0].numel() * f.element_size() * n
                    limit = budget if budget is not None else budget_fn(device)
                    home, self.pinned = store_layout(need, limit, device,
                                                     available_ram() if device.type == "cuda" else None)
                    self.features = torch.empty((n, *f.shape[1:]), dtype=f.dtype, device=home, pin_memory=self.pinned)
                self.features[i:i + len(f)] = f.to(self.features.device)
                if progress is not None:  # may raise Stopped
                    progress(i + len(f))

    @property
    def on_device(self) -> bool:
        return self.features is not None and self.features.device == self.device

    def get(self, index) -> torch.Tensor:
        """Rows ``index`` (a slice, or indices on the store's device) on the training device."""
        if self.on_device or not isinstance(index, torch.Tensor):  # a slice of a pinned store is pinned
            return self.features[index].to(self.device, non_blocking=True)
        rows = torch.empty((len(index), *self.features.shape[1:]), dtype=self.features.dtype, pin_memory=self.pinned)
        torch.index_select(self.features, 0, index.to(self.features.device), out=rows)
        return rows.to(self.device, non_blocking=True)


def plan_split(model: nn.Module, plan: FreezePlan, config: TrainConfig, traced=None):
    """(prefix, rest, cut, cache_train, cache_val) for this plan; prefix None when there is none.

    The prefix runs under no_grad; it may hold random or train-mode-dependent ops (it runs in
    train mode, drawing random numbers in the same order as the whole model would). Its
    outputs are cached only when nothing in it changes between steps: nothing random, BatchNorm
    statistics kept, and (for the training set) no augmentation. A cacheable cut is preferred
    to a deeper one that is not: frozen layers after the cut record no gradients anyway.
    """
    traced = traced if traced is not None else trace(model)
    if traced is None:
        return None, None, None, False, False
    frozen = set(plan.frozen)
    safe = find_cut(traced, frozen)
    cut = safe if config.cache and safe is not None and safe.cacheable(plan.batchnorm) else \
        find_cut(traced, frozen, random_ok=True)
    if cut is None:
        return None, None, None, False, False
    prefix, rest = split(traced, cut)
    cache_val = config.cache and cut.cacheable(plan.batchnorm)
    return prefix, rest, cut, cache_val and not config.augment, cache_val


# ----------------------------------------------------------------------------- the loop

# torch < 2.5 has only the CUDA-specific name.
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
SYNC_SECONDS = 0.25  # a single CUDA process reads its loss about 4 times a second
SYNC_STEPS_DISTRIBUTED = 16
ONLY_RANK_ZERO_WRITES = "rank 0 could not write the run's files; see its message"


def train(
    model: nn.Module,
    plan: FreezePlan,
    data: Dataset,
    config: TrainConfig | None = None,
    callbacks: list[Callback] | tuple = (),
    stop: threading.Event | None = None,
    resume: dict | None = None,
    traced=None,
) -> TrainResult:
    """Train ``model`` under ``plan`` on ``data``. ``stop.set()`` ends the run within one batch
    (of training, caching or evaluating); the epoch it interrupts is dropped, not evaluated.

    Raises :class:`TrainingError` for bad settings, a head that does not fit the data, running
    out of memory, or a NaN/inf loss; the callbacks' ``on_run_end`` still sees the result (with
    ``error`` set). ``resume`` is a state from ``Callback.on_checkpoint``: training continues
    after its epoch, and ``model`` should be built as it was for the first run (its frozen
    parameters are the reference the end-of-run check compares against). ``traced`` is the
    model's forward graph when the caller has it already (see :func:`split.trace`).
    """
    run = _Run(model, plan, data, config or TrainConfig(), list(callbacks), stop, traced)
    out_of_memory = None
    try:
        # each step that may fail on one process only (out of memory, a file) is agreed, so that
        # no process is left waiting in a collective for one that has stopped
        run.agreed(run.prepare)
        run.cut = run.split_trainable()  # DDP under torchrun: a collective
        run.restore(resume)
        run.announce()
        run.agreed(run.cache_features)
        for epoch in range(run.first_epoch, run.config.epochs + 1):
            run.enter_stage(epoch)
            ev = run.train_epoch(epoch)
            if ev is None:  # stopped
                break
            run.end_epoch(ev)
            if run.result.stopped:
                break
            run.checkpoint(epoch)
    except Stopped:
        run.result.stopped = True
    except TrainingError as e:
        run.result.error = str(e)
        raise
    except OutOfMemoryError:
        # raised below, outside this block: the OOM (and its traceback, which holds the failing
        # step's frames and activations) is gone before finish() releases memory, and it is no
        # __context__ of the sentence either
        run.result.error = out_of_memory = run.out_of_memory_message()
    finally:
        run.finish()
    if out_of_memory:
        raise TrainingError(out_of_memory)
    return run.result


class _Run:
    """The state of one call of :func:`train`, and its steps in the order they run."""

    def __init__(self, model: nn.Module, plan: FreezePlan, data: Dataset, config: TrainConfig,
                 callbacks: list[Callback], stop: threading.Event | None, traced):
        config.validate()
        self.model, self.plan, self.data, self.config = model, plan, data, config
        self.callbacks, self.stop, self.traced = callbacks, stop, traced
        self.device = distributed.local_device(resolve_device(config.device))
        self.rank, self.world = distributed.rank(), distributed.world()
        self.result = TrainResult(epochs=0, device=str(self.device))
        self.first_epoch = 1
        self.bs = config.batch_size
        self.stage = "setting up"
        self.snap: dict[str, torch.Tensor] | None = None
        self.active: FreezePlan | None = None  # the plan in force this epoch (stages applied)
        self.drifted: list[str] = []  # parameters that changed before the stage that unfroze them
        self.images_total, self.train_seconds = 0, 0.0
        self.t_run = time.perf_counter()
        self.notes: list[str] = []  # for RunStart
        self.failed: str | None = None  # out of memory in a step on this process, told to the others at a sync
        self.reduced = False  # this step's backward (DDP's gradient reduction) has finished
        self.deterministic = Deterministic() if config.deterministic else None
        # Duck-typed callbacks may lack on_checkpoint; skip the state copy when nobody wants it.
        self.checkpointers = [cb for cb in callbacks if getattr(type(cb), "on_checkpoint", Callback.on_checkpoint)
                              is not Callback.on_checkpoint]

    # ------------------------------------------------------------------ prepare

    def prepare(self) -> None:
        """Plan on the model, model and data on the device, optimizer, batch size and steps; the
        frozen prefix and its wrapping come next (:meth:`split_trainable`: DDP's first collective),
        RunStart after :meth:`restore` (:meth:`announce`)."""
        model, config, device = self.model, self.config, self.device
        if self.deterministic is not None:
            self.deterministic.start()  # before the first cuBLAS call, which reads its workspace setting
        n_out = output_classes(model)
        if n_out is not None and n_out != self.data.num_classes:
            raise TrainingError(
                f"the model's head has {n_out} outputs but {self.data.name} has {self.data.num_classes} classes; "
                f"make the plan with --num-classes {self.data.num_classes}"
            )
        self.active = self.plan.at_epoch(1)
        self.active.apply(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise TrainingError("every parameter is frozen: nothing to train; unfreeze at least the head")
        self.snap = frozen_snapshot(model, self.active)
        if self.traced is None:
            self.traced = trace(model)
        self.stage = "moving the model to the device"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with model_lock(model):
            model.to(device)
        self.amp = config.amp and device.type == "cuda"
        self.precision = run_precision(device, self.amp)
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)  # the epochs' order, on the CPU
        # augmentation draws on the device: no host-device copy per step
        self.aug_gen = torch.Generator(device=device).manual_seed(config.seed)
        self.transform = BatchTransform.for_data(model_info(model), self.data, config.image_size)
        self.optimizer = make_optimizer(optimizer_groups(model, self.plan, config, self.order), config, device)
        heads = find_heads(model)
        head = dict(model.named_parameters()).get(f"{heads[-1]}.weight") if heads else None
        self.head_group = next((i for i, g in enumerate(self.optimizer.param_groups)
                                if any(p is head for p in g["params"])), 0)  # its rate goes in the metrics
        self.stage = "moving the data to the device"
        # in device memory when train + validation fit its budget, else streamed from the
        # memory-mapped cache through pinned buffers with the next batch prefetched
        self.streamer = None
        if placement(self.data.nbytes, device, budget=config.data_budget) == "stream":
            self.train_split, self.val_split = self.data.train, self.data.val
            self.streamer = StreamedSplit(self.data.train, device, config.batch_size)
        else:  # copied once for the whole run
            self.train_split, self.val_split = self.data.train.to(device), self.data.val.to(device)
        self.n = len(self.train_split)
        share = self.n // self.world  # under torchrun each process trains on its own shard of every epoch
        self.bs = min(config.batch_size, share)
        # drop the ragged last batch, as BatchNorm dislikes size 1
        self.steps = share // self.bs if share >= self.bs else 1
        self.total_steps = config.epochs * self.steps
        self.warmup = warmup_steps(config.warmup_epochs, self.steps, self.total_steps)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cudnn.deterministic = config.deterministic
            if config.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
                with model_lock(model):
                    model.to(memory_format=torch.channels_last)
                self.transform.channels_last = True
        if config.sync_steps:
            self.sync_every = config.sync_steps
        elif device.type == "cpu":
            self.sync_every = 1
        else:
            self.sync_every = SYNC_STEPS_DISTRIBUTED if distributed.active() else 0  # 0: by time

    def announce(self) -> None:
        """RunStart to every callback, once the run is set up (and restored: its notes)."""
        cut, config = self.cut, self.config
        start = RunStart(config.epochs, self.steps, str(self.device), self.n, len(self.data.val), self.transform.size,
                         config.effective_lr, self.cache_train, self.prefix_now,
                         (cut.module or cut.name) if cut is not None and self.cache_train else None,
                         describe(self.plan), self.precision, list(self.notes))
        self.agreed(lambda: [cb.on_run_start(start) for cb in self.callbacks], ONLY_RANK_ZERO_WRITES)

    @property
    def order(self) -> list[str] | None:
        return self.traced.param_order if self.traced is not None else None

    def split_trainable(self):
        """The frozen prefix of the plan in force, and the trainable rest wrapped for training
        (DDP under torchrun, rebuilt for each trainable set; compiled when asked). Returns the cut."""
        model, device = self.model, self.device
        self.prefix, self.rest, cut, self.cache_train, self.cache_val = plan_split(model, self.active, self.config,
                                                                                  self.traced)
        head = self.rest if self.rest is not None else model
        if distributed.active():
            # Frozen parameters have requires_grad=False: DDP leaves them out of gradient sync.
            head = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda"
                                                       else None)
        self.step_fn = torch.compile(head) if self.config.compile else head
        self.result.feature_cache = self.cache_train
        self.prefix_now = frozen_prefix(self.traced, set(self.active.frozen), [n for n, _ in model.named_parameters()])
        self.result.frozen_prefix = self.prefix_now.module if self.prefix_now else None
        return cut

    def switch_plan(self, plan: FreezePlan, check: bool = True) -> None:
        """Put a stage's plan on the model: ``requires_grad`` and the BatchNorm policy, the
        frozen-drift reference (a parameter released now must not have changed while frozen,
        when ``check``), the frozen prefix and its wrapping. Features are re-cached by the caller."""
        self.stage = "changing the trainable set"
        plan.apply(self.model)
        now = frozen_snapshot(self.model, plan)
        for name in [n for n in self.snap if n not in now]:
            if check and changed_since(self.model, {name: self.snap[name]}):
                self.drifted.append(name)
            del self.snap[name]
        for name, t in now.items():
            self.snap.setdefault(name, t)
        self.active = plan
        self.cut = self.split_trainable()

    def enter_stage(self, epoch: int) -> None:
        """At a stage boundary: the new trainable set, its prefix and its cached features."""
        plan = self.plan.at_epoch(epoch)
        if plan.params == self.active.params and plan.batchnorm == self.active.batchnorm:
            return
        self.switch_plan(plan)
        self.agreed(self.cache_features)

    def set_rates(self, epoch: int, step: int) -> None:
        """Every group's rate for 1-based ``step`` of ``epoch``: the schedule's factor × the
        stage's scale × the group's multiplier × its own warmup after it was unfrozen."""
        t = (epoch - 1) * self.steps + step - 1
        base = self.config.effective_lr * self.plan.lr_scale_at(epoch) * schedule_factor(
            self.config.schedule, t, self.total_steps, self.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = base * g["lr_mult"] * unfreeze_warmup(t, self.steps, g["first_epoch"])

    def restore(self, resume: dict | None) -> None:
        """Continue after the checkpoint's epoch, with its weights, optimizer and RNG states."""
        if resume is None:
            return
        self.model.load_state_dict(resume["model"])
        try:
            self.optimizer.load_state_dict(resume["optimizer"])
        except ValueError:
            raise TrainingError("the checkpoint's optimizer does not fit this run's parameter groups "
                                "(written by an older freezetui or for another plan); start the run again") from None
        torch.set_rng_state(resume["rng"]["torch"])
        self.gen.set_state(resume["rng"]["generator"])
        note = restore_generator(self.aug_gen, resume["rng"].get("augment"), self.config.seed + resume["epoch"])
        if note:
            self.notes.append(f"{note}: the resumed run's augmentation differs from an uninterrupted run's")
        cuda_state = resume["rng"].get("cuda")
        if isinstance(cuda_state, (list, tuple)):  # older checkpoints kept every GPU's state
            cuda_state = cuda_state[0] if cuda_state else None
        if self.device.type == "cuda" and cuda_state is not None:
            # the state of the GPU it trained on goes to the GPU it trains on now, whatever their numbers
            torch.cuda.set_rng_state(cuda_state, self.device)
        self.result.history = [EpochEnd(**e) for e in resume["history"]]
        self.result.epochs = resume["epoch"]
        self.first_epoch = resume["epoch"] + 1
        stage = resume.get("stage")
        if stage is not None and stage != self.plan.stage_index(resume["epoch"]):
            raise TrainingError(f"the checkpoint was in stage {stage} at epoch {resume['epoch']}, but this plan "
                                f"has stage {self.plan.stage_index(resume['epoch'])} there; resume with its own plan")
        before = self.plan.at_epoch(resume["epoch"])
        if before.params != self.active.params or before.batchnorm != self.active.batchnorm:
            self.switch_plan(before, check=False)  # the run that passed those boundaries checked them

    def cache_features(self) -> None:
        """The frozen prefix's outputs, computed once where that gives the same result."""
        self.stage = "caching the frozen prefix's outputs"
        self.model.eval()
        args = (self.transform, self.device, self.amp, self.bs)
        n_train = len(self.train_split.images) if self.cache_train else 0
        total = n_train + (len(self.val_split.images) if self.cache_val else 0)

        def progress(offset: int):
            def done(n: int) -> None:
                if self.local_stop():
                    raise Stopped
                for cb in self.callbacks:
                    if hasattr(cb, "on_caching"):  # callbacks predating the event need not have it
                        cb.on_caching(offset + n, total)
            return done

        self.train_features = FeatureStore(self.prefix, self.train_split.images, *args,
                                           progress=progress(0)) if self.cache_train else None
        self.val_features = FeatureStore(self.prefix, self.val_split.images, *args,
                                         progress=progress(n_train)) if self.cache_val else None

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> EpochEnd | None:
        """One pass over (this process's share of) the training set; None when stopped (a partial
        epoch is neither evaluated nor checkpointed: resuming repeats it). Losses accumulate on the device and are read at sync points only
        (:meth:`sync_due`), where the stop flag and NaN/inf are checked too."""
        self.stage = "training"
        self.model.train()
        perm = torch.randperm(self.n, generator=self.gen)[self.rank::self.world]  # same on every rank
        batches = self.batches(perm)
        t0 = self.last_sync = time.perf_counter()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        window, bad = zero.clone(), torch.full((), -1, dtype=torch.int64, device=self.device)
        loss_sum, seen, window_n = 0.0, 0, 0
        try:
            for step in range(1, self.steps + 1):
                if self.stop_requested(step):
                    self.result.stopped = True
                    break
                idx, images, labels = next(batches)
                self.set_rates(epoch, step)
                loss = self.step_or_wait(idx, images, labels)
                window += loss * len(idx)
                bad = torch.where((bad < 0) & ~torch.isfinite(loss), step, bad)
                window_n += len(idx)
                seen += len(idx)
                if self.sync_due(step):
                    value, first_bad = self.sync(window, bad)
                    if first_bad >= 0:
                        raise TrainingError(
                            f"loss became {value / window_n if math.isfinite(value) else value} at epoch {epoch}, "
                            f"step {first_bad}; lower the learning rate (now {self.config.effective_lr:g}) "
                            f"or check the data")
                    loss_sum += value
                    elapsed = time.perf_counter() - t0
                    ev = StepEnd(epoch, step, (epoch - 1) * self.steps + step, self.config.epochs * self.steps,
                                 value / window_n, seen / elapsed if elapsed > 0 else 0.0)
                    window.zero_()
                    window_n = 0
                    for cb in self.callbacks:
                        cb.on_step(ev)
        finally:  # on any exit: a prefetching thread ends, with its pinned buffers and its batch on the device
            batches.close()
        if window_n:  # stopped between sync points
            value, first_bad = self.sync(window, bad)
            loss_sum += value
        seconds = time.perf_counter() - t0
        if self.result.stopped:  # a partial epoch is not evaluated: a stop ends the run within the batch
            return None
        self.images_total += seen * self.world
        self.train_seconds += seconds
        self.stage = "evaluating"
        sums = self.agreed(lambda: evaluation_sums(self.model, self.val_split, self.transform, self.bs, self.device,
                                                   self.amp, self.val_features, self.rest,
                                                   self.stop if not distributed.active() else None))
        val_loss, correct, n, loss_sum, seen_all = distributed.sum_all(*sums, loss_sum, seen, device=self.device)
        val_loss, val_acc = val_loss / max(1, n), correct / max(1, n)
        return EpochEnd(epoch, self.config.epochs, loss_sum / max(1, seen_all), val_loss, val_acc,
                        seen_all / seconds if seconds > 0 else 0.0, time.perf_counter() - t0,
                        partial=self.result.stopped)

    def sync_due(self, step: int) -> bool:
        """Read the device's numbers now? Every step on the CPU (free there), every
        ``sync_steps`` under torchrun (all ranks agree by count), else about 4 times a second."""
        if step == self.steps or self.sync_every == 1:
            return True
        if self.sync_every:
            return step % self.sync_every == 0
        return time.perf_counter() - self.last_sync >= SYNC_SECONDS

    def sync(self, window: torch.Tensor, bad: torch.Tensor) -> tuple[float, int]:
        """The one host-device synchronisation of a sync point: (loss sum, first bad step or -1)
        agreed across ranks, so that a NaN on one rank stops them all."""
        self.last_sync = time.perf_counter()
        value, first_bad = window.item(), int(bad.item())
        if distributed.active():
            nan, failed = distributed.flags_all([first_bad >= 0, self.failed is not None], self.device)
            if self.failed is not None:
                raise TrainingError(self.failed)
            if failed:
                raise TrainingError("another process ran out of memory while training; see its message")
            if nan and first_bad < 0:
                raise TrainingError("the loss became NaN or infinite on another process; "
                                    "lower the learning rate or check the data")
        return value, first_bad

    def local_stop(self) -> bool:
        """A stop request, where one process may act on it alone (not under torchrun)."""
        return self.stop is not None and self.stop.is_set() and not distributed.active()

    def stop_requested(self, step: int) -> bool:
        local = self.stop is not None and self.stop.is_set()
        if not distributed.active():
            return local
        if step != 1 and not self.sync_due(step - 1):  # ranks agree at sync points only
            return False
        return distributed.any_all(local, self.device)

    def batches(self, perm: torch.Tensor):
        """(indices, uint8 images or None, labels) for each step of an epoch: images and labels
        on the device, indices where the rows are read (the feature store's device when features
        are cached: a store on the CPU is indexed without a copy back from the GPU)."""
        if self.streamer is not None and self.train_features is None:
            streamed = self.streamer.prefetch(perm, self.bs, self.steps)
            try:
                for step, (x, y) in enumerate(streamed):
                    yield perm[step * self.bs:(step + 1) * self.bs], x, y
            finally:
                streamed.close()  # its thread ends now, not when the garbage collector finds it
            return
        rows = perm.to(self.train_split.labels.device)
        store = perm.to(self.train_features.features.device) if self.train_features is not None else rows
        for step in range(self.steps):
            at = slice(step * self.bs, (step + 1) * self.bs)
            labels = self.train_split.labels[rows[at]].to(self.device, non_blocking=True)
            images = None if self.train_features is not None else self.train_split.images[rows[at]].to(self.device)
            yield store[at], images, labels

    def step_or_wait(self, idx: torch.Tensor, images: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """:meth:`train_step`; under torchrun, out of memory on this process is held until the next
        sync point, where every process learns of it (:meth:`sync`), and until then this process
        keeps the others' collectives company with empty batches (in eval mode: no statistics
        move). A step that ran out of memory inside DDP's gradient reduction cannot be joined."""
        if self.failed is None:
            self.reduced = False
            try:
                return self.train_step(idx, images, y)
            except OutOfMemoryError:
                if not distributed.active():
                    raise
                self.failed = self.out_of_memory_message()
            release_memory(self.device)  # the failing step's tensors went with the exception
            if self.reduced:  # failed in the optimizer step: the others have left this step's collectives
                return torch.zeros((), device=self.device)
        self.model.eval()
        try:
            self.train_step(idx[:0], None if images is None else images[:0], y[:0])
        finally:
            self.model.train()
        return torch.zeros((), device=self.device)

    def train_step(self, idx: torch.Tensor, images: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward and update on one batch; returns its loss, still on the device."""
        # the last step's gradients are freed before this forward, not after it (one copy less at the peak)
        self.optimizer.zero_grad(set_to_none=True)
        if self.train_features is not None:
            x = self.train_features.get(idx)
        else:  # built in fp32: autocast would run the crops' affine grid in bf16 (0.4 px off at 224 px)
            x = self.transform.augment(images, self.aug_gen) if self.config.augment else self.transform(images)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.prefix is not None and self.train_features is None:
                with torch.no_grad():  # the frozen prefix keeps no activations
                    x = self.prefix(x)
            loss = F.cross_entropy(logits_of(self.step_fn(x)).float(), y)
        loss.backward()
        self.reduced = True  # under DDP the gradients are averaged across processes by now
        self.optimizer.step()
        return loss.detach()

    def end_epoch(self, ev: EpochEnd) -> None:
        ev.stage = self.plan.stage_index(ev.epoch)
        ev.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        ev.lr = self.optimizer.param_groups[self.head_group]["lr"]
        self.result.history.append(ev)
        self.result.epochs = ev.epoch
        self.agreed(lambda: [cb.on_epoch(ev) for cb in self.callbacks], ONLY_RANK_ZERO_WRITES)

    def checkpoint(self, epoch: int) -> None:
        def write():
            if self.checkpointers:
                state = checkpoint_state(self.model, self.optimizer, self.gen, epoch, self.result.history,
                                         self.device, stage=self.plan.stage_index(epoch))
                state["rng"]["augment"] = self.aug_gen.get_state()
                state["rng"]["augment_device"] = self.aug_gen.device.type
                for cb in self.checkpointers:
                    cb.on_checkpoint(state)
        self.agreed(write, ONLY_RANK_ZERO_WRITES)

    def agreed(self, fn, elsewhere: str | None = None):
        """``fn()``, after which every rank learns whether it failed on one (a TrainingError, or
        out of memory) and all stop together; ``elsewhere`` is what the others say."""
        error = None
        try:
            value = fn()
        except TrainingError as e:
            error = e
        except OutOfMemoryError:
            error = TrainingError(self.out_of_memory_message())  # raised below: no __context__
        if distributed.any_all(error is not None, self.device) and error is None:
            raise TrainingError(elsewhere or f"another process failed while {self.stage}; see its message")
        if error is not None:
            raise error
        return value

    # ------------------------------------------------------------------ finish

    def out_of_memory_message(self) -> str:
        where = f"out of memory while {self.stage} on {self.device}"
        if self.stage in ("training", "evaluating", "caching the frozen prefix's outputs"):
            return f"{where} at batch size {self.bs}; try --batch-size {max(1, self.bs // 2)} or a smaller --image-size"
        return f"{where}: the model or the data does not fit; try a smaller --image-size or model"

    def finish(self) -> None:
        """Totals, the frozen-drift check, and on_run_end for every callback."""
        r = self.result
        r.seconds = time.perf_counter() - self.t_run
        r.train_images_per_s = self.images_total / self.train_seconds if self.train_seconds > 0 else 0.0
        if self.device.type == "cuda":
            r.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        later = changed_since(self.model, self.snap) if self.snap is not None else []
        r.changed = list(dict.fromkeys(self.drifted + later))
        r.frozen_unchanged = not r.changed
        if self.deterministic is not None:
            self.deterministic.stop()
            r.nondeterministic = list(self.deterministic.ops)
        try:
            for cb in self.callbacks:
                cb.on_run_end(r)
        finally:
            self.release()

    def release(self) -> None:
        """Drop what this run holds on the device (gradients, optimizer state, caches, the
        traced halves), so the next run in the same process starts from free memory."""
        self.model.zero_grad(set_to_none=True)
        for name in ("optimizer", "train_features", "val_features", "prefix", "rest", "step_fn", "train_split",
                     "val_split"):
            self.__dict__.pop(name, None)
        release_memory(self.device)


def restore_generator(gen: torch.Generator, state: torch.Tensor | None, seed: int) -> str | None:
    """Put a generator's saved state back. A state saved on another device type does not fit
    (CUDA's are 16 bytes, the CPU's 5,056): then ``gen`` is seeded with ``seed`` and the
    returned sentence says so; None when the state was restored or there was none."""
    if state is None:
        return None
    if len(state) == len(gen.get_state()):
        try:
            gen.set_state(state)
            return None
        except RuntimeError:
            pass
    gen.manual_seed(seed)
    return (f"the augmentation generator's state was saved on another kind of device ({len(state)} bytes; "
            f"{gen.device.type} needs {len(gen.get_state())}), so it was seeded afresh")


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator, epoch: int,
                     history: list[EpochEnd], device: torch.device, stage: int = 1) -> dict:
    """Everything a resumed run needs, as tensors and plain data (loadable with weights_only).
    The rates are a function of the step, so no scheduler state is needed."""
    return {
        "epoch": epoch,
        "stage": stage,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "generator": gen.get_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "history": [e.to_dict() for e in history],
    }


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect cyclic garbage (optimizers, traced modules) and return cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def memory_in_use(device: str) -> str:
    """' · 1.2 GiB used / 3.0 GiB reserved' of CUDA memory on ``device``; '' elsewhere."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return ""
    return (f" · {torch.cuda.memory_allocated(dev) / 2**30:.1f} GiB used / "
            f"{torch.cuda.memory_reserved(dev) / 2**30:.1f} GiB reserved")
