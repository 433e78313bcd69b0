"""Benchmark: a plan's estimated cost against what a real training step uses, per family.

For each model and plan (full fine-tuning, frozen through a middle stage, head only):
activation bytes estimated vs the bytes autograd really saves in a training forward (the frozen
prefix under no_grad, as train.py runs it), and FLOPs per image estimated vs torch's FLOP
counter over a real forward and backward. On CUDA also the step's peak memory above what the
model, optimizer state and batch hold before it (torch.cuda.max_memory_allocated) against the
estimated activations plus gradients, under bf16 autocast as training runs there.

    python benchmarks/cost.py [--device cuda] [--image-size N] [--batch-size N] [--models a,b]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from freezetui.core.cost import estimate, measure_saved_bytes, profile_model
from freezetui.core.models import build_model, find_heads
from freezetui.core.runner import plan_from_rules
from freezetui.core.split import frozen_prefix, trace
from freezetui.core.train import TrainConfig, make_optimizer, plan_split

# family, model, the stages frozen in the middle plan
CASES = {
    "resnet50": ("ResNet", ["conv1", "bn1", "layer1", "layer2", "layer3"]),
    "resnet18": ("ResNet", ["conv1", "bn1", "layer1", "layer2", "layer3"]),
    "efficientnet_b0": ("EfficientNet", [f"features.{i}" for i in range(6)]),
    "convnext_tiny": ("ConvNeXt", [f"features.{i}" for i in range(6)]),
    "vit_b_16": ("ViT", ["conv_proj", "class_token", "encoder.pos_embedding"]
                 + [f"encoder.layers.encoder_layer_{i}" for i in range(9)]),
}


def plans(model, middle: list[str]) -> dict:
    head = find_heads(model)
    return {
        "full": plan_from_rules(model, []),
        "middle": plan_from_rules(model, [("freeze", g) for g in middle]),
        "head": plan_from_rules(model, [("freeze", "*")] + [("unfreeze", h) for h in head]),
    }


def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                   _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient asked for costs one forward. torch's own formula ignores ``groups`` for the
    input gradient, counting a depthwise convolution's backward as ~channels× its forward."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def measured_flops(model, plan, x, traced) -> float:
    plan.apply(model)
    model.train()
    prefix, rest, *_ = plan_split(model, plan, TrainConfig(cache=False), traced)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward})
    with counter:
        h = x
        if prefix is not None:
            with torch.no_grad():
                h = prefix(x)
        out = (rest if rest is not None else model)(h)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def cuda_step_peak(model, plan, x, traced) -> float:
    """Peak bytes one training step adds above the model, optimizer state and batch."""
    device = x.device
    plan.apply(model)
    model.train()
    prefix, rest, *_ = plan_split(model, plan, TrainConfig(cache=False), traced)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(), device)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = x
            if prefix is not None:
                with torch.no_grad():
                    h = prefix(x)
            loss = F.cross_entropy((rest if rest is not None else model)(h).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # optimizer state, cuDNN choices
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) - base
    del opt
    return peak


def run(device: str = "cpu", image_size: int = 64, batch_size: int = 8, models: list[str] | None = None) -> list[dict]:
    rows = []
    for name in models or list(CASES):
        family, middle = CASES[name]
        torch.manual_seed(0)
        kw = {"image_size": image_size} if name.startswith("vit") else {}
        model = build_model(name, weights="none", num_classes=10, **kw)
        t = time.perf_counter()
        profile = profile_model(model, image_size)
        profile_s = time.perf_counter() - t
        traced = trace(model)
        x = torch.randn(batch_size, 3, image_size, image_size)
        gpu_profile = None
        if device.startswith("cuda"):
            gpu_profile = profile_model(model, image_size, device=device, amp=True)
        for label, plan in plans(model, middle).items():
            prefix = frozen_prefix(traced, set(plan.frozen), [n for n, _ in model.named_parameters()])
            est = estimate(profile, plan, batch_size, prefix=prefix)
            model.cpu()
            saved = measure_saved_bytes(model, plan, x, traced)
            flops = measured_flops(model, plan, x, traced)
            row = {"family": family, "model": name, "plan": label, "image_size": image_size, "batch_size": batch_size,
                   "trainable": est["trainable_params"], "backward_stop": est["backward_stop"],
                   "est_activation_mib": round(est["activation_bytes"] / 2**20, 2),
                   "saved_mib": round(saved / 2**20, 2),
                   "activation_error_pct": round(100 * (est["activation_bytes"] - saved) / saved, 1) if saved else None,
                   "est_gflops_per_image": round(est["flops_per_image"] / 1e9, 3),
                   "counted_gflops_per_image": round(flops / 1e9, 3),
                   "flops_error_pct": round(100 * (est["flops_per_image"] - flops) / flops, 1),
                   "profile_s": round(profile_s, 1)}
            if gpu_profile is not None:
                g = estimate(gpu_profile, plan, batch_size, prefix=prefix)
                model.to(device)
                peak = cuda_step_peak(model, plan, x.to(device), traced)
                want = g["activation_bytes"] + g["grad_bytes"]
                row.update(cuda_est_mib=round(want / 2**20, 1), cuda_peak_mib=round(peak / 2**20, 1),
                           cuda_error_pct=round(100 * (want - peak) / peak, 1))
                model.cpu()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    cols = ["family", "model", "plan", "est_activation_mib", "saved_mib", "activation_error_pct",
            "est_gflops_per_image", "counted_gflops_per_image", "flops_error_pct"]
    if any("cuda_peak_mib" in r for r in rows):
        cols += ["cuda_est_mib", "cuda_peak_mib", "cuda_error_pct"]
    width = {c: max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c)).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--models", default=None, help="comma-separated, from " + ", ".join(CASES))
    a = p.parse_args()
    gpu = a.device.startswith("cuda")
    rows = run(a.device, a.image_size or (224 if gpu else 64), a.batch_size or (64 if gpu else 8),
               a.models.split(",") if a.models else None)
    print(table(rows))
