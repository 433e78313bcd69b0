"""Faults that on a real box happen on the GPU, provoked on the CPU through the same code:
out of memory at each stage, the feature store's memory budget, batched loss reads, memory
released between runs."""

import gc
import json

import pytest
import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core import train as train_mod
from freezetui.core.data import BatchTransform, Split, load_data
from freezetui.core.errors import TrainingError
from freezetui.core.runs import RunWriter
from tiny import model_and_plan as _model_and_plan


@pytest.fixture(scope="module")
def data():
    return load_data("shapes", shapes_train=96, shapes_val=32)


def _oom(*args, **kwargs):
    raise train_mod.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("stage, target, words", [
    ("data", (Split, "to"), "while moving the data to the device"),
    ("cache", (train_mod.FeatureStore, "__init__"), "while caching the frozen prefix's outputs on cpu at batch size"),
    ("step", (train_mod._Run, "train_step"), "while training on cpu at batch size 32; try --batch-size 16"),
])
def test_out_of_memory_at_each_stage_is_a_sentence_and_the_run_folder_says_so(tmp_path, data, monkeypatch,
                                                                             stage, target, words):
    model, plan = _model_and_plan()
    monkeypatch.setattr(*target, _oom)
    writer = RunWriter(tmp_path / "run", model, plan, TrainConfig(epochs=1))
    config = TrainConfig(epochs=1, batch_size=32, augment=False, device="cpu")
    with pytest.raises(TrainingError) as e:
        train(model, plan, data, config, callbacks=[writer])
    assert str(e.value).startswith("out of memory") and words in str(e.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["error"] == str(e.value) and summary["frozen_unchanged"] is True


def test_feature_store_respects_an_injected_budget(data):
    model, plan = _model_and_plan(("stem", "block1"))
    plan.apply(model)
    from freezetui.core.split import find_cut, split, trace

    prefix, _ = split(trace(model), find_cut(trace(model), set(plan.frozen)))
    transform = BatchTransform(32)
    seen = []
    store = train_mod.FeatureStore(prefix, data.train.images, transform, torch.device("cpu"), amp=False, chunk=40,
                                   budget_fn=lambda device: seen.append(device) or 10**9)
    assert seen == [torch.device("cpu")] and store.on_device
    with torch.no_grad():
        expected = prefix(transform(data.train.images[:50]))
    assert torch.equal(store.features[:50], expected)  # chunks written in place, in order
    idx = torch.tensor([3, 41, 7])
    assert torch.equal(store.get(idx), expected[idx])


def test_batched_loss_reads_give_the_same_run_and_report_the_first_bad_step(data):
    runs = []
    for sync_steps in (None, 4):
        model, plan = _model_and_plan()
        steps = []

        class Steps(train_mod.Callback):
            def on_step(self, ev):
                steps.append(ev.global_step)

        result = train(model, plan, data, TrainConfig(epochs=2, batch_size=16, device="cpu", sync_steps=sync_steps),
                       callbacks=[Steps()])
        runs.append((result, steps, {k: v.clone() for k, v in model.state_dict().items()}))
    (r1, s1, w1), (r4, s4, w4) = runs
    assert s1 == list(range(1, 13)) and s4 == [4, 6, 10, 12]  # every 4th step and each epoch's last
    assert all(torch.equal(w1[k], w4[k]) for k in w1)
    assert [e.train_loss for e in r1.history] == pytest.approx([e.train_loss for e in r4.history], rel=1e-9)

    model = build_model("tiny:nan_cnn", weights="none")
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 1;"):
        train(model, FreezePlan.from_model(model), data, TrainConfig(epochs=1, batch_size=16, device="cpu",
                                                                    sync_steps=4))


def test_back_to_back_runs_leave_no_optimizer_or_feature_cache_behind(data):
    model, plan = _model_and_plan(("stem", "block1"))
    for _ in range(2):
        train(model, plan, data, TrainConfig(epochs=1, batch_size=32, augment=False, device="cpu"))
    gc.collect()
    assert [o for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer)] == []
    assert [o for o in gc.get_objects() if issubclass(type(o), train_mod.FeatureStore)] == []
    assert all(p.grad is None for p in model.parameters())


def test_streamed_training_equals_in_memory_training(tmp_path):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "imgs", per_class=20, size=20, layout="split")
    data = load_data(str(folder))
    results = []
    for budget in (None, 1):  # 1 byte: the data cannot fit, batches stream from the memory map
        model, plan = _model_and_plan(classes=data.num_classes)
        streamed = []
        real = train_mod.StreamedSplit.prefetch

        def spy(self, *a, **k):
            streamed.append(True)
            return real(self, *a, **k)

        train_mod.StreamedSplit.prefetch = spy
        try:
            result = train(model, plan, data, TrainConfig(epochs=2, batch_size=16, device="cpu", data_budget=budget))
        finally:
            train_mod.StreamedSplit.prefetch = real
        results.append((bool(streamed), result, {k: v.clone() for k, v in model.state_dict().items()}))
    (s0, r0, w0), (s1, r1, w1) = results
    assert not s0 and s1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert [e.val_acc for e in r0.history] == [e.val_acc for e in r1.history]
