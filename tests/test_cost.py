"""The cost estimate against what a real training forward saves for backward."""

import numpy as np
import pytest
import torch

from freezetui import FreezePlan
from freezetui.core.cost import describe, estimate, measure_saved_bytes, profile_model
from freezetui.core.models import build_model, find_heads
from freezetui.core.runner import plan_from_rules
from freezetui.core.split import frozen_prefix, trace


def _prefix(traced, plan):
    return frozen_prefix(traced, set(plan.frozen), traced.param_order)

# model, build options, image size, the stages frozen in the middle plan
FAMILIES = {
    "resnet18": ({}, 32, ["conv1", "bn1", "layer1", "layer2", "layer3"]),
    "efficientnet_b0": ({}, 32, [f"features.{i}" for i in range(6)]),
    "vit_b_16": ({"image_size": 32}, 32, ["conv_proj", "class_token", "encoder.pos_embedding"]
                 + [f"encoder.layers.encoder_layer_{i}" for i in range(9)]),
}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", num_classes=5)
    return model, profile_model(model, 32), trace(model)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_activation_estimate_within_20_percent_of_a_real_step(name):
    kw, size, middle = FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(name, weights="none", num_classes=5, **kw)
    profile = profile_model(model, size)
    traced = trace(model)
    found = {}
    for label, rules in (("full", []), ("middle", [("freeze", g) for g in middle]),
                         ("head", [("freeze", "*")] + [("unfreeze", h) for h in find_heads(model)])):
        plan = plan_from_rules(model, rules)
        est = estimate(profile, plan, batch_size=3, prefix=_prefix(traced, plan))
        saved = measure_saved_bytes(model, plan, torch.randn(3, 3, size, size), traced)
        assert saved > 0
        assert abs(est["activation_bytes"] - saved) <= 0.2 * saved, (label, est["activation_bytes"], saved)
        found[label] = est
    assert found["full"]["activation_bytes"] == found["full"]["full_activation_bytes"]
    assert found["head"]["activation_bytes"] < found["middle"]["activation_bytes"] < found["full"]["activation_bytes"]
    assert found["middle"]["flops_per_image"] < found["full"]["flops_per_image"]
    assert found["middle"]["backward_stop"] is not None and found["full"]["backward_stop"] is None


def test_frozen_layers_after_a_trainable_one_still_save_for_backward(resnet):
    """Freezing the top while the stem trains saves little: backward still runs through it."""
    model, profile, traced = resnet
    plan = plan_from_rules(model, [("freeze", "layer*")])
    est = estimate(profile, plan, batch_size=4, prefix=_prefix(traced, plan))
    saved = measure_saved_bytes(model, plan, torch.randn(4, 3, 32, 32), traced)
    assert abs(est["activation_bytes"] - saved) <= 0.2 * saved
    assert est["activation_bytes"] > 0.5 * est["full_activation_bytes"]
    assert est["backward_stop"] is None


def test_memory_terms_follow_the_optimizer_and_scale_with_the_batch(resnet):
    model, profile, traced = resnet
    plan = plan_from_rules(model, [("freeze", g) for g in ("conv1", "bn1", "layer1", "layer2")])
    trainable = sum(p.numel() for n, p in model.named_parameters() if not plan.params[n])
    total = sum(p.numel() for p in model.parameters())
    adamw = estimate(profile, plan, 8, prefix=_prefix(traced, plan))
    assert adamw["trainable_params"] == trainable and adamw["param_bytes"] == 4 * total
    assert adamw["grad_bytes"] == 4 * trainable and adamw["optimizer_bytes"] == 8 * trainable
    assert estimate(profile, plan, 8, optimizer="sgd")["optimizer_bytes"] == 4 * trainable
    assert estimate(profile, plan, 8, optimizer="sgd", momentum=0)["optimizer_bytes"] == 0
    double = estimate(profile, plan, 16)
    assert double["activation_bytes"] == pytest.approx(2 * adamw["activation_bytes"], rel=0.05)
    assert double["flops_per_image"] == adamw["flops_per_image"]
    assert adamw["forward_flops_per_image"] < adamw["flops_per_image"] < adamw["full_flops_per_image"]
    assert "backward stops at layer2" in describe(adamw) and "fewer FLOPs" in describe(adamw)


