"""Per-module modes beyond frozen or trainable: bias-only and norm-only (presets over the plan's
lists) and LoRA adapters (Hu et al. 2022), attached by hooks so that the model's parameter
names, its ``state_dict`` and the plan's lists stay those of the base model.

An adapter's tensors live outside the model (``adapters_of(model)``), in their own namespace:
``<module>.lora_A`` / ``<module>.lora_B``, and for a ``nn.MultiheadAttention`` also
``<module>.out_proj.lora_A`` / ``.lora_B`` (its in- and out-projections, as PEFT adapts it).
"""

from __future__ import annotations

import fnmatch
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PlanError

ADAPTERS_ATTR = "_freezetui_adapters"
MODES = ("frozen", "trainable", "bias-only", "norm-only", "lora")
RULE_KEYS = {"modules", "type", "r", "alpha", "dropout"}
SUPPORTED = "nn.Linear, nn.Conv2d (groups=1, zero padding) and nn.MultiheadAttention (one embedding size)"


@dataclass
class AdapterRule:
    """One plan rule: LoRA of rank ``r`` on every supported module the glob matches (by its own
    name or an enclosing module's); the update is ``(alpha / r) · B·A``, B starting at zero."""

    modules: str
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    type: str = "lora"

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {"modules": self.modules, "type": self.type, "r": self.r, "alpha": self.alpha, "dropout": self.dropout}

    @classmethod
    def from_dict(cls, d: object, source: str = "plan") -> "AdapterRule":
        if not isinstance(d, dict) or not isinstance(d.get("modules"), str):
            raise PlanError(f"{source}: each adapter rule is an object with \"modules\" (a glob), got {d!r}")
        unknown = sorted(set(d) - RULE_KEYS)
        if unknown:
            raise PlanError(f"{source}: an adapter rule has unknown key(s) {', '.join(unknown)}; "
                            f"use {', '.join(sorted(RULE_KEYS))}")
        rule = cls(d["modules"], d.get("r", 8), d.get("alpha", 16.0), d.get("dropout", 0.0), d.get("type", "lora"))
        rule.check(source)
        return rule

    def check(self, source: str = "plan") -> None:
        if self.type != "lora":
            raise PlanError(f"{source}: adapter type {self.type!r} is not supported; use \"lora\"")
        if type(self.r) is not int or self.r < 1:
            raise PlanError(f"{source}: a LoRA rank r must be a positive whole number, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
                self.alpha > 0 and math.isfinite(self.alpha)):
            raise PlanError(f"{source}: a LoRA alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise PlanError(f"{source}: a LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)


def parse_lora(text: str) -> AdapterRule:
    """``GLOB[=R[:ALPHA]]`` (the CLI's ``--lora``); alpha defaults to 2·r, r to 8."""
    glob, _, rank = text.partition("=")
    r_text, _, alpha_text = rank.partition(":")
    try:
        r = int(r_text) if r_text else 8
        alpha = float(alpha_text) if alpha_text else 2.0 * r
    except ValueError:
        raise PlanError(f"--lora {text!r}: write GLOB, GLOB=R or GLOB=R:ALPHA (R a whole number)") from None
    if not glob:
        raise PlanError(f"--lora {text!r} needs a glob before '='")
    rule = AdapterRule(glob, r, alpha)
    rule.check("--lora")
    return rule


# ----------------------------------------------------------------------------- which modules


def kind(module: nn.Module) -> str | None:
    """"linear", "conv" or "mha" for a module LoRA supports here, else None."""
    if isinstance(module, nn.MultiheadAttention):
        ok = module._qkv_same_embed_dim and module.in_proj_weight is not None and isinstance(module.out_proj, nn.Linear)
        return "mha" if ok else None
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        return "conv"
    return None


