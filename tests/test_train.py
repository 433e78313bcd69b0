import threading

import pytest
import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.data import load_data
from freezetui.core.errors import TrainingError
from freezetui.core.train import Callback


@pytest.fixture(scope="module")
def small_shapes():
    return load_data("shapes", shapes_train=640, shapes_val=200)


def _plan(model, *freeze, batchnorm="freeze"):
    plan = FreezePlan.from_model(model, batchnorm=batchnorm)
    for g in freeze:
        plan.freeze(g)
    return plan


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_frozen_parameters_bit_identical_with_weight_decay(small_shapes, optimizer):
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = _plan(model, "stem", "block1")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, plan, small_shapes, TrainConfig(epochs=1, batch_size=64, optimizer=optimizer,
                                                          weight_decay=0.1, lr=1e-2))
    assert result.frozen_unchanged and result.changed == []
    after = dict(model.named_parameters())
    for n in plan.frozen:
        assert torch.equal(after[n], before[n]), n
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["block2.0.weight"], before["block2.0.weight"])


def test_frozen_batchnorm_statistics_kept_or_moved(small_shapes):
    for mode, kept in (("freeze", True), ("train", False)):
        torch.manual_seed(0)
        model = build_model("tiny:tiny_cnn", weights="none")
        plan = _plan(model, "stem", batchnorm=mode)
        stats = model.stem[1].running_mean.clone()
        train(model, plan, small_shapes, TrainConfig(epochs=1))
        assert torch.equal(model.stem[1].running_mean, stats) is kept, mode
        # trainable BatchNorm always updates
        assert model.block1[1].num_batches_tracked.item() > 0


def test_small_cnn_learns_shapes_well_above_chance():
    data = load_data("shapes")
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none")
    result = train(model, _plan(model), data,
                   TrainConfig(epochs=4, batch_size=32, lr=5e-3, augment=False))
    assert result.val_acc > 0.9, result.history
    assert result.history[-1].train_loss < result.history[0].train_loss


class _StopAfter(Callback):
    def __init__(self, stop, n):
        self.stop, self.n, self.steps = stop, n, 0

    def on_step(self, ev):
        self.steps += 1
        if self.steps == self.n:
            self.stop.set()


def test_stop_request_is_honoured_within_one_batch(small_shapes):
    model = build_model("tiny:tiny_cnn", weights="none")
    stop = threading.Event()
    cb = _StopAfter(stop, 3)
    result = train(model, _plan(model), small_shapes, TrainConfig(epochs=5, batch_size=32), callbacks=[cb], stop=stop)
    assert cb.steps == 3 and result.stopped
    assert result.epochs == 0 and not result.history  # the partial epoch is not evaluated: no wait for it
    assert result.frozen_unchanged


def test_a_stop_during_evaluation_ends_it_within_one_batch(small_shapes):
    """Evaluation checks the stop per batch: the epoch it interrupts is dropped (no checkpoint)."""
    model = build_model("tiny:tiny_cnn", weights="none")
    stop, evaluated, checkpoints = threading.Event(), [], []

    def hook(module, args, out):
        if not module.training:
            evaluated.append(1)
            stop.set()

    class Saves(Callback):
        def on_checkpoint(self, state):
            checkpoints.append(state["epoch"])

    model.register_forward_hook(hook)
    result = train(model, _plan(model), small_shapes, TrainConfig(epochs=3, batch_size=8, cache=False),
                   callbacks=[Saves()], stop=stop)
    assert result.stopped and len(evaluated) == 1 and result.epochs == 0 and checkpoints == []


def test_caching_reports_progress_and_stops_within_a_chunk(small_shapes):
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=10)
    plan = FreezePlan.from_model(model)
    plan.freeze("*")
    plan.unfreeze("fc.*")
    got, stop = [], threading.Event()

    class Cached(Callback):
        def on_caching(self, done, total):
            got.append((done, total))

    train(model, plan, small_shapes, TrainConfig(epochs=1, batch_size=16, augment=False), callbacks=[Cached()])
    total = len(small_shapes.train) + len(small_shapes.val)
    assert got and got[-1] == (total, total) and [d for d, _ in got] == sorted(d for d, _ in got)

    class StopAtFirst(Callback):
        def on_caching(self, done, total):
            got.append(done)
            stop.set()

    got.clear()
    result = train(model, plan, small_shapes, TrainConfig(epochs=1, batch_size=16, augment=False), callbacks=[StopAtFirst()],
                   stop=stop)
    assert result.stopped and result.epochs == 0 and got == [16]


def test_events_carry_metrics(small_shapes):
    got = {"start": [], "step": [], "epoch": [], "end": []}

    class Rec(Callback):
        def on_run_start(self, ev): got["start"].append(ev)
        def on_step(self, ev): got["step"].append(ev)
        def on_epoch(self, ev): got["epoch"].append(ev)
        def on_run_end(self, r): got["end"].append(r)

    model = build_model("tiny:tiny_cnn", weights="none")
    train(model, _plan(model), small_shapes, TrainConfig(epochs=2, batch_size=64), callbacks=[Rec()])
    assert got["start"][0].steps_per_epoch == 10
    assert len(got["step"]) == 20 and got["step"][-1].global_step == 20
    assert [e.epoch for e in got["epoch"]] == [1, 2]
    assert 0 <= got["epoch"][-1].val_acc <= 1 and got["epoch"][-1].images_per_s > 0
    assert got["end"][0].epochs == 2


def test_nan_loss_stops_with_the_step():
    data = load_data("shapes", shapes_train=64, shapes_val=32)
    model = build_model("tiny:nan_cnn", weights="none")
    ended = []

    class End(Callback):
        def on_run_end(self, r): ended.append(r)

    with pytest.raises(TrainingError, match="loss became nan at epoch 1, step 1"):
        train(model, _plan(model), data, TrainConfig(epochs=1), callbacks=[End()])
    assert ended and ended[0].error


def test_head_size_must_match_data(small_shapes):
    model = build_model("tiny:tiny_cnn", weights="none")
    model.fc = torch.nn.Linear(64, 3)
    with pytest.raises(TrainingError, match="3 outputs but shapes has 10 classes"):
        train(model, _plan(model), small_shapes, TrainConfig(epochs=1))


@pytest.mark.parametrize("cfg, message", [
    (TrainConfig(epochs=0), "epochs must be a positive"),
    (TrainConfig(lr=-1.0), "learning rate must be positive"),
    (TrainConfig(optimizer="lion"), "unknown optimizer"),
])
def test_bad_settings(small_shapes, cfg, message):
    model = build_model("tiny:tiny_cnn", weights="none")
    with pytest.raises(TrainingError, match=message):
        train(model, _plan(model), small_shapes, cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(small_shapes):
    model = build_model("tiny:tiny_cnn", weights="none")
    with pytest.raises(TrainingError, match="no CUDA GPU"):
        train(model, _plan(model), small_shapes, TrainConfig(device="cuda"))
