import json

import pytest
import torch
from torch import nn

from freezetui import FreezePlan, PlanError, build_model
from freezetui.core.plan import glob_matches


def test_round_trip_keeps_everything(tmp_path, tiny):
    model = tiny()
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.extra["rules"] = [{"action": "freeze", "glob": "stem"}]
    plan.extra["hyper"] = {"lr": 0.01}
    path = plan.save(tmp_path / "p.json")
    loaded = FreezePlan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    assert json.loads(path.read_text())["hyper"] == {"lr": 0.01}
    # frozen and trainable name every parameter exactly once
    names = [n for n, _ in model.named_parameters()]
    d = loaded.to_dict()
    assert sorted(d["frozen"] + d["trainable"]) == sorted(names)
    assert d["counts"]["frozen"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("stem."))
    assert d["counts"]["total"] == d["counts"]["frozen"] + d["counts"]["trainable"]


def test_apply_sets_requires_grad_both_ways(tiny):
    model = tiny()
    for p in model.stem.parameters():
        p.requires_grad_(False)
    plan = FreezePlan.from_model(model)
    plan.params = dict.fromkeys(plan.params, False)
    plan.freeze("fc")
    plan.apply(model)
    assert all(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.fc.parameters())


def test_apply_to_another_model_names_missing_and_unexpected(tiny):
    plan = FreezePlan.from_model(tiny())
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(PlanError) as e:
        plan.apply(other)
    msg = str(e.value)
    assert "missing from the model: stem.0.weight" in msg
    assert "not in the plan: 0.weight" in msg
    assert isinstance(e.value, ValueError)


def test_rules_apply_in_order_later_wins(tiny):
    plan = FreezePlan.from_model(tiny())
    plan.apply_rules([("freeze", "*"), ("unfreeze", "block2"), ("freeze", "block2.1.*"), ("unfreeze", "fc")])
    assert plan.is_frozen("stem.0.weight")
    assert not plan.is_frozen("block2.0.weight")
    assert plan.is_frozen("block2.1.weight") and plan.is_frozen("block2.1.bias")
    assert not plan.is_frozen("fc.weight")


def test_glob_matches_modules_and_parameters():
    assert glob_matches("layer1", "layer1.0.conv1.weight")
    assert glob_matches("features.*", "features.0.weight")
    assert glob_matches("*.bn*", "layer1.0.bn1.weight")
    assert not glob_matches("layer1", "layer10.weight")
    assert not glob_matches("fc", "fc2.weight")


def test_rule_matching_nothing_is_an_error(tiny):
    plan = FreezePlan.from_model(tiny())
    with pytest.raises(PlanError, match="'layer9' matches no parameter"):
        plan.freeze("layer9")


def test_seed_scenario_freezes_first_ten_parameters():
    model = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    assert model.features[0].kernel_size == (5, 5) and model.features[0].stride == (1, 1)
    assert model.classifier[6].out_features == 10
    plan = FreezePlan.from_model(model)
    plan.freeze("features.*")
    first_ten = [n for n, _ in model.named_parameters()][:10]
    assert plan.frozen == first_ten
    assert plan.new_modules == ["features.0", "classifier.6"]


def _write(tmp_path, obj, name="p.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _valid(tiny):
    return FreezePlan.from_model(tiny()).to_dict()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(frozen=d["trainable"][:1]), "both frozen and trainable"),
    (lambda d: d.update(batchnorm="maybe"), "batchnorm must be"),
    (lambda d: d.pop("model"), "needs a \"model\" object"),
    (lambda d: d.update(frozen="stem"), "must be a list of parameter names"),
    (lambda d: d.update(trainable=d["trainable"] + d["trainable"][:1]), "more than once"),
    (lambda d: d.update(counts={"total": -1}), "counts"),
])
def test_malformed_plans_are_named(tmp_path, tiny, mutate, message):
    d = _valid(tiny)
    mutate(d)
    with pytest.raises(PlanError, match=message):
        FreezePlan.load(_write(tmp_path, d))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        FreezePlan.load(tmp_path / "nope.json")
    with pytest.raises(PlanError, match="not valid JSON"):
        FreezePlan.load(_write(tmp_path, "{not json"))
    with pytest.raises(PlanError, match="not a JSON object"):
        FreezePlan.load(_write(tmp_path, "[1, 2]"))


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, tiny, monkeypatch):
    plan = FreezePlan.from_model(tiny())
    path = plan.save(tmp_path / "p.json")
    before = path.read_text()
    plan.freeze("fc")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("freezetui.core.atomic.os.replace", boom)
    with pytest.raises(OSError):
        plan.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temp file left behind


def test_frozen_batchnorm_stays_in_eval_mode(tiny):
    model = tiny()
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.apply(model)
    model.train()
    bn = model.stem[1]
    before = bn.running_mean.clone()
    model(torch.randn(4, 3, 16, 16) * 5 + 3)
    assert torch.equal(bn.running_mean, before)
    assert model.block1[1].training  # trainable BN still trains
    # re-applying with batchnorm "train" lets the statistics move again
    plan.batchnorm = "train"
    plan.apply(model)
    model.train()
    model(torch.randn(4, 3, 16, 16) * 5 + 3)
    assert not torch.equal(bn.running_mean, before)


def test_ten_thousand_tensor_plan_loads_and_applies_correctly():
    # correctness at the size where the quadratic loader used to take seconds (timings:
    # benchmarks/plan_load.py)
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(5000)])
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == 10_000
    plan = FreezePlan.from_model(model)
    plan.freeze_before(names[6000])
    assert plan.frozen == names[:6000] and plan.trainable == names[6000:]
    d = plan.to_dict()
    d["frozen"], d["trainable"] = d["frozen"][::-1], d["trainable"][::-1]  # a hand-ordered file
    loaded = FreezePlan.from_dict(d)
    loaded.check_fits(model)
    loaded.reorder_like(model)
    assert list(loaded.params) == names
    loaded.apply(model)
    assert [p.requires_grad for p in model.parameters()] == [False] * 6000 + [True] * 4000
    assert loaded.counts == {"total": 30_000, "trainable": 12_000, "frozen": 18_000}
    dup = dict(d, trainable=d["trainable"] + [names[7000]])
    with pytest.raises(PlanError, match=r"'3500.bias'|more than once"):
        FreezePlan.from_dict(dup)
    both = dict(d, trainable=d["trainable"] + [names[5]])
    with pytest.raises(PlanError, match="both frozen and trainable"):
        FreezePlan.from_dict(both)
    short = FreezePlan.from_dict(dict(d, frozen=d["frozen"][1:]))
    with pytest.raises(PlanError, match=r"not in the plan: 2999\.bias\)"):
        short.check_fits(model)