def _module_matches(pattern: str, name: str) -> bool:
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def resolve(model: nn.Module, rules: list[AdapterRule]) -> dict[str, AdapterRule]:
    """Module name -> the last rule matching it, over the supported modules, in model order. A
    ``MultiheadAttention``'s ``out_proj`` is adapted with it (its forward never calls out_proj), not
    alone. A rule matching no supported module is a PlanError."""
    targets, inside_mha = [], set()
    for name, m in model.named_modules():
        k = kind(m)
        if k == "mha":
            inside_mha.add(f"{name}.out_proj")
        if name and k and name not in inside_mha:
            targets.append(name)
    chosen: dict[str, AdapterRule] = {}
    for rule in rules:
        hit = [n for n in targets if _module_matches(rule.modules, n)]
        if not hit:
            raise PlanError(f"adapter rule {rule.modules!r} matches no module LoRA supports ({SUPPORTED}); "
                            f"an attention's out_proj is adapted with its attention module")
        chosen.update({n: rule for n in hit})
    return {n: chosen[n] for n in targets if n in chosen}


def adapted_weights(model: nn.Module, name: str) -> list[str]:
    """The base parameters an adapter on module ``name`` changes (frozen by rule)."""
    if kind(model.get_submodule(name)) == "mha":
        return [f"{name}.in_proj_weight", f"{name}.out_proj.weight"]
    return [f"{name}.weight"]


def module_parameters(plan_params, name: str) -> list[str]:
    return [p for p in plan_params if p.startswith(name + ".")]


# ----------------------------------------------------------------------------- the adapters


class LoRA(nn.Module):
    """One adapter on one weight ``W`` (out, in[, kh, kw]): ``lora_A`` (r, in[, kh, kw]) Kaiming-uniform
    as PEFT's, ``lora_B`` (out, r[, 1, 1]) zero, so the adapted model starts as the base one."""

    def __init__(self, weight: torch.Tensor, rule: AdapterRule, seed: int = 0):
        super().__init__()
        out, *rest = weight.shape
        self.r, self.scale = rule.r, rule.scale
        self.p = rule.dropout
        self.lora_A = nn.Parameter(torch.empty(rule.r, *rest, device=weight.device, dtype=weight.dtype))
        if not self.lora_A.is_meta:  # seeded by the module's name: the same start in every run
            a = torch.empty(self.lora_A.shape, dtype=self.lora_A.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                self.lora_A.copy_(a)
        self.lora_B = nn.Parameter(torch.zeros(out, rule.r, *[1] * (len(rest) - 1), device=weight.device,
                                               dtype=weight.dtype))

    def delta(self) -> torch.Tensor:
        """``scale · B·A`` in the base weight's shape."""
        d = self.lora_B.flatten(1) @ self.lora_A.flatten(1)
        return (d * self.scale).reshape(self.lora_B.shape[0], *self.lora_A.shape[1:])

    def branch_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training) if self.p else x

    def linear_hook(self, module: nn.Linear, args, out):
        return out + self.scale * F.linear(F.linear(self.branch_input(args[0]), self.lora_A), self.lora_B)

    def conv_hook(self, module: nn.Conv2d, args, out):
        h = F.conv2d(self.branch_input(args[0]), self.lora_A, None, module.stride, module.padding, module.dilation)
        return out + self.scale * F.conv2d(h, self.lora_B)


class _AttentionLoRA(nn.Module):
    """LoRA on a MultiheadAttention's in_proj_weight and out_proj.weight. Its forward reads the
    weights functionally, so for one call they are replaced by ``W + ΔW`` (PEFT merges the same
    way); dropout on the branch input is not possible here (the rule's dropout is ignored)."""

    def __init__(self, module: nn.MultiheadAttention, rule: AdapterRule, seed: int = 0):
        super().__init__()
        self.attn = LoRA(module.in_proj_weight, rule, seed)
        self.out = LoRA(module.out_proj.weight, rule, seed + 1)

    def pre_hook(self, module: nn.MultiheadAttention, args):
        self.post_hook(module, args, None)  # a forward that raised left them swapped
        for owner, key, lora in ((module, "in_proj_weight", self.attn), (module.out_proj, "weight", self.out)):
            w = owner._parameters[key]
            lora.__dict__["original"] = w
            owner._parameters[key] = w + lora.delta()

    def post_hook(self, module: nn.MultiheadAttention, args, out):
        for owner, key, lora in ((module, "in_proj_weight", self.attn), (module.out_proj, "weight", self.out)):
            original = lora.__dict__.pop("original", None)
            if original is not None:
                owner._parameters[key] = original


