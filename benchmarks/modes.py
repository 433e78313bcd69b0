"""Benchmark: parameter-efficient modes against head-only and full fine-tuning.

The transfer task of ``benchmarks/transfer.py`` (pretrain on five ``shapes`` classes, transfer to
the other five from few images), on its small CNN and on a small torchvision ViT at 32 px
(random init, pretrained on the source classes the same way). Modes: head only, bias-only
(BitFit), norm-only, LoRA r = 4 and r = 8 (alpha = 2r; the ViT's attention and MLP, the CNN's
convolutions), full fine-tuning. Same epochs, rate and schedule for all; mean ± sd over seeds;
trainable parameters (adapters included), optimizer state, activation bytes (estimated by
``cost.estimate`` and measured by ``cost.measure_saved_bytes``) and training images/s.

    python benchmarks/modes.py [--seeds 3] [--epochs 6] [--per-class 50] [--models cnn,vit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer import SOURCE, TARGET, SmallCNN, mean_sd, subset  # noqa: E402

from freezetui import FreezePlan, TrainConfig, train  # noqa: E402
from freezetui.core.adapters import AdapterRule, adapter_tensors, bias_only, norm_only  # noqa: E402
from freezetui.core.cost import estimate, human_bytes, measure_saved_bytes, profile_model  # noqa: E402
from freezetui.core.data import load_data  # noqa: E402
from freezetui.core.split import frozen_prefix, trace  # noqa: E402

MODES = ["head only", "bias-only", "norm-only", "LoRA r=4", "LoRA r=8", "full fine-tune"]


def small_vit(num_classes: int = 5) -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=num_classes)


MODELS = {
    # name: (builder, head, LoRA globs, source images, pretraining epochs, rate). A ViT from scratch
    # learns the source classes slowly on two cores: 4,000 source images, 8 epochs at 1e-3 reach
    # about 37 % (20 % is chance); patch 4 and 15 epochs reached 39 % in 5× the time.
    "cnn": (SmallCNN, "fc", ["stem", "block*"], 3000, 3, 3e-3),
    "vit": (small_vit, "heads", ["encoder"], 8000, 8, 1e-3),
}


def mode_plan(mode: str, model: nn.Module, head: str, lora_globs: list[str]) -> FreezePlan:
    plan = FreezePlan.from_model(model)
    plan.set_frozen(list(plan.params), mode != "full fine-tune")
    if mode == "bias-only":
        bias_only(plan, "*")
    elif mode == "norm-only":
        norm_only(plan, "*")
    elif mode.startswith("LoRA"):
        r = int(mode.split("=")[1])
        for glob in lora_globs:
            plan.add_lora(model, AdapterRule(glob, r, 2.0 * r))
    plan.unfreeze(head)
    return plan


def pretrain(builder, data, epochs: int, lr: float) -> dict:
    torch.manual_seed(0)
    model = builder(len(data.classes))
    result = train(model, FreezePlan.from_model(model), data,
                   TrainConfig(epochs=epochs, batch_size=64, lr=lr, device="cpu", seed=0))
    print(f"  pretrained: val acc {100 * result.val_acc:.1f}% in {result.seconds:.0f}s", flush=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def price(builder, body: dict, mode: str, head: str, globs: list[str], batch: int) -> dict:
    """The estimate and autograd's measured saved bytes for one mode at ``batch``."""
    torch.manual_seed(0)
    model = builder(5)
    model.load_state_dict(body, strict=False)
    plan = mode_plan(mode, model, head, globs)
    traced = trace(model)
    prefix = frozen_prefix(traced, plan.prefix_frozen(), [n for n, _ in model.named_parameters()])
    est = estimate(profile_model(model, 32), plan, batch, "adamw", prefix=prefix)
    measured = measure_saved_bytes(model, plan, torch.randn(batch, 3, 32, 32), traced)
    return {"trainable": est["trainable_params"], "optimizer_bytes": est["optimizer_bytes"],
            "activation_estimate": est["activation_bytes"], "activation_measured": measured}


def transfer(builder, body: dict, data, mode: str, head: str, globs: list[str], seed: int, epochs: int,
             lr: float) -> tuple[float, float, int]:
    torch.manual_seed(seed)
    model = builder(len(data.classes))
    model.load_state_dict({k: v for k, v in body.items() if not k.startswith(head + ".")}, strict=False)
    plan = mode_plan(mode, model, head, globs)
    result = train(model, plan, data, TrainConfig(epochs=epochs, batch_size=32, lr=lr, device="cpu", seed=seed))
    assert result.frozen_unchanged, result.changed
    return result.val_acc, result.train_images_per_s, sum(t.numel() for _, t in adapter_tensors(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pretrain-epochs", type=int, help="default: the model's own (3 for the CNN, 8 for the ViT)")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--lr", type=float, help="the transfer's rate for every mode (default: the model's pretraining rate)")
    ap.add_argument("--models", default="cnn,vit")
    ap.add_argument("--json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    shapes = load_data("shapes", shapes_train=3000, shapes_val=1000)
    target = subset(shapes, TARGET, args.per_class, "shapes-target", val_per_class=80)  # transfer.py's
    out = {}
    for name in args.models.split(","):
        builder, head, globs, n_source, pre_epochs, pre_lr = MODELS[name]
        print(f"{name}:", flush=True)
        source = subset(load_data("shapes", shapes_train=n_source, shapes_val=1000), SOURCE, None, "shapes-source")
        body = pretrain(builder, source, args.pretrain_epochs or pre_epochs, pre_lr)
        rows = {}
        for mode in MODES:
            runs = [transfer(builder, body, target, mode, head, globs, s, args.epochs, args.lr or pre_lr)
                    for s in range(args.seeds)]
            acc = mean_sd([r[0] for r in runs])
            speed = mean_sd([r[1] for r in runs])
            rows[mode] = {"acc": acc, "images_per_s": speed, **price(builder, body, mode, head, globs, 32)}
            print(f"  {mode}: {100 * acc[0]:.1f} ± {100 * acc[1]:.1f}%", flush=True)
        out[name] = rows
    print(f"\n{len(target.train)} training images, {args.epochs} epochs, AdamW at the model's rate for every mode, "
          f"{args.seeds} seeds; bytes at batch 32, 32 px, fp32\n")
    print("| model | mode | val acc (%) | trainable params | optimizer state | activations est. | measured | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in out.items():
        for mode, r in rows.items():
            print(f"| {name} | {mode} | {100 * r['acc'][0]:.1f} ± {100 * r['acc'][1]:.1f} | {r['trainable']:,} | "
                  f"{human_bytes(r['optimizer_bytes'])} | {human_bytes(r['activation_estimate'])} | "
                  f"{human_bytes(r['activation_measured'])} | {r['images_per_s'][0]:,.0f} |")
    print(f"\n{time.perf_counter() - t0:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
