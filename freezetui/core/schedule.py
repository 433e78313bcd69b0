"""Learning rates over time and over the model: the schedule's factor at each step, each
parameter's multiplier (``lr_mult`` rules or layer-wise decay over the model's blocks), the
optimizer's parameter groups, and the fine-tune recipe.

Rates are a pure function of the global step, so a resumed run needs no scheduler state and a
group that starts training later cannot be missed: every group is in the optimizer from the
start, and each step sets every group's rate from its own multiplier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .models import find_heads
from .plan import NEVER, FreezePlan, module_prefixes

SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_RAMP = 0.3  # share of the run spent rising (as torch's OneCycleLR's pct_start)
ONECYCLE_START = 1 / 25  # start at lr/25 …
ONECYCLE_END = 1 / 25e4  # … and end at lr/25e4, as torch's OneCycleLR's defaults
RECIPE_SPREAD = 100.0  # fastai's slice(lr/100, lr)
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


# ----------------------------------------------------------------------------- over time


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total: int) -> int:
    """Warmup length in steps, never the whole run."""
    return max(0, min(round(warmup_epochs * steps_per_epoch), total - 1))


def schedule_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The rate at 0-based ``step`` of ``total`` as a share of the base rate.

    ``constant`` and ``cosine`` rise linearly over ``warmup`` steps (reaching 1 at step
    ``warmup - 1``); cosine then falls towards 0 at the end. ``onecycle`` has its own rise
    (the first 30 %, from 1/25) and falls to 1/25e4, like torch's ``OneCycleLR``.
    """
    if schedule == "onecycle":
        up = max(1, round(ONECYCLE_RAMP * total))
        if step < up:
            t = step / up
            return ONECYCLE_START + (1 - ONECYCLE_START) * (1 - math.cos(math.pi * t)) / 2
        t = (step - up) / max(1, total - up - 1)
        return ONECYCLE_END + (1 - ONECYCLE_END) * (1 + math.cos(math.pi * min(1.0, t))) / 2
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"unknown schedule {schedule!r}")


def unfreeze_warmup(step: int, steps_per_epoch: int, first_epoch: int) -> float:
    """A group that starts training at ``first_epoch`` > 1 rises from 0 over that epoch."""
    if first_epoch <= 1:
        return 1.0
    into = step - (first_epoch - 1) * steps_per_epoch  # 0-based step within its first epoch
    if into < 0:
        return 0.0
    return min(1.0, (into + 1) / steps_per_epoch)


# ----------------------------------------------------------------------------- over the model


def blocks(model: nn.Module, order: list[str] | None = None) -> list[str]:
    """The model's blocks in forward order: top-level children holding parameters; a
    Sequential or ModuleList of composite modules (ResNet's ``layer1``, a ViT's encoder layers),
    or a module holding one, is split into its children. Parameters held by the model itself are blocks of their own.
    ``order`` is the forward order of parameters (``split.trace(model).param_order``)."""
    names: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        kids = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        split_it = _layer_list(module) or any(_layer_list(m) for _, m in kids)
        if not split_it and prefix:
            names.append(prefix)
            return
        for n, _ in module.named_parameters(recurse=False):
            names.append(f"{prefix}.{n}" if prefix else n)
        for n, m in kids:
            visit(f"{prefix}.{n}" if prefix else n, m)

    visit("", model)
    params = [n for n, _ in model.named_parameters()]
    ranked = {}
    for i, p in enumerate(list(order or []) + params):  # unused parameters (aux heads) go last
        ranked.setdefault(p, i)
    first: dict[str, int] = {}
    for p, b in param_blocks(params, names).items():
        first[b] = min(first.get(b, ranked[p]), ranked[p])
    return sorted(names, key=lambda b: first.get(b, len(ranked)))


def _layer_list(module: nn.Module) -> bool:
    """A Sequential or ModuleList of two or more composite modules holding parameters."""
    if not isinstance(module, (nn.Sequential, nn.ModuleList)):
        return False
    kids = [m for m in module.children() if any(True for _ in m.parameters())]
    return len(kids) > 1 and all(any(True for _ in m.children()) for m in kids)


