"""``shapes``: a built-in synthetic dataset (10 classes of coloured shapes on noisy backgrounds,
32×32, deterministic by seed), so the tool works offline and tests need no download."""

from __future__ import annotations

import torch

CLASSES = [
    "circle", "square", "triangle", "diamond", "plus",
    "ring", "hbar", "vbar", "cross", "frame",
]
SIZE = 32


def _masks(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> list[torch.Tensor]:
    ax, ay = dx.abs(), dy.abs()
    dist = (dx * dx + dy * dy).sqrt()
    box = torch.maximum(ax, ay)
    thin = 0.32 * r
    return [
        dist <= r,                                                     # circle
        box <= 0.8 * r,                                                # square
        (dy >= -r) & (dy <= 0.8 * r) & (ax <= (dy + r) * 0.55),        # triangle
        ax + ay <= r,                                                  # diamond
        ((ax <= thin) & (ay <= r)) | ((ay <= thin) & (ax <= r)),       # plus
        (dist <= r) & (dist >= 0.55 * r),                              # ring
        (ax <= r) & (ay <= 0.35 * r),                                  # hbar
        (ay <= r) & (ax <= 0.35 * r),                                  # vbar
        (((dx - dy).abs() <= thin) | ((dx + dy).abs() <= thin)) & (box <= 0.8 * r),  # cross
        (box <= 0.9 * r) & (box >= 0.55 * r),                          # frame
    ]


def make_shapes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images as uint8 ``(n, 3, 32, 32)`` and their labels, the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]
    r = torch.empty(n, 1, 1).uniform_(6.0, 11.0, generator=g)
    cx = torch.empty(n, 1, 1).uniform_(11.0, 21.0, generator=g)
    cy = torch.empty(n, 1, 1).uniform_(11.0, 21.0, generator=g)
    grid = torch.arange(SIZE, dtype=torch.float32)
    dx = grid.view(1, 1, SIZE) - cx
    dy = grid.view(1, SIZE, 1) - cy
    masks = torch.stack(_masks(dx, dy, r), dim=1)  # (n, classes, H, W)
    mask = masks[torch.arange(n), labels].unsqueeze(1)  # (n, 1, H, W)

    bg = torch.randint(0, 256, (n, 3, 1, 1), generator=g).float()
    jitter = torch.empty(n, 3, 1, 1).uniform_(-40, 40, generator=g)
    fg = torch.remainder(bg + 128 + jitter, 256)
    img = torch.where(mask, fg, bg)
    img = img + torch.randn(n, 3, SIZE, SIZE, generator=g) * 18
    return img.clamp_(0, 255).to(torch.uint8), labels


def shapes_splits(train: int = 5000, val: int = 1000, seed: int = 0):
    """Train and validation splits drawn with different seeds, so they share no image."""
    return make_shapes(train, seed=seed * 2 + 1), make_shapes(val, seed=seed * 2 + 2)
