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
    assert plan.trainable == ["fc.weight", "fc.bias"]
    assert [(s.epoch, s.unfreeze, s.lr_scale) for s in plan.stages] == [(2, ["*"], 0.5)]
    assert plan.layer_decay == pytest.approx(0.01 ** (1 / 3))
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--stage", "2:nothing", "-o", str(tmp_path / "x.json")]) == 1
    assert "matches no parameter" in capsys.readouterr().err


def test_recipe_on_a_model_with_a_new_head():
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = fine_tune_recipe(FreezePlan.from_model(model), model)
    m = param_multipliers(plan, model)
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