def block_of(param: str, block_names) -> str | None:
    """The block holding ``param`` (blocks do not nest), or None."""
    names = block_names if isinstance(block_names, (set, dict)) else set(block_names)
    return next((b for b in [*module_prefixes(param), param] if b in names), None)


def param_blocks(params, block_names) -> dict[str, str]:
    """Each parameter's block, in time linear in the parameters (a dict lookup per prefix)."""
    names = set(block_names)
    out = {}
    for p in params:
        b = block_of(p, names)
        if b is not None:
            out[p] = b
    return out


def decay_ranks(model: nn.Module, order: list[str] | None = None) -> dict[str, int]:
    """Each block's distance before the head's block (0 for the head and anything after it)."""
    names = blocks(model, order)
    heads = find_heads(model)
    head_block = block_of(heads[-1] + ".weight", names) if heads else None
    head_at = names.index(head_block) if head_block is not None else len(names) - 1
    return {b: max(0, head_at - i) for i, b in enumerate(names)}


def param_multipliers(plan: FreezePlan, model: nn.Module, order: list[str] | None = None) -> dict[str, float]:
    """Every parameter's rate multiplier: ``lr_mult``'s last matching rule, or ``layer_decay``
    to the power of its block's distance before the head."""
    if plan.layer_decay is None:
        return {n: plan.lr_multiplier(n) for n in plan.params}
    ranks = decay_ranks(model, order)
    held = param_blocks(plan.params, ranks)
    # a new (randomly initialised) module learns at the full rate wherever it sits: at the first
    # block's lr/100 a new stem would stay nearly as random as a frozen one
    new = set(plan.new_modules)
    return {n: plan.layer_decay ** ranks[held[n]] if n in held and not new.intersection(module_prefixes(n))
            else 1.0 for n in plan.params}


def recipe_decay(model: nn.Module, order: list[str] | None = None, spread: float = RECIPE_SPREAD) -> float:
    """The layer decay that spaces rates geometrically from lr/spread (the first block) to lr (the head)."""
    depth = max(decay_ranks(model, order).values(), default=0)
    return (1 / spread) ** (1 / depth) if depth else 1.0


def fine_tune_recipe(plan: FreezePlan, model: nn.Module, order: list[str] | None = None) -> FreezePlan:
    """fastai's ``fine_tune``: the head alone for one epoch, then everything at half the rate
    with rates spread 100× over the blocks (``slice(lr/100, lr)``)."""
    heads = set(find_heads(model)) | set(plan.new_modules)
    for n in plan.params:
        plan.params[n] = not any(m in heads for m in module_prefixes(n))
    if not plan.trainable:
        plan.params.update({n: False for n in plan.params})
    plan.lr_mult = []
    plan.stages = []
    plan.set_layer_decay(recipe_decay(model, order))
    plan.add_stage(2, unfreeze=["*"], lr_scale=0.5)
    return plan


def no_decay(model: nn.Module) -> set[str]:
    """Biases and the parameters of normalisation layers: no weight decay by default."""
    out = set()
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.ndim <= 1 or isinstance(m, NORMS):
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


@dataclass
class Group:
    """Parameters sharing a rate multiplier, a first epoch and weight decay."""

    mult: float
    first_epoch: int  # the epoch it starts training (a never-trained group: after the run)
    decay: bool
    names: list[str]


def param_groups(plan: FreezePlan, model: nn.Module, order: list[str] | None = None,
                 decay_all: bool = False) -> list[Group]:
    """Every parameter, frozen or not, in one group per (multiplier, first epoch, decay), in
    the model's parameter order; the same plan and model always give the same groups."""
    mults = param_multipliers(plan, model, order)
    skip = set() if decay_all else no_decay(model)
    groups: dict[tuple, Group] = {}
    for n in plan.params:
        first = plan.stage_of(n) or NEVER
        key = (mults[n], first, n not in skip)
        groups.setdefault(key, Group(*key, [])).names.append(n)
    return list(groups.values())


