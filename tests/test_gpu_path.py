"""The CUDA path's defects (issue 20), each provoked on the CPU: batch-size spies, CPU bf16
autocast, the meta device, injected checkpoint states, weakrefs."""

from types import SimpleNamespace

import pytest
import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core import train as train_mod
from freezetui.core.data import BatchTransform, Split, load_data


@pytest.fixture(scope="module")
def data():
    return load_data("shapes", shapes_train=96, shapes_val=40)


def _model_and_plan(freeze=("stem",), classes=None):
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=classes)
    plan = FreezePlan.from_model(model)
    for g in freeze:
        plan.freeze(g)
    return model, plan


def _prepared(data, freeze=(), **config):
    model, plan = _model_and_plan(freeze)
    run = train_mod._Run(model, plan, data, TrainConfig(**{"epochs": 1, "device": "cpu", **config}), [], None, None)
    run.prepare()
    run.cache_features()
    return run


# ----------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("cache", [True, False])
def test_evaluation_and_feature_caching_use_the_run_batch_size(data, monkeypatch, cache):
    sizes = []
    real = BatchTransform.__call__
    monkeypatch.setattr(BatchTransform, "__call__", lambda self, x: sizes.append(len(x)) or real(self, x))
    model, plan = _model_and_plan(("stem", "block1"))
    result = train(model, plan, data, TrainConfig(epochs=1, batch_size=8, augment=False, cache=cache, device="cpu"))
    assert result.feature_cache is cache
    # caching: 96 + 40 images in chunks of 8; without it, 12 steps then 40 validation images, 8 at a time
    assert sizes and max(sizes) == 8 and sum(sizes) == 96 + 40


# ----------------------------------------------------------------------------- item 4 and 10


def test_augmentation_is_built_outside_autocast(data):
    run = _prepared(data, batch_size=4, image_size=128)
    assert run.prefix is None and run.config.augment
    run.amp = True  # CPU bf16 autocast stands in for CUDA's: it too runs affine_grid's bmm in bf16
    seen = []
    step_fn = run.step_fn
    run.step_fn = lambda x: seen.append(x.detach().clone()) or step_fn(x)
    images, labels = run.train_split.images[:4], run.train_split.labels[:4]
    state = run.aug_gen.get_state()
    run.train_step(torch.arange(4), images, labels)
    expected = run.transform.augment(images, torch.Generator().set_state(state))
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the step used to feed the model
        inside = run.transform.augment(images, torch.Generator().set_state(state))
    assert not torch.equal(inside, expected)


def test_gradients_are_freed_before_the_forward(data):
    run = _prepared(data, batch_size=4)
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    held = []
    run.model.fc.register_forward_pre_hook(lambda m, a: held.append(any(p.grad is not None for p in trainable)))
    for _ in range(2):
        run.train_step(torch.arange(4), run.train_split.images[:4], run.train_split.labels[:4])
    assert held == [False, False]
    assert all(p.grad is not None for p in trainable)  # the step's own gradients stay until the next one


def test_the_validation_split_is_copied_to_the_device_once(data, monkeypatch):
    copies, evaluated = [], []
    real_to, real_eval = Split.to, train_mod.evaluate
    monkeypatch.setattr(Split, "to", lambda self, device: copies.append(len(self)) or real_to(self, device))
    monkeypatch.setattr(train_mod, "evaluate", lambda model, split, *a: evaluated.append(split) or real_eval(model, split, *a))
    model, plan = _model_and_plan()
    train(model, plan, data, TrainConfig(epochs=3, batch_size=32, device="cpu"))
    assert copies == [96, 40]
    assert len(evaluated) == 3 and all(s is evaluated[0] for s in evaluated) and evaluated[0] is not data.val


# ----------------------------------------------------------------------------- item 9


def test_a_cpu_feature_store_is_indexed_with_cpu_indices_and_pinned_for_a_gpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert train_mod.store_layout(100, 1000, cuda) == (cuda, False)
    assert train_mod.store_layout(100, 10, cuda) == (cpu, True)
    assert train_mod.store_layout(100, None, cpu) == (cpu, False)
    # a run on the meta device (standing in for the GPU) whose features were cached on the CPU
    run = train_mod._Run.__new__(train_mod._Run)
    meta = torch.device("meta")
    run.streamer, run.device, run.steps, run.bs = None, meta, 2, 4
    run.train_split = Split(torch.empty(10, 3, 8, 8, dtype=torch.uint8, device=meta),
                            torch.empty(10, dtype=torch.int64, device=meta))
    run.train_features = SimpleNamespace(features=torch.zeros(10, 5))
    steps = list(run.batches(torch.randperm(10)))
    assert len(steps) == 2
    for idx, images, labels in steps:
        assert idx.device == cpu and len(idx) == 4 and images is None and labels.device == meta
