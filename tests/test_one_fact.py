"""One fact, one place: every front end asks the same function, so they cannot disagree."""

import json

import pytest
import torch

from freezetui.cli import main
from freezetui.core.errors import DataError
from freezetui.core.models import build_model
from freezetui.core.plan import FreezePlan
from freezetui.core.runner import execute, prepare_run
from freezetui.core.specs import ModelSpec, RunSpec
from freezetui.core.split import frozen_prefix, trace
from freezetui.core.sweep import ladder, run_sweep
from freezetui.core.train import Callback, TrainConfig
from freezetui.core.workspace import Workspace

# one model per torchvision family, with what it needs to run at a small size
FAMILIES = {
    "resnet18": {}, "efficientnet_b0": {}, "convnext_tiny": {}, "mobilenet_v3_small": {}, "densenet121": {},
    "alexnet": {"small_input": True}, "vgg11": {}, "vit_b_16": {"image_size": 32}, "googlenet": {},
    "regnet_x_400mf": {}, "squeezenet1_1": {},
}


@pytest.fixture(scope="module")
def small_data():
    from freezetui.core.data import load_data

    return load_data("shapes", shapes_train=128, shapes_val=32)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_prefix_is_named_the_same_in_plan_show_the_estimate_and_the_tui(name, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model(name, weights="none", num_classes=5, **FAMILIES[name])
    traced = trace(model)
    rungs = ladder(model, traced)
    _, plan = rungs[len(rungs) // 2]  # a plan that freezes about half of the stages
    path = plan.save(tmp_path / "plan.json")
    expected = frozen_prefix(traced, set(plan.frozen), [n for n, _ in model.named_parameters()])

    assert main(["plan", "show", str(path), "--json", "--image-size", "32", "--batch-size", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    ws = Workspace(model, traced=traced)
    ws.load_plan_object(FreezePlan.load(path))
    tui = ws.frozen_prefix()

    if expected is None:
        assert shown["frozen_prefix"] is None and shown["estimate"]["backward_stop"] is None and tui is None
    else:
        assert shown["frozen_prefix"]["module"] == shown["estimate"]["backward_stop"] == tui.module == expected.module
        assert shown["frozen_prefix"]["reason"] == tui.reason
        assert expected.module in dict(model.named_modules())  # a name the tree shows


def test_summary_names_one_module_for_the_prefix_and_the_estimate(tmp_path, small_data):
    plan_model = build_model("tiny:tiny_cnn", weights="none", num_classes=small_data.num_classes)
    from freezetui.core.runner import plan_from_rules

    plan = plan_from_rules(plan_model, [("freeze", "stem"), ("freeze", "block1")])
    starts = []

    class Start(Callback):
        def on_run_start(self, ev):
            starts.append(ev)

    spec = RunSpec(data="shapes", config=TrainConfig(epochs=1, batch_size=32, device="cpu", augment=False),
                   out=tmp_path / "run", plan=plan, model=ModelSpec("tiny:tiny_cnn"))
    execute(spec, [Start()], inputs=prepare_run(spec, data=small_data))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frozen_prefix"] == summary["estimate"]["backward_stop"] == starts[0].prefix.module == "block1"


def test_sweep_and_train_decode_a_folder_at_the_same_sizes(tmp_path, monkeypatch):
    """The sweep loaded data without the weights' resize and crop: two cache entries, and rungs
    that were not the runs `train` makes. Both now load through prepare_run."""
    from freezetui.core import runner

    seen = []

    def spy(spec, **kwargs):
        seen.append((spec, kwargs["size"], kwargs["resize_size"], kwargs["crop_size"]))
        raise DataError("stop after recording")

    monkeypatch.setattr(runner, "load_data", spy)
    model = ModelSpec("resnet18", weights="IMAGENET1K_V1")
    config = TrainConfig(epochs=1, device="cpu")
    with pytest.raises(DataError):
        execute(RunSpec(data=str(tmp_path), config=config, out=tmp_path / "run", model=model))
    with pytest.raises(DataError):
        run_sweep(model, str(tmp_path), config, tmp_path / "sweep")
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0][2:] == (256, 224)  # ResNet-18 IMAGENET1K_V1's transforms: resize 256, crop 224
