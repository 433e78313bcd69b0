"""Benchmark 3: what a frozen prefix saves. ResNet-50, full fine-tune against frozen through
layer3 (the prefix runs under no_grad, nothing cached: augmentation on), images/s and peak
memory. The goal is stated for a GPU at 224 px; on a CPU peak memory is not measured.

    python benchmarks/prefix_savings.py [--device cuda] [--image-size 224] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json

import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.data import load_data
from freezetui.core.train import release_memory


def one(data, freeze: bool, device: str, image_size: int, batch_size: int) -> tuple[float, float | None]:
    torch.manual_seed(0)
    model = build_model("resnet50", weights="none", num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    if freeze:
        for g in ("conv1", "bn1", "layer1", "layer2", "layer3"):
            plan.freeze(g)
    release_memory(device)  # the previous run's optimizer state must not count in this peak
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(epochs=2, batch_size=batch_size, image_size=image_size, device=device, augment=True)
    result = train(model, plan, data, config)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return result.history[-1].images_per_s, peak


def run(device: str = "cpu", image_size: int = 64, batch_size: int = 32, images: int = 512) -> list[dict]:
    data = load_data("shapes", shapes_train=images, shapes_val=64)
    full_ips, full_mem = one(data, False, device, image_size, batch_size)
    frozen_ips, frozen_mem = one(data, True, device, image_size, batch_size)
    row = {"benchmark": f"frozen prefix: ResNet-50 through layer3 vs full fine-tune, {image_size} px, batch {batch_size}",
           "device": device, "full_images_per_s": round(full_ips, 1), "frozen_images_per_s": round(frozen_ips, 1),
           "speedup": round(frozen_ips / full_ips, 2)}
    if full_mem is not None:
        row.update(full_peak_gib=round(full_mem, 2), frozen_peak_gib=round(frozen_mem, 2),
                   memory_ratio=round(full_mem / frozen_mem, 2))
    return [row]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    a = p.parse_args()
    gpu = a.device.startswith("cuda")
    print(json.dumps(run(a.device, a.image_size or (224 if gpu else 64), a.batch_size or (64 if gpu else 32),
                         images=4096 if gpu else 512), indent=2))
