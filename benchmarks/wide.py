"""A model with 10,000 parameter tensors, for the toggle benchmark (--model wide:wide_model)."""

from torch import nn


def wide_model(blocks: int = 5000) -> nn.Module:
    layers = [nn.Linear(4, 4) for _ in range(blocks)]
    return nn.Sequential(nn.Flatten(), nn.AdaptiveAvgPool1d(4), *layers, nn.Linear(4, 10))
