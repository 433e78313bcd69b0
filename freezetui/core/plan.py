"""FreezePlan v1: which parameters train and which stay frozen, keyed by parameter name.

A plan is plain data (it round-trips through JSON exactly); :meth:`FreezePlan.apply` puts it
on a model and :meth:`FreezePlan.freeze` / :meth:`FreezePlan.unfreeze` edit it with globs.
Optional schedule keys: ``lr_mult`` (per-glob rate multipliers), ``layer_decay``, ``stages``
(unfreeze/freeze at later epochs) and ``auto_rgn`` (each trainable tensor's rate also scaled, every
step, by its normalised relative gradient norm: :mod:`freezetui.core.rgn`); ``frozen``/``trainable``
describe epoch 1.
Optional ``adapters``: LoRA rules (:mod:`freezetui.core.adapters`); an adapted module's
parameters are frozen in the lists, and its adapter's tensors are counted apart.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from torch import nn

from .adapters import AdapterRule, adapted_weights, attach, lora_shapes, module_parameters, resolve
from .atomic import write_json
from .errors import PlanError
from .models import model_info
from .readback import Unreadable, loads_json

VERSION = 1
BATCHNORM_MODES = ("train", "freeze")
KNOWN_KEYS = {"version", "model", "batchnorm", "frozen", "trainable", "counts", "lr_mult", "layer_decay", "stages",
              "train_bn", "auto_rgn", "adapters"}
STAGE_KEYS = {"epoch", "unfreeze", "freeze", "batchnorm", "lr_scale", "lr_mult", "restart"}
_BN_HOOK = "_freezetui_bn_hook"
NEVER = 2**63 - 1  # "never": later than any epoch or step, and still an int64 (numpy views use it)
# fastai's norm_types (fastai/torch_core.py): the layers whose parameters train_bn keeps training
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d, nn.LayerNorm)


def module_prefixes(param: str) -> list[str]:
    """``"a.b.weight"`` -> ``["a", "a.b"]``: the modules a parameter lives in."""
    parts = param.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def escape_glob(name: str) -> str:
    """A glob matching exactly ``name`` (brackets, ``*`` and ``?`` taken literally)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def glob_matches(pattern: str, param: str) -> bool:
    """A glob matches a parameter by its own name or by the name of any module holding it."""
    return fnmatch.fnmatchcase(param, pattern) or any(fnmatch.fnmatchcase(m, pattern) for m in module_prefixes(param))


def _short_list(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class Stage:
    """What changes at the start of a (1-based) epoch: globs to unfreeze and to freeze, then
    optionally the BatchNorm policy, a scale on every rate from then on, and rate rules
    (``lr_mult``, [glob, multiplier], the last match wins) that replace the multipliers of the
    parameters they match from then on (Lightning's ``BackboneFinetuning``: 0.1, 0.2, 0.4, …)."""

    epoch: int
    unfreeze: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)
    batchnorm: str | None = None  # None: unchanged
    lr_scale: float | None = None  # None: unchanged
    lr_mult: list[tuple[str, float]] = field(default_factory=list)  # empty: multipliers unchanged
    restart: bool = False  # the run's schedule (one-cycle, cosine) starts afresh here, as fastai's phases

    def to_dict(self) -> dict:
        d: dict = {"epoch": self.epoch}
        if self.unfreeze:
            d["unfreeze"] = list(self.unfreeze)
        if self.freeze:
            d["freeze"] = list(self.freeze)
        if self.batchnorm is not None:
            d["batchnorm"] = self.batchnorm
        if self.lr_scale is not None:
            d["lr_scale"] = self.lr_scale
        if self.lr_mult:
            d["lr_mult"] = [[g, m] for g, m in self.lr_mult]
        if self.restart:
            d["restart"] = True
        return d


def _positive_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and x != float("inf")


