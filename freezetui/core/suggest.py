"""Which layers should train? A few batches of forward and backward on the target data, with
every parameter trainable and no optimizer step, give each tensor's relative gradient norm
‖g‖/‖w‖ (:mod:`freezetui.core.rgn`); blocks whose signal is high are the ones the data pulls on
(Lee et al., ICLR 2023). The suggestion is the head plus the contiguous run of the sweep's
stages around the strongest one whose signal clears a threshold; a head kept from the weights
(not re-initialised) competes as the last block, so "the head alone" can be the answer.

The model is left as it was found, bit for bit: weights, buffers (BatchNorm's running
statistics and ``num_batches_tracked``), gradients, ``requires_grad``, each module's
train/eval mode, the BatchNorm-freezing hooks a plan put on it, the RNG states and its device.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import BatchTransform
from .errors import PlanError, TrainingError
from .models import model_info
from .plan import _BN_HOOK, FreezePlan, module_prefixes
from .rgn import norms
from .runner import Reporter, RunInputs, check_settings, prepare_run
from .specs import RunSpec
from .sweep import only_these_train, stages
from .config import TrainConfig
from .train import logits_of

DEFAULT_BATCHES = 8
# A stage joins the suggestion when its signal is at least this share of the strongest stage's.
# 0 suggests every stage from the strongest on both sides (all contiguous), 1 the strongest alone.
DEFAULT_THRESHOLD = 0.5


@dataclass
class Row:
    """A tensor, a stage or the head: its parameter count, ‖g‖/‖w‖ (the mean over the batches of
    the ratio of the norms of all its tensors together) and that ratio normalised to [0, 1]."""

    name: str
    params: int
    rgn: float | None  # None: its weights are all zero
    signal: float | None  # None for a re-initialised head (it always trains; see Signal.blocks)


@dataclass
class Signal:
    """What :func:`measure` found. ``tensors``' signal is over every tensor (Auto-RGN's factors
    at the first step); ``blocks``' over the stages and, when it was kept from the weights, the
    head (``head_new`` False): a freshly initialised head's ratio dwarfs everything and says
    nothing about the body; ``head`` is the head's row."""

    model: str
    batches: int
    batch_size: int
    seconds: float
    tensors: list[Row]
    head: Row
    blocks: list[Row]
    grad_sq: np.ndarray = field(repr=False)  # (batches, tensors): each batch's ‖g‖² per tensor
    weight_sq: np.ndarray = field(repr=False)  # (tensors,): ‖w‖² per tensor
    names: list[str] = field(repr=False)
    block_params: dict[str, list[str]] = field(repr=False)  # stage name -> its tensors ("head" too)
    head_new: bool = True  # the head was re-initialised (ModelInfo.new_modules)

    def rgn(self, names: list[str]) -> float | None:
        """‖g‖/‖w‖ of these tensors together, averaged over the batches; None when their weights are zero."""
        index = self.__dict__.get("_index")
        if index is None or len(index) != len(self.names):
            index = self.__dict__["_index"] = {n: i for i, n in enumerate(self.names)}
        cols = [index[n] for n in names if n in index]
        w = float(np.sqrt(self.weight_sq[cols].sum())) if cols else 0.0
        if w < 1e-12:
            return None
        return float(np.sqrt(self.grad_sq[:, cols].sum(axis=1)).mean() / w)

    def module_signal(self) -> dict[str, float]:
        """Each module's (and tensor's) ratio over the largest among those outside the head, in
        [0, 1] (the head's modules clipped to 1): a heat map over the module tree."""
        head = set(self.block_params.get("head", []))
        members: dict[str, list[str]] = {}
        for n in self.names:
            for m in [*module_prefixes(n), n]:
                members.setdefault(m, []).append(n)
        values = {m: self.rgn(ns) for m, ns in members.items()}
        body = [v for m, v in values.items() if v is not None and not set(members[m]) <= head]
        top = max(body, default=0.0)
        return {m: (min(1.0, v / top) if top > 0 else 0.0) if v is not None else 0.0 for m, v in values.items()}

    def to_dict(self) -> dict:
        return {"model": self.model, "batches": self.batches, "batch_size": self.batch_size,
                "seconds": round(self.seconds, 3), "head": {**asdict(self.head), "new": self.head_new},
                "blocks": [asdict(b) for b in self.blocks], "tensors": [asdict(t) for t in self.tensors]}


