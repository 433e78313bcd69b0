"""LoRA, bias-only and norm-only: the plan format, exactness at init, after training, on resume
and after merging, the frozen prefix, the BatchNorm policy and PEFT's file layout."""

import copy
import json

import pytest
import torch
from torch import nn

from conftest import torchvision_models
from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.adapters import AdapterRule, adapter_tensors, merged_state_dict, parse_lora
from freezetui.core.data import load_data
from freezetui.core.errors import PlanError
from freezetui.core.train import Callback


def tiny_vit(num_classes=3):
    from torchvision.models import VisionTransformer

    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                          num_classes=num_classes)
    nn.init.normal_(m.heads.head.weight, std=0.1)  # torchvision starts it at zero: every output would be 0
    return m


def _vit_plan(model, *rules):
    plan = FreezePlan.from_model(model)
    plan.freeze("*")
    plan.unfreeze("heads")
    for r in rules:
        plan.add_lora(model, r)
    return plan


@pytest.fixture(scope="module")
def shapes():
    return load_data("shapes", shapes_train=128, shapes_val=64, size=32)


def _randomise_b(model):
    """Nonzero B (a trained adapter) so that the adapter's path is exercised."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, t in adapter_tensors(model):
            if n.endswith("lora_B"):
                t.normal_(0, 0.1)


def test_plan_round_trips_and_old_plans_load_unchanged():
    torch.manual_seed(0)
    m = tiny_vit()
    old = FreezePlan.from_model(m).to_dict()
    assert "adapters" not in old and FreezePlan.from_dict(old).to_dict() == old
    plan = _vit_plan(m, AdapterRule("encoder.layers.*.mlp", 4, 8.0), AdapterRule("encoder.layers.encoder_layer_1", 2, 2.0))
    assert set(plan.adapted) == {"encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_0.mlp.3",
                                 "encoder.layers.encoder_layer_1.self_attention",
                                 "encoder.layers.encoder_layer_1.mlp.0", "encoder.layers.encoder_layer_1.mlp.3"}
    d = plan.to_dict()
    assert d["adapters"][1] == {"modules": "encoder.layers.encoder_layer_1", "type": "lora", "r": 2, "alpha": 2.0,
                                "dropout": 0.0}
    # the lists stay the base model's names; adapters are counted apart
    assert set(d["frozen"]) | set(d["trainable"]) == {n for n, _ in m.named_parameters()}
    assert d["counts"]["adapters"] == 4 * (16 + 32) + 4 * (32 + 16) + 2 * (16 + 48) + 2 * (16 + 16) \
        + 2 * (16 + 32) + 2 * (32 + 16)
    back = FreezePlan.from_dict(json.loads(json.dumps(d)))
    back.check_fits(m)
    assert back.to_dict() == d


def test_rules_are_checked():
    m = tiny_vit()
    plan = _vit_plan(m)
    with pytest.raises(PlanError, match="matches no module LoRA supports"):
        plan.add_lora(m, AdapterRule("encoder.ln"))
    with pytest.raises(PlanError, match="rank"):
        parse_lora("heads=0")
    assert parse_lora("mlp=4") == AdapterRule("mlp", 4, 8.0)
    assert parse_lora("mlp=4:1") == AdapterRule("mlp", 4, 1.0)
    d = _vit_plan(m, AdapterRule("heads")).to_dict()
    d["trainable"].append("heads.head.weight")
    d["frozen"].remove("heads.head.weight")
    with pytest.raises(PlanError, match="carries a LoRA adapter and must be frozen"):
        FreezePlan.from_dict(d).check_fits(m)
    with pytest.raises(PlanError, match="adapter type"):
        FreezePlan.from_dict({**d, "adapters": [{"modules": "heads", "type": "ia3"}]})


def test_init_is_bit_exact_and_merge_within_rounding():
    torch.manual_seed(0)
    m = tiny_vit().eval()
    x = torch.randn(4, 3, 32, 32)
    base = m(x)
    plan = _vit_plan(m, AdapterRule("encoder", 4, 8.0), AdapterRule("conv_proj", 2, 4.0))
    plan.apply(m)
    assert len(adapter_tensors(m)) == 2 + 2 * (4 + 4)  # conv; per layer: attention in and out, two MLP linears
    assert torch.equal(m(x), base)  # B = 0: bit for bit
    _randomise_b(m)
    adapted = m(x)
    assert not torch.equal(adapted, base)
    plain = tiny_vit().eval()
    plain.load_state_dict(merged_state_dict(m), strict=True)  # the original architecture, strict
    # per layer: merged and unmerged outputs on the same input differ by no more than one fp32
    # rounding of each product term and of the result in each of the two computations,
    # 2 · eps · (|W + ΔW| · |x| + |b| + |y|) (measured: up to 1.4 · eps · (…))
    inputs = {}
    def keep(mod, args, out, name):
        inputs.setdefault(name, (args[0], out))

    hooks = [mod.register_forward_hook(lambda mod, a, o, n=n: keep(mod, a, o, n))
             for n, mod in m.named_modules() if isinstance(mod, nn.Linear) and "mlp" in n]
    m(x)
    for h in hooks:
        h.remove()
    eps = torch.finfo(torch.float32).eps
    for n, (inp, out) in inputs.items():
        w = plain.get_submodule(n).weight
        merged_out = nn.functional.linear(inp, w, plain.get_submodule(n).bias)
        bound = 2 * eps * (nn.functional.linear(inp.abs(), w.abs()) + plain.get_submodule(n).bias.abs() + out.abs())
        assert ((merged_out - out).abs() <= bound).all(), (n, ((merged_out - out).abs() / bound).max())
    # end to end (two blocks, layer norms between): within 32 fp32 ulps of the largest output
    merged = plain(x)
    assert (merged - adapted).abs().max() <= 32 * eps * adapted.abs().max()


class Keep(Callback):
    def __init__(self):
        self.states = []

    def on_checkpoint(self, state):
        self.states.append(copy.deepcopy(state))  # on the CPU its tensors are the live ones


def test_training_moves_only_adapters_and_head_and_resumes_bit_for_bit(shapes):
    torch.manual_seed(0)
    m = tiny_vit(shapes.num_classes)
    plan = _vit_plan(m, AdapterRule("encoder", 2, 4.0))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    keep = Keep()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu", augment=False)
    result = train(m, plan, shapes, cfg, callbacks=[keep])
    assert result.frozen_unchanged
    after = dict(m.named_parameters())
    for n in plan.frozen:
        assert torch.equal(after[n], before[n]), n
    assert all(t.abs().sum() > 0 for n, t in adapter_tensors(m) if n.endswith("lora_B"))
    assert keep.states[0]["adapters"].keys() == dict(adapter_tensors(m)).keys()
    assert result.history[0].trainable == shapes.num_classes * 17 + sum(t.numel() for _, t in adapter_tensors(m))
    whole = {**m.state_dict(), **{n: t.detach().clone() for n, t in adapter_tensors(m)}}

    torch.manual_seed(0)
    m2 = tiny_vit(shapes.num_classes)
    plan2 = FreezePlan.from_dict(plan.to_dict())
    train(m2, plan2, shapes, cfg, resume=keep.states[0])
    again = {**m2.state_dict(), **{n: t.detach().clone() for n, t in adapter_tensors(m2)}}
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)


def test_frozen_prefix_ends_at_the_first_adapted_module(shapes):
    from freezetui.core.split import frozen_prefix, trace

    torch.manual_seed(0)
    m = build_model("tiny:tiny_cnn", weights="none", num_classes=shapes.num_classes)
    plan = FreezePlan.from_model(m)
    plan.freeze("*")
    plan.unfreeze("fc")
    names = [n for n, _ in m.named_parameters()]
    traced = trace(m)
    assert frozen_prefix(traced, plan.prefix_frozen(), names) is not None
    plan.add_lora(m, AdapterRule("block1.0", 2, 2.0))
    prefix = frozen_prefix(traced, plan.prefix_frozen(), names)
    assert prefix is not None and prefix.module in ("stem", "stem.2", "stem.1", "stem.0")
    result = train(m, plan, shapes, TrainConfig(epochs=1, batch_size=32, device="cpu", augment=False))
    assert result.frozen_unchanged and result.feature_cache


def test_bias_only_and_norm_only_presets_and_the_batchnorm_policy(shapes):
    from freezetui.core.adapters import bias_only, module_mode, norm_only

    torch.manual_seed(0)
    m = build_model("tiny:tiny_cnn", weights="none", num_classes=shapes.num_classes)
    plan = FreezePlan.from_model(m)
    bias_only(plan, "stem")
    norm_only(plan, "block1")
    assert plan.trainable[:2] == ["stem.0.bias", "stem.1.bias"]
    assert module_mode(plan, ["stem.0.weight", "stem.0.bias"], False) == "bias-only"
    assert module_mode(plan, ["block1.0.weight", "block1.0.bias", "block1.1.weight", "block1.1.bias"], False) \
        == "norm-only"
    # a partly trainable BatchNorm (its bias only) keeps its statistics under batchnorm "freeze"
    stats = m.stem[1].running_mean.clone()
    moving = m.block1[1].running_mean.clone()
    result = train(m, plan, shapes, TrainConfig(epochs=1, batch_size=32, device="cpu"))
    assert result.frozen_unchanged
    assert torch.equal(m.stem[1].running_mean, stats)
    assert not torch.equal(m.block1[1].running_mean, moving)  # wholly trainable: in train mode


def test_peft_layout_without_peft(tmp_path):
    from safetensors.torch import load_file

    from freezetui.core.peft_export import save_peft_adapter

    torch.manual_seed(0)
    m = tiny_vit()
    plan = _vit_plan(m, AdapterRule("encoder.layers.encoder_layer_0", 2, 4.0), AdapterRule("conv_proj", 3, 4.0))
    plan.apply(m)
    assert save_peft_adapter(m, plan, tmp_path) == []
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["lora_alpha"] == 4.0
    assert cfg["rank_pattern"] == {"^conv_proj$": 3} and cfg["modules_to_save"] == ["heads.head"]
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    p = "base_model.model."
    assert {k: tuple(v.shape) for k, v in keys.items()} == {
        p + "conv_proj.lora_A.weight": (3, 3, 8, 8), p + "conv_proj.lora_B.weight": (16, 3, 1, 1),
        p + "encoder.layers.encoder_layer_0.self_attention.lora_A.weight": (2, 16),
        p + "encoder.layers.encoder_layer_0.self_attention.lora_B.weight": (48, 2),
        p + "encoder.layers.encoder_layer_0.self_attention.base_layer.out_proj.lora_A.weight": (2, 16),
        p + "encoder.layers.encoder_layer_0.self_attention.base_layer.out_proj.lora_B.weight": (16, 2),
        p + "encoder.layers.encoder_layer_0.mlp.0.lora_A.weight": (2, 16),
        p + "encoder.layers.encoder_layer_0.mlp.0.lora_B.weight": (32, 2),
        p + "encoder.layers.encoder_layer_0.mlp.3.lora_A.weight": (2, 32),
        p + "encoder.layers.encoder_layer_0.mlp.3.lora_B.weight": (16, 2),
        p + "heads.head.weight": (3, 16), p + "heads.head.bias": (3,)}


def test_peft_loads_the_adapter_onto_the_same_base_model(tmp_path):
    peft = pytest.importorskip("peft")
    from freezetui.core.peft_export import save_peft_adapter

    torch.manual_seed(0)
    m = tiny_vit().eval()
    base_state = {k: v.clone() for k, v in m.state_dict().items()}
    plan = _vit_plan(m, AdapterRule("encoder", 2, 4.0), AdapterRule("conv_proj", 3, 6.0))
    plan.apply(m)
    _randomise_b(m)
    with torch.no_grad():
        m.heads.head.weight.add_(1.0)  # the trained head travels as modules_to_save
    x = torch.randn(2, 3, 32, 32)
    ours = m(x)
    save_peft_adapter(m, plan, tmp_path)
    fresh = tiny_vit()
    fresh.load_state_dict(base_state)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    theirs = loaded(x)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=1e-5), (theirs - ours).abs().max()


FAMILIES = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3", "maxvit_t",
            "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "resnet18", "shufflenet_v2_x0_5",
            "squeezenet1_1", "swin_t", "vgg11", "vit_b_16"]


@pytest.mark.parametrize("name", torchvision_models(FAMILIES))
def test_every_classifier_accepts_lora_on_its_linear_layers(name):
    """Every nn.Linear of the model (an attention's out_proj: with its attention) gets an adapter,
    the plan fits, and the adapted forward runs where the base one runs on the meta device."""
    try:
        with torch.device("meta"):
            m = build_model(name, weights="none", num_classes=5)
    except NotImplementedError:  # sizes computed from tensors (regnet): a real build
        m = build_model(name, weights="none", num_classes=5)
    m.eval()
    from freezetui.core.models import find_heads

    # SqueezeNet has no Linear: its classifier is a 1×1 convolution
    linear = [n for n, x in m.named_modules() if isinstance(x, nn.Linear)] or find_heads(m)
    plan = FreezePlan.from_model(m)
    for n in linear:
        owner = n.rsplit(".", 1)[0] if "." in n else ""
        if owner and isinstance(m.get_submodule(owner), nn.MultiheadAttention):
            n = owner
        plan.add_lora(m, AdapterRule(n.replace("[", "[[]"), 4, 8.0))
    assert all(plan.is_frozen(w) for ws in plan.adapted.values() for w in ws)
    plan.apply(m)
    assert plan.counts["adapters"] == sum(t.numel() for _, t in adapter_tensors(m)) > 0
    from freezetui.core.models import model_info

    side = model_info(m).input_size or (299 if name == "inception_v3" else 224)
    x = torch.empty(1, 3, side, side, device=next(m.parameters()).device)
    with torch.no_grad():
        m(x)


def test_cli_plan_make_show_and_train_with_modes(tmp_path, capsys, cli_env):
    import subprocess
    import sys

    from conftest import make_image_folder
    from freezetui.cli import main

    plan = tmp_path / "plan.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--num-classes", "3", "--freeze", "*", "--unfreeze", "fc",
                 "--bias-only", "stem", "--norm-only", "block1", "--lora", "block2.0=4", "-o", str(plan)]) == 0
    d = json.loads(plan.read_text())
    assert d["adapters"] == [{"modules": "block2.0", "type": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0}]
    assert "block2.0.weight" in d["frozen"] and "stem.0.bias" in d["trainable"] and "stem.0.weight" in d["frozen"]
    assert d["counts"]["adapters"] == 4 * 32 * 9 + 64 * 4
    capsys.readouterr()
    assert main(["plan", "show", str(plan), "--model", "tiny:tiny_cnn", "--image-size", "16", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "mode" in out and "bias-only" in out and "norm-only" in out and "LoRA adapters: 1,408 parameters" in out

    data = make_image_folder(tmp_path / "imgs", per_class=8, size=16)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "freezetui", "train", "--model", "tiny:tiny_cnn", "--weights", "none",
                           "--data", str(data), "--device", "cpu", "--epochs", "1", "--freeze", "*", "--unfreeze", "fc",
                           "--lora", "block2.0=2:4", "--out", str(run)], env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    from tiny import tiny_cnn

    plain = tiny_cnn(3)
    plain.load_state_dict(torch.load(run / "model.pt", weights_only=True), strict=True)  # merged: the original layout
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["block2.0"] and config["r"] == 2 and config["modules_to_save"] == ["fc"]
    assert json.loads((run / "summary.json").read_text())["frozen_unchanged"] is True


@pytest.mark.parametrize("name,rules", [
    ("vit", [("freeze", "*"), ("unfreeze", "heads"), ("lora", "encoder=4")]),
    ("vit", [("freeze", "*"), ("unfreeze", "heads"), ("lora", "encoder.layers.*.mlp=8")]),
    ("cnn", [("freeze", "*"), ("unfreeze", "fc"), ("lora", "block1.0=2"), ("lora", "block2.0=4")]),
    ("vit", [("bias-only", "*"), ("unfreeze", "heads")]),
    ("cnn", [("bias-only", "*"), ("unfreeze", "fc")]),
    ("vit", [("norm-only", "*"), ("unfreeze", "heads")]),
    ("cnn", [("norm-only", "*"), ("unfreeze", "fc")]),
])
def test_cost_prices_modes_within_5_percent_of_autograd(name, rules):
    from freezetui.core.cost import estimate, measure_saved_bytes, profile_model
    from freezetui.core.runner import plan_from_rules
    from freezetui.core.split import frozen_prefix, trace

    torch.manual_seed(0)
    model = tiny_vit(5) if name == "vit" else build_model("tiny:tiny_cnn", weights="none", num_classes=5)
    profile = profile_model(model, 32)
    traced = trace(model)
    plan = plan_from_rules(model, rules)
    prefix = frozen_prefix(traced, plan.prefix_frozen(), [n for n, _ in model.named_parameters()])
    est = estimate(profile, plan, batch_size=4, prefix=prefix)
    saved = measure_saved_bytes(model, plan, torch.randn(4, 3, 32, 32), traced)
    assert abs(est["activation_bytes"] - saved) <= 0.05 * saved, (est["activation_bytes"], saved)
    n = sum(t.numel() for _, t in adapter_tensors(model))
    assert est["adapter_params"] == n and est["trainable_params"] == n + sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    assert est["optimizer_bytes"] == 2 * est["grad_bytes"]


def test_adapters_alone_train(shapes):
    """Everything frozen and LoRA on one layer: the adapters are what trains."""
    torch.manual_seed(0)
    m = tiny_vit(shapes.num_classes)
    plan = FreezePlan.from_model(m)
    plan.freeze("*")
    plan.add_lora(m, AdapterRule("heads", 2, 4.0))
    from freezetui.core.lints import nothing_trainable

    assert plan.trainable == [] and nothing_trainable(plan) == []
    result = train(m, plan, shapes, TrainConfig(epochs=1, batch_size=32, lr=1e-2, device="cpu", augment=False))
    assert result.frozen_unchanged and result.history[0].trainable == 2 * 16 + shapes.num_classes * 2
    assert adapter_tensors(m)[1][1].abs().sum() > 0


def test_an_adapter_trains_at_the_rate_of_the_module_it_wraps():
    from freezetui.core.adapters import attach
    from freezetui.core.train import optimizer_groups

    torch.manual_seed(0)
    m = tiny_vit()
    plan = _vit_plan(m, AdapterRule("encoder.layers.encoder_layer_0", 2, 4.0), AdapterRule("conv_proj", 2, 4.0))
    plan.set_lr_mult("encoder", 0.1)
    attach(m, plan.adapters)
    cfg = TrainConfig(lr=1.0, weight_decay=0.5)
    groups = optimizer_groups(m, plan, cfg)
    ids = {id(t): n for n, t in adapter_tensors(m)}
    rate = {ids[id(p)]: g["lr_mult"] for g in groups for p in g["params"] if id(p) in ids}
    assert set(rate) == set(ids.values())
    assert {n: r for n, r in rate.items() if n.startswith("encoder")} == {n: 0.1 for n in rate if n.startswith("encoder")}
    assert rate["conv_proj.lora_A"] == rate["conv_proj.lora_B"] == 1.0
    adapter_groups = [g for g in groups if any(id(p) in ids for p in g["params"])]
    assert all(g["first_epoch"] == 1 and g["weight_decay"] == 0.5 for g in adapter_groups)
