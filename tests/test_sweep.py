"""Sweeps: a ladder of plans trained from the same weights, resumable."""

import json
import threading

import pytest
import torch

from conftest import torchvision_models
from freezetui.core.data import load_data
from freezetui.core.errors import PlanError
from freezetui.core.models import build_model
from freezetui.core.runner import Reporter
from freezetui.core.specs import ModelSpec
from freezetui.core.sweep import format_table, ladder, run_sweep
from freezetui.core.train import Callback, TrainConfig

MODEL = ModelSpec("tiny:tiny_cnn", weights="none")


def config():
    return TrainConfig(epochs=2, batch_size=32, device="cpu", augment=False)


class Notes(Reporter):
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


class StopInSecondEpoch(Callback):
    def __init__(self, stop):
        self.stop = stop

    def on_step(self, ev):
        if ev.epoch == 2:
            self.stop.set()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep stopped in the second epoch of its second rung, then continued."""
    out = tmp_path_factory.mktemp("sweep")
    data = load_data("shapes", shapes_train=128, shapes_val=32)
    stop = threading.Event()
    first = run_sweep(MODEL, "shapes", config(), out, stop=stop, data=data,
                      callbacks_factory=lambda i, name: [StopInSecondEpoch(stop)] if i == 1 else [])
    rung0 = sorted(p for p in out.iterdir() if p.is_dir())[0]
    mtimes = {p.name: p.stat().st_mtime_ns for p in rung0.iterdir()}
    notes = Notes()
    rows = run_sweep(MODEL, "shapes", config(), out, data=data, reporter=notes)
    return {"out": out, "first": first, "rows": rows, "rung0": rung0, "mtimes": mtimes, "notes": notes.notes}


def test_ladder_is_nested_from_the_head_to_everything():
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=4)
    rungs = ladder(model)
    assert [n for n, _ in rungs] == ["head", "+block2", "+block1", "all"]
    sets = [set(p.trainable) for _, p in rungs]
    assert sets[0] == {"fc.weight", "fc.bias"}
    assert all(a < b for a, b in zip(sets, sets[1:]))
    assert not rungs[-1][1].frozen
    assert [n for n, _ in ladder(model, rungs=2)] == ["head", "all"]
    with pytest.raises(PlanError):
        ladder(model, rungs=0)


def test_sweep_json_lists_every_rung_with_its_results(sweep):
    rows = json.loads((sweep["out"] / "sweep.json").read_text())
    assert [r["name"] for r in rows] == ["head", "+block2", "+block1", "all"]
    for r in rows:
        for key in ("plan", "trainable", "val_acc", "best_val_acc", "seconds", "images_per_s", "estimate"):
            assert r[key] is not None, key
        assert not r["stopped"] and r["epochs"] == 2 and r["frozen_unchanged"]
        assert (sweep["out"] / r["run"]).joinpath("summary.json").is_file()
        assert json.loads(open(r["plan"]).read())["trainable"]
        assert r["estimate"]["activation_bytes"] <= r["estimate"]["full_activation_bytes"]
    assert [r["trainable"] for r in rows] == sorted(r["trainable"] for r in rows)
    assert rows[-1]["estimate"]["activation_bytes"] == rows[-1]["estimate"]["full_activation_bytes"]
    text = format_table(rows)
    assert "+block1" in text and "best accuracy:" in text and "best accuracy per second:" in text


def test_every_rung_starts_from_the_same_weights(sweep):
    rows = sweep["rows"]
    head = torch.load(sweep["out"] / rows[0]["run"] / "model.pt", weights_only=True)
    for r in rows[1:]:
        plan = json.loads(open(r["plan"]).read())
        state = torch.load(sweep["out"] / r["run"] / "model.pt", weights_only=True)
        for name in plan["frozen"]:
            assert torch.equal(state[name], head[name]), (r["name"], name)
        for name in plan["trainable"]:  # trained, so moved away from the shared start
            if name.endswith("weight") and name not in ("fc.weight",):
                assert not torch.equal(state[name], head[name]), (r["name"], name)


def test_an_interrupted_sweep_resumes_where_it_stopped(sweep):
    first = sweep["first"]
    assert len(first) == 2 and first[-1]["stopped"] and not first[0]["stopped"]
    assert {p.name: p.stat().st_mtime_ns for p in sweep["rung0"].iterdir()} == sweep["mtimes"]
    assert any("finished before, kept" in n for n in sweep["notes"])
    assert any("+block2: resuming after epoch 1" in n for n in sweep["notes"])
    metrics = (sweep["out"] / sweep["rows"][1]["run"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]


def test_a_sweep_folder_with_other_settings_is_refused(sweep):
    other = config()
    other.epochs = 3
    with pytest.raises(PlanError, match="other settings"):
        run_sweep(MODEL, "shapes", other, sweep["out"], data=load_data("shapes", shapes_train=128, shapes_val=32))


class StopAtRunEnd(Callback):
    def __init__(self, stop):
        self.stop = stop

    def on_run_end(self, result):
        self.stop.set()


def test_a_stop_between_rungs_starts_no_further_rung(tmp_path):
    stop = threading.Event()
    data = load_data("shapes", shapes_train=64, shapes_val=16)
    rows = run_sweep(MODEL, "shapes", TrainConfig(epochs=1, batch_size=32, device="cpu", augment=False),
                     tmp_path / "s", stop=stop, data=data,
                     callbacks_factory=lambda i, name: [StopAtRunEnd(stop)] if i == 0 else [])
    assert [r["name"] for r in rows] == ["head"] and not rows[0]["stopped"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["00-head", "sweep-settings.json", "sweep.json"]


def test_a_model_that_cannot_be_profiled_still_sweeps(tmp_path, monkeypatch):
    def cannot(*args, **kwargs):
        raise RuntimeError("saved-tensor hooks unsupported")

    monkeypatch.setattr("freezetui.core.cost.profile_model", cannot)
    notes = Notes()
    data = load_data("shapes", shapes_train=64, shapes_val=16)
    rows = run_sweep(MODEL, "shapes", TrainConfig(epochs=1, batch_size=32, device="cpu", augment=False),
                     tmp_path / "s", rungs=2, data=data, reporter=notes)
    assert [r["name"] for r in rows] == ["head", "all"] and all(r["val_acc"] is not None for r in rows)
    assert all(r["estimate"] is None for r in rows)
    assert any("no cost estimate" in n for n in notes.notes)
    assert "head" in format_table(rows)


# One model per family by default; FREEZETUI_ALL_MODELS=1 climbs every torchvision classifier.
LADDER_DEFAULT = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
                  "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "resnet50",
                  "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "vgg16", "vit_b_16"]


@pytest.mark.parametrize("name", torchvision_models(LADDER_DEFAULT))
def test_every_torchvision_ladder_climbs_from_the_head_to_everything(name):
    """Over every torchvision classifier (on the meta device: no weights, no time): the first
    rung trains exactly the head, each rung adds to the one before, the last trains everything,
    and rung names are unique. A model whose stages hold most of its layers in one block
    (AlexNet's and VGG's `features`) still gets a rung inside that block."""
    import torchvision

    from freezetui.core.models import find_heads
    from freezetui.core.split import trace

    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name.startswith("regnet"):  # its constructor reads tensor values: not on the meta device
        if name not in ("regnet_x_400mf", "regnet_y_400mf"):
            pytest.skip("regnet: one small model per kind is built for real")
        model = torchvision.models.get_model(name, weights=None, num_classes=5)
    else:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, num_classes=5, **kwargs)
    rungs = ladder(model, trace(model))
    names = [n for n, _ in rungs]
    sets = [set(p.trainable) for _, p in rungs]
    head = {n for n, _ in model.named_parameters() if any(n.startswith(h + ".") for h in find_heads(model))}
    assert names[0] == "head" and sets[0] == head
    assert all(a < b for a, b in zip(sets, sets[1:])), names
    assert names[-1] == "all" and not rungs[-1][1].frozen
    assert len(set(names)) == len(names) and 3 <= len(rungs) <= 40
    if name.startswith(("alexnet", "vgg")):
        assert any(n.startswith("+features.") for n in names), names
