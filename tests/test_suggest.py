"""suggest (issue 23): relative gradient norms measured on the target data leave the model bit
for bit as they found it, choose contiguous blocks, and give a plan that trains; Auto-RGN rates
resume bit for bit and never move a frozen tensor."""

import copy
import json

import numpy as np
import pytest
import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.cli import main
from freezetui.core.data import load_data
from freezetui.core.errors import PlanError
from freezetui.core.rgn import normalise, ratios
from freezetui.core.runner import prepare_run
from freezetui.core.specs import ModelSpec, RunSpec
from freezetui.core.suggest import Row, Signal, chosen_blocks, suggest
from freezetui.core.train import Callback


@pytest.fixture(scope="module")
def tiny_data():
    return load_data("shapes", shapes_train=32, shapes_val=8)


def _inputs(name, data, image_size=None, **model):
    spec = RunSpec(data="shapes", config=TrainConfig(batch_size=8, image_size=image_size, device="cpu"), out=None,
                   model=ModelSpec(name, weights="none", **model))
    return prepare_run(spec, data=data)


def _fingerprint(model):
    """Everything suggest promises not to change."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, p.requires_grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
            [m.training for m in model.modules()],
            [list(m._forward_pre_hooks) for m in model.modules()],
            torch.get_rng_state(), str(next(model.parameters()).device))


def _same(a, b):
    sa, pa, ma, ha, ra, da = a
    sb, pb, mb, hb, rb, db = b
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [(n, r) for n, r, _ in pa] == [(n, r) for n, r, _ in pb]
    assert all((x is None and y is None) or torch.equal(x, y) for (_, _, x), (_, _, y) in zip(pa, pb))
    assert ma == mb and ha == hb and torch.equal(ra, rb) and da == db


def _trains_one_step(inputs, plan, data):
    """The suggested plan trains: one step changes a trainable tensor and no frozen one."""
    before = {n: p.detach().clone() for n, p in inputs.model.named_parameters()}
    result = train(inputs.model, plan, data, TrainConfig(epochs=1, batch_size=len(data.train), device="cpu",
                                                         augment=False), traced=inputs.traced)
    assert result.frozen_unchanged and result.history
    now = dict(inputs.model.named_parameters())
    assert any(not torch.equal(now[n], before[n]) for n in plan.trainable)


# ----------------------------------------------------------------------------- the measurement


def test_suggest_leaves_a_planned_model_bit_identical_and_measures_every_block(tiny_data):
    inputs = _inputs("tiny:tiny_cnn", tiny_data)
    model = inputs.model
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")  # a plan on the model: requires_grad off and BatchNorm kept in eval by a hook
    plan.apply(model)
    model.train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    torch.manual_seed(123)
    before = _fingerprint(model)
    s = suggest(inputs, TrainConfig(batch_size=8), batches=3)
    _same(before, _fingerprint(model))
    assert [b.name for b in s.signal.blocks] == ["stem", "block1", "block2"]
    shares = [b.signal for b in s.signal.blocks] + [s.signal.head.signal or 0.0]
    assert max(shares) == 1.0 and all(0 <= v <= 1 for v in shares)
    rgn = {t.name: t.rgn for t in s.signal.tensors}
    assert rgn["stem.0.weight"] > 0 and rgn["stem.1.weight"] > 0  # frozen by the plan, measured all the same
    # BatchNorm in train mode (the plan's eval hook off): a conv bias before it gets (nearly) no gradient
    assert rgn["stem.0.bias"] < 1e-3 * rgn["stem.0.weight"]
    assert s.signal.head.params == 64 * 10 + 10 and s.signal.batches == 3 and s.signal.batch_size == 8
    assert set(s.plan.trainable) >= {"fc.weight", "fc.bias"}
    assert set(s.plan.extra["suggest"]["blocks"]) == set(s.blocks)
    again = suggest(inputs, TrainConfig(batch_size=8), batches=3)  # deterministic
    assert [b.rgn for b in again.signal.blocks] == [b.rgn for b in s.signal.blocks]


def _signal(values, head=None):
    rows = [Row(f"b{i}", 1, v, v) for i, v in enumerate(values)]
    return Signal("m", 1, 1, 0.0, [], Row("head", 1, 1.0, head), rows, np.zeros((1, 0)), np.zeros(0), [],
                  {"head": [], **{r.name: [] for r in rows}}, head_new=head is None)


def test_the_suggestion_is_the_contiguous_run_around_the_strongest_block():
    s = _signal([0.9, 0.2, 0.6, 1.0, 0.7, 0.1, 0.8])
    assert chosen_blocks(s, 0.5) == ["b2", "b3", "b4"]  # b0 and b6 clear it but are not contiguous
    assert chosen_blocks(s, 1.0) == ["b3"]
    assert chosen_blocks(s, 0.0) == [f"b{i}" for i in range(7)]
    assert chosen_blocks(_signal([]), 0.5) == []
    # a head kept from the weights competes as the last block
    assert chosen_blocks(_signal([0.3, 0.4, 0.9], head=1.0), 0.5) == ["b2"]
    assert chosen_blocks(_signal([0.3, 0.9, 0.4], head=1.0), 0.5) == []  # the head alone
    assert chosen_blocks(_signal([0.3, 1.0, 0.4], head=0.8), 0.5) == ["b1"]
    with pytest.raises(PlanError, match=r"\[0, 1\]"):
        chosen_blocks(s, 1.5)


def test_relative_norms_skip_zero_weights_and_normalise_to_one():
    r = ratios(torch.tensor([1.0, 2.0, 5.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 2.0]))
    assert torch.isnan(r[2]) and r[0] == 1.0 and r[1] == 2.0
    assert normalise(r).tolist() == [0.5, 1.0, 1.0, 0.0]  # zero weights: factor 1, out of the max
    assert normalise(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name,size", [("resnet18", None), ("efficientnet_b0", None), ("vit_b_16", 32)])
def test_suggest_on_torchvision_models_returns_restores_and_its_plan_trains(name, size):
    data = load_data("shapes", shapes_train=4, shapes_val=2)
    inputs = _inputs(name, data, image_size=size)
    before = _fingerprint(inputs.model)
    s = suggest(inputs, TrainConfig(batch_size=4, image_size=size), batches=1)
    _same(before, _fingerprint(inputs.model))
    assert s.signal.blocks and s.blocks and s.signal.head.rgn is not None
    assert len(s.signal.tensors) == len(list(inputs.model.parameters()))
    _trains_one_step(inputs, s.plan, data)


# ----------------------------------------------------------------------------- the command


def test_suggest_command_prints_json_and_writes_the_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["suggest", "--model", "tiny:tiny_cnn", "--weights", "none", "--device", "cpu", "--batch-size", "8",
            "--batches", "2", "--threshold", "1", "--json", "-o", str(out)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in report["blocks"]] == ["stem", "block1", "block2"]
    assert len(report["suggested_blocks"]) <= 1 and report["threshold"] == 1.0  # the strongest (or the head) alone
    assert {"name", "params", "rgn", "signal"} <= set(report["tensors"][0])
    plan = FreezePlan.load(out)
    assert plan.to_dict()["trainable"] == report["plan"]["trainable"]
    assert main(["plan", "show", str(out), "--model", "tiny:tiny_cnn"]) == 0


def test_suggest_command_bad_input_is_one_sentence(tmp_path, capsys):
    assert main(["suggest", "--data", "shapes"]) == 1
    assert "suggest needs --model" in capsys.readouterr().err
    assert main(["suggest", "--model", "tiny:tiny_cnn", "--data", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a folder" in err
    with pytest.raises(SystemExit):
        main(["suggest", "--model", "tiny:tiny_cnn", "--threshold", "2"])


# ----------------------------------------------------------------------------- Auto-RGN


class Record(Callback):
    def __init__(self):
        self.checkpoints = {}

    def on_checkpoint(self, state):
        self.checkpoints[state["epoch"]] = copy.deepcopy(state)  # on the CPU the tensors are the model's own


def _tiny():
    torch.manual_seed(0)
    return build_model("tiny:tiny_cnn", weights="none")


def _auto(model):
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.auto_rgn = True
    return plan


def test_auto_rgn_plan_round_trips_and_is_shown(tmp_path, capsys):
    plan = _auto(_tiny())
    d = plan.to_dict()
    assert d["auto_rgn"] is True and FreezePlan.from_dict(d).auto_rgn
    assert "auto_rgn" not in FreezePlan.from_model(_tiny()).to_dict()
    with pytest.raises(PlanError, match="auto_rgn"):
        FreezePlan.from_dict({**d, "auto_rgn": "yes"})
    out = tmp_path / "p.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--freeze", "stem", "--auto-rgn", "-o", str(out)]) == 0
    assert FreezePlan.load(out).auto_rgn
    capsys.readouterr()
    assert main(["plan", "show", str(out), "--model", "tiny:tiny_cnn"]) == 0
    shown = capsys.readouterr().out
    assert "Auto-RGN" in shown and "rgn" in shown
    assert main(["plan", "show", str(out), "--model", "tiny:tiny_cnn", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["estimate"]
    assert est["auto_rgn_flops_per_step"] == 4 * est["trainable_params"]


def test_auto_rgn_scales_each_tensor_and_keeps_frozen_frozen(tiny_data):
    model = _tiny()
    seen = []

    class Rates(Callback):
        def on_epoch(self, ev):
            seen.append(ev.lr)

    plan = _auto(model)
    stem = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("stem")}
    result = train(model, plan, tiny_data, TrainConfig(epochs=1, batch_size=8, lr=0.01, augment=False,
                                                        schedule="constant", warmup_epochs=0), callbacks=[Rates()])
    assert result.frozen_unchanged
    assert all(torch.equal(p, stem[n]) for n, p in model.named_parameters() if n in stem)
    assert 0 < seen[0] <= 0.01  # the head's rate: 0.01 × its factor at the last step


def test_auto_rgn_run_resumed_equals_one_run_bit_for_bit(tiny_data):
    cfg = dict(epochs=3, batch_size=8, lr=0.01, augment=False, schedule="cosine")
    whole, rec = _tiny(), Record()
    train(whole, _auto(whole), tiny_data, TrainConfig(**cfg), callbacks=[rec])
    resumed = _tiny()
    result = train(resumed, _auto(resumed), tiny_data, TrainConfig(**cfg), resume=rec.checkpoints[1])
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and result.frozen_unchanged
    plain = _tiny()  # Auto-RGN changes the run: the test above is not vacuous
    train(plain, FreezePlan.from_dict({**_auto(plain).to_dict(), "auto_rgn": False}), tiny_data, TrainConfig(**cfg))
    assert not torch.equal(plain.state_dict()["fc.weight"], a["fc.weight"])