# ----------------------------------------------------------------------------- leaving the model as it was


@contextlib.contextmanager
def untouched(model: nn.Module, device: torch.device):
    """Everything trainable, BatchNorm-freezing hooks off, on ``device``; on exit the model is
    restored bit for bit (see the module docstring), whatever happened inside."""
    params = list(model.parameters())
    home = params[0].device if params else device
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    hooks = []
    for m in model.modules():
        handle = m.__dict__.get(_BN_HOOK)
        if handle is not None and handle.id in m._forward_pre_hooks:
            hooks.append((m, list(m._forward_pre_hooks.items())))
            del m._forward_pre_hooks[handle.id]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        model.to(device)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        yield
    finally:
        model.to(home)
        model.load_state_dict(state)
        for p, flag, g in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = g
        for m, mode in modes:
            m.training = mode
        for m, items in hooks:  # the same hooks in the same order
            m._forward_pre_hooks.clear()
            m._forward_pre_hooks.update(items)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)


# ----------------------------------------------------------------------------- measuring


def measure(inputs: RunInputs, config: TrainConfig | None = None, batches: int = DEFAULT_BATCHES,
            stop: threading.Event | None = None, progress: Callable[[int, int], None] | None = None) -> Signal:
    """The relative gradient norms of ``inputs``' model on ``batches`` batches of its training
    data (at ``config``'s batch size and image size, without augmentation, in a fixed order from
    ``config.seed``), every parameter trainable, in train mode, no optimizer step. ``progress``
    gets (done, total) after each batch; ``stop`` ends the measurement (TrainingError)."""
    config = config or TrainConfig()
    if not isinstance(batches, int) or batches < 1:
        raise PlanError(f"measuring needs at least one batch, got {batches}")
    model, data, device = inputs.model, inputs.data, inputs.device
    if data is None or len(data.train) == 0:
        raise PlanError("suggest needs training images; the data has none")
    names = [n for n, _ in model.named_parameters()]
    if not names:
        raise PlanError("the model has no parameters to measure")
    n = len(data.train)
    bs = min(config.batch_size, n)
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-batches * bs // n))])
    transform = BatchTransform.for_data(model_info(model), data, config.image_size)
    amp = config.amp and device.type == "cuda"
    grad_sq = torch.zeros(batches, len(names))
    t0 = time.perf_counter()
    with untouched(model, device):
        params = [p for _, p in model.named_parameters()]
        model.train()
        for b in range(batches):
            if stop is not None and stop.is_set():
                raise TrainingError("the measurement was stopped")
            idx = order[b * bs:(b + 1) * bs]
            x = transform(data.train.images[idx].to(device))
            y = data.train.labels[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(logits_of(model(x)).float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss is {loss.item()} on batch {b + 1}; check the data and the weights")
            for p in params:
                p.grad = None
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in params]
            grad_sq[b] = (norms([g.detach() for g in grads]) ** 2).cpu()
            if progress is not None:
                progress(b + 1, batches)
        weight_sq = (norms([p.detach() for p in params]) ** 2).cpu()
        for p in params:
            p.grad = None
    seconds = time.perf_counter() - t0
    return summarise(model, inputs.traced, grad_sq.double().numpy(), weight_sq.double().numpy(), names,
                     batches, bs, seconds, new_modules=set(inputs.plan.new_modules))


def summarise(model: nn.Module, traced, grad_sq: np.ndarray, weight_sq: np.ndarray, names: list[str],
              batches: int, batch_size: int, seconds: float, new_modules: set[str] = frozenset()) -> Signal:
    """The rows of a measurement: per tensor, per stage of the sweep, and the head."""
    head, parts = stages(model, traced)
    info = model_info(model)
    new = set(new_modules) | set(info.new_modules if info is not None else ())
    head_new = any(m in new for n in head for m in module_prefixes(n))
    numel = {n: p.numel() for n, p in model.named_parameters()}
    blank = Signal(model_name(model), batches, batch_size, seconds, [], Row("head", 0, None, None), [],
                   grad_sq, weight_sq, names, {"head": head, **{k: v for k, v in parts}}, head_new)
    per_tensor = [blank.rgn([n]) for n in names]
    finite = [v for v in per_tensor if v is not None]
    top = max(finite, default=0.0)
    blank.tensors = [Row(n, numel[n], v, (v / top if top > 0 else 0.0) if v is not None else 1.0)
                     for n, v in zip(names, per_tensor)]
    block_rgn = [blank.rgn(held) for _, held in parts]
    head_rgn = blank.rgn(head)
    compared = block_rgn + ([] if head_new else [head_rgn])
    top = max([v for v in compared if v is not None], default=0.0)
    share = (lambda v: (v / top if top > 0 else 0.0) if v is not None else 0.0)  # noqa: E731
    blank.blocks = [Row(name, sum(numel[n] for n in held), v, share(v)) for (name, held), v in zip(parts, block_rgn)]
    blank.head = Row("head", sum(numel[n] for n in head), head_rgn, None if head_new else share(head_rgn))
    return blank


def model_name(model: nn.Module) -> str:
    info = model_info(model)
    return info.name if info is not None else type(model).__name__


# ----------------------------------------------------------------------------- the suggestion


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise PlanError(f"the threshold is a share of the strongest block's signal, in [0, 1]; got {threshold}")


def chosen_blocks(signal: Signal, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """The strongest stage and its neighbours on either side, contiguously, while their signal
    is at least ``threshold`` (in [0, 1]); in forward order. A head kept from the weights is the
    last of the row: when it is the strongest, the run starts there (empty: the head alone).
    Empty when the model has no stages."""
    check_threshold(threshold)
    values = [b.signal or 0.0 for b in signal.blocks]
    if signal.head.signal is not None and values:
        values.append(signal.head.signal)
    if not values:
        return []
    best = int(np.argmax(values))
    lo = hi = best
    while lo > 0 and values[lo - 1] >= threshold:
        lo -= 1
    while hi < len(values) - 1 and values[hi + 1] >= threshold:
        hi += 1
    return [b.name for b in signal.blocks[lo:hi + 1]]  # the head, at len(blocks), is not a stage


def suggested_plan(inputs: RunInputs, signal: Signal, threshold: float = DEFAULT_THRESHOLD,
                   batchnorm: str = "freeze") -> FreezePlan:
    """The head and :func:`chosen_blocks` trainable, everything else frozen; the plan's model
    block is the inputs' plan's, and ``extra["suggest"]`` records how it was chosen."""
    blocks = chosen_blocks(signal, threshold)
    unfrozen = list(signal.block_params["head"]) + [n for b in blocks for n in signal.block_params[b]]
    base = FreezePlan.from_model(inputs.model, batchnorm=batchnorm, spec=inputs.plan.model)
    plan = only_these_train(base, unfrozen, batchnorm)
    plan.extra["suggest"] = {"blocks": blocks, "threshold": threshold, "batches": signal.batches,
                             "signal": {b.name: round(b.signal, 4) for b in signal.blocks if b.signal is not None}}
    return plan


@dataclass
class Suggestion:
    """A measurement, the blocks it suggests training beside the head, and that plan."""

    signal: Signal
    blocks: list[str]
    threshold: float
    plan: FreezePlan

    def to_dict(self) -> dict:
        return {**self.signal.to_dict(), "threshold": self.threshold, "suggested_blocks": self.blocks,
                "plan": self.plan.to_dict()}


def suggest(inputs: RunInputs, config: TrainConfig | None = None, batches: int = DEFAULT_BATCHES,
            threshold: float = DEFAULT_THRESHOLD, batchnorm: str = "freeze", stop: threading.Event | None = None,
            progress: Callable[[int, int], None] | None = None) -> Suggestion:
    """:func:`measure` on prepared inputs, then the plan it suggests."""
    check_threshold(threshold)  # one sentence before any batch runs
    signal = measure(inputs, config, batches, stop, progress)
    return Suggestion(signal, chosen_blocks(signal, threshold), threshold,
                      suggested_plan(inputs, signal, threshold, batchnorm))


def suggest_from_spec(spec: RunSpec, batches: int = DEFAULT_BATCHES, threshold: float = DEFAULT_THRESHOLD,
                      reporter: Reporter | None = None) -> Suggestion:
    """``freezetui suggest``: the model and data prepared as ``freezetui train`` would prepare
    them from the same options (:func:`runner.prepare_run`), then :func:`suggest`."""
    device = check_settings(spec)
    inputs = prepare_run(spec, reporter, device)
    return suggest(inputs, spec.config, batches, threshold, spec.batchnorm)
