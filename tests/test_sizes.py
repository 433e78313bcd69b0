"""Input sizes read from the model itself: the default size, the fixed-size lint, one sentence
for a model that fails on its first batch, and plan show at the plan's own size."""

import json

import pytest
import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.cli import main
from freezetui.core.data import load_data
from freezetui.core.errors import TrainingError
from freezetui.core.lints import check
from freezetui.core.models import declared_input_size, model_info


def test_the_size_a_model_declares():
    import torchvision

    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        assert declared_input_size(torchvision.models.vit_b_16(image_size=384)) == 384
        assert declared_input_size(torchvision.models.maxvit_t()) == 224
        assert declared_input_size(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)) == 64
        assert declared_input_size(timm.create_model("convnext_atto", pretrained=False)) is None
        assert declared_input_size(torchvision.models.resnet18()) is None


def test_a_factorys_vit_gets_its_size_by_default_and_a_lint_against_another():
    model = build_model("tiny:vit64", weights="none")
    info = model_info(model)
    assert info.fixed_size and info.input_size == 64
    plan = FreezePlan.from_model(model)
    found = [lint for lint in check(plan, model, image_size=32) if lint.code == "fixed-size"]
    assert found and found[0].severity == "error" and found[0].fix == ("image_size", 64)
    assert not [lint for lint in check(plan, model, image_size=64) if lint.code == "fixed-size"]


def test_a_model_failing_on_its_first_batch_is_one_sentence():
    data = load_data("shapes", shapes_train=64, shapes_val=16)
    model = build_model("tiny:vit64", weights="none")
    plan = FreezePlan.from_model(model)
    with pytest.raises(TrainingError) as e:
        train(model, plan, data, TrainConfig(epochs=1, batch_size=32, image_size=32, augment=False))
    text = str(e.value)
    assert "tiny:vit64 failed on its first batch of shape 32×3×32×32" in text
    assert "Wrong image height" in text and text.endswith("use --image-size 64")


def test_plan_show_prices_at_the_plans_size_and_survives_a_model_that_fails(tmp_path, capsys):
    small = tmp_path / "small.json"
    assert main(["plan", "make", "--model", "resnet18", "--weights", "none", "--small-input", "--num-classes", "10",
                 "--freeze", "layer1", "-o", str(small)]) == 0
    capsys.readouterr()
    assert main(["plan", "show", str(small)]) == 0
    assert ", 32 px," in capsys.readouterr().out

    plan = tmp_path / "only32.json"
    assert main(["plan", "make", "--model", "tiny:only32", "--weights", "none", "--freeze", "0", "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["plan", "show", str(plan), "--model", "tiny:only32"]) == 0
    out = capsys.readouterr().out
    assert "note: no cost estimate at 224 px: tiny:only32 failed on its first batch of shape 2×3×224×224" in out
    assert "total" in out  # the rest is still there
    assert main(["plan", "show", str(plan), "--model", "tiny:only32", "--image-size", "32"]) == 0
    assert "cost at batch" in capsys.readouterr().out

    assert main(["plan", "show", str(plan), "--model", "tiny:tiny_cnn"]) == 1
    err = capsys.readouterr().err
    assert "the plan is for tiny:only32, but --model names tiny:tiny_cnn" in err


def test_plan_show_json_lists_every_parameter_and_the_lints(tmp_path, capsys):
    plan = tmp_path / "p.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--weights", "none", "--freeze", "stem",
                 "--freeze", "block1", "--stage", "3:block1", "--lr-mult", "block1=0.1", "--bn", "train",
                 "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["plan", "show", str(plan), "--model", "tiny:tiny_cnn", "--image-size", "32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in d["parameters"]}
    assert list(rows) == [n for n, _ in build_model("tiny:tiny_cnn", weights="none").named_parameters()]
    assert rows["stem.0.weight"] == {"name": "stem.0.weight", "trainable": False, "epoch": None, "lr_mult": 1.0,
                                     "weight_decay": True}
    assert rows["block1.0.weight"] == {"name": "block1.0.weight", "trainable": False, "epoch": 3, "lr_mult": 0.1,
                                       "weight_decay": True}
    assert rows["fc.bias"]["trainable"] and rows["fc.bias"]["epoch"] == 1 and not rows["fc.bias"]["weight_decay"]
    assert d["lints"] and all(set(x) == {"level", "code", "message", "modules", "fix"} for x in d["lints"])
    bn = next(x for x in d["lints"] if x["modules"] == ["stem.1"])
    assert bn["level"] == "warning" and bn["fix"] == {"kind": "batchnorm", "value": "freeze"}


def test_a_failure_after_the_first_step_is_not_called_a_first_batch():
    from torch import nn

    class FailsLater(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
            return self.fc(self.conv(x).mean((2, 3)))

    data = load_data("shapes", shapes_train=64, shapes_val=16)
    model = FailsLater()
    model.fc = nn.Linear(4, data.num_classes)
    with pytest.raises(RuntimeError, match="boom"):
        train(model, FreezePlan.from_model(model), data, TrainConfig(epochs=1, batch_size=16, augment=False))
