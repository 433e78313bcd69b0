"""Benchmark 5: where a run spends its time. Training images/s of ResNet-18 (all trainable, no
augmentation) against batch size at 32 px, and against image size at batch 64.

    python benchmarks/scaling.py [--device cpu]
"""

from __future__ import annotations

import argparse
import json

import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.data import load_data


def ips(data, device: str, batch_size: int, image_size: int | None) -> float:
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", num_classes=data.num_classes)
    config = TrainConfig(epochs=2, batch_size=batch_size, image_size=image_size, device=device, augment=False)
    return train(model, FreezePlan.from_model(model), data, config).history[-1].images_per_s


def run(device: str = "cpu", images: int = 512) -> list[dict]:
    data = load_data("shapes", shapes_train=images, shapes_val=32)
    rows = []
    for bs in (16, 32, 64, 128):
        rows.append({"benchmark": f"scaling: ResNet-18, 32 px, batch {bs}", "device": device,
                     "images_per_s": round(ips(data, device, bs, None), 1)})
    for size in (64, 96):
        rows.append({"benchmark": f"scaling: ResNet-18, {size} px, batch 64", "device": device,
                     "images_per_s": round(ips(data, device, 64, size), 1)})
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    print(json.dumps(run(a.device, images=4096 if a.device.startswith("cuda") else 512), indent=2))