@dataclass
class FreezePlan:
    """Which parameters are frozen. ``params`` keeps the model's parameter order."""

    model: dict
    params: dict[str, bool]  # name -> frozen?
    batchnorm: str = "freeze"
    numels: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    file_counts: dict | None = None  # counts read from a file, kept when numels are unknown
    lr_mult: list[tuple[str, float]] = field(default_factory=list)  # (glob, multiplier), the last match wins
    layer_decay: float | None = None  # rates d, d², … over the blocks before the head
    stages: list[Stage] = field(default_factory=list)  # in increasing epoch order
    train_bn: bool = False  # norm layers' parameters train in every epoch, BatchNorm in train mode (fastai's)
    norm_params: list[str] = field(default_factory=list)  # not in the file: read from the model (norm_parameters)
    auto_rgn: bool = False  # rates × each tensor's normalised ‖g‖/‖w‖, every step (rgn.AutoRGN)
    adapters: list[AdapterRule] = field(default_factory=list)  # LoRA rules, the last match wins
    adapted: dict[str, list[str]] = field(default_factory=dict)  # not in the file: module -> the weights it adapts
    adapter_numel: int | None = None  # not in the file: the adapters' scalars, once resolved on a model

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model(cls, model: nn.Module, batchnorm: str = "freeze", spec: dict | None = None) -> "FreezePlan":
        """A plan matching ``model`` as it is now: parameters with ``requires_grad=False`` are frozen."""
        if batchnorm not in BATCHNORM_MODES:
            raise PlanError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        if spec is None:
            info = model_info(model)
            spec = info.spec() if info else {"name": type(model).__name__, "weights": None,
                                             "num_classes": None, "small_input": False, "new_modules": []}
        params, numels = {}, {}
        for name, p in model.named_parameters():
            params[name] = not p.requires_grad
            numels[name] = p.numel()
        return cls(model=copy.deepcopy(spec), params=params, batchnorm=batchnorm, numels=numels,
                   norm_params=norm_parameters(model))

    # ------------------------------------------------------------------ views

    @property
    def frozen(self) -> list[str]:
        return [n for n, f in self.params.items() if f]

    @property
    def trainable(self) -> list[str]:
        return [n for n, f in self.params.items() if not f]

    @property
    def new_modules(self) -> list[str]:
        return list(self.model.get("new_modules") or [])

    @property
    def counts(self) -> dict:
        if not self.numels and self.file_counts is not None:
            return dict(self.file_counts)
        frozen = sum(self.numels.get(n, 0) for n, f in self.params.items() if f)
        total = sum(self.numels.get(n, 0) for n in self.params)
        counts = {"total": total, "trainable": total - frozen, "frozen": frozen}
        if self.adapters and self.adapter_numel is not None:
            counts["adapters"] = self.adapter_numel  # trained too, beside the base model's trainable
        return counts

    def prefix_frozen(self) -> set[str]:
        """Frozen parameters a frozen prefix may run through: not those of an adapted module
        (its adapter needs gradients), so the prefix ends at the first adapted module."""
        inside = {p for m in self.adapted for p in module_parameters(self.params, m)}
        return {n for n, f in self.params.items() if f and n not in inside}

    def is_frozen(self, name: str) -> bool:
        return self.params[name]

    # ------------------------------------------------------------------ editing

    def matching(self, pattern: str) -> list[str]:
        return [n for n in self.params if glob_matches(pattern, n)]

    def _set(self, pattern: str, frozen: bool) -> list[str]:
        names = self.matching(pattern)
        if not names:
            raise PlanError(f"rule {pattern!r} matches no parameter or module of {self.model.get('name')}")
        for n in names:
            self.params[n] = frozen
        return names

    def freeze(self, pattern: str) -> list[str]:
        """Freeze every parameter the glob matches; a glob matching nothing is a PlanError."""
        return self._set(pattern, True)

    def unfreeze(self, pattern: str) -> list[str]:
        return self._set(pattern, False)

    def set_frozen(self, names: Iterable[str], frozen: bool) -> None:
        for n in names:
            if n not in self.params:
                raise PlanError(f"{n!r} is not a parameter of this model")
            self.params[n] = frozen

    def freeze_before(self, name: str) -> None:
        """Freeze every parameter before ``name`` (in parameter order), the rest trainable."""
        if name not in self.params:
            raise PlanError(f"{name!r} is not a parameter of this model")
        before = True
        for n in self.params:
            if n == name:
                before = False
            self.params[n] = before

    def apply_rules(self, rules: Iterable[tuple[str, str]]) -> None:
        """Apply ``("freeze"|"unfreeze", glob)`` rules in order; later rules win."""
        for action, pattern in rules:
            self._set(pattern, action == "freeze")

    def copy(self) -> "FreezePlan":
        return copy.deepcopy(self)

    def add_lora(self, model: nn.Module, rule: AdapterRule) -> list[str]:
        """Add a LoRA rule (later rules win); the adapted modules' parameters are frozen. Returns
        the modules it adapts."""
        rule.check("plan")
        hit = list(resolve(model, [rule]))
        self.adapters.append(rule)
        self.learn_adapters(model)
        for m in hit:
            self.set_frozen(module_parameters(self.params, m), True)
        return hit

    def learn_adapters(self, model: nn.Module) -> None:
        """Resolve the adapter rules on ``model``: which modules, which weights, how many scalars."""
        shapes = lora_shapes(model, self.adapters)
        self.adapted = {m: adapted_weights(model, m) for m in shapes}
        self.adapter_numel = sum(a + b for _, a, b in shapes.values())

    # ------------------------------------------------------------------ the schedule

    def add_stage(self, epoch: int, unfreeze: Iterable[str] = (), freeze: Iterable[str] = (),
                  batchnorm: str | None = None, lr_scale: float | None = None,
                  lr_mult: Iterable[tuple[str, float]] = (), restart: bool = False) -> Stage:
        """Append a stage (after the last one); its globs must match something."""
        stage = Stage(epoch, list(unfreeze), list(freeze), batchnorm, lr_scale, [(g, m) for g, m in lr_mult],
                      restart)
        self._check_stage(stage, self.stages[-1].epoch if self.stages else 1, "plan")
        self.stages.append(stage)
        return stage

    def set_lr_mult(self, pattern: str, multiplier: float) -> None:
        """Add a rate rule (later rules win); a glob matching nothing is a PlanError."""
        self._check_lr_rule(pattern, multiplier, "plan")
        if self.layer_decay is not None:
            raise PlanError("a plan has either lr_mult rules or layer_decay, not both")
        self.lr_mult.append((pattern, float(multiplier)))

    def set_layer_decay(self, decay: float | None) -> None:
        if decay is not None and not (_positive_number(decay) and decay <= 1):
            raise PlanError(f"layer_decay must be a number in (0, 1], got {decay!r}")
        if decay is not None and self.lr_mult:
            raise PlanError("a plan has either lr_mult rules or layer_decay, not both")
        self.layer_decay = None if decay is None else float(decay)

    def set_train_bn(self, on: bool) -> None:
        """fastai's ``train_bn``: the parameters of norm layers train in every epoch, frozen or not,
        and BatchNorm stays in train mode. Needs the model's norm layers (``norm_params``)."""
        self.train_bn = bool(on)
        if on:
            self.params.update({n: False for n in self.norm_params if n in self.params})
            self.batchnorm = "train"

    def lr_multiplier(self, param: str) -> float:
        """The multiplier of the last ``lr_mult`` rule matching ``param`` (1.0 if none). With
        ``layer_decay`` the rate depends on the model's blocks: see
        :func:`freezetui.core.schedule.param_multipliers`."""
        for pattern, mult in reversed(self.lr_mult):
            if glob_matches(pattern, param):
                return mult
        return 1.0

    def stage_multiplier(self, param: str, epoch: int) -> float | None:
        """The multiplier the stages started by ``epoch`` set for ``param`` (the last matching
        rule of the latest stage wins), None when no stage rule matches it."""
        for s in reversed(self.stages):
            if s.epoch > epoch:
                continue
            for pattern, mult in reversed(s.lr_mult):
                if glob_matches(pattern, param):
                    return mult
        return None

    def restarts(self) -> list[int]:
        """The epochs where the run's schedule starts afresh (besides epoch 1)."""
        return [s.epoch for s in self.stages if s.restart]

    def stage_index(self, epoch: int) -> int:
        """1 for the plan's own frozen/trainable, k + 1 once the k-th stage has started."""
        return 1 + sum(1 for s in self.stages if s.epoch <= epoch)

    def at_epoch(self, epoch: int) -> "FreezePlan":
        """The plan in force during ``epoch``: stages up to it applied, without stages of its own."""
        plan = copy.copy(self)
        plan.params = dict(self.params)
        plan.stages = []
        for s in self.stages:
            if s.epoch > epoch:
                break
            for pattern in s.unfreeze:
                plan._set(pattern, False)
            for pattern in s.freeze:
                plan._set(pattern, True)
            if s.batchnorm is not None:
                plan.batchnorm = s.batchnorm
        if self.train_bn:
            plan.set_train_bn(True)
        return plan

    def lr_scale_at(self, epoch: int) -> float:
        scale = 1.0
        for s in self.stages:
            if s.epoch <= epoch and s.lr_scale is not None:
                scale = s.lr_scale
        return scale

    def stage_of(self, param: str) -> int | None:
        """The first epoch in which ``param`` trains (1: from the start), None when never
        (``stage_of(p) or NEVER`` where a number is needed)."""
        if not self.params[param]:
            return 1
        frozen = True
        for s in self.stages:
            for pattern in s.unfreeze:
                if glob_matches(pattern, param):
                    frozen = False
            for pattern in s.freeze:
                if glob_matches(pattern, param):
                    frozen = True
            if not frozen:
                return s.epoch
        return None

    def _check_lr_rule(self, pattern: object, mult: object, source: str) -> None:
        if not isinstance(pattern, str) or not _positive_number(mult):
            raise PlanError(f"{source}: each lr_mult rule is [glob, positive number], got {[pattern, mult]!r}")
        if not self.matching(pattern):
            raise PlanError(f"{source}: lr_mult rule {pattern!r} matches no parameter or module of "
                            f"{self.model.get('name')}")

    def _check_stage(self, s: Stage, after: int, source: str) -> None:
        if type(s.epoch) is not int or s.epoch < 2:
            raise PlanError(f"{source}: a stage's epoch must be a whole number from 2 on (frozen/trainable "
                            f"describe epoch 1), got {s.epoch!r}")
        if self.stages and s.epoch <= after:
            raise PlanError(f"{source}: stages must be in increasing epoch order ({s.epoch} after {after})")
        for key in ("unfreeze", "freeze"):
            globs = getattr(s, key)
            if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
                raise PlanError(f"{source}: the stage at epoch {s.epoch} needs \"{key}\" as a list of globs")
            for g in globs:
                if not self.matching(g):
                    raise PlanError(f"{source}: the stage at epoch {s.epoch} {key}s {g!r}, which matches no "
                                    f"parameter or module of {self.model.get('name')}")
        if s.batchnorm is not None and s.batchnorm not in BATCHNORM_MODES:
            raise PlanError(f"{source}: the stage at epoch {s.epoch} has batchnorm {s.batchnorm!r}; "
                            f"use \"train\" or \"freeze\"")
        if s.lr_scale is not None and not _positive_number(s.lr_scale):
            raise PlanError(f"{source}: the stage at epoch {s.epoch} needs a positive lr_scale, got {s.lr_scale!r}")
        if not isinstance(s.lr_mult, list) or not all(isinstance(r, (list, tuple)) and len(r) == 2 for r in s.lr_mult):
            raise PlanError(f"{source}: the stage at epoch {s.epoch} needs \"lr_mult\" as a list of "
                            f"[glob, multiplier] pairs")
        for pattern, mult in s.lr_mult:
            self._check_lr_rule(pattern, mult, f"{source}: the stage at epoch {s.epoch}")
        s.lr_mult = [(g, float(m)) for g, m in s.lr_mult]
        if not isinstance(s.restart, bool):
            raise PlanError(f"{source}: the stage at epoch {s.epoch} has restart {s.restart!r}; use true or false")
        if not (s.unfreeze or s.freeze or s.batchnorm or s.lr_scale or s.lr_mult or s.restart):
            raise PlanError(f"{source}: the stage at epoch {s.epoch} changes nothing")
        trial = copy.copy(self)
        trial.stages = [*self.stages, s]
        if not trial.at_epoch(s.epoch).trainable:
            raise PlanError(f"{source}: the stage at epoch {s.epoch} leaves every parameter frozen")

    def schedule_dict(self) -> dict:
        """The schedule keys as the file holds them; empty for a static plan."""
        d: dict = {}
        if self.lr_mult:
            d["lr_mult"] = [[g, m] for g, m in self.lr_mult]
        if self.layer_decay is not None:
            d["layer_decay"] = self.layer_decay
        if self.stages:
            d["stages"] = [s.to_dict() for s in self.stages]
        if self.auto_rgn:
            d["auto_rgn"] = True
        return d

    # ------------------------------------------------------------------ the model

    def check_fits(self, model: nn.Module) -> None:
        """Check the plan names exactly the model's parameters; learn its norm layers (``train_bn``)."""
        self._fitting_parameters(model)
        self.norm_params = norm_parameters(model)
        if self.train_bn:
            self.set_train_bn(True)
        self.learn_adapters(model)
        wrong = [w for ws in self.adapted.values() for w in ws if not self.params[w]]
        if wrong:
            raise PlanError(f"{_short_list(wrong)} carries a LoRA adapter and must be frozen "
                            f"(the adapter trains instead)")

    def _fitting_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The model's named parameters, after checking that they are exactly the plan's."""
        named = list(model.named_parameters())
        if len(named) == len(self.params) and all(n in self.params for n, _ in named):
            return named  # same size and no unexpected name: nothing can be missing
        present = {n for n, _ in named}
        missing = [n for n in self.params if n not in present]
        unexpected = [n for n, _ in named if n not in self.params]
        parts = []
        if missing:
            parts.append(f"missing from the model: {_short_list(missing)}")
        if unexpected:
            parts.append(f"not in the plan: {_short_list(unexpected)}")
        raise PlanError(f"plan for {self.model.get('name')} does not fit this model ({'; '.join(parts)})")

    def apply(self, model: nn.Module) -> nn.Module:
        """Set ``requires_grad`` on every parameter (both ways) and, with ``batchnorm="freeze"``,
        keep BatchNorm layers that are not wholly trainable in eval mode even after ``model.train()``;
        put the plan's LoRA adapters on the model (their base weights frozen whatever the lists say)."""
        params = self.params
        for name, p in self._fitting_parameters(model):
            p.requires_grad_(not params[name])
            self.numels[name] = p.numel()
        attach(model, self.adapters)
        self.learn_adapters(model)
        for ws in self.adapted.values():
            for w in ws:
                model.get_parameter(w).requires_grad_(False)
        for m in model.modules():
            # the hook is stored in __dict__ (object.__setattr__); nn.Module.__getattr__ on a
            # missing name raises, which costs ~3 µs a module on a 10k-module model
            handle = m.__dict__.pop(_BN_HOOK, None)
            if handle is not None:
                handle.remove()
        if self.batchnorm == "freeze":
            for m in frozen_batchnorms(model):
                m.eval()
                object.__setattr__(m, _BN_HOOK, m.register_forward_pre_hook(_keep_eval))
        return model

    # ------------------------------------------------------------------ in a training loop

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float = 0.0, decay_all: bool = False,
                     order: list[str] | None = None) -> list[dict]:
        """The optimizer's parameter groups for ``model``, as ``torch.optim`` takes them: every
        parameter, frozen ones included (without a gradient they get no update, no state and no
        decay), one group per (rate multipliers over the run, first epoch it trains, weight decay).
        Each group's ``lr`` is its epoch-1 rate; ``weight_decay`` is 0 for biases, norm layers and
        the model's own ``no_weight_decay()`` (unless ``decay_all``: then only the last).
        ``lr_mult``, ``lr_mults`` and ``first_epoch`` ride in the group for
        :meth:`PlanSchedule.set_rates <freezetui.core.schedule.PlanSchedule.set_rates>`.
        ``order``: the forward order of parameters (traced from ``model`` when None), which
        ``layer_decay`` counts blocks by."""
        from .schedule import param_groups
        from .split import trace

        self._learn_norms(model)
        if order is None and self.layer_decay is not None:
            traced = trace(model)
            order = traced.param_order if traced is not None else None
        params = dict(model.named_parameters())
        return [{"params": [params[n] for n in names], "lr": lr * g.mult, "lr_mult": g.mult,
                 "lr_mults": [list(c) for c in g.mults], "first_epoch": g.first_epoch,
                 "weight_decay": weight_decay if g.decay else 0.0}
                for g in param_groups(self, model, order, decay_all)
                for names in ([[n] for n in g.names] if self.auto_rgn else [g.names])]  # Auto-RGN: one a tensor

    def enter_epoch(self, model: nn.Module, epoch: int) -> "FreezePlan":
        """Put the plan in force during 1-based ``epoch`` on ``model`` (its stages up to then:
        ``requires_grad`` both ways, the BatchNorm policy, ``train_bn``), put ``model`` in train
        mode, and return that plan. Call it at the start of every epoch. Frozen BatchNorm layers
        under ``batchnorm: "freeze"`` stay in eval mode whatever ``model.train()`` says; train
        mode here is what releases them when a stage switches BatchNorm to ``"train"`` (a loop
        that never calls ``model.train()``, as Lightning's, would keep them in eval mode)."""
        self._learn_norms(model)
        active = self.at_epoch(epoch)
        active.apply(model)
        model.train()
        return active

    def _learn_norms(self, model: nn.Module) -> None:
        """``train_bn`` needs the model's norm layers, which a plan read from a file lacks."""
        if self.train_bn and not self.norm_params:
            self.check_fits(model)

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        d = {
            "version": VERSION,
            "model": copy.deepcopy(self.model),
            "batchnorm": self.batchnorm,
            "frozen": self.frozen,
            "trainable": self.trainable,
            "counts": self.counts,
            **self.schedule_dict(),
        }
        if self.train_bn:
            d["train_bn"] = True
        if self.adapters:
            d["adapters"] = [r.to_dict() for r in self.adapters]
        for k, v in self.extra.items():
            d.setdefault(k, copy.deepcopy(v))
        return d

    @classmethod
    def from_dict(cls, d: object, source: str = "plan") -> "FreezePlan":
        if not isinstance(d, dict):
            raise PlanError(f"{source} is not a JSON object")
        version = d.get("version")
        if type(version) is not int or version != VERSION:  # True == 1 and 1.0 == 1 are not versions
            raise PlanError(f"{source} has version {version!r}; this freezetui reads version {VERSION}")
        model = d.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise PlanError(f"{source} needs a \"model\" object with a \"name\"")
        new = model.get("new_modules", [])
        if not isinstance(new, list) or not all(isinstance(x, str) for x in new):
            raise PlanError(f"{source}: model.new_modules must be a list of module names")
        nc = model.get("num_classes")
        if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 1):
            raise PlanError(f"{source}: model.num_classes must be a positive integer or null")
        size = model.get("image_size")
        if size is not None and (type(size) is not int or size < 1):
            raise PlanError(f"{source}: model.image_size must be a positive integer or null")
        if not isinstance(model.get("small_input", False), bool):
            raise PlanError(f"{source}: model.small_input must be true or false")
        if not isinstance(model.get("weights"), (str, type(None))):
            raise PlanError(f"{source}: model.weights must be a string or null")
        batchnorm = d.get("batchnorm", "freeze")
        if batchnorm not in BATCHNORM_MODES:
            raise PlanError(f"{source}: batchnorm must be \"train\" or \"freeze\", not {batchnorm!r}")
        lists = {}
        for key in ("frozen", "trainable"):
            v = d.get(key)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise PlanError(f"{source}: \"{key}\" must be a list of parameter names")
            seen: set[str] = set()
            dup = sorted({x for x in v if x in seen or seen.add(x)})
            if dup:
                raise PlanError(f"{source}: \"{key}\" names {_short_list(dup)} more than once")
            lists[key] = v
        trainable = set(lists["trainable"])
        both = [x for x in lists["frozen"] if x in trainable]
        if both:
            raise PlanError(f"{source}: {_short_list(both)} is both frozen and trainable")
        counts = d.get("counts")
        if counts is not None:
            ok = isinstance(counts, dict) and all(
                isinstance(counts.get(k), int) and not isinstance(counts.get(k), bool) and counts[k] >= 0
                for k in ("total", "trainable", "frozen")
            )
            if not ok:
                raise PlanError(f"{source}: \"counts\" needs non-negative integers total, trainable and frozen")
        # Keep the file's parameter order: frozen and trainable interleave in model order when we
        # wrote them, but a hand-written plan may list them in any order.
        params = {n: True for n in lists["frozen"]}
        params.update({n: False for n in lists["trainable"]})
        extra = {k: copy.deepcopy(v) for k, v in d.items() if k not in KNOWN_KEYS}
        plan = cls(model=copy.deepcopy(model), params=params, batchnorm=batchnorm, extra=extra,
                   file_counts=copy.deepcopy(counts))
        train_bn = d.get("train_bn", False)
        if not isinstance(train_bn, bool):
            raise PlanError(f"{source}: \"train_bn\" must be true or false, not {train_bn!r}")
        plan.train_bn = train_bn
        rules = d.get("adapters", [])
        if not isinstance(rules, list):
            raise PlanError(f"{source}: \"adapters\" must be a list of rules")
        plan.adapters = [AdapterRule.from_dict(r, source) for r in rules]
        plan._read_schedule(d, source)
        return plan

    def _read_schedule(self, d: dict, source: str) -> None:
        rules = d.get("lr_mult")
        if rules is not None:
            if not isinstance(rules, list) or not all(isinstance(r, list) and len(r) == 2 for r in rules):
                raise PlanError(f"{source}: \"lr_mult\" must be a list of [glob, multiplier] pairs")
            for pattern, mult in rules:
                self._check_lr_rule(pattern, mult, source)
                self.lr_mult.append((pattern, float(mult)))
        decay = d.get("layer_decay")
        if decay is not None:
            if self.lr_mult:
                raise PlanError(f"{source}: give either \"lr_mult\" or \"layer_decay\", not both")
            if not (_positive_number(decay) and decay <= 1):
                raise PlanError(f"{source}: \"layer_decay\" must be a number in (0, 1], got {decay!r}")
            self.layer_decay = float(decay)
        auto = d.get("auto_rgn", False)
        if not isinstance(auto, bool):
            raise PlanError(f"{source}: \"auto_rgn\" must be true or false, not {auto!r}")
        self.auto_rgn = auto
        stages = d.get("stages")
        if stages is None:
            return
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise PlanError(f"{source}: \"stages\" must be a list of objects")
        for raw in stages:
            unknown = sorted(set(raw) - STAGE_KEYS)
            if unknown:
                raise PlanError(f"{source}: a stage has unknown key(s) {', '.join(unknown)}; "
                                f"use {', '.join(sorted(STAGE_KEYS))}")
            stage = Stage(raw.get("epoch"), raw.get("unfreeze", []), raw.get("freeze", []), raw.get("batchnorm"),
                          raw.get("lr_scale"), raw.get("lr_mult", []), raw.get("restart", False))
            self._check_stage(stage, self.stages[-1].epoch if self.stages else 1, source)
            self.stages.append(stage)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FreezePlan":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PlanError(f"plan file {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise PlanError(f"plan file {str(path)!r} is a folder") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PlanError(f"cannot read plan file {str(path)!r}: {e}") from None
        try:
            d = loads_json(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan file {str(path)!r} is not valid JSON (line {e.lineno}: {e.msg})") from None
        except Unreadable as e:
            raise PlanError(f"plan file {str(path)!r} is {e}; a plan is a few levels deep") from None
        return cls.from_dict(d, source=f"plan file {str(path)!r}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically (temp file + rename)."""
        return write_json(path, self.to_dict())

    def reorder_like(self, model: nn.Module) -> None:
        """Put ``params`` in the model's parameter order (after :meth:`check_fits`)."""
        params = self.params
        self.params = {n: params[n] for n, _ in model.named_parameters()}


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False


def norm_parameters(model: nn.Module) -> list[str]:
    """The parameters of the model's norm layers, as fastai's ``norm_bias_params(m, with_bias=False)``."""
    return [f"{mname}.{p}" if mname else p for mname, m in model.named_modules() if isinstance(m, NORM_TYPES)
            for p, _ in m.named_parameters(recurse=False)]


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers with parameters, not all of them trainable: their statistics are kept
    under ``batchnorm: "freeze"``. A partly trainable one (bias-only: BitFit) keeps them too,
    since moving them would change more than its bias; ``batchnorm: "train"`` lets them move."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and any(not p.requires_grad for p in ps):
                out.append(m)
    return out