class Adapters(nn.Module):
    """A model's adapters, keyed by module name (``/`` for ``.``: ModuleDict keys have no dots)."""

    def __init__(self):
        super().__init__()
        self.loras = nn.ModuleDict()
        self.rules: dict[str, AdapterRule] = {}

    def named_tensors(self) -> list[tuple[str, nn.Parameter]]:
        """(``<module>.lora_A``, tensor), … in model order: the adapters' own namespace."""
        out = []
        for key, m in self.loras.items():
            name = key.replace("/", ".")
            if isinstance(m, _AttentionLoRA):
                out += [(f"{name}.lora_A", m.attn.lora_A), (f"{name}.lora_B", m.attn.lora_B),
                        (f"{name}.out_proj.lora_A", m.out.lora_A), (f"{name}.out_proj.lora_B", m.out.lora_B)]
            else:
                out += [(f"{name}.lora_A", m.lora_A), (f"{name}.lora_B", m.lora_B)]
        return out

    def deltas(self) -> dict[str, torch.Tensor]:
        """Base parameter name -> ``scale · B·A`` (what merging adds)."""
        out = {}
        for key, m in self.loras.items():
            name = key.replace("/", ".")
            if isinstance(m, _AttentionLoRA):
                out[f"{name}.in_proj_weight"] = m.attn.delta()
                out[f"{name}.out_proj.weight"] = m.out.delta()
            else:
                out[f"{name}.weight"] = m.delta()
        return out

    def tensor_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_tensors()}

    def load_tensor_state(self, state: dict[str, torch.Tensor]) -> None:
        mine = dict(self.named_tensors())
        if set(mine) != set(state):
            raise PlanError("the saved adapters do not fit this plan's adapters")
        with torch.no_grad():
            for n, p in mine.items():
                p.copy_(state[n])


def adapters_of(model: nn.Module) -> Adapters | None:
    return model.__dict__.get(ADAPTERS_ATTR)


def is_adapter_hook(hook) -> bool:
    return isinstance(getattr(hook, "__self__", None), (LoRA, _AttentionLoRA))


def detach(model: nn.Module) -> None:
    """Remove the model's adapters and their hooks (the base model as built)."""
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for k in [k for k, h in hooks.items() if is_adapter_hook(h)]:
                del hooks[k]
    model.__dict__.pop(ADAPTERS_ATTR, None)


def attach(model: nn.Module, rules: list[AdapterRule]) -> Adapters | None:
    """Put the plan's adapters on ``model``; adapters already there for the same modules and
    rules are kept (stage switches keep their tensors; a run starts by :func:`detach`). Each
    ``lora_A`` starts from a generator seeded by its module's name, B at zero. None without rules."""
    chosen = resolve(model, rules) if rules else {}
    have = adapters_of(model)
    if have is not None and have.rules == chosen:
        return have
    detach(model)
    if not chosen:
        return None
    adapters = Adapters()
    for name, rule in chosen.items():
        m = model.get_submodule(name)
        k = kind(m)
        seed = zlib.crc32(name.encode())
        if k == "mha":
            lora = _AttentionLoRA(m, rule, seed)
            m.register_forward_pre_hook(lora.pre_hook)
            m.register_forward_hook(lora.post_hook)
        else:
            lora = LoRA(m.weight, rule, seed)
            m.register_forward_hook(lora.linear_hook if k == "linear" else lora.conv_hook)
        adapters.loras[name.replace(".", "/")] = lora
    adapters.rules = dict(chosen)
    object.__setattr__(model, ADAPTERS_ATTR, adapters)  # not a submodule: names and state_dict unchanged
    return adapters


