"""Schedules: plan stages and rate rules, the LR over time, and staged runs that keep frozen
parameters bit-identical until their stage and resume bit-identically mid-schedule."""

import copy
import math

import pytest
import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.cli import main
from freezetui.core.data import load_data
from freezetui.core.errors import PlanError, TrainingError
from freezetui.core.schedule import (
    decay_ranks, fine_tune_recipe, param_groups, param_multipliers, schedule_factor, unfreeze_warmup,
)
from freezetui.core.train import Callback


@pytest.fixture(scope="module")
def tiny_data():
    return load_data("shapes", shapes_train=128, shapes_val=32)


def _tiny():
    torch.manual_seed(0)
    return build_model("tiny:tiny_cnn", weights="none")


def _staged(model, batchnorm="freeze"):
    plan = FreezePlan.from_model(model, batchnorm=batchnorm)
    for g in ("stem", "block1", "block2"):
        plan.freeze(g)
    plan.add_stage(2, unfreeze=["block2"], batchnorm="train")
    plan.add_stage(3, unfreeze=["block1"])
    return plan


# ----------------------------------------------------------------------------- the plan format


def test_schedule_keys_round_trip_and_old_plans_stay_unchanged():
    model = _tiny()
    static = FreezePlan.from_model(model)
    assert not {"lr_mult", "layer_decay", "stages"} & set(static.to_dict())
    plan = _staged(model)
    plan.set_lr_mult("block*", 0.1)
    plan.set_lr_mult("block2", 0.3)
    d = plan.to_dict()
    assert d["stages"] == [{"epoch": 2, "unfreeze": ["block2"], "batchnorm": "train"},
                           {"epoch": 3, "unfreeze": ["block1"]}]
    assert d["lr_mult"] == [["block*", 0.1], ["block2", 0.3]]
    again = FreezePlan.from_dict(d)
    assert again.to_dict() == d and "stages" not in again.extra
    assert [again.stage_of(n) for n in ("stem.0.weight", "block1.0.weight", "block2.0.weight", "fc.bias")] == \
        [None, 3, 2, 1]
    assert again.at_epoch(2).batchnorm == "train" and again.at_epoch(1).batchnorm == "freeze"
    assert [again.stage_index(e) for e in (1, 2, 3, 9)] == [1, 2, 3, 3]


@pytest.mark.parametrize("change, message", [
    ({"stages": [{"epoch": 2, "unfreeze": ["nothing_here"]}]}, "matches no parameter"),
    ({"stages": [{"epoch": 3, "unfreeze": ["block2"]}, {"epoch": 2, "unfreeze": ["block1"]}]},
     "increasing epoch order"),
    ({"stages": [{"epoch": 1, "unfreeze": ["block2"]}]}, "from 2 on"),
    ({"stages": [{"epoch": 2, "unfreze": ["block2"]}]}, "unknown key"),
    ({"stages": [{"epoch": 2, "freeze": ["fc", "stem"]}]}, "leaves every parameter frozen"),
    ({"stages": [{"epoch": 2, "unfreeze": ["block2"], "batchnorm": "on"}]}, "batchnorm"),
    ({"lr_mult": [["block1", 0.1]], "layer_decay": 0.7}, "not both"),
    ({"lr_mult": [["nope", 0.1]]}, "matches no parameter"),
    ({"lr_mult": [["block1", -1]]}, "positive"),
    ({"layer_decay": 1.5}, r"\(0, 1\]"),
])
def test_bad_schedules_are_one_sentence_at_load(change, message):
    model = _tiny()
    plan = FreezePlan.from_model(model)
    plan.freeze("block*")
    with pytest.raises(PlanError, match=message):
        FreezePlan.from_dict({**plan.to_dict(), **change})


# ----------------------------------------------------------------------------- rates