def module_rates(plan: FreezePlan, model: nn.Module, depth: int = 1, order: list[str] | None = None) -> dict[str, str]:
    """The multiplier of each module at ``depth`` as text ("0.1", or "0.01–0.1" when mixed)."""
    mults = param_multipliers(plan, model, order)
    spans: dict[str, list[float]] = {}
    for n, m in mults.items():
        prefixes = module_prefixes(n)
        key = prefixes[min(depth, len(prefixes)) - 1] if prefixes else n
        spans.setdefault(key, []).append(m)
    return {k: (f"{min(v):.3g}" if min(v) == max(v) else f"{min(v):.3g}–{max(v):.3g}") for k, v in spans.items()}


def describe(plan: FreezePlan) -> list[str]:
    """The schedule in words, one line per stage; empty for a static plan."""
    if not plan.stages and not plan.lr_mult and plan.layer_decay is None:
        return []
    lines = [f"epoch 1: {len(plan.trainable)} trainable tensors, batchnorm {plan.batchnorm}"]
    for i, s in enumerate(plan.stages, start=2):
        parts = []
        if s.unfreeze:
            parts.append("unfreeze " + ", ".join(s.unfreeze))
        if s.freeze:
            parts.append("freeze " + ", ".join(s.freeze))
        if s.batchnorm:
            parts.append(f"batchnorm {s.batchnorm}")
        if s.lr_scale is not None:
            parts.append(f"rates ×{s.lr_scale:g}")
        now = plan.at_epoch(s.epoch)
        lines.append(f"stage {i} from epoch {s.epoch}: {'; '.join(parts)} "
                     f"({len(now.trainable)} trainable tensors)")
    if plan.lr_mult:
        lines.append("rates: " + ", ".join(f"{g} ×{m:g}" for g, m in plan.lr_mult) + " (later rules win)")
    if plan.layer_decay is not None:
        lines.append(f"rates: layer decay {plan.layer_decay:.4g} per block before the head")
    return lines


def head_rates(stages: list[dict], schedule: str, lr: float, steps_per_epoch: int, epochs: int,
               warmup_epochs: float, at: list[int] | None = None) -> list[float]:
    """The head's rate (multiplier 1) at 1-based steps ``at`` of a run (every step when None),
    as training sets it: the schedule's factor × the ``lr_scale`` of the stage in force.
    ``stages`` as the plan file holds them. The TUI draws it before and during a run."""
    steps = max(1, steps_per_epoch)
    total = max(1, epochs) * steps
    warmup = warmup_steps(warmup_epochs, steps, total)
    scales = sorted((s["epoch"], s["lr_scale"]) for s in stages if s.get("lr_scale") is not None)

    def scale(epoch: int) -> float:
        return next((v for e, v in reversed(scales) if e <= epoch), 1.0)

    points = range(1, total + 1) if at is None else at
    return [lr * scale((t - 1) // steps + 1) * schedule_factor(schedule, t - 1, total, warmup) for t in points]


def sample_steps(total: int, limit: int) -> list[int]:
    """At most ``limit`` 1-based steps spread over ``total``, the first and last included."""
    if total <= limit:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (limit - 1)) for i in range(limit)})


def short_name(plan: FreezePlan | dict | None) -> str:
    """A plan's schedule in a few words, for a table cell: ``static``, ``fine-tune recipe``,
    ``2 stages · layer decay 0.65``, ``sweep: +layer4``. Takes a plan or its JSON."""
    if plan is None:
        return "—"
    if isinstance(plan, FreezePlan):
        d = {**plan.extra, **plan.schedule_dict()}
    else:
        d = plan
    if d.get("sweep_rung"):
        return f"sweep: {d['sweep_rung']}"
    if d.get("recipe"):
        return f"{d['recipe']} recipe"
    parts = []
    stages = d.get("stages") or []
    if stages:
        parts.append(f"{len(stages)} stage{'s' if len(stages) > 1 else ''}")
    if d.get("layer_decay") is not None:
        parts.append(f"layer decay {d['layer_decay']:.3g}")
    elif d.get("lr_mult"):
        parts.append(f"{len(d['lr_mult'])} rate rule{'s' if len(d['lr_mult']) > 1 else ''}")
    return " · ".join(parts) or "static"
