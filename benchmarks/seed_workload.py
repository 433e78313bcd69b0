"""Benchmark 1: the seed's workload, its own loop against freezetui's engine, in one run.

AlexNet with the seed's small-input stem, features.* frozen, Adam lr 1e-4 wd 1e-2, random-crop
augmentation, on the same generated 32×32 image folder. Random weights (no download needed);
speed does not depend on the weights' values.

A fair comparison: freezetui runs at the seed's batch 16 as well as its own (the engine and the
batch size separated); PNG decoding is timed for neither (the seed's loop reads images decoded
beforehand, freezetui's from its decoded cache; both decode times are reported apart); both
run under the same cuDNN and TF32 settings; each number is the median of ``repeats`` runs.

    python benchmarks/seed_workload.py [--images 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as transforms
from PIL import Image
from torch import nn

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core.data import load_data


def make_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


WARMUP_BATCHES = 20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def same_backend_settings(device: str) -> None:
    """freezetui's settings (autotuned cuDNN, TF32 for fp32 matmuls), for the seed's loop too."""
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def decode_folder(folder: Path) -> tuple[dict, float]:
    """Every image of ``folder`` decoded (path -> RGB PIL image), and the seconds it took."""
    t0 = time.perf_counter()
    images = {}
    for path, _ in torchvision.datasets.ImageFolder(str(folder)).samples:
        with Image.open(path) as im:
            images[path] = im.convert("RGB")
    return images, time.perf_counter() - t0


def seed_loop(folder: Path, device: str, decoded: dict | None = None) -> float:
    """The seed's code, ported faithfully (ImageFolder instead of CIFAR10): batch 16, per-image
    PIL transforms, Adam over model.parameters(), every layer run with autograd, fp32. The first
    WARMUP_BATCHES are not timed (CUDA/cuDNN start-up), and the clock reads after a synchronize.
    ``decoded`` (from :func:`decode_folder`) replaces reading the files: decoding is not timed."""
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    loader = {"loader": decoded.__getitem__} if decoded is not None else {}
    trainset = torchvision.datasets.ImageFolder(str(folder), transform=transform, **loader)
    loader = torch.utils.data.DataLoader(trainset, batch_size=16, shuffle=True)
    model = torchvision.models.alexnet(weights=None)
    num_ftrs = model.classifier[6].in_features
    model.features[0] = nn.Conv2d(3, 64, kernel_size=5, stride=1)
    model.classifier[6] = nn.Linear(num_ftrs, 10)
    model = model.to(device)
    for i, (name, param) in enumerate(model.named_parameters()):
        param.requires_grad = False
        if i == 9:
            break
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-2)
    model.train()
    seen, t0 = 0, time.perf_counter()
    warmup = min(WARMUP_BATCHES, len(loader) // 4)  # a small folder still keeps most batches timed
    for i, (inputs, labels) in enumerate(loader):
        if i == warmup and i:
            _sync(device)
            seen, t0 = 0, time.perf_counter()
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    _sync(device)
    return seen / (time.perf_counter() - t0)


def freezetui_run(folder: Path, device: str, batch_size: int, amp: bool = False, data=None) -> float:
    """Two epochs; the second one's speed (the first pays start-up and autotuning)."""
    data = data if data is not None else load_data(str(folder))
    model = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    plan = FreezePlan.from_model(model)
    plan.freeze("features.*")
    config = TrainConfig(epochs=2, batch_size=batch_size, optimizer="adam", lr=1e-4, weight_decay=1e-2,
                         device=device, amp=amp)
    return train(model, plan, data, config).history[-1].images_per_s


def _median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def run(device: str = "cpu", images: int = 1000, batch_size: int | None = None, repeats: int = 3) -> list[dict]:
    batch_size = batch_size or TrainConfig().batch_size
    gpu = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "imgs", images)
        decoded, seed_decode_s = decode_folder(folder)
        data = load_data(str(folder), cache_dir=Path(tmp) / "cache")  # decoded once, as a user's first run does

        def seed():
            same_backend_settings(device)
            return seed_loop(folder, device, decoded)

        def ours(bs, amp=False):
            return lambda: freezetui_run(folder, device, bs, amp=amp, data=data)

        seed_ips = _median(seed, repeats)
        at_16 = _median(ours(16), repeats)
        at_default = _median(ours(batch_size), repeats)
        bf16 = _median(ours(batch_size, amp=True), repeats) if gpu else None
    row = {"benchmark": f"seed workload: AlexNet small-input, features.* frozen, {images} images",
           "device": device, "repeats": repeats, "seed_fp32_images_per_s": round(seed_ips, 1),
           "freezetui_fp32_b16_images_per_s": round(at_16, 1), "speedup_engine_b16": round(at_16 / seed_ips, 2),
           "freezetui_fp32_images_per_s": round(at_default, 1), "batch_size": batch_size,
           "speedup_fp32": round(at_default / seed_ips, 2),
           "decode_s_not_timed": {"seed_pil": round(seed_decode_s, 2), "freezetui_cache": round(data.load_seconds, 2)}}
    if gpu:
        row["fp32_means"] = "TF32 matmuls and autotuned cuDNN, for both"
    if bf16 is not None:
        row.update(freezetui_bf16_images_per_s=round(bf16, 1), speedup_bf16=round(bf16 / seed_ips, 2))
    return [row]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(json.dumps(run(args.device, args.images, args.batch_size, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