def test_multipliers_last_rule_wins_and_layer_decay_spaces_blocks():
    model = _tiny()
    plan = FreezePlan.from_model(model)
    plan.set_lr_mult("*", 0.5)
    plan.set_lr_mult("block1", 0.01)
    m = param_multipliers(plan, model)
    assert m["block1.0.weight"] == 0.01 and m["stem.0.weight"] == 0.5 and m["fc.weight"] == 0.5
    with pytest.raises(PlanError, match="not both"):
        plan.set_layer_decay(0.5)

    decayed = FreezePlan.from_model(model)
    decayed.set_layer_decay(0.5)
    assert decay_ranks(model) == {"stem": 3, "block1": 2, "block2": 1, "fc": 0}
    m = param_multipliers(decayed, model)
    assert (m["fc.bias"], m["block2.1.weight"], m["block1.0.weight"], m["stem.0.bias"]) == (1.0, 0.5, 0.25, 0.125)


def test_groups_hold_every_parameter_and_skip_decay_on_norms_and_biases():
    model = _tiny()
    plan = _staged(model)
    groups = param_groups(plan, model)
    names = [n for g in groups for n in g.names]
    assert sorted(names) == sorted(plan.params)  # frozen ones included
    by_name = {n: g for g in groups for n in g.names}
    assert by_name["block2.0.weight"].first_epoch == 2 and by_name["fc.weight"].first_epoch == 1
    assert by_name["fc.weight"].decay and not by_name["fc.bias"].decay and not by_name["block1.1.weight"].decay
    assert all(g.decay for g in param_groups(plan, model, decay_all=True))


def test_schedule_values():
    assert [schedule_factor("constant", t, 10, warmup=4) for t in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    cos = [schedule_factor("cosine", t, 12, warmup=2) for t in range(12)]
    assert cos[:3] == [0.5, 1.0, 1.0] and cos[7] == pytest.approx(0.5) and 0 < cos[-1] < 0.03
    assert all(a >= b for a, b in zip(cos[1:], cos[2:]))
    one = [schedule_factor("onecycle", t, 100) for t in range(100)]
    assert one[0] == pytest.approx(1 / 25) and one[30] == pytest.approx(1.0) and one[-1] == pytest.approx(1 / 25e4)
    assert max(one) == one[30]
    # a group unfrozen at epoch 3 of 4-step epochs: zero before, rising over its first epoch
    assert [unfreeze_warmup(t, 4, 3) for t in (7, 8, 9, 11, 12)] == [0.0, 0.25, 0.5, 1.0, 1.0]


# ----------------------------------------------------------------------------- staged runs


class Record(Callback):
    def __init__(self):
        self.states, self.checkpoints, self.epochs = [], {}, []

    def on_epoch(self, ev):
        self.epochs.append(ev)

    def on_checkpoint(self, state):
        self.checkpoints[state["epoch"]] = copy.deepcopy(state)  # on the CPU the tensors are the model's own


def test_staged_run_unfreezes_on_time_and_switches_batchnorm(tiny_data):
    model = _tiny()
    start = copy.deepcopy(model.state_dict())
    rec = Record()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.01, augment=False)
    result = train(model, _staged(model), tiny_data, cfg, callbacks=[rec])
    after = {e: s["model"] for e, s in rec.checkpoints.items()}
    same = lambda k, e: torch.equal(after[e][k], start[k])  # noqa: E731
    assert same("block2.0.weight", 1) and not same("block2.0.weight", 2)
    assert same("block1.0.weight", 2) and not same("block1.0.weight", 3)
    assert same("stem.0.weight", 3)
    # BatchNorm statistics of the frozen stem: kept in epoch 1, moving once the stage says "train"
    assert same("stem.1.running_mean", 1) and not same("stem.1.running_mean", 2)
    assert [e.stage for e in rec.epochs] == [1, 2, 3]
    counts = [e.trainable for e in rec.epochs]
    assert counts[0] == 64 * 10 + 10 and counts[0] < counts[1] < counts[2]
    assert all(e.lr > 0 for e in rec.epochs) and rec.epochs[-1].lr < rec.epochs[0].lr  # cosine falls
    assert result.frozen_unchanged and [s["stage"] for s in rec.checkpoints.values()] == [1, 2, 3]


def test_a_stage_parameter_changed_before_its_stage_is_reported(tiny_data):
    model = _tiny()

    class Tamper(Callback):
        def on_epoch(self, ev):
            if ev.epoch == 1:
                with torch.no_grad():
                    model.block2[0].weight.add_(1.0)

    result = train(model, _staged(model), tiny_data, TrainConfig(epochs=2, batch_size=64, augment=False),
                   callbacks=[Tamper()])
    assert not result.frozen_unchanged and "block2.0.weight" in result.changed


