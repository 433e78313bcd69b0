"""The CUDA path's defects (issue 20), each provoked on the CPU: batch-size spies, CPU bf16
autocast, the meta device, injected checkpoint states, weakrefs."""

from types import SimpleNamespace

import pytest
import torch

from freezetui import FreezePlan, TrainConfig, train
from freezetui.core import train as train_mod
from freezetui.core.data import BatchTransform, Split, load_data
from tiny import model_and_plan as _model_and_plan


@pytest.fixture(scope="module")
def data():
    return load_data("shapes", shapes_train=96, shapes_val=40)


def _prepared(data, freeze=(), **config):
    model, plan = _model_and_plan(freeze)
    run = train_mod._Run(model, plan, data, TrainConfig(**{"epochs": 1, "device": "cpu", **config}), [], None, None)
    run.prepare()
    run.cut = run.split_trainable()
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
    real_to, real_eval = Split.to, train_mod.evaluation_sums
    monkeypatch.setattr(Split, "to", lambda self, device: copies.append(len(self)) or real_to(self, device))
    monkeypatch.setattr(train_mod, "evaluation_sums", lambda model, split, *a: evaluated.append(split) or real_eval(model, split, *a))
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
    assert train_mod.store_layout(100, 10, cuda, ram=1000) == (cpu, True)
    assert train_mod.store_layout(100, 10, cuda, ram=300) == (cpu, False)  # pinning rounds up: no room for it
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


# ----------------------------------------------------------------------------- item 2


def test_resume_with_an_augmentation_state_from_another_device_type_reseeds_and_says_so(data):
    class Keep(train_mod.Callback):
        def __init__(self):
            self.state, self.starts = None, []

        def on_run_start(self, ev):
            self.starts.append(ev)

        def on_checkpoint(self, state):
            self.state = self.state or state

    first = Keep()
    model, plan = _model_and_plan()
    train(model, plan, data, TrainConfig(epochs=1, batch_size=32, device="cpu"), callbacks=[first])
    assert first.state["rng"]["augment_device"] == "cpu" and first.starts[0].notes == []
    state = {**first.state, "rng": {**first.state["rng"], "augment": torch.zeros(16, dtype=torch.uint8)}}
    state["rng"].pop("augment_device")  # an older checkpoint, written on CUDA
    again = Keep()
    model, plan = _model_and_plan()
    result = train(model, plan, data, TrainConfig(epochs=2, batch_size=32, device="cpu"), callbacks=[again],
                   resume=state)
    assert result.epochs == 2 and len(again.starts) == 1
    (note,) = again.starts[0].notes
    assert "16 bytes" in note and "seeded afresh" in note


def test_restore_generator_keeps_a_matching_state():
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    expected = torch.rand(3, generator=gen)
    assert train_mod.restore_generator(gen, state, seed=9) is None
    assert torch.equal(torch.rand(3, generator=gen), expected)
    assert "seeded afresh" in train_mod.restore_generator(gen, torch.zeros(16, dtype=torch.uint8), seed=9)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(9)))


# ----------------------------------------------------------------------------- item 5 and 8


