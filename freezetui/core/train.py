"""The training loop: trainable parameters only, events out, a stop request in, and a check
afterwards that every frozen parameter is bit-identical to what it was before."""

from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .adapters import adapted_weights, adapter_tensors, adapters_of, detach
from .data import BatchTransform, Dataset, Split, StreamedSplit, placement
# The loop's settings, events and devices have modules of their own; tests and benchmarks still
# reach them as train.X (and patch train.device_budget, which FeatureStore looks up here).
from .config import OPTIMIZERS, TrainConfig  # noqa: F401
from .devices import (device_budget, gpu_count, memory_in_use, model_lock, release_memory,  # noqa: F401
                      resolve_device)
from .errors import FreezeTUIError, TrainingError
from .events import Callback, EpochEnd, RunStart, StepEnd, StopInside, TrainResult  # noqa: F401
from .imagecache import available_ram
from .models import find_heads, first_batch_failure, model_info
from .plan import FreezePlan, frozen_batchnorms
from .precision import Deterministic, run_precision
from .rgn import AutoRGN
from .schedule import PlanSchedule, describe, param_groups, warmup_steps
from .split import Cut, find_cut, frozen_prefix, split, trace


# ----------------------------------------------------------------------------- helpers


def logits_of(out) -> torch.Tensor:
    """GoogLeNet and Inception return named tuples with aux logits in training mode."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def check_trainable(plan: FreezePlan) -> None:
    """The one refusal of a plan that trains nothing in its first epoch (adapters train on their own)."""
    if not plan.trainable and not plan.adapters:
        raise TrainingError("every parameter is frozen: nothing to train; unfreeze at least the head")


def head_mismatch(outputs: int | None, data: Dataset) -> TrainingError | None:
    """The one check of a head against the data (None: it fits, or the head is unknown)."""
    if outputs is not None and outputs != data.num_classes:
        return TrainingError(f"the model's head has {outputs} outputs but {data.name} has {data.num_classes} "
                             f"classes; make the plan with --num-classes {data.num_classes}")
    return None


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
    """The run's parameter groups: :meth:`FreezePlan.param_groups` at the config's rate and decay
    (under Auto-RGN each tensor is a group of its own: its rate is scaled alone every step), then
    the adapters' groups."""
    return plan.param_groups(model, config.effective_lr, config.weight_decay, config.decay_all, order) + \
        adapter_groups(model, plan, config, param_groups(plan, model, order, config.decay_all))


def adapter_groups(model: nn.Module, plan: FreezePlan, config: TrainConfig, groups: list) -> list[dict]:
    """The adapters' groups, after the base model's (a plan without adapters keeps its groups):
    each adapter at the rate multipliers of the weight it adapts (``lr_mult``, layer decay, stage
    rates), training from epoch 1, with weight decay."""
    a = adapters_of(model)
    if a is None:
        return []
    group_of = {n: g for g in groups for n in g.names}
    tensors = dict(a.named_tensors())
    out: dict[tuple, dict] = {}
    for module in a.rules:
        g = group_of[adapted_weights(model, module)[0]]
        mine = [t for n, t in tensors.items() if n.rsplit(".", 1)[0] in (module, f"{module}.out_proj")]
        key = tuple(g.mults)
        if key not in out:
            out[key] = {"params": [], "lr": config.effective_lr * g.mults[0][1], "lr_mult": g.mults[0][1],
                        "lr_mults": [list(c) for c in g.mults], "first_epoch": 1,
                        "weight_decay": config.weight_decay}
        out[key]["params"] += mine
    return list(out.values())


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
    process only: ranks would part ways) is checked per batch and raises :class:`StopInside`."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)  # on the device: one read at the end
    correct = torch.zeros((), dtype=torch.int64, device=device)
    lo, hi = len(split) * distributed.rank() // distributed.world(), len(split) * (distributed.rank() + 1) // distributed.world()
    for i in range(lo, hi, batch_size):
        if stop is not None and stop.is_set():
            model.train(was_training)
            raise StopInside
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
                if progress is not None:  # may raise StopInside
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


class PlanSplit(NamedTuple):
    """How a run executes a plan: the frozen prefix (None: none), the trainable rest, where it
    was cut, and whether the prefix's outputs are cached for the training and validation sets."""

    prefix: nn.Module | None
    rest: nn.Module | None
    cut: Cut | None
    cache_train: bool
    cache_val: bool


NO_SPLIT = PlanSplit(None, None, None, False, False)


