"""Small models for tests, importable as ``--model tiny:tiny_cnn`` with tests/ on sys.path."""

from torch import nn


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A small CNN with BatchNorm: stem, two blocks and a Linear head named ``fc``."""
    return _Tiny(num_classes)


class _Tiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def nan_cnn() -> nn.Module:
    """A model whose output is NaN, to test the NaN-loss stop."""
    import torch

    m = _Tiny(10)
    with torch.no_grad():
        m.fc.bias.fill_(float("nan"))
    return m


def vit64(num_classes: int = 10) -> nn.Module:
    """A small torchvision ViT built for 64 px input: any other size fails in its forward."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)


def only32(num_classes: int = 10) -> nn.Module:
    """A CNN whose Linear head fits 32 px input only, and says so nowhere."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 16 * 16, num_classes))


class _Counting(nn.Module):
    """Counts its train-mode calls in a buffer, in Python."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", __import__("torch").zeros((), dtype=__import__("torch").long))

    def forward(self, x):
        if self.training:
            self.calls += 1
        return x


def counting_cnn(num_classes: int = 10) -> nn.Module:
    """tiny_cnn with a counter of train-mode calls after block2 (trainable, past any frozen prefix)."""
    m = _Tiny(num_classes)
    m.block2.append(_Counting())
    return m


def model_and_plan(freeze=("stem",), classes=None):
    """``tiny:tiny_cnn`` built from seed 0 with a plan freezing the globs in ``freeze``."""
    import torch

    from freezetui import FreezePlan, build_model

    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=classes)
    plan = FreezePlan.from_model(model)
    for g in freeze:
        plan.freeze(g)
    return model, plan