def test_profiling_leaves_the_model_as_it_was(resnet):
    model, _, _ = resnet
    plan = plan_from_rules(model, [("freeze", "layer1")])
    plan.apply(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    profile_model(model, 16, batches=(2, 3))
    assert not model.training
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_plan_in_another_order_prices_the_same(resnet):
    model, profile, _ = resnet
    plan = plan_from_rules(model, [("freeze", "layer1"), ("freeze", "layer2")])
    shuffled = plan.copy()
    names = list(shuffled.params)
    rng = np.random.default_rng(0)
    shuffled.params = {n: shuffled.params[n] for n in rng.permutation(names)}
    assert estimate(profile, shuffled, 8) == estimate(profile, plan, 8)


def test_workspace_cost_line_follows_the_plan():
    from freezetui.core.data import load_data
    from freezetui.core.workspace import Workspace

    torch.manual_seed(0)
    ws = Workspace(build_model("tiny:tiny_cnn", weights="none", num_classes=10),
                   load_data("shapes", shapes_train=64, shapes_val=16), device="cpu")
    from freezetui.tui.widgets.totals import cost_line

    assert ws.cost(32, "adamw") is None  # not profiled: no line
    ws.compute_cost_profile()
    full = cost_line(ws.cost(32, "adamw"))
    ws.head_only()
    head = cost_line(ws.cost(32, "adamw"))
    assert "fewer FLOPs" not in full and "fewer FLOPs" in head
    assert full.split(" of ")[0] != head.split(" of ")[0]  # fewer activations saved


@pytest.mark.parametrize("frozen", [(), ("conv1", "bn1", "layer1", "layer2", "layer3"), ("layer4.0",),
                                    ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")])
def test_backward_flops_equal_torchs_count_of_a_real_backward(frozen):
    """A trainable layer reading the frozen prefix's output, and a second reader of it (resnet18
    conv1–layer3 frozen: layer4.0.downsample.0), compute no input gradient: the estimate once
    counted one for the downsample (1,048,576 FLOPs per image too many at 64 px)."""
    from torch.utils.flop_counter import FlopCounterMode

    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    plan = FreezePlan.from_model(model)
    for g in frozen:
        plan.freeze(g)
    plan.apply(model)
    est = estimate(profile_model(model, 64), plan, 4)
    model.train()
    out = model(torch.randn(4, 3, 64, 64))
    with FlopCounterMode(display=False) as counted:
        out.sum().backward()
    assert est["backward_flops_per_image"] == counted.get_total_flops() / 4


def test_a_stored_profile_is_reused_for_the_same_model_and_size(tmp_path, monkeypatch):
    from freezetui.core import cost

    calls = []
    real = cost.profile_model
    monkeypatch.setattr(cost, "profile_model", lambda m, size: calls.append(size) or real(m, size))
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=10)
    key = {"name": "tiny:tiny_cnn", "num_classes": 10}
    first = cost.stored_profile(model, 32, key, folder=tmp_path)
    again = cost.stored_profile(model, 32, key, folder=tmp_path)
    assert calls == [32] and again.param_names == first.param_names
    cost.stored_profile(model, 48, key, folder=tmp_path)  # another size is measured
    assert calls == [32, 48]
    (next(tmp_path.iterdir())).write_bytes(b"not a pickle")  # a damaged file is measured again
    for f in tmp_path.iterdir():
        f.write_bytes(b"not a pickle")
    cost.stored_profile(model, 32, key, folder=tmp_path)
    assert calls == [32, 48, 32]
