"""The frozen prefix: found in forward order, run without gradients, cached only when that
changes nothing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.data import load_data
from freezetui.core.split import find_cut, split, trace


def _plan(model, *freeze, batchnorm="freeze"):
    plan = FreezePlan.from_model(model, batchnorm=batchnorm)
    for g in freeze:
        plan.freeze(g)
    plan.apply(model)
    return plan


def test_prefix_then_rest_equals_the_model():
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", num_classes=10)
    plan = _plan(model, "conv1", "bn1", "layer1", "layer2", "layer3")
    traced = trace(model)
    cut = find_cut(traced, set(plan.frozen))
    assert cut.name == "layer3.1.relu" and cut.has_batchnorm and cut.deterministic
    assert cut.module == "layer3" and cut.reason == "a trainable parameter in layer4.0.conv1"
    assert cut.cacheable("freeze") and not cut.cacheable("train")
    prefix, rest = split(traced, cut)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rest(prefix(x)), model(x))
    # the halves share the model's modules: training the rest trains the model
    assert rest.get_submodule("fc") is model.fc


class Reordered(nn.Module):
    """Attributes registered head first, run body first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.body(x))


def test_cut_follows_execution_order_not_attribute_order():
    model = Reordered()
    assert [n for n, _ in model.named_parameters()][0] == "head.weight"
    plan = _plan(model, "body")
    traced = trace(model)
    assert traced.param_order[0] == "body.0.weight"
    assert find_cut(traced, set(plan.frozen)).name == "body.3"


def test_dropout_ends_the_cacheable_prefix_not_the_prefix():
    model = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    plan = _plan(model, "features")
    traced = trace(model)
    cut = find_cut(traced, set(plan.frozen))
    assert cut.name == "flatten" and cut.deterministic  # before classifier.0, the Dropout
    assert cut.module == "avgpool" and cut.reason == "a random op in classifier.0 (Dropout)"
    deeper = find_cut(traced, set(plan.frozen), random_ok=True)
    assert deeper.name == "classifier.0" and not deeper.deterministic and not deeper.cacheable("freeze")
    assert deeper.reason == "a trainable parameter in classifier.1"


def test_dropout_that_drops_nothing_is_deterministic():
    model = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    model.classifier[0].p = 0.0
    plan = _plan(model, "features")
    cut = find_cut(trace(model), set(plan.frozen))
    assert cut.name == "classifier.0" and cut.deterministic


class FunctionalDropout(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.dropout(self.body(x), self.p, self.training))


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_functional_dropout(p):
    model = FunctionalDropout(p)
    plan = _plan(model, "body")
    traced = trace(model)
    cut = find_cut(traced, set(plan.frozen), random_ok=True)
    assert traced.refused is None if p == 0 else traced.refused  # p > 0: the root's own forward branches
    if p == 0:
        assert cut.name == "dropout" and cut.deterministic


def test_root_that_branches_on_the_mode_is_refused_but_ordered():
    import torchvision

    with torch.device("meta"):  # with the aux heads that build_model removes
        model = torchvision.models.googlenet(weights=None, num_classes=10, aux_logits=True, init_weights=False)
    traced = trace(model)
    assert traced.refused and find_cut(traced, set(traced.param_order)) is None
    assert set(traced.param_order) == {n for n, _ in model.named_parameters()}  # the aux heads too


def test_trace_leaves_the_model_as_it_was():
    model = build_model("maxvit_t", weights="none", num_classes=10)  # its forward bakes tensor constants
    model.train()
    model.stem.eval()  # flags that differ between modules are kept
    before = {n: m.training for n, m in model.named_modules()}
    attrs = set(vars(model))
    assert trace(model).refused is None
    assert {n: m.training for n, m in model.named_modules()} == before
    assert set(vars(model)) == attrs


def test_untraceable_model_has_no_split():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats symbolic tracing
                return self.lin(x)
            return -self.lin(x)

    assert trace(Branchy()) is None


@pytest.fixture(scope="module")
def shapes():
    return load_data("shapes", shapes_train=512, shapes_val=128)


def test_frozen_prefix_runs_without_gradients(shapes):
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.freeze("block1")
    seen = []
    model.block1[0].register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.requires_grad)))
    result = train(model, plan, shapes, TrainConfig(epochs=1, augment=True))
    assert result.frozen_prefix == "block1" and not result.feature_cache  # the module, as plan show names it; augmentation: no cache
    assert seen and not any(grad or req for grad, req in seen)


def test_cached_and_uncached_runs_agree(shapes):
    results, weights = [], []
    for cache in (True, False):
        torch.manual_seed(0)
        model = build_model("tiny:tiny_cnn", weights="none")
        plan = FreezePlan.from_model(model)
        plan.freeze("stem")
        plan.freeze("block1")
        results.append(train(model, plan, shapes, TrainConfig(epochs=2, augment=False, cache=cache, lr=5e-3)))
        weights.append(model.fc.weight.detach().clone())
    cached, plain = results
    assert cached.feature_cache and not plain.feature_cache
    assert abs(cached.val_acc - plain.val_acc) <= 0.02
    assert torch.allclose(weights[0], weights[1], atol=1e-4)
    assert cached.frozen_unchanged and plain.frozen_unchanged


def test_batchnorm_in_train_mode_is_never_cached(shapes):
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = FreezePlan.from_model(model, batchnorm="train")
    plan.freeze("stem")
    result = train(model, plan, shapes, TrainConfig(epochs=1, augment=False))
    assert result.frozen_prefix == "stem" and not result.feature_cache
