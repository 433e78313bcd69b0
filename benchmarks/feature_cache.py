"""Benchmark 2: the feature cache. ResNet-18 frozen except fc, no augmentation, on shapes:
epoch time with the frozen prefix's outputs cached against recomputing them every epoch.

    python benchmarks/feature_cache.py [--image-size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json

import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.data import load_data


def one_run(data, cache: bool, image_size: int, device: str):
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    plan.freeze("*")
    plan.unfreeze("fc")
    config = TrainConfig(epochs=2, augment=False, cache=cache, image_size=image_size, device=device, lr=1e-2)
    return train(model, plan, data, config)


def run(image_size: int = 64, device: str = "cpu", train_images: int = 5000) -> list[dict]:
    data = load_data("shapes", shapes_train=train_images, shapes_val=1000)
    cached = one_run(data, True, image_size, device)
    plain = one_run(data, False, image_size, device)
    # epoch 2: after the first epoch, which for the cached run also paid for computing the cache
    c, p = cached.history[-1].seconds, plain.history[-1].seconds
    return [{
        "benchmark": f"feature cache: ResNet-18 frozen except fc, {image_size} px, {train_images} images, no aug",
        "device": device,
        "uncached_epoch_s": round(p, 2), "cached_epoch_s": round(c, 3), "speedup": round(p / c, 1),
        "uncached_val_acc": plain.val_acc, "cached_val_acc": cached.val_acc,
        "total_s_cached": round(cached.seconds, 1), "total_s_uncached": round(plain.seconds, 1),
    }]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print(json.dumps(run(args.image_size, args.device), indent=2))