def plan_split(model: nn.Module, plan: FreezePlan, config: TrainConfig, traced=None) -> PlanSplit:
    """The :class:`PlanSplit` of ``plan`` on ``model``.

    The prefix runs under no_grad; it may hold random or train-mode-dependent ops (it runs in
    train mode, drawing random numbers in the same order as the whole model would). Its
    outputs are cached only when nothing in it changes between steps: nothing random, BatchNorm
    statistics kept, and (for the training set) no augmentation. A cacheable cut is preferred
    to a deeper one that is not: frozen layers after the cut record no gradients anyway.
    """
    traced = traced if traced is not None else trace(model)
    if traced is None:
        return NO_SPLIT
    frozen = plan.prefix_frozen()
    safe = find_cut(traced, frozen)
    cut = safe if config.cache and safe is not None and safe.cacheable(plan.batchnorm) else \
        find_cut(traced, frozen, random_ok=True)
    if cut is None:
        return NO_SPLIT
    prefix, rest = split(traced, cut)
    cache_val = config.cache and cut.cacheable(plan.batchnorm)
    return PlanSplit(prefix, rest, cut, cache_val and not config.augment, cache_val)


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
    except StopInside:
        run.result.stopped = True
    except TrainingError as e:
        run.result.error = str(e)
        raise
    except OutOfMemoryError:
        # raised below, outside this block: the OOM (and its traceback, which holds the failing
        # step's frames and activations) is gone before finish() releases memory, and it is no
        # __context__ of the sentence either
        run.result.error = out_of_memory = run.out_of_memory_message()
    except FreezeTUIError:
        raise
    except Exception as e:
        if run.steps_done or getattr(run, "transform", None) is None:
            raise
        name = plan.model.get("name") or type(model).__name__  # a model raising on its first batch: one sentence
        run.result.error = first_batch_failure(name, (run.bs, 3, run.transform.size, run.transform.size), e, model)
        raise TrainingError(run.result.error) from e
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
        self.steps_done = 0  # training steps finished in this call: a failure before the first is the model's
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
        error = head_mismatch(output_classes(model), self.data)
        if error:
            raise error
        detach(model)  # a run's adapters start afresh (B = 0), whatever a previous run left
        self.active = self.plan.enter_epoch(model, 1)
        check_trainable(self.active)
        self.snap = frozen_snapshot(model, self.active)
        if self.traced is None:
            self.traced = trace(model)
        self.stage = "moving the model to the device"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with model_lock(model):
            model.to(device)
            if adapters_of(model) is not None:  # held beside the model, not inside it
                adapters_of(model).to(device)
        self.amp = config.amp and device.type == "cuda"
        self.precision = run_precision(device, self.amp)
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)  # the epochs' order, on the CPU
        # augmentation draws on the device: no host-device copy per step
        self.aug_gen = torch.Generator(device=device).manual_seed(config.seed)
        self.transform = BatchTransform.for_data(model_info(model), self.data, config.image_size)
        self.optimizer = make_optimizer(optimizer_groups(model, self.plan, config, self.order), config, device)
        self.auto_rgn = AutoRGN(self.optimizer) if self.plan.auto_rgn else None
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
        self.rates = PlanSchedule(self.plan, config.effective_lr, config.epochs, self.steps, config.schedule,
                                  config.warmup_epochs)
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
        if distributed.active() and adapters_of(model) is not None:
            raise TrainingError("LoRA adapters do not train under torchrun yet (their gradients would not be "
                                "averaged across processes); run on one process")
        if distributed.active():
            # Frozen parameters have requires_grad=False: DDP leaves them out of gradient sync.
            head = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda"
                                                       else None)
        self.step_fn = torch.compile(head) if self.config.compile else head
        self.result.feature_cache = self.cache_train
        self.prefix_now = frozen_prefix(self.traced, self.active.prefix_frozen(), [n for n, _ in model.named_parameters()])
        self.result.frozen_prefix = self.prefix_now.module if self.prefix_now else None
        return cut

    def switch_plan(self, epoch: int, check: bool = True) -> None:
        """Put the plan in force during ``epoch`` on the model (:meth:`FreezePlan.enter_epoch`:
        ``requires_grad`` and the BatchNorm policy), the
        frozen-drift reference (a parameter released now must not have changed while frozen,
        when ``check``), the frozen prefix and its wrapping. Features are re-cached by the caller."""
        self.stage = "changing the trainable set"
        plan = self.plan.enter_epoch(self.model, epoch)
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
        self.switch_plan(epoch)
        self.agreed(self.cache_features)

    def set_rates(self, epoch: int, step: int) -> None:
        """Every group's rate for 1-based ``step`` of ``epoch`` (:meth:`PlanSchedule.set_rates`)."""
        self.rates.set_rates(self.optimizer, epoch, step)

    def restore(self, resume: dict | None) -> None:
        """Continue after the checkpoint's epoch, with its weights, optimizer and RNG states."""
        if resume is None:
            return
        try:
            self.model.load_state_dict(resume["model"])
        except RuntimeError as e:  # names or shapes of another model
            raise TrainingError(f"the checkpoint's weights do not fit this model "
                                f"({str(e).strip().splitlines()[-1].strip()[:160]}); resume with its own plan") from None
        if resume.get("adapters") is not None and adapters_of(self.model) is not None:
            adapters_of(self.model).load_tensor_state(resume["adapters"])
        misfit = TrainingError("the checkpoint's optimizer does not fit this run's parameter groups (written by an "
                               "older freezetui or for another plan); start the run again")
        saved = resume["optimizer"] if isinstance(resume["optimizer"], dict) else {}
        groups = saved.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.optimizer.param_groups) or any(
                not isinstance(g, dict) or not isinstance(g.get("params"), list) or len(g["params"]) != len(m["params"])
                for m, g in zip(self.optimizer.param_groups, groups)):
            raise misfit  # another plan's groups: not damage
        try:
            if not optimizer_state_fits(self.optimizer, saved):
                raise TrainingError("the checkpoint's optimizer state is damaged; start the run again")
            self.optimizer.load_state_dict(resume["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise misfit from None
        try:
            torch.set_rng_state(resume["rng"]["torch"])
            self.gen.set_state(resume["rng"]["generator"])
            note = restore_generator(self.aug_gen, resume["rng"].get("augment"), self.config.seed + resume["epoch"])
        except (RuntimeError, TypeError) as e:
            raise TrainingError(f"the checkpoint's random number generator states are damaged ({e}); "
                                f"start the run again") from None
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
            self.switch_plan(resume["epoch"], check=False)  # the run that passed those boundaries checked them

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
                    raise StopInside
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
        if self.auto_rgn is not None:
            self.auto_rgn.scale()  # this step's rates × each tensor's normalised ‖g‖/‖w‖
        self.optimizer.step()
        self.steps_done += 1
        return loss.detach()

    def end_epoch(self, ev: EpochEnd) -> None:
        ev.stage = self.plan.stage_index(ev.epoch)
        ev.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad) + sum(
            p.numel() for _, p in adapter_tensors(self.model))
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
                if adapters_of(self.model) is not None:
                    state["adapters"] = adapters_of(self.model).tensor_state()
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


def optimizer_state_fits(optimizer: torch.optim.Optimizer, saved: dict) -> bool:
    """Whether ``saved`` (an older checkpoint's, without a digest) has this optimizer's settings,
    of the same kinds, and per parameter the same entries, each a number or a tensor shaped
    like the parameter; torch checks only the number of groups and parameters."""
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict) or len(groups) != len(optimizer.param_groups):
        return False
    params = {}
    for mine, theirs in zip(optimizer.param_groups, groups):
        if not isinstance(theirs, dict) or not isinstance(theirs.get("params"), list) \
                or len(theirs["params"]) != len(mine["params"]):
            return False
        for k, v in mine.items():
            flag = v is None or isinstance(v, bool)  # torch's switches: another torch may lack or add some
            if k != "params" and not (flag and (theirs.get(k) is None or isinstance(theirs.get(k), bool))) \
                    and (k not in theirs or type(theirs[k]) is not type(v)):
                return False
        params.update(zip(theirs["params"], mine["params"]))
    kinds: dict | None = None  # entry -> "step" (a number or 0-d tensor) or "like" (the parameter's shape)
    for index, entry in state.items():
        if index not in params or not isinstance(entry, dict):
            return False
        p = params[index]
        mine = {}
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and (p.dim() or v.dim() == 0):
                mine[k] = "like" if p.dim() else "either"
            elif (isinstance(v, torch.Tensor) and v.dim() == 0) or type(v) in (int, float):
                mine[k] = "step"
            else:
                return False
        if kinds is not None and (set(mine) != set(kinds) or any(
                "either" not in (mine[k], kinds[k]) and mine[k] != kinds[k] for k in mine)):
            return False
        kinds = {k: kinds[k] if kinds and mine[k] == "either" else mine[k] for k in mine}
    return True


