"""Training through the split is training the model: for every torchvision classifier (and a
few timm ones), with the first half of the parameters frozen, the prefix under ``no_grad`` then
the rest give the same output, loss and gradients as the whole model at the same random state,
in train mode and in eval mode."""

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from freezetui import FreezePlan, build_model
from freezetui.core.split import find_cut, split, trace
from freezetui.core.train import logits_of

# Smallest input each model accepts (square side), where 32 is not enough.
SIZES = {"alexnet": 63, "googlenet": 15, "inception_v3": 75, "maxvit_t": 224, "squeezenet1_0": 48,
         "squeezenet1_1": 48}
# Built at a smaller image size (the same layers, a smaller position embedding).
KWARGS = {"vit_b_16": {"image_size": 32}, "vit_b_32": {"image_size": 32}, "vit_l_16": {"image_size": 32},
          "vit_l_32": {"image_size": 32}, "vit_h_14": {"image_size": 28}}
# With their auxiliary heads (which build_model removes), these models' own forward differs
# between train and eval mode: never split. As build_model makes them, they split exactly.
REFUSED = {"googlenet", "inception_v3"}

ALL = sorted(torchvision.models.list_models(module=torchvision.models))
# One small model of each family runs by default (a few seconds each on two cores); the other
# sizes only repeat their layers at a cost of up to minutes each: FREEZETUI_ALL_MODELS=1 runs them.
DEFAULT = ["convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3",
           "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
           "shufflenet_v2_x0_5", "squeezenet1_1", "swin_v2_t"]
OTHERS = [n for n in ALL if n not in DEFAULT]


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: faster without thread hand-offs


