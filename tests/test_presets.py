"""No preset recreates the seed's bug: on every torchvision classifier built with a new part
(``--small-input``'s stem where the family has one, always a new head), the head-only (``H``),
everything (``A``), fine-tune recipe (``R``) and layer-decay (``L``) presets and every rung of the
sweep's ladder keep each new (randomly initialised) module trainable, at the full rate."""


import pytest
import torch
import torchvision

from conftest import torchvision_models
from freezetui.core.models import build_model, supports_small_input
from freezetui.core.plan import module_prefixes
from freezetui.core.schedule import param_multipliers
from freezetui.core.sweep import ladder
from freezetui.core.workspace import Workspace

ALL = sorted(torchvision.models.list_models(module=torchvision.models))
# One model per family by default; FREEZETUI_ALL_MODELS=1 checks every torchvision classifier.
DEFAULT = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
           "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
           "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
           "swin_v2_t", "vgg11", "vit_b_16", "wide_resnet50_2"]
KWARGS = {n: {"image_size": 32} for n in ALL if n.startswith("vit_")}


pytestmark = pytest.mark.usefixtures("one_thread")


def _new_params(plan) -> list[str]:
    new = set(plan.new_modules)
    return [n for n in plan.params if new.intersection(module_prefixes(n))]


def _check(plan, what: str) -> None:
    frozen = [n for n in _new_params(plan) if plan.params[n]]
    assert not frozen, f"{what} freezes new parameters {frozen[:3]}"
    assert not [l for l in _lints(plan) if l.code == "frozen-new-module"], what


def _lints(plan):
    from freezetui.core.lints import frozen_new_modules

    return frozen_new_modules(plan)


@pytest.mark.parametrize("name", torchvision_models(DEFAULT))
def test_no_preset_freezes_a_new_module(name):
    torch.manual_seed(0)
    small = supports_small_input(name)
    model = build_model(name, weights="none", num_classes=5, small_input=small, **KWARGS.get(name, {}))
    ws = Workspace(model, device="cpu")
    new = ws.plan.new_modules
    assert new and (not small or len(new) >= 2), new  # the head, and the small-input stem
    assert _new_params(ws.plan)

    ws.head_only()
    _check(ws.plan, "H (head only)")
    assert ws.plan.frozen, "H freezes the pretrained body"

    ws.all_trainable()
    _check(ws.plan, "A (everything)")

    ws.apply_recipe()
    for epoch in range(1, 4):
        _check(ws.plan.at_epoch(epoch), f"R (recipe), epoch {epoch}")
    rates = param_multipliers(ws.plan, ws.model, ws.order)
    assert all(rates[n] == 1.0 for n in _new_params(ws.plan)), "R gives a new module less than the full rate"

    ws.clear_schedule()
    ws.head_only()
    ws.set_layer_decay(0.5)
    _check(ws.plan, "L (layer decay)")
    rates = param_multipliers(ws.plan, ws.model, ws.order)
    assert all(rates[n] == 1.0 for n in _new_params(ws.plan)), "L gives a new module less than the full rate"

    rungs = ladder(ws.model, ws.traced, base=ws.plan)
    assert [n for n, _ in rungs] == [n for n, _ in ladder(ws.model, ws.traced)]  # the TUI's names
    for rung, plan in rungs:
        _check(plan, f"the sweep's rung {rung}")
    sets = [set(p.trainable) for _, p in rungs]
    assert all(a < b for a, b in zip(sets, sets[1:])), [n for n, _ in rungs]