def adapter_tensors(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    a = adapters_of(model)
    return a.named_tensors() if a is not None else []


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict on the CPU with every adapter added into its base weight: a plain
    model of the original architecture loads it with ``load_state_dict(strict=True)``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    a = adapters_of(model)
    if a is not None:
        with torch.no_grad():
            for name, d in a.deltas().items():
                state[name] = (state[name] + d.detach().cpu().to(state[name].dtype))
    return state


def lora_shapes(model: nn.Module, rules: list[AdapterRule]) -> dict[str, tuple[int, int, int]]:
    """Module name -> (rank, A's numel, B's numel) summed over its adapters, without building them."""
    out = {}
    for name, rule in resolve(model, rules).items():
        a = b = 0
        for p in adapted_weights(model, name):
            w = model.get_parameter(p)
            a += rule.r * w[0].numel()
            b += w.shape[0] * rule.r
        out[name] = (rule.r, a, b)
    return out


# ----------------------------------------------------------------------------- presets and modes


def bias_only(plan, pattern: str) -> list[str]:
    """BitFit on the glob's parameters: their biases train, everything else in it is frozen."""
    names = _matching(plan, pattern)
    plan.set_frozen(names, True)
    plan.set_frozen([n for n in names if n.rsplit(".", 1)[-1].endswith("bias")], False)
    return names


def norm_only(plan, pattern: str) -> list[str]:
    """Only the norm layers' affine parameters inside the glob train (``plan.norm_params``)."""
    names = _matching(plan, pattern)
    norms = set(plan.norm_params)
    plan.set_frozen(names, True)
    plan.set_frozen([n for n in names if n in norms], False)
    return names


def _matching(plan, pattern: str) -> list[str]:
    names = plan.matching(pattern)
    if not names:
        raise PlanError(f"rule {pattern!r} matches no parameter or module of {plan.model.get('name')}")
    return names


def module_mode(plan, names: list[str], adapted: bool) -> str:
    """The mode a module's parameters ``names`` are in: lora, frozen, trainable, bias-only,
    norm-only, or mixed."""
    if adapted:
        return "lora"
    train = [n for n in names if not plan.params[n]]
    if not train:
        return "frozen"
    if len(train) == len(names):
        return "trainable"
    if all(n.rsplit(".", 1)[-1].endswith("bias") for n in train):
        return "bias-only"
    norms = set(plan.norm_params)
    if norms and all(n in norms for n in train):
        return "norm-only"
    return "mixed"


def apply_mode_rules(plan, model: nn.Module, rules) -> None:
    """``(action, value)`` rules in order, later ones winning: freeze, unfreeze, bias-only,
    norm-only (a glob each) and lora (``GLOB[=R[:ALPHA]]``)."""
    for action, value in rules:
        if action == "lora":
            plan.add_lora(model, parse_lora(value))
        elif action == "bias-only":
            bias_only(plan, value)
        elif action == "norm-only":
            norm_only(plan, value)
        else:
            plan.apply_rules([(action, value)])


def subtree_mode(plan, name: str) -> str:
    """The mode of module ``name`` with everything in it ("" : the whole model): "lora" when it
    holds adapters and nothing else trains, "lora+<mode>" when the rest trains too, else the
    mode of its parameters (:func:`module_mode`)."""
    def under(n: str) -> bool:
        return not name or n == name or n.startswith(name + ".")

    adapted = [m for m in plan.adapted if under(m) or name.startswith(m + ".")]
    inside = {p for m in adapted for p in module_parameters(plan.params, m)}
    rest = [p for p in plan.params if under(p) and p not in inside]
    mode = module_mode(plan, rest, False) if rest else "frozen"
    if adapted:
        return "lora" if mode == "frozen" else f"lora+{mode}"
    return mode


def module_modes(plan, names) -> dict[str, str]:
    return {n: subtree_mode(plan, n) for n in names}


def adapter_numel_under(model: nn.Module, name: str) -> int:
    return sum(t.numel() for n, t in adapter_tensors(model) if not name or n.startswith(name + "."))


# ----------------------------------------------------------------------------- what adapters cost


def module_io(model: nn.Module, image_size: int, device, amp: bool = False) -> dict[str, tuple[int, int, bool]]:
    """Each LoRA-able module -> (input elements, output positions, input already saved) per
    image, from one forward of one image with every parameter frozen and the input needing a
    gradient (as frozen layers run after the first trainable one): an adapter on it saves its
    input, unless the layer before saved the same tensor (a ReLU keeps its output), and its
    rank-r intermediate at every output position. Leaves ``requires_grad`` and modes as it found them."""
    seen: dict[str, list] = {}
    saved: set[int] = set()
    handles = []
    for name, m in model.named_modules():
        k = kind(m)
        if not k or not name:
            continue

        def hook(mod, args, out, name=name, k=k):
            o = out[0] if isinstance(out, tuple) else out
            x = args[0]
            seen.setdefault(name, [x.numel(), o[0, 0].numel() if k == "conv" else o.numel() // o.shape[-1],
                                   x.untyped_storage().data_ptr(), x])  # x kept alive: no address reused
        handles.append(m.register_forward_hook(hook))

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    params = list(model.parameters())
    flags, was = [p.requires_grad for p in params], model.training
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        x = torch.zeros(1, 3, image_size, image_size, device=device, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        del out
    finally:
        model.train(was)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        for h in handles:
            h.remove()
    return {n: (inp, pos, ptr in saved) for n, (inp, pos, ptr, _) in seen.items()}


def lora_saved(model_io: dict[str, tuple[int, int]], plan, element: int, batch: int) -> int:
    """Bytes autograd keeps for the plan's adapters at ``batch``: for a Linear or Conv2d, its input
    (unless kept already) and the rank-r intermediate; for an attention (adapted by ``W + ΔW``),
    its input (unless kept already) and the two merged weights."""
    total = 0
    for name, weights in plan.adapted.items():
        if name not in model_io:
            continue
        rule = next(r for r in reversed(plan.adapters) if _module_matches(r.modules, name))
        inp, positions, kept = model_io[name]
        own_input = 0 if kept else inp
        if len(weights) == 2:  # attention: the out-projection's input is attention's output, kept by it
            total += own_input * element * batch + sum(plan.numels.get(w, 0) for w in weights) * element
        else:
            total += (own_input + rule.r * positions) * element * batch
    return total


# ----------------------------------------------------------------------------- one mode per subtree


def available_modes(plan, model: nn.Module, name: str) -> list[str]:
    """The modes that mean something for the subtree ``name`` ("" : the whole model): bias-only
    needs a bias in it, norm-only a norm layer, lora a module LoRA supports."""
    params = [p for p in plan.params if not name or p.startswith(name + ".") or p == name]
    out = ["frozen", "trainable"]
    if any(p.rsplit(".", 1)[-1].endswith("bias") for p in params):
        out.append("bias-only")
    norms = set(plan.norm_params)
    if any(p in norms for p in params):
        out.append("norm-only")
    sub = model.get_submodule(name) if name and not _is_param(model, name) else (model if not name else None)
    if sub is not None and any(kind(m) for m in sub.modules()):
        out.append("lora")
    return out


def _is_param(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
        return True
    except AttributeError:
        return False


def next_mode(current: str, available: list[str]) -> str:
    """The mode after ``current`` in frozen → trainable → bias-only → norm-only → LoRA → frozen
    (a mixed subtree starts at frozen), skipping those not ``available``."""
    base = current.split("+")[0]
    if base not in MODES:
        return "frozen"
    i = MODES.index(base)
    for m in MODES[i + 1:] + MODES[: i + 1]:
        if m in available:
            return m
    return "frozen"


def set_mode(plan, model: nn.Module, name: str, mode: str, r: int = 8, alpha: float = 16.0) -> None:
    """Put the subtree ``name`` in ``mode``: its LoRA rules that adapt nothing outside it are
    dropped, then the lists (and for lora one rule, the rest of the subtree frozen) are set."""
    from .plan import escape_glob

    glob = escape_glob(name) if name else "*"

    def inside(m: str) -> bool:
        return not name or m == name or m.startswith(name + ".")

    plan.adapters = [rule for rule in plan.adapters if not all(inside(m) for m in resolve(model, [rule]))]
    plan.learn_adapters(model)
    names = _matching(plan, glob)
    if mode == "frozen":
        plan.set_frozen(names, True)
    elif mode == "trainable":
        plan.set_frozen(names, False)
    elif mode == "bias-only":
        bias_only(plan, glob)
    elif mode == "norm-only":
        norm_only(plan, glob)
    elif mode == "lora":
        plan.set_frozen(names, True)
        plan.add_lora(model, AdapterRule(glob, r, alpha))
    else:
        raise PlanError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    for ws in plan.adapted.values():  # a module adapted by a rule from outside stays frozen
        plan.set_frozen(ws, True)
