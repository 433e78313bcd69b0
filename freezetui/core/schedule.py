"""Learning rates over time and over the model: the schedule's factor at each step, each
parameter's multiplier (``lr_mult`` rules or layer-wise decay over the model's blocks), the
optimizer's parameter groups, and the fine-tune recipe.

Rates are a pure function of the global step, so a resumed run needs no scheduler state and a
group that starts training later cannot be missed: every group is in the optimizer from the
start, and each step sets every group's rate from its own multiplier.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from .models import find_heads
from .plan import NEVER, FreezePlan, Stage, escape_glob, module_prefixes, norm_parameters

SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_RAMP = 0.3  # share of the run spent rising (as torch's OneCycleLR's pct_start)
ONECYCLE_START = 1 / 25  # start at lr/25 …
ONECYCLE_END = 1 / 25e4  # … and end at lr/25e4, as torch's OneCycleLR's defaults
RECIPE_SPREAD = 100.0  # fastai's fine_tune lr_mult: slice(lr/100, lr)
FASTAI_SLICE_STOP_DIV = 10.0  # fastai's set_hyper: slice(lr) gives lr/10 to every group but the last
FASTAI_FEATURE_SPLITS = {"VGG": 22, "AlexNet": 6, "DenseNet": 7, "SqueezeNet": 5}  # fastai's model_meta splits
_MATCH_PREV_GROUP = 99999.0  # timm's MATCH_PREV_GROUP: a group key ending in it joins the group before
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
# where a user's own script learns the three calls (README section of that title)
OWN_LOOP = ("In your own training loop: plan.param_groups, PlanSchedule.set_rates, plan.enter_epoch "
            "(or freezetui.lightning); see the README, \"The plan in your own training loop\".")


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


def phased_factor(schedule: str, step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                  restarts=()) -> float:
    """The schedule's factor at 0-based global ``step`` when it starts afresh at each epoch in
    ``restarts`` (a stage with ``restart``): each phase, from its first epoch to the next
    restart or the end, is a whole schedule of its own, warmup included — fastai's ``fine_tune``
    runs one ``fit_one_cycle`` per phase. Without restarts, :func:`schedule_factor` over the run."""
    spe = max(1, steps_per_epoch)
    starts = [1, *sorted(e for e in set(restarts) if 1 < e <= epochs)]
    epoch = step // spe + 1
    first = max(e for e in starts if e <= epoch) if epoch >= 1 else 1
    later = [e for e in starts if e > first]
    end = later[0] if later else epochs + 1
    length = max(1, (end - first) * spe)
    local = step - (first - 1) * spe
    return schedule_factor(schedule, local, length, warmup_steps(warmup_epochs, spe, length))


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
    """Each block's distance before the head's block (0 for the head and anything after it).
    Norms, embeddings and tensors the model holds itself (a ViT's ``cls_token``) are no depth
    level of their own: they share the level of the block before them (the first block's when
    they come first), as timm's group matchers put them with the stem or the last block."""
    names = blocks(model, order)
    heads = find_heads(model)
    head_block = block_of(heads[-1] + ".weight", names) if heads else None
    levels, level, seen = [], 0, False
    for b in names:
        if not _levelless(model, b):
            level += seen
            seen = True
        levels.append(level)
    head_at = levels[names.index(head_block)] if head_block is not None else (levels[-1] if levels else 0)
    return {b: max(0, head_at - lv) for b, lv in zip(names, levels)}


def _levelless(model: nn.Module, block: str) -> bool:
    """A norm or an embedding, or a tensor held directly by a module: no depth level of its own."""
    try:
        m = model.get_submodule(block)
    except AttributeError:
        return True  # a parameter name, not a module
    return isinstance(m, (*NORMS, nn.Embedding))


def matcher_levels(names: list[str], matcher) -> dict[str, int]:
    """Each parameter's group under a timm ``group_matcher`` (a dict of regexes or a function),
    numbered from 0 in the order timm's ``group_with_matcher(reverse=True)`` numbers them:
    unmatched parameters (the head) last, a group ending in 99999 merged into the one before."""
    if isinstance(matcher, dict):
        compiled = []
        for ordinal, spec in enumerate(matcher.values()):
            if spec is None:
                continue
            for regex, suffix in (spec if isinstance(spec, (tuple, list)) else [(spec, None)]):
                compiled.append((re.compile(regex), (ordinal,), suffix))

        def key(name: str) -> tuple:
            for regex, prefix, suffix in compiled:
                r = regex.match(name)
                if r:
                    return tuple(float(x) for part in (prefix, r.groups(), suffix) if part for x in part)
            return (float("inf"),)
    else:
        def key(name: str) -> tuple:
            k = matcher(name)
            return tuple(k) if isinstance(k, (tuple, list)) else (k,)

    keys = {n: key(n) for n in names}
    ids, lid = {}, -1
    for k in sorted(set(keys.values())):
        if lid < 0 or k[-1] != _MATCH_PREV_GROUP:
            lid += 1
        ids[k] = lid
    return {n: ids[k] for n, k in keys.items()}


def param_depths(model: nn.Module, order: list[str] | None = None) -> dict[str, int]:
    """Each parameter's distance before the head in depth levels: the model's own
    ``group_matcher(coarse=False)`` groups when it has one (timm's models, as timm's
    ``param_groups_layer_decay`` reads them), else the blocks of :func:`decay_ranks`."""
    names = [n for n, _ in model.named_parameters()]
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        try:
            levels = matcher_levels(names, matcher(coarse=False))
        except Exception:  # noqa: BLE001 - a matcher we cannot read: fall back to the blocks
            levels = None
        if levels:
            top = max(levels.values())
            return {n: top - lv for n, lv in levels.items()}
    ranks = decay_ranks(model, order)
    held = param_blocks(names, ranks)
    return {n: ranks[held[n]] if n in held else 0 for n in names}


def param_multipliers(plan: FreezePlan, model: nn.Module, order: list[str] | None = None,
                      epoch: int = 1) -> dict[str, float]:
    """Every parameter's rate multiplier during ``epoch``: the ``lr_mult`` rule of the latest
    stage begun that matches it, else the plan's own ``lr_mult``'s last matching rule, or
    ``layer_decay`` to the power of its depth before the head (:func:`param_depths`)."""
    if plan.layer_decay is None:
        base = {n: plan.lr_multiplier(n) for n in plan.params}
    else:
        depths = param_depths(model, order)
        # a new (randomly initialised) module learns at the full rate wherever it sits: at the first
        # block's lr/100 a new stem would stay nearly as random as a frozen one
        new = set(plan.new_modules)
        base = {n: 1.0 if new.intersection(module_prefixes(n)) else plan.layer_decay ** depths.get(n, 0)
                for n in plan.params}
    if any(s.lr_mult and s.epoch <= epoch for s in plan.stages):
        for n in base:
            m = plan.stage_multiplier(n, epoch)
            base[n] = base[n] if m is None else m
    return base


def first_multipliers(plan: FreezePlan, model: nn.Module, order: list[str] | None = None) -> dict[str, float]:
    """Every parameter's multiplier in the first epoch it trains (epoch 1 for one never trained):
    what a view of the plan shows as its rate."""
    epochs = sorted({s.epoch for s in plan.stages if s.lr_mult})
    at = {e: param_multipliers(plan, model, order, e) for e in [1, *epochs]}
    out = {}
    for n in plan.params:
        first = plan.stage_of(n) or 1
        out[n] = at[max((e for e in at if e <= first), default=1)][n]
    return out


def multiplier_at(changes, epoch: int) -> float:
    """The multiplier in force during ``epoch`` from ``(first epoch, multiplier)`` changes."""
    return next((m for e, m in reversed(changes) if e <= epoch), changes[0][1])


def fastai_groups(model: nn.Module, heads: Iterable[str]) -> list[list[str]]:
    """fastai's parameter groups for ``model`` as module globs, body first, the head last:
    ``_resnet_split`` for torchvision's ResNets (``conv1``…``layer2`` | ``layer3``, ``layer4``),
    the ``features[:k]`` splits for torchvision's VGG-BN (22), AlexNet (6), DenseNet (7) and
    SqueezeNet (5), else ``default_split`` (body | head) — fastai/vision/learner.py."""
    heads = [escape_glob(h) for h in heads]
    kind = type(model).__name__
    tv = type(model).__module__.startswith("torchvision")
    later: list[str] | None = None
    if tv and kind == "ResNet":
        later = ["layer3", "layer4"]
    elif tv and kind in FASTAI_FEATURE_SPLITS and isinstance(getattr(model, "features", None), nn.Sequential):
        if kind != "VGG" or any(isinstance(m, nn.BatchNorm2d) for m in model.features):
            k = FASTAI_FEATURE_SPLITS[kind]
            later = [f"features.{n}" for n, m in list(model.features.named_children())[k:]
                     if any(True for _ in m.parameters())]
            later += [n for n, m in model.named_children() if n != "features" and any(True for _ in m.parameters())]
    if later is None:
        return [["*"], heads]
    return [["*"], later, heads]


def fine_tune_recipe(plan: FreezePlan, model: nn.Module, order: list[str] | None = None) -> FreezePlan:
    """fastai's ``fine_tune(epochs, base_lr, freeze_epochs=1, lr_mult=100)`` with ``train_bn``:
    epoch 1 trains the head at the rate and the norm layers at ``slice(base_lr)``'s lr/10; from
    epoch 2 everything at half the rate, ``slice(lr/100, lr)`` spread evenly (geometrically) over
    fastai's parameter groups (:func:`fastai_groups`): 0.01, 0.1, 1 for three groups."""
    heads = sorted(set(find_heads(model)) | set(plan.new_modules))
    for n in plan.params:
        plan.params[n] = not any(m in heads for m in module_prefixes(n))
    if not plan.trainable:
        plan.params.update({n: False for n in plan.params})
    plan.norm_params = plan.norm_params or norm_parameters(model)
    plan.set_train_bn(True)
    plan.layer_decay = None
    plan.stages = []
    groups = fastai_groups(model, heads)
    plan.lr_mult = []
    for g in groups[0]:  # slice(base_lr): lr/10 for every group but the last
        plan.set_lr_mult(g, 1 / FASTAI_SLICE_STOP_DIV)
    for g in groups[-1]:
        plan.set_lr_mult(g, 1.0)
    spread = []
    for i, globs in enumerate(groups):  # fastai's even_mults(lr/lr_mult, lr, n)
        mult = (1 / RECIPE_SPREAD) ** ((len(groups) - 1 - i) / (len(groups) - 1))
        spread += [(g, mult) for g in globs]
    plan.add_stage(2, unfreeze=["*"], lr_scale=0.5, lr_mult=spread, restart=True)
    return plan


def no_decay(model: nn.Module, decay_all: bool = False) -> set[str]:
    """The parameters that get no weight decay: those the model names in its own
    ``no_weight_decay()`` (timm's ViT: ``pos_embed``, ``cls_token``; globs as timm reads them),
    and, unless ``decay_all``, biases and the parameters of normalisation layers."""
    named = model.named_parameters()
    listed = model_no_weight_decay(model)
    out = {n for n, _ in named if any(fnmatch.fnmatchcase(n, g) for g in listed)} if listed else set()
    if decay_all:
        return out
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.ndim <= 1 or isinstance(m, NORMS):
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


def model_no_weight_decay(model: nn.Module) -> set[str]:
    """The names (or globs) the model's own ``no_weight_decay()`` returns; empty without one."""
    fn = getattr(model, "no_weight_decay", None)
    if not callable(fn):
        return set()
    try:
        return {str(n) for n in fn()}
    except Exception:  # noqa: BLE001 - a method of another meaning: nothing listed
        return set()


@dataclass
class Group:
    """Parameters sharing their rate multipliers over the run, a first epoch and weight decay."""

    mults: tuple[tuple[int, float], ...]  # (from epoch, multiplier), from epoch 1; stages' lr_mult add more
    first_epoch: int  # the epoch it starts training (a never-trained group: after the run)
    decay: bool
    names: list[str]

    @property
    def mult(self) -> float:
        """The multiplier in epoch 1."""
        return self.mults[0][1]


def param_groups(plan: FreezePlan, model: nn.Module, order: list[str] | None = None,
                 decay_all: bool = False) -> list[Group]:
    """Every parameter, frozen or not, in one group per (multiplier, first epoch, decay), in
    the model's parameter order; the same plan and model always give the same groups."""
    epochs = [1, *sorted({s.epoch for s in plan.stages if s.lr_mult})]
    at = [param_multipliers(plan, model, order, e) for e in epochs]
    skip = no_decay(model, decay_all)
    groups: dict[tuple, Group] = {}
    for n in plan.params:
        first = plan.stage_of(n) or NEVER
        changes = [(1, at[0][n])]
        for e, mults in zip(epochs[1:], at[1:]):
            if mults[n] != changes[-1][1]:
                changes.append((e, mults[n]))
        key = (tuple(changes), first, n not in skip)
        groups.setdefault(key, Group(*key, [])).names.append(n)
    return list(groups.values())


def parameter_rows(plan: FreezePlan, model: nn.Module, order: list[str] | None = None,
                   decay_all: bool = False) -> list[dict]:
    """One row per parameter, in the model's order, as scripts read a plan: ``trainable`` in
    epoch 1, the first ``epoch`` it trains (None: never), its ``lr_mult`` from then, and whether
    it gets ``weight_decay``."""
    mults = first_multipliers(plan, model, order)
    skip = no_decay(model, decay_all)
    return [{"name": n, "trainable": not frozen, "epoch": plan.stage_of(n), "lr_mult": mults[n],
             "weight_decay": n not in skip} for n, frozen in plan.params.items()]


def module_rates(plan: FreezePlan, model: nn.Module, depth: int = 1, order: list[str] | None = None) -> dict[str, str]:
    """The multiplier of each module at ``depth`` as text ("0.1", or "0.01–0.1" when mixed), each
    parameter's from the epoch it starts training."""
    mults = first_multipliers(plan, model, order)
    spans: dict[str, list[float]] = {}
    for n, m in mults.items():
        prefixes = module_prefixes(n)
        key = prefixes[min(depth, len(prefixes)) - 1] if prefixes else n
        spans.setdefault(key, []).append(m)
    return {k: (f"{min(v):.3g}" if min(v) == max(v) else f"{min(v):.3g}–{max(v):.3g}") for k, v in spans.items()}


def describe(plan: FreezePlan) -> list[str]:
    """The schedule in words, one line per stage; empty for a static plan."""
    if not plan.stages and not plan.lr_mult and plan.layer_decay is None and not plan.auto_rgn:
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
        if s.lr_mult:
            parts.append("rates " + ", ".join(f"{g} ×{m:g}" for g, m in s.lr_mult))
        if s.restart:
            parts.append("schedule restarts")
        now = plan.at_epoch(s.epoch)
        lines.append(f"stage {i} from epoch {s.epoch}: {'; '.join(parts)} "
                     f"({len(now.trainable)} trainable tensors)")
    if plan.lr_mult:
        lines.append("rates: " + ", ".join(f"{g} ×{m:g}" for g, m in plan.lr_mult) + " (later rules win)")
    if plan.layer_decay is not None:
        lines.append(f"rates: layer decay {plan.layer_decay:.4g} per block before the head")
    if plan.auto_rgn:
        lines.append(AUTO_RGN_LINE)
    return lines


AUTO_RGN_LINE = ("rates: Auto-RGN, each trainable tensor's rate × its relative gradient norm ‖g‖/‖w‖ over the "
                 "largest, every step (no extra memory)")


def head_rates(stages: list[dict], schedule: str, lr: float, steps_per_epoch: int, epochs: int,
               warmup_epochs: float, at: list[int] | None = None) -> list[float]:
    """The head's rate (multiplier 1) at 1-based steps ``at`` of a run (every step when None),
    as training sets it: the schedule's factor × the ``lr_scale`` of the stage in force.
    ``stages`` as the plan file holds them. The TUI draws it before and during a run."""
    steps = max(1, steps_per_epoch)
    timed = sorted((Stage(s["epoch"], lr_scale=s.get("lr_scale"), restart=bool(s.get("restart"))) for s in stages),
                   key=lambda s: s.epoch)
    rates = PlanSchedule(FreezePlan(model={}, params={}, stages=timed), lr, max(1, epochs), steps, schedule,
                         warmup_epochs)
    points = range(1, max(1, epochs) * steps + 1) if at is None else at
    return [rates.base_lr((t - 1) // steps + 1, (t - 1) % steps + 1) for t in points]


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
    if d.get("auto_rgn"):
        parts.append("Auto-RGN")
    return " · ".join(parts) or "static"


# ----------------------------------------------------------------------------- a run's rates


class PlanSchedule:
    """Each parameter group's learning rate at each step of a run of ``epochs`` ×
    ``steps_per_epoch`` optimizer steps under ``plan``: the schedule's factor (restarting at a
    stage with ``restart``) × the stage's ``lr_scale`` × the group's multiplier in that epoch
    (``lr_mult``, ``layer_decay``, a stage's ``lr_mult``) × its own warmup over the epoch a stage
    unfreezes it. The groups are :meth:`FreezePlan.param_groups`'; ``freezetui train`` sets its
    rates with :meth:`set_rates` too.

    ``schedule``: constant, cosine or onecycle (:func:`schedule_factor`); ``warmup_epochs``: the
    linear warmup at the start of the run (and of each restarted phase)."""

    def __init__(self, plan: FreezePlan, lr: float, epochs: int, steps_per_epoch: int, schedule: str = "cosine",
                 warmup_epochs: float = 0.5):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        self.plan, self.lr, self.epochs, self.schedule = plan, lr, epochs, schedule
        self.steps_per_epoch, self.warmup_epochs = max(1, steps_per_epoch), warmup_epochs
        self.restarts = plan.restarts()

    def base_lr(self, epoch: int, step: int) -> float:
        """The rate of a group of multiplier 1 (the head's) at 1-based ``step`` of 1-based ``epoch``."""
        t = (epoch - 1) * self.steps_per_epoch + step - 1
        return self.lr * self.plan.lr_scale_at(epoch) * phased_factor(
            self.schedule, t, self.steps_per_epoch, self.epochs, self.warmup_epochs, self.restarts)

    def group_lr(self, group: dict, epoch: int, step: int, base: float | None = None) -> float:
        """One parameter group's rate (a dict of :meth:`FreezePlan.param_groups`)."""
        t = (epoch - 1) * self.steps_per_epoch + step - 1
        base = self.base_lr(epoch, step) if base is None else base
        mult = multiplier_at(group["lr_mults"], epoch) if group.get("lr_mults") else group["lr_mult"]
        return base * mult * unfreeze_warmup(t, self.steps_per_epoch, group["first_epoch"])

    def set_rates(self, optimizer, epoch: int, step: int) -> None:
        """Set the ``lr`` of every group :meth:`FreezePlan.param_groups` made in ``optimizer`` for
        1-based ``step`` of 1-based ``epoch``; call it before each ``optimizer.step()``. Groups of
        the caller's own (without ``first_epoch``) keep their rate."""
        base = self.base_lr(epoch, step)
        for g in optimizer.param_groups:
            if "first_epoch" in g:
                g["lr"] = self.group_lr(g, epoch, step, base)
