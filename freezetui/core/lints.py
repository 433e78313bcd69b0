"""Checks on a freeze plan: the mistakes people make, each named with the module and its effect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .models import ModelInfo, model_info, supports_small_input
from .plan import FreezePlan, module_prefixes

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Lint:
    """A finding. ``message`` says what is wrong in words (no CLI flags or keys); ``fix`` is the
    remedy as data, which the front ends word as flags (``cli.lint_text``) or keys
    (``tui.format.lint_text``):
    ``("unfreeze", module)``, ``("batchnorm", "freeze")``, ``("image_size", px)``,
    ``("small_input", True)`` or ``("image_size_or_small_input", px)``."""

    code: str
    severity: str  # "error" | "warning" | "info"
    module: str
    message: str
    fix: tuple[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"

    def to_dict(self) -> dict:
        """For scripts (``plan show --json``): the fix as data, never as flags."""
        return {"level": self.severity, "code": self.code, "message": self.message,
                "modules": [self.module] if self.module else [],
                "fix": None if self.fix is None else {"kind": self.fix[0], "value": self.fix[1]}}


def _params_of(plan: FreezePlan, module: str) -> list[str]:
    return [n for n in plan.params if module in module_prefixes(n)]


def frozen_new_modules(plan: FreezePlan) -> list[Lint]:
    out = []
    for module in plan.new_modules:
        names = _params_of(plan, module)
        if names and any(plan.params[n] for n in names):
            out.append(Lint(
                "frozen-new-module", "error", module,
                f"{module} is new (randomly initialised) and frozen: it stays random and every layer "
                f"after it sees noise",
                fix=("unfreeze", module),
            ))
    return out


def input_too_small(plan: FreezePlan, image_size: int | None, min_size: tuple[int, int] | None) -> list[Lint]:
    """``image_size`` is the size the model actually sees (after the input transform)."""
    if not image_size or not min_size:
        return []
    need = max(min_size)
    if image_size >= need:
        return []
    name = str(plan.model.get("name"))
    can_shrink = not plan.model.get("small_input") and supports_small_input(name)
    return [Lint(
        "input-too-small", "warning", "",
        f"{image_size} px input is smaller than {name}'s minimum of {need} px: "
        f"the forward pass will fail or collapse to nothing",
        fix=("image_size_or_small_input", need) if can_shrink else ("image_size", need),
    )]


def wrong_fixed_size(plan: FreezePlan, image_size: int | None, info: ModelInfo | None) -> list[Lint]:
    """A model built for one input size (ViT, MaxViT) that would be given another."""
    if not image_size or info is None or not info.fixed_size or not info.input_size:
        return []
    if image_size == info.input_size:
        return []
    return [Lint(
        "fixed-size", "error", "",
        f"{plan.model.get('name')} is built for {info.input_size} px input and fails at any other size, "
        f"but would see {image_size} px",
        fix=("image_size", info.input_size),
    )]


def nothing_trainable(plan: FreezePlan) -> list[Lint]:
    if plan.params and not plan.trainable and not plan.adapters:
        return [Lint("nothing-trainable", "error", "",
                     "every parameter is frozen: training would change nothing; unfreeze at least the head")]
    return []


def batchnorm_stats_move(plan: FreezePlan, model: nn.Module | None) -> list[Lint]:
    if plan.batchnorm != "train" or model is None:
        return []
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = [f"{name}.{p}" for p, _ in m.named_parameters(recurse=False)]
            if ps and all(plan.params.get(p, False) for p in ps):
                out.append(name)
    if not out:
        return []
    shown = ", ".join(out[:3]) + (f" and {len(out) - 3} more" if len(out) > 3 else "")
    return [Lint("frozen-bn-train", "warning", out[0],
                 f"{shown}: BatchNorm frozen but batchnorm is \"train\", so running statistics still move",
                 fix=("batchnorm", "freeze"))]


def trainable_below_frozen(plan: FreezePlan, order: list[str] | None = None) -> list[Lint]:
    """A trainable parameter before a frozen one (in forward order when known, else parameter
    order): backward still runs through the frozen layers, so they save no time or memory."""
    names = [n for n in (order or list(plan.params)) if n in plan.params]
    first_trainable = next((i for i, n in enumerate(names) if not plan.params[n]), None)
    if first_trainable is None:
        return []
    frozen_after = [n for n in names[first_trainable + 1:] if plan.params[n]]
    if not frozen_after:
        return []
    low = names[first_trainable].rpartition(".")[0] or names[first_trainable]
    high = frozen_after[-1].rpartition(".")[0] or frozen_after[-1]
    return [Lint("trainable-below-frozen", "info", low,
                 f"{low} is trainable below frozen layers (up to {high}): backward still runs through "
                 f"them, so freezing them saves no time or memory")]


def check(
    plan: FreezePlan,
    model: nn.Module | None = None,
    image_size: int | None = None,
    min_size: tuple[int, int] | None = None,
    order: list[str] | None = None,
    info: ModelInfo | None = None,
) -> list[Lint]:
    """Every lint for ``plan``, errors first. ``image_size`` is the size the model sees (the
    input transform's); ``info`` defaults to the model's :class:`ModelInfo`, and ``min_size`` to
    its ``min_size``."""
    if info is None and model is not None:
        info = model_info(model)
    if min_size is None and info is not None:
        min_size = info.min_size
    found = (
        frozen_new_modules(plan)
        + nothing_trainable(plan)
        + wrong_fixed_size(plan, image_size, info)
        + input_too_small(plan, image_size, min_size)
        + batchnorm_stats_move(plan, model)
        + trainable_below_frozen(plan, order)
    )
    return sorted(found, key=lambda l: SEVERITIES.index(l.severity))
