"""The training loop: trainable parameters only, events out, a stop request in, and a check
afterwards that every frozen parameter is bit-identical to what it was before."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data import BatchTransform, Dataset, Split, random_crop_flip
from .errors import TrainingError
from .models import find_heads, model_info
from .plan import FreezePlan, frozen_batchnorms
from .split import find_cut, split, trace

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
    backward_stop: str | None = None  # where the frozen prefix ends (None: no prefix)


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
    partial: bool = False  # a run stopped in the middle of this epoch

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
        }


class Callback:
    """Receives a run's events. Override what you need; all run on the training thread."""

    def on_run_start(self, event: RunStart) -> None: ...
    def on_step(self, event: StepEnd) -> None: ...
    def on_epoch(self, event: EpochEnd) -> None: ...
    def on_checkpoint(self, state: dict) -> None:
        """After each complete epoch: model, optimizer, epoch, RNG states and history, enough
        for :func:`train` to continue bit-identically with ``resume=state``."""

    def on_run_end(self, result: TrainResult) -> None: ...


# ----------------------------------------------------------------------------- helpers


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


def make_optimizer(params: list[nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
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


def changed_since(model: nn.Module, snap: dict[str, torch.Tensor]) -> list[str]:
    now = dict(model.named_parameters())
    now.update(dict(model.named_buffers()))
    return [n for n, t in snap.items() if not torch.equal(now[n].detach().cpu(), t)]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, transform: BatchTransform, batch_size: int,
             device: torch.device, amp: bool, features: "FeatureStore | None" = None,
             rest: nn.Module | None = None) -> tuple[float, float]:
    """Validation loss and accuracy, from cached prefix features when given."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    # under torchrun each process evaluates its own contiguous share, then the sums are added
    lo, hi = len(split) * distributed.rank() // distributed.world(), len(split) * (distributed.rank() + 1) // distributed.world()
    for i in range(lo, hi, batch_size):
        j = min(i + batch_size, hi)
        y = split.labels[i:j].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if features is not None:
                out = logits_of(rest(features.get(slice(i, j))))
            else:
                out = logits_of(model(transform(split.images[i:j].to(device, non_blocking=True))))
        total_loss += F.cross_entropy(out.float(), y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    model.train(was_training)
    total_loss, correct, n = distributed.sum_all(total_loss, correct, hi - lo, device=device)
    n = max(1.0, n)
    return total_loss / n, correct / n


class FeatureStore:
    """A frozen prefix's outputs for a whole split, computed once: on the training device when
    they fit in half of its free memory, else on the CPU and moved per batch."""

    def __init__(self, prefix: nn.Module, images: torch.Tensor, transform: BatchTransform, device: torch.device,
                 amp: bool, chunk: int = 256):
        parts, on_device = [], True
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for i in range(0, len(images), chunk):
                f = prefix(transform(images[i:i + chunk].to(device, non_blocking=True)))
                if i == 0 and device.type == "cuda":
                    need = f[0].numel() * f.element_size() * len(images)
                    on_device = need < 0.5 * torch.cuda.mem_get_info(device)[0]
                parts.append(f if on_device else f.cpu())
        self.features = torch.cat(parts)
        self.device = device

    def get(self, index) -> torch.Tensor:
        return self.features[index].to(self.device, non_blocking=True)


def plan_split(model: nn.Module, plan: FreezePlan, config: TrainConfig):
    """(prefix, rest, cut, cache_train, cache_val) for this plan; prefix None when there is none.

    Cached features equal what the prefix computes each step only when nothing in it changes
    between steps: no augmentation (for the training set) and BatchNorm statistics kept.
    """
    traced = trace(model)
    cut = find_cut(traced, set(plan.frozen)) if traced is not None else None
    if cut is None:
        return None, None, None, False, False
    prefix, rest = split(traced, cut)
    stable = plan.batchnorm == "freeze" or not cut.has_batchnorm
    cache_val = config.cache and stable
    return prefix, rest, cut, cache_val and not config.augment, cache_val


# ----------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    plan: FreezePlan,
    data: Dataset,
    config: TrainConfig | None = None,
    callbacks: list[Callback] | tuple = (),
    stop: threading.Event | None = None,
    resume: dict | None = None,
) -> TrainResult:
    """Train ``model`` under ``plan`` on ``data``. ``stop.set()`` ends the run within one batch.

    Raises :class:`TrainingError` for bad settings, a head that does not fit the data, or a
    NaN/inf loss; the callbacks' ``on_run_end`` still sees the result (with ``error`` set).
    ``resume`` is a state from ``Callback.on_checkpoint``: training continues after its epoch,
    and ``model`` should be built as it was for the first run (its frozen parameters are the
    reference the end-of-run check compares against).
    """
    config = config or TrainConfig()
    config.validate()
    device = distributed.local_device(resolve_device(config.device))
    n_out = output_classes(model)
    if n_out is not None and n_out != data.num_classes:
        raise TrainingError(
            f"the model's head has {n_out} outputs but {data.name} has {data.num_classes} classes; "
            f"make the plan with --num-classes {data.num_classes}"
        )
    plan.apply(model)
    model.to(device)
    amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    transform = BatchTransform.for_model(model_info(model), data.image_size, config.image_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("every parameter is frozen: nothing to train; unfreeze at least the head")
    optimizer = make_optimizer(trainable, config, device)
    snap = frozen_snapshot(model, plan)

    train_split = data.train.to(device)
    n = len(train_split)
    rank, world = distributed.rank(), distributed.world()
    share = n // world  # under torchrun each process trains on its own shard of every epoch
    bs = min(config.batch_size, share)
    steps = share // bs if share >= bs else 1  # drop the ragged last batch, as BatchNorm dislikes size 1
    prefix, rest, cut, cache_train, cache_val = plan_split(model, plan, config)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    head = rest if rest is not None else model
    if distributed.active():
        # Frozen parameters have requires_grad=False: DDP leaves them out of gradient sync.
        head = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = torch.compile(head) if config.compile else head
    result = TrainResult(epochs=0, device=str(device), feature_cache=cache_train,
                         frozen_prefix=cut.name if cut else None)
    start_ev = RunStart(config.epochs, steps, str(device), n, len(data.val), transform.size, config.effective_lr,
                        cache_train, cut.name if cut else None)
    for cb in callbacks:
        cb.on_run_start(start_ev)

    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["rng"]["torch"])
        gen.set_state(resume["rng"]["generator"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
        result.history = [EpochEnd(**e) for e in resume["history"]]
        result.epochs = first_epoch = resume["epoch"]
        first_epoch += 1
    # Duck-typed callbacks may lack on_checkpoint; skip the state copy when nobody wants it.
    checkpointers = [cb for cb in callbacks
                     if getattr(type(cb), "on_checkpoint", Callback.on_checkpoint) is not Callback.on_checkpoint]

    t_run = time.perf_counter()
    images_total, train_seconds = 0, 0.0
    try:
        model.eval()
        train_features = FeatureStore(prefix, train_split.images, transform, device, amp) if cache_train else None
        val_features = FeatureStore(prefix, data.val.images, transform, device, amp) if cache_val else None
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen).to(device)[rank::world]  # same order on every rank
            t0 = time.perf_counter()
            loss_sum, seen = 0.0, 0
            for step in range(1, steps + 1):
                if distributed.any_all(stop is not None and stop.is_set(), device):
                    result.stopped = True
                    break
                idx = perm[(step - 1) * bs: step * bs]
                y = train_split.labels[idx]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    if train_features is not None:
                        x = train_features.get(idx)
                    else:
                        x = transform(train_split.images[idx])
                        if config.augment:
                            x = random_crop_flip(x, gen)
                        if prefix is not None:
                            with torch.no_grad():  # the frozen prefix keeps no activations
                                x = prefix(x)
                    loss = F.cross_entropy(logits_of(step_fn(x)).float(), y)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at epoch {epoch}, step {step}; "
                        f"lower the learning rate (now {config.effective_lr:g}) or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss_value * len(idx)
                seen += len(idx)
                elapsed = time.perf_counter() - t0
                ev = StepEnd(epoch, step, (epoch - 1) * steps + step, config.epochs * steps, loss_value,
                             seen / elapsed if elapsed > 0 else 0.0)
                for cb in callbacks:
                    cb.on_step(ev)
            epoch_train_s = time.perf_counter() - t0
            if result.stopped and seen == 0:
                break
            images_total += seen * world
            train_seconds += epoch_train_s
            val_loss, val_acc = evaluate(model, data.val, transform, max(bs, 256), device, amp, val_features, rest)
            loss_sum, seen_all = distributed.sum_all(loss_sum, seen, device=device)
            ev = EpochEnd(epoch, config.epochs, loss_sum / max(1, seen_all), val_loss, val_acc,
                          seen_all / epoch_train_s if epoch_train_s > 0 else 0.0, time.perf_counter() - t0,
                          partial=result.stopped)
            result.history.append(ev)
            result.epochs = epoch
            for cb in callbacks:
                cb.on_epoch(ev)
            if result.stopped:
                break
            if checkpointers:
                state = checkpoint_state(model, optimizer, gen, epoch, result.history, device)
                for cb in checkpointers:
                    cb.on_checkpoint(state)
    except TrainingError as e:
        result.error = str(e)
        raise
    except torch.OutOfMemoryError:
        result.error = (f"out of memory at batch size {bs} on {device}; try --batch-size {max(1, bs // 2)}")
        raise TrainingError(result.error) from None
    finally:
        result.seconds = time.perf_counter() - t_run
        result.train_images_per_s = images_total / train_seconds if train_seconds > 0 else 0.0
        result.changed = changed_since(model, snap)
        result.frozen_unchanged = not result.changed
        for cb in callbacks:
            cb.on_run_end(result)
    return result


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator, epoch: int,
                     history: list[EpochEnd], device: torch.device) -> dict:
    """Everything a resumed run needs, as tensors and plain data (loadable with weights_only)."""
    return {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "generator": gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
        "history": [e.to_dict() for e in history],
    }


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def memory_in_use(device: str) -> str:
    """' · 1.2 GiB' of CUDA memory allocated on ``device``; '' elsewhere."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return ""
    return f" · {torch.cuda.memory_allocated(dev) / 2**30:.1f} GiB"