def test_resumed_mid_schedule_ends_bit_identical(tiny_data):
    cfg = dict(epochs=3, batch_size=64, lr=0.01, augment=False, schedule="onecycle")
    whole, rec = _tiny(), Record()
    train(whole, _staged(whole), tiny_data, TrainConfig(**cfg), callbacks=[rec])

    resumed = _tiny()
    result = train(resumed, _staged(resumed), tiny_data, TrainConfig(**cfg), resume=rec.checkpoints[1])
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert result.frozen_unchanged and [e.stage for e in result.history] == [1, 2, 3]

    static = _tiny()  # a checkpoint from another schedule is refused, not silently misread
    with pytest.raises(TrainingError, match="stage|parameter groups"):
        train(static, FreezePlan.from_model(static), tiny_data, TrainConfig(**cfg), resume=rec.checkpoints[2])


# ----------------------------------------------------------------------------- CLI


def test_plan_make_and_show_with_stages_and_the_recipe(tmp_path, capsys):
    out = tmp_path / "staged.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--weights", "none", "--freeze", "*",
                 "--unfreeze", "fc", "--stage", "2:block2", "--stage", "4:block1,stem",
                 "--lr-mult", "block*=0.1", "--lr-mult", "block2=0.3", "-o", str(out)]) == 0
    plan = FreezePlan.load(out)
    assert [(s.epoch, s.unfreeze) for s in plan.stages] == [(2, ["block2"]), (4, ["block1", "stem"])]
    assert plan.lr_mult == [("block*", 0.1), ("block2", 0.3)]
    capsys.readouterr()
    assert main(["plan", "show", str(out), "--model", "tiny:tiny_cnn"]) == 0
    shown = capsys.readouterr().out
    assert "stage 3 from epoch 4: unfreeze block1, stem" in shown
    row = next(line for line in shown.splitlines() if line.strip().startswith("block2"))
    assert "0.3" in row and "epoch 2" in row

    recipe = tmp_path / "recipe.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--weights", "none", "--recipe", "fine-tune",
                 "-o", str(recipe)]) == 0
    plan = FreezePlan.load(recipe)
    assert plan.trainable == ["stem.1.weight", "stem.1.bias", "block1.1.weight", "block1.1.bias",
                              "block2.1.weight", "block2.1.bias", "fc.weight", "fc.bias"]  # train_bn
    assert plan.train_bn and plan.batchnorm == "train"
    assert [(s.epoch, s.unfreeze, s.lr_scale) for s in plan.stages] == [(2, ["*"], 0.5)]
    assert plan.stages[0].lr_mult == [("*", 0.01), ("fc", 1.0)] and plan.layer_decay is None
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--stage", "2:nothing", "-o", str(tmp_path / "x.json")]) == 1
    assert "matches no parameter" in capsys.readouterr().err


def test_recipe_on_a_model_with_a_new_head():
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = fine_tune_recipe(FreezePlan.from_model(model), model)
    m = param_multipliers(plan, model, epoch=2)
    assert m["fc.weight"] == 1.0 and math.isclose(m["stem.0.weight"], 0.01)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_the_tuis_rate_curve_is_what_training_sets(tiny_data, schedule):
    """The LR chart recomputes a run's rates from its settings and stages: at each epoch's last
    step they must equal the head's rate the run itself reported (the recipe's stage halves it)."""
    from freezetui.core.schedule import head_rates, sample_steps

    model = _tiny()
    plan = fine_tune_recipe(FreezePlan.from_model(model), model)
    rec = Record()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.01, augment=False, schedule=schedule, warmup_epochs=0.5)
    train(model, plan, tiny_data, cfg, callbacks=[rec])
    steps = len(tiny_data.train) // cfg.batch_size
    stages = [s.to_dict() for s in plan.stages]
    drawn = head_rates(stages, cfg.schedule, cfg.effective_lr, steps, cfg.epochs, cfg.warmup_epochs,
                       at=[e * steps for e in (1, 2, 3)])
    assert drawn == pytest.approx([e.lr for e in rec.epochs], rel=1e-6)
    assert drawn[1] < drawn[0] or schedule == "onecycle"
    assert head_rates(stages, cfg.schedule, cfg.effective_lr, steps, cfg.epochs, cfg.warmup_epochs) == \
        pytest.approx(head_rates(stages, cfg.schedule, cfg.effective_lr, steps, cfg.epochs, cfg.warmup_epochs,
                                 at=sample_steps(3 * steps, 10**6)))
    assert sample_steps(10**6, 50)[::49] == [1, 10**6] and len(sample_steps(10**6, 50)) == 50