class _Unpool(torch.nn.Module):
    """max_unpool2d has no deterministic implementation, on the CPU too."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        y, i = torch.nn.functional.max_pool2d(self.conv(x), 2, return_indices=True)
        return self.fc(torch.nn.functional.max_unpool2d(y, i, 2).mean((2, 3)))


def test_deterministic_runs_use_deterministic_algorithms_and_name_the_operations_that_warned(data, monkeypatch):
    import os
    import warnings

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.manual_seed(0)
    model = _Unpool(data.num_classes)
    during = []

    class Seen(train_mod.Callback):
        def on_epoch(self, ev):
            during.append(torch.is_deterministic_algorithms_warn_only_enabled())
            warnings.warn("an unrelated warning still reaches the user")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(model, FreezePlan.from_model(model), data,
                       TrainConfig(epochs=1, batch_size=32, device="cpu", deterministic=True), callbacks=[Seen()])
    assert during == [True] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert result.nondeterministic == ["max_unpooling2d_forward_out"]
    assert result.summary()["nondeterministic"] == ["max_unpooling2d_forward_out"]
    assert [str(w.message) for w in caught] == ["an unrelated warning still reaches the user"]
    assert not torch.are_deterministic_algorithms_enabled()  # the process is as it was
    plain = train(model, FreezePlan.from_model(model), data, TrainConfig(epochs=1, batch_size=32, device="cpu"))
    assert plain.nondeterministic == []


def test_fp32_runs_on_cuda_use_tf32_and_the_first_line_says_so(monkeypatch):
    import io

    from freezetui.cli import ConsoleProgress
    from freezetui.core.precision import run_precision

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert run_precision(torch.device("cpu"), amp=True) == "fp32"
    assert torch.get_float32_matmul_precision() == "highest"
    words = run_precision(torch.device("cuda"), amp=False)  # setting the flag needs no GPU
    assert "TF32" in words and torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"
    assert run_precision(torch.device("cuda"), amp=True) == "bf16 autocast"
    out = io.StringIO()
    ConsoleProgress(out).on_run_start(train_mod.RunStart(1, 10, "cuda:0", 100, 10, 224, 0.001, precision=words,
                                                         notes=["a note"]))
    first, second = out.getvalue().splitlines()
    assert first.startswith("training on cuda:0 (fp32, matmuls and convolutions in TF32): ")
    assert second == "note: a note"


# ----------------------------------------------------------------------------- item 11


def test_after_out_of_memory_the_failing_step_is_freed_before_the_sentence_is_raised(data, monkeypatch):
    import weakref

    from freezetui.core.errors import TrainingError

    refs = []

    def failing_step(self, idx, images, labels):
        activation = self.transform(images)  # what a real step holds when the allocator gives up
        refs.append(weakref.ref(activation))
        raise train_mod.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod._Run, "train_step", failing_step)
    model, plan = _model_and_plan()
    with pytest.raises(TrainingError, match="^out of memory while training") as e:
        train(model, plan, data, TrainConfig(epochs=1, batch_size=32, device="cpu"))
    assert e.value.__context__ is None and e.value.__cause__ is None
    assert len(refs) == 1 and refs[0]() is None


def test_no_prefetch_thread_outlives_a_failed_streamed_run(tmp_path, monkeypatch):
    import threading

    from conftest import make_image_folder
    from freezetui.core.errors import TrainingError

    folder = make_image_folder(tmp_path / "imgs", per_class=20, size=20)
    data = load_data(str(folder))
    real = train_mod._Run.train_step
    calls = []

    def fails_at_step_2(self, *a):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingError("injected")
        return real(self, *a)

    monkeypatch.setattr(train_mod._Run, "train_step", fails_at_step_2)
    model, plan = _model_and_plan(classes=data.num_classes)
    with pytest.raises(TrainingError, match="injected") as e:  # e keeps the traceback, and its frames, alive
        train(model, plan, data, TrainConfig(epochs=1, batch_size=8, device="cpu", data_budget=1))
    assert e.value is not None and len(calls) == 2
    assert [t for t in threading.enumerate() if t.name == "freezetui-prefetch"] == []


def test_the_cost_profile_does_not_copy_the_model_while_a_run_moves_it(data, monkeypatch):
    import threading

    from tui.fakes import small_workspace

    ws = small_workspace()
    held = []
    real_to = torch.nn.Module.to

    def to(self, *a, **k):
        if self is ws.model:
            held.append(train_mod.model_lock(ws.model).locked())
        return real_to(self, *a, **k)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    train(ws.model, ws.plan, ws.data, TrainConfig(epochs=1, batch_size=64, device="cpu"))
    assert held and all(held)  # every move of the model under its lock
    lock = train_mod.model_lock(ws.model)
    with lock:  # a run moving the model: the profile waits for it
        t = threading.Thread(target=ws.compute_cost_profile)
        t.start()
        t.join(0.5)
        assert t.is_alive() and ws.cost_profile is None
    t.join(60)
    assert not t.is_alive() and ws.cost_profile is not None


# ----------------------------------------------------------------------------- the GPU script


def test_the_gpu_script_imports_names_each_check_once_and_runs_on_the_cpu():
    """The checks themselves run on the CPU with `python benchmarks/run.py --checks --device cpu`
    (minutes); here only what is cheap."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import gpu_checks
    import seed_workload

    names = [c.__name__ for c in gpu_checks.CHECKS]
    assert len(set(names)) == len(names) >= 14
    row = gpu_checks.syncs_per_step("cpu")
    assert row["ok"] and "CUDA only" in row["note"] and row["device"] == "cpu"
    assert gpu_checks.run("cpu", ["channels_last_speed"])[0]["note"] == "CUDA only"
    assert callable(seed_workload.same_backend_settings)
