"""A model's LoRA adapters written in HF PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``), so ``peft.PeftModel.from_pretrained(base_model, folder)`` puts
them on the same base model; the trained whole modules (a new head) go as ``modules_to_save``."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from torch import nn

from .adapters import adapters_of
from .atomic import write_json
from .errors import PlanError
from .plan import FreezePlan

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# PEFT 0.21's MultiheadAttention adds its out_proj's update twice (LoRA ``merge`` adds the delta,
# then calls ``out_proj.merge``, which adds it again; its forward merges the same way), so the
# out-projection's B is written halved: PEFT then computes the update freezetui trained.
# tests/test_adapters.py compares PEFT's outputs with ours and fails if PEFT changes this.
OUT_PROJ_B = ".base_layer.out_proj.lora_B.weight"


def peft_key(plan: FreezePlan, name: str) -> str:
    """Our adapter tensor name -> PEFT's key (``<module>.lora_A`` -> ``base_model.model.<module>.lora_A.weight``;
    an attention's out-projection lives under ``base_layer`` in PEFT's wrapper)."""
    module, which = name.rsplit(".", 1)
    parent = module[: -len(".out_proj")] if module.endswith(".out_proj") else None
    if parent is not None and len(plan.adapted.get(parent, ())) == 2:
        return f"{PREFIX}{parent}.base_layer.out_proj.{which}.weight"
    return f"{PREFIX}{module}.{which}.weight"


def saved_modules(model: nn.Module, plan: FreezePlan) -> tuple[list[str], list[str]]:
    """(modules whose own parameters all train: PEFT's ``modules_to_save``, trainable parameters
    PEFT cannot carry: part of a module, such as a bias alone)."""
    inside_adapted = tuple(f"{m}." for m in plan.adapted)
    whole, partial = [], []
    for mname, m in model.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(recurse=False)]
        train = [n for n in own if not plan.params[n]]
        if not train:
            continue
        if len(train) == len(own) and mname and not mname.startswith(inside_adapted) and mname not in plan.adapted:
            whole.append(mname)
        else:
            partial += train
    return whole, partial


def adapter_config(plan: FreezePlan, modules_to_save: list[str]) -> dict:
    """PEFT's LoraConfig as JSON: the most common rank and alpha, the others as exact patterns."""
    rules = {m: r for m, r in ((m, _rule_of(plan, m)) for m in plan.adapted)}
    r = Counter(x.r for x in rules.values()).most_common(1)[0][0]
    alpha = Counter(x.alpha for x in rules.values()).most_common(1)[0][0]
    exact = {m: f"^{re.escape(m)}$" for m in rules}
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        "r": r, "lora_alpha": alpha, "lora_dropout": max(x.dropout for x in rules.values()),
        "target_modules": list(rules), "rank_pattern": {exact[m]: x.r for m, x in rules.items() if x.r != r},
        "alpha_pattern": {exact[m]: x.alpha for m, x in rules.items() if x.alpha != alpha},
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": modules_to_save or None,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "layers_to_transform": None,
        "layers_pattern": None,
    }


def _rule_of(plan: FreezePlan, module: str):
    from .adapters import _module_matches

    return next(r for r in reversed(plan.adapters) if _module_matches(r.modules, module))


def save_peft_adapter(model: nn.Module, plan: FreezePlan, folder: str | Path) -> list[str]:
    """Write the adapters (and the whole trained modules) of ``model`` into ``folder``; returns
    the trainable parameters PEFT's layout cannot carry (say so to the user), empty when none."""
    from safetensors.torch import save_file

    adapters = adapters_of(model)
    if adapters is None:
        raise PlanError("the model has no LoRA adapters to export")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    whole, partial = saved_modules(model, plan)
    tensors = {peft_key(plan, n): t.detach().cpu().contiguous() for n, t in adapters.named_tensors()}
    for k in [k for k in tensors if k.endswith(OUT_PROJ_B)]:
        tensors[k] = tensors[k] / 2  # exact (a power of two)
    state = model.state_dict()
    for m in whole:
        for p, _ in model.get_submodule(m).named_parameters(recurse=False):
            tensors[f"{PREFIX}{m}.{p}"] = state[f"{m}.{p}"].detach().cpu().contiguous()
    save_file(tensors, str(folder / WEIGHTS))
    write_json(folder / CONFIG, adapter_config(plan, whole))
    return partial