def make(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    side = KWARGS.get(name, {}).get("image_size", SIZES.get(name.removesuffix("+aux"), 32))
    if name.endswith("+aux"):  # only traced: the meta device skips the weights
        with torch.device("meta"):
            model = torchvision.models.get_model(name[:-4], weights=None, num_classes=5, aux_logits=True,
                                                 init_weights=False)
        return model, torch.randn(2, 3, side, side)
    if name in KWARGS:
        model = torchvision.models.get_model(name, weights=None, num_classes=5, **KWARGS[name])
    else:
        model = build_model(name, weights="none", num_classes=5)
    return model, torch.randn(2, 3, side, side)


def freeze_first_half(model: nn.Module, order: list[str]) -> FreezePlan:
    plan = FreezePlan.from_model(model, batchnorm="freeze")
    plan.set_frozen(order[: len(order) // 2], True)
    plan.apply(model)
    return plan


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _run(model, forward, x, y, params, training: bool):
    """Output, loss and gradients of one step, at a fixed random state; buffers put back after."""
    state = _buffers(model)
    model.train(training)
    torch.manual_seed(1234)
    with torch.set_grad_enabled(training):
        out = logits_of(forward(x))
        loss = F.cross_entropy(out.float(), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True) if training else ()
    for k, v in model.named_buffers():
        v.copy_(state[k])
    return out.detach(), loss.detach(), grads


def _same(a, b, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None:
        assert torch.equal(a, b), f"{what} differs by {(a - b).abs().max().item():.3g}"


def assert_split_is_exact(model: nn.Module, x: torch.Tensor):
    """Freeze the first half of ``model`` in forward order; when it gets a split, assert that the
    split computes what the model computes. Returns (traced, cut)."""
    traced = trace(model)
    assert traced is not None, "untraceable"
    plan = freeze_first_half(model, traced.param_order)
    cut = find_cut(traced, set(plan.frozen), random_ok=True)
    if cut is None:
        return traced, None
    prefix, rest = split(traced, cut)
    params = [p for p in model.parameters() if p.requires_grad]
    y = torch.arange(len(x)) % 5

    def through_split(inputs):
        with torch.no_grad():
            features = prefix(inputs)
        return rest(features)

    for training in (True, False):
        mode = "train" if training else "eval"
        whole = _run(model, model, x, y, params, training)
        halves = _run(model, through_split, x, y, params, training)
        _same(whole[0], halves[0], f"{mode} output")
        _same(whole[1], halves[1], f"{mode} loss")
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        for name, g1, g2 in zip(names, whole[2], halves[2]):
            _same(g1, g2, f"{mode} gradient of {name}")
    return traced, cut


def check_torchvision(name: str):
    model, x = make(name)
    traced, cut = assert_split_is_exact(model, x)
    if name.endswith("+aux"):
        assert traced.refused and cut is None
    else:
        assert traced.refused is None and cut is not None, f"{name} got no split"
    return model, x, traced, cut


@pytest.mark.parametrize("name", DEFAULT + sorted(f"{n}+aux" for n in REFUSED))
def test_torchvision_model_splits_exactly(name):
    check_torchvision(name)


@pytest.mark.skipif(not os.environ.get("FREEZETUI_ALL_MODELS"), reason="slow; set FREEZETUI_ALL_MODELS=1")
@pytest.mark.parametrize("name", OTHERS)
def test_every_other_torchvision_model_splits_exactly(name):
    check_torchvision(name)


def test_small_vision_transformer_with_dropout_splits_exactly():
    # ViT's layers at a test size; with dropout > 0 the frozen half is random, so not cacheable
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64,
                              dropout=0.1, attention_dropout=0.1, num_classes=5)
    _, cut = assert_split_is_exact(model, torch.randn(2, 3, 32, 32))
    assert cut is not None and cut.module == "encoder.layers.encoder_layer_1" and not cut.deterministic
    model.encoder.dropout.p = 0.0  # drops nothing: the prefix is as cacheable as without it
    for layer in model.encoder.layers:
        for m in layer.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            if isinstance(m, nn.MultiheadAttention):
                m.dropout = 0.0
    _, cut = assert_split_is_exact(model, torch.randn(2, 3, 32, 32))
    assert cut.deterministic


def test_small_maxvit_splits_exactly():
    # MaxViT's layers (MBConv, window and grid attention, stochastic depth) at a test size
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=16, partition_size=2, block_channels=[16, 32],
                   block_layers=[2, 2], head_dim=8, stochastic_depth_prob=0.2, num_classes=5)
    _, cut = assert_split_is_exact(model, torch.randn(2, 3, 32, 32))
    assert cut is not None


def test_stochastic_depth_follows_the_mode():
    # EfficientNet's stochastic depth is live in the trainable blocks in train mode, off in eval
    from torchvision.ops import StochasticDepth

    model, x, traced, cut = check_torchvision("efficientnet_b0")
    assert not cut.deterministic  # the frozen half holds blocks with stochastic depth
    assert any(m.endswith("stochastic_depth") for m in traced.opaque)
    prefix, rest = split(traced, cut)
    with torch.no_grad():
        features = prefix(x)
    later = [m for name, m in rest.named_modules() if isinstance(m, StochasticDepth)]
    assert later  # the rest holds the modules, called as such

    def rest_with_drop(p):
        for m in later:
            m.p = p
        with torch.no_grad():
            return rest(features)

    model.train()
    assert not torch.equal(rest_with_drop(0.0), rest_with_drop(1.0))  # p = 1 drops every block
    model.eval()
    assert torch.equal(rest_with_drop(0.0), rest_with_drop(1.0))


class Noisy(nn.Module):
    """A trainable layer with its own training branch: counts its train-mode calls, adds noise."""

    def __init__(self, n: int):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.train_calls = 0

    def forward(self, x):
        x = self.lin(x)
        if self.training:
            self.train_calls += 1
            x = x + 0.1 * torch.randn_like(x)
        return x


class WithNoisyLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.frozen_noise = Noisy(16)
        self.mid = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.noise = Noisy(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.noise(self.mid(self.frozen_noise(self.stem(x)))))


def test_custom_training_branch_runs_when_trained_through_the_split():
    torch.manual_seed(0)
    model = WithNoisyLayers()
    traced = trace(model)
    assert {"frozen_noise", "noise"} <= traced.opaque
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.freeze("frozen_noise")
    plan.freeze("mid")
    plan.apply(model)
    cut = find_cut(traced, set(plan.frozen), random_ok=True)
    assert cut.module == "mid" and not cut.deterministic
    assert cut.reason == "a trainable parameter in noise.lin"
    safe = find_cut(traced, set(plan.frozen))
    assert safe.module == "stem" and safe.deterministic and "frozen_noise" in safe.reason
    prefix, rest = split(traced, cut)
    model.noise.train_calls = model.frozen_noise.train_calls = 0
    model.train()
    for _ in range(3):
        with torch.no_grad():
            f = prefix(torch.randn(4, 8))
        rest(f).sum().backward()
    assert model.noise.train_calls == 3 and model.frozen_noise.train_calls == 3
    model.eval()
    with torch.no_grad():
        rest(prefix(torch.randn(4, 8)))
    assert model.noise.train_calls == 3
    _, cut = assert_split_is_exact(WithNoisyLayers(), torch.randn(4, 8))
    assert cut is not None and not cut.deterministic


TIMM = ["resnet18", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224"]
TIMM_KWARGS = {"vit_tiny_patch16_224": {"img_size": 32}}
# With drop_path_rate the timm models have stochastic depth, as when fine-tuned.
TIMM_DROP = {"convnext_atto": 0.1, "efficientnet_b0": 0.1, "vit_tiny_patch16_224": 0.1}
TIMM_REFUSED: dict[str, str] = {}  # model -> the refusal expected (none today: every one splits)


@pytest.mark.parametrize("name", TIMM)
def test_timm_model_splits_exactly_or_is_refused(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kwargs = dict(TIMM_KWARGS.get(name, {}))
    if name in TIMM_DROP:
        kwargs["drop_path_rate"] = TIMM_DROP[name]
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    traced = trace(model)
    refused = "untraceable" if traced is None else traced.refused
    # pinned: a timm release that makes one of these untraceable fails here instead of skipping
    assert refused == TIMM_REFUSED.get(name), f"timm {name}: expected {TIMM_REFUSED.get(name)!r}, got {refused!r}"
    if refused:
        return
    _, cut = assert_split_is_exact(model, x)
    assert cut is not None


# ----------------------------------------------------------------------------- the whole state, over steps

import copy  # noqa: E402

STEPS = 2


class Counter(nn.Module):
    """Counts its train-mode calls in a buffer, in Python, as user code does."""

    def __init__(self, n: int):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.calls += 1
        return self.lin(x)


class Ema(nn.Module):
    """Keeps an exponential moving average of its input's mean in a buffer, in train mode."""

    def __init__(self, n: int):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.register_buffer("mean", torch.zeros(n))

    def forward(self, x):
        if self.training:
            self.mean.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return self.lin(x)


class WithPythonState(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.frozen_counter = Counter(16)
        self.mid = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.counter = Counter(16)
        self.ema = Ema(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.ema(self.counter(self.mid(self.frozen_counter(self.stem(x))))))


def _train_steps(model, forward, xs, ys, seed: int = 0):
    """``STEPS`` SGD steps with momentum through ``forward``, each at its own random state."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)  # small: random-init models at batch 2 stay finite
    for i, (x, y) in enumerate(zip(xs, ys)):
        model.train()
        torch.manual_seed(seed + i)
        loss = F.cross_entropy(logits_of(forward(x, i)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _copy(model: nn.Module, traced):
    """A copy of the model and of its trace, the trace's modules being the copy's."""
    from freezetui.core.split import _index

    m, gm = copy.deepcopy((model, traced.gm))
    return m, _index(gm, traced.opaque, traced.refused, m)


def _same_state(a: nn.Module, b: nn.Module, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb), what
    for k in sa:
        assert not sa[k].is_floating_point() or torch.isfinite(sa[k]).all(), f"{what}: {k} is not finite"
        _same(sa[k], sb[k], f"{what}: {k}")


def assert_training_is_exact(model: nn.Module, x: torch.Tensor) -> list[str]:
    """After ``STEPS`` steps with the first half frozen, every parameter and buffer equals plain
    PyTorch's, bit for bit: through the cached prefix (where cacheable), the prefix under
    no_grad, and the whole model; BatchNorm frozen and training; momentum 0.1 and None. Tracing
    leaves the model as it was. Returns the paths that ran."""
    before = copy.deepcopy(model.state_dict())
    traced = trace(model)
    for k, v in model.state_dict().items():
        _same(before[k], v, f"tracing changed {k}")
    assert traced is not None and traced.refused is None, "no split"
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn((4, *x.shape[1:]), generator=gen) for _ in range(STEPS)]
    ys = [torch.arange(4) % 5 for _ in range(STEPS)]
    ran = []
    for batchnorm in ("freeze", "train"):
        for momentum in (0.1, None):
            master = _copy(model, traced)
            for m in master[0].modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = momentum
            plan = FreezePlan.from_model(master[0], batchnorm=batchnorm)
            plan.set_frozen(traced.param_order[: len(traced.param_order) // 2], True)
            plain = copy.deepcopy(master[0])
            plan.apply(plain)
            _train_steps(plain, lambda x, i: plain(x), xs, ys)
            frozen = set(plan.frozen)
            for path in ("cache", "prefix", "whole"):
                ours, t = _copy(*master)
                plan.apply(ours)
                cut = find_cut(t, frozen, random_ok=path == "prefix")
                if path == "cache" and not (cut is not None and cut.cacheable(batchnorm)):
                    continue
                if path == "whole":
                    forward = lambda x, i: ours(x)  # noqa: E731
                else:
                    prefix, rest = split(t, cut)
                    if path == "cache":
                        ours.eval()
                        with torch.no_grad():
                            features = [prefix(x) for x in xs]
                        forward = lambda x, i: rest(features[i])  # noqa: E731
                    else:
                        def forward(x, i):
                            with torch.no_grad():
                                f = prefix(x)
                            return rest(f)
                _train_steps(ours, forward, xs, ys)
                _same_state(plain, ours, f"{path}, batchnorm {batchnorm}, momentum {momentum}")
                ran.append(path)
    return ran


@pytest.mark.parametrize("name", [n for n in DEFAULT if n not in REFUSED])
def test_training_through_the_split_leaves_every_tensor_as_plain_pytorch(name):
    model, x = make(name)
    assert "prefix" in assert_training_is_exact(model, x)


@pytest.mark.skipif(not os.environ.get("FREEZETUI_ALL_MODELS"), reason="slow; set FREEZETUI_ALL_MODELS=1")
@pytest.mark.parametrize("name", [n for n in OTHERS if n not in REFUSED])
def test_training_through_the_split_leaves_every_tensor_of_every_other_model_as_plain_pytorch(name):
    model, x = make(name)
    assert "prefix" in assert_training_is_exact(model, x)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnetx_002", "convnext_atto", "vit_tiny_patch16_224"])
def test_timm_models_leave_every_tensor_as_plain_pytorch(name):
    """timm's BatchNormAct2d (EfficientNet, RegNet) increments num_batches_tracked in Python:
    kept whole, it still does; ConvNeXt and ViT (no BatchNorm) for the families beside them."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **TIMM_KWARGS.get(name, {}))
    assert "prefix" in assert_training_is_exact(model, torch.randn(2, 3, 32, 32))


def test_modules_with_python_side_state_are_kept_whole_and_exact():
    torch.manual_seed(0)
    model = WithPythonState()
    traced = trace(model)
    assert {"frozen_counter", "counter", "ema"} <= traced.opaque  # found by the check, not by name
    assert int(model.counter.calls) == 0 and not model.ema.mean.any()  # tracing changed nothing
    assert "prefix" in assert_training_is_exact(model, torch.randn(4, 8))


@pytest.mark.parametrize("name", ["vit", "timm swin"])
def test_the_halves_read_the_moved_models_tensors(name):
    """Tensors the graph reads itself (get_attr: a ViT's class token and position embedding,
    timm Swin's attention masks, position tables and constants): after the model moves, both
    halves read the moved ones."""
    torch.manual_seed(0)
    if name == "vit":
        model = torchvision.models.vit_b_16(image_size=32, num_classes=5)
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5)
    traced = trace(model)
    plan = FreezePlan.from_model(model)
    plan.set_frozen(traced.param_order[: len(traced.param_order) // 2], True)
    cut = find_cut(traced, set(plan.frozen), random_ok=True)
    model.to("meta")
    reads = 0
    for half in split(traced, cut):
        for n in half.graph.nodes:
            if n.op == "get_attr":
                path, _, field = n.target.rpartition(".")
                value = getattr(half.get_submodule(path) if path else half, field)
                if isinstance(value, torch.Tensor):
                    reads += 1
                    assert value.device.type == "meta", n.target
    assert reads


@pytest.mark.parametrize("cache", [True, False])
def test_a_counter_counts_every_training_step_of_freezetui_train(cache):
    """Through ``train`` (the cached prefix, or the prefix under no_grad) a trainable module's
    Python counter counts each training step; it once read 1, the trace's own call."""
    from tiny import counting_cnn

    from freezetui import TrainConfig, train
    from freezetui.core.data import load_data

    data = load_data("shapes", shapes_train=64, shapes_val=16)
    torch.manual_seed(0)
    model = counting_cnn(num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.freeze("block1")
    result = train(model, plan, data, TrainConfig(epochs=2, batch_size=16, augment=False, cache=cache))
    assert int(model.block2[-1].calls) == 2 * (64 // 16)
    assert result.frozen_prefix is not None