# ----------------------------------------------------------------------------- layer decay as timm means it


def _timm_scales(model, decay):
    """Each parameter's ``lr_scale`` from timm's own ``param_groups_layer_decay``."""
    from timm.optim import param_groups_layer_decay

    by_id = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=decay) for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convnext_atto", "resnet18"])
def test_layer_decay_equals_timms_on_timm_models(name):
    """Published decays (0.65, 0.75) transfer: per tensor, the multiplier is timm's (before the
    group matcher was read: 4 of 152 tensors agreed on vit_tiny, 22 of 128 on convnext_atto)."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    plan = FreezePlan.from_model(model)
    plan.set_layer_decay(0.75)
    ours = param_multipliers(plan, model)
    assert ours == pytest.approx(_timm_scales(model, 0.75), rel=1e-12)


def test_layer_decay_without_a_group_matcher_counts_no_norm_or_embedding_as_a_level():
    """torchvision's resnet18 has timm's parameter names but no group matcher: conv1 and bn1 are
    one stem level, as timm groups them; a torchvision ViT's class token, position embedding
    and final norm add no level (stem 13, blocks 12…1, the final norm with the last block)."""
    timm = pytest.importorskip("timm")
    import torchvision

    from freezetui.core.schedule import param_depths

    with torch.device("meta"):
        tv, tm = torchvision.models.resnet18(), timm.create_model("resnet18", pretrained=False)
        vit = torchvision.models.vit_b_16()
    plan = FreezePlan.from_model(tv)
    plan.set_layer_decay(0.65)
    assert param_multipliers(plan, tv) == pytest.approx(_timm_scales(tm, 0.65), rel=1e-12)
    depths = param_depths(vit)
    assert [depths[n] for n in ("class_token", "conv_proj.weight", "encoder.pos_embedding",
                                "encoder.layers.encoder_layer_0.ln_1.weight", "encoder.layers.encoder_layer_11.mlp.0.weight",
                                "encoder.ln.weight", "heads.head.bias")] == [13, 13, 13, 12, 1, 1, 0]


def test_weight_decay_honours_the_models_no_weight_decay():
    """timm's ViT names pos_embed and cls_token in no_weight_decay(): no decay there, even with
    decay_all (which adds biases and norms only); its 2-d weights keep their decay."""
    timm = pytest.importorskip("timm")
    from freezetui.core.train import optimizer_groups

    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    plan = FreezePlan.from_model(model)
    for decay_all in (False, True):
        cfg = TrainConfig(weight_decay=0.05, decay_all=decay_all)
        by_id = {id(p): g["weight_decay"] for g in optimizer_groups(model, plan, cfg) for p in g["params"]}
        wd = {n: by_id[id(p)] for n, p in model.named_parameters()}
        assert wd["pos_embed"] == 0.0 and wd["cls_token"] == 0.0
        assert wd["blocks.0.attn.qkv.weight"] == 0.05 and wd["patch_embed.proj.weight"] == 0.05
        assert wd["blocks.0.norm1.weight"] == (0.05 if decay_all else 0.0)


# ----------------------------------------------------------------------------- stages with their own rates


def _backbone_finetuning(model):
    """Lightning's ``BackboneFinetuning`` defaults (src/lightning/pytorch/callbacks/finetuning.py):
    the backbone joins at ``backbone_initial_ratio_lr`` = 0.1 of the head's rate, ×2 per epoch
    (``multiplicative`` returns 2.0), aligned with the head once it would pass it (should_align)."""
    plan = FreezePlan.from_model(model)
    backbone = ["stem", "block1", "block2"]
    for g in backbone:
        plan.freeze(g)
    for epoch, mult in zip(range(2, 7), (0.1, 0.2, 0.4, 0.8, 1.0)):
        plan.add_stage(epoch, unfreeze=backbone if epoch == 2 else (), lr_mult=[(g, mult) for g in backbone])
    return plan


def test_stage_rates_round_trip_and_set_the_backbones_rate_each_epoch(tiny_data):
    model = _tiny()
    plan = _backbone_finetuning(model)
    again = FreezePlan.from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict() and again.stages[1].lr_mult == [("stem", 0.2), ("block1", 0.2),
                                                                              ("block2", 0.2)]
    assert [param_multipliers(again, model, epoch=e)["block1.0.weight"] for e in range(1, 8)] == \
        [1.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert param_multipliers(again, model, epoch=3)["fc.weight"] == 1.0
    with pytest.raises(PlanError, match="epoch 3.*positive number"):
        FreezePlan.from_dict({**plan.to_dict(), "stages": [{"epoch": 3, "lr_mult": [["fc", -1]]}]})
    with pytest.raises(PlanError, match="matches no parameter"):
        FreezePlan.from_dict({**plan.to_dict(), "stages": [{"epoch": 3, "lr_mult": [["nothing", 2]]}]})

    rec = Record()
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.01, augment=False, schedule="constant", warmup_epochs=0,
                      momentum=0.0, weight_decay=0.0, optimizer="sgd")
    train(model, plan, tiny_data, cfg, callbacks=[rec])
    names = [n for n, _ in model.named_parameters()]
    for epoch, want in zip(range(1, 5), (0.0, 0.1, 0.2, 0.4)):  # frozen in epoch 1: rate 0
        groups = rec.checkpoints[epoch]["optimizer"]["param_groups"]
        rate = {names[i]: g["lr"] for g in groups for i in g["params"]}
        assert rate["fc.weight"] == pytest.approx(cfg.effective_lr)
        assert rate["block1.0.weight"] == pytest.approx(cfg.effective_lr * want)  # the epoch's last step


# ----------------------------------------------------------------------------- the recipe next to fastai's


def test_recipe_rates_per_group_are_fastais_fine_tune_on_resnet18():
    """fastai's numbers for ``vision_learner(dls, resnet18).fine_tune(epochs)`` at the defaults
    (fastai/callback/schedule.py ``fine_tune(epochs, base_lr=2e-3, freeze_epochs=1, lr_mult=100)``;
    fastai/optimizer.py ``set_hyper``: ``slice(lr)`` gives lr/10 to every group but the last,
    ``slice(a, b)`` is ``even_mults(a, b, n)``; fastai/vision/learner.py ``_resnet_split``:
    ``body[:6]`` (conv1…layer2) | ``body[6:]`` (layer3, layer4) | head; ``train_bn=True`` keeps
    norm layers training while frozen). The peak rates of each phase's one-cycle:
    frozen epoch  [2e-4, 2e-4, 2e-3] (body groups train only their norm layers),
    after         [1e-5, 1e-4, 1e-3] (slice(1e-3/100, 1e-3))."""
    import torchvision

    from freezetui.core.schedule import multiplier_at
    from freezetui.core.train import optimizer_groups

    with torch.device("meta"):
        model = torchvision.models.resnet18()
    plan = fine_tune_recipe(FreezePlan.from_model(model), model)
    cfg = TrainConfig(lr=2e-3, batch_size=128)
    assert cfg.effective_lr == 2e-3
    by_id = {id(p): g for g in optimizer_groups(model, plan, cfg) for p in g["params"]}
    group = {n: by_id[id(p)] for n, p in model.named_parameters()}

    def peak(name, epoch):
        g = group[name]
        trains = plan.at_epoch(epoch).params[name] is False
        return cfg.effective_lr * plan.lr_scale_at(epoch) * multiplier_at(g["lr_mults"], epoch) if trains else 0.0

    fastai = {1: {"conv1.weight": 0.0, "bn1.weight": 2e-4, "layer2.1.conv2.weight": 0.0, "layer3.0.bn1.bias": 2e-4,
                  "layer4.1.conv2.weight": 0.0, "fc.weight": 2e-3},
              2: {"conv1.weight": 1e-5, "bn1.weight": 1e-5, "layer2.1.conv2.weight": 1e-5, "layer3.0.bn1.bias": 1e-4,
                  "layer4.1.conv2.weight": 1e-4, "fc.weight": 1e-3}}
    for epoch, rates in fastai.items():
        for name, rate in rates.items():
            assert peak(name, epoch) == pytest.approx(rate, rel=1e-12), (epoch, name)
    assert plan.at_epoch(1).batchnorm == "train" and plan.at_epoch(2).batchnorm == "train"


def test_train_bn_keeps_norm_layers_training_and_round_trips(tiny_data):
    model = _tiny()
    plan = FreezePlan.from_model(model)
    plan.freeze("*")
    plan.unfreeze("fc")
    plan.set_train_bn(True)
    again = FreezePlan.from_dict(plan.to_dict())
    assert again.train_bn and again.to_dict()["train_bn"] is True
    with pytest.raises(PlanError, match="train_bn"):
        FreezePlan.from_dict({**plan.to_dict(), "train_bn": "yes"})
    # a file that says train_bn with its norms listed frozen: they train once it meets the model
    raw = {**plan.to_dict(), "frozen": [n for n in plan.params if not n.startswith("fc")],
           "trainable": ["fc.weight", "fc.bias"]}
    loaded = FreezePlan.from_dict(raw)
    loaded.check_fits(model)
    assert loaded.at_epoch(1).trainable == plan.trainable and loaded.stage_of("block1.1.weight") == 1
    before = copy.deepcopy(model.state_dict())
    train(model, loaded, tiny_data, TrainConfig(epochs=1, batch_size=64, lr=0.01, augment=False))
    after = model.state_dict()
    assert torch.equal(before["stem.0.weight"], after["stem.0.weight"])  # frozen conv
    assert not torch.equal(before["stem.1.weight"], after["stem.1.weight"])  # its norm trained
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])  # in train mode


def test_a_restart_runs_the_schedule_afresh_from_its_epoch():
    """fastai's fine_tune runs one fit_one_cycle per phase: a stage with restart does the same
    to --schedule (4 steps an epoch, 3 epochs, a restart at epoch 2: phases of 4 and 8 steps)."""
    from freezetui.core.schedule import phased_factor

    whole = [phased_factor("onecycle", t, 4, 3, 0.0) for t in range(12)]
    assert whole == [schedule_factor("onecycle", t, 12) for t in range(12)]
    phased = [phased_factor("onecycle", t, 4, 3, 0.0, [2]) for t in range(12)]
    assert phased[:4] == [schedule_factor("onecycle", t, 4) for t in range(4)]
    assert phased[4:] == [schedule_factor("onecycle", t, 8) for t in range(8)]
    assert phased[4] == pytest.approx(1 / 25)  # the cycle starts again from lr/25
    cosine = [phased_factor("cosine", t, 4, 3, 0.5, [2]) for t in range(12)]
    assert cosine[4:6] == [0.5, 1.0]  # warmup again, half an epoch
    model = _tiny()
    plan = fine_tune_recipe(FreezePlan.from_model(model), model)
    assert plan.restarts() == [2] and FreezePlan.from_dict(plan.to_dict()).restarts() == [2]
    with pytest.raises(PlanError, match="restart"):
        FreezePlan.from_dict({**plan.to_dict(), "stages": [{"epoch": 2, "unfreeze": ["*"], "restart": "yes"}]})


def test_an_unfreeze_at_that_changes_nothing_keeps_the_plan_and_its_name():
    from freezetui.core.schedule import short_name
    from freezetui.core.workspace import Workspace

    ws = Workspace(build_model("tiny:tiny_cnn", weights="none", num_classes=10), device="cpu")
    ws.apply_recipe()
    version = ws.version
    assert short_name(ws.plan) == "fine-tune recipe"
    ws.unfreeze_at("block1", 2)  # the recipe already unfreezes everything at epoch 2
    assert short_name(ws.plan) == "fine-tune recipe" and ws.version == version
    ws.unfreeze_at("block1", 1)  # a real change (block1 trains from the start) renames it
    assert short_name(ws.plan) != "fine-tune recipe"
