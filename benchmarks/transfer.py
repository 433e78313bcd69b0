"""Benchmark: transfer strategies on a real (built-in, offline) transfer task.

Pretrain a small CNN on five ``shapes`` classes (circle, square, triangle, diamond, plus), then
transfer it to the other five (ring, hbar, vbar, cross, frame) from few images with
(a) head only, (b) full fine-tune, (c) gradual unfreezing (a block per epoch, ULMFiT-style),
(d) discriminative rates (layer decay 1/2.6, ULMFiT's factor) and (e) the fine-tune recipe
(fastai's ``fine_tune``). Same epochs, schedule and seeds for all; mean ± sd over seeds.

    python benchmarks/transfer.py [--seeds 3] [--epochs 6] [--per-class 50] [--plot assets/transfer.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freezetui import FreezePlan, TrainConfig, train  # noqa: E402
from freezetui.core.data import Dataset, Split, load_data  # noqa: E402
from freezetui.core.schedule import fine_tune_recipe  # noqa: E402
from freezetui.core.shapes import CLASSES  # noqa: E402

SOURCE, TARGET = list(range(5)), list(range(5, 10))


class SmallCNN(nn.Module):
    """Four conv blocks and a Linear head ``fc``: features worth keeping, fast on two cores."""

    def __init__(self, num_classes: int = 5):
        super().__init__()

        def block(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        self.stem = block(3, 16, True)
        self.block1 = block(16, 32, True)
        self.block2 = block(32, 48, True)
        self.block3 = block(48, 64, False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def subset(data: Dataset, classes: list[int], per_class: int | None, name: str, val_per_class: int | None = None) -> Dataset:
    def pick(split: Split, limit: int | None) -> Split:
        keep = []
        for new, c in enumerate(classes):
            idx = (split.labels == c).nonzero().flatten()
            keep.append(idx[:limit] if limit else idx)
        idx = torch.cat(keep).sort().values
        remap = torch.full((10,), -1, dtype=torch.int64)
        remap[classes] = torch.arange(len(classes))
        return Split(split.images[idx].clone(), remap[split.labels[idx]])

    return Dataset(name, [CLASSES[c] for c in classes], pick(data.train, per_class), pick(data.val, val_per_class))


def strategy_plan(name: str, model: nn.Module) -> FreezePlan:
    plan = FreezePlan.from_model(model)
    for n in plan.params:
        plan.params[n] = False
    if name == "head only":
        plan.freeze("*")
        plan.unfreeze("fc")
    elif name == "gradual unfreezing":
        plan.freeze("*")
        plan.unfreeze("fc")
        plan.add_stage(2, unfreeze=["block3"])
        plan.add_stage(3, unfreeze=["block2"])
        plan.add_stage(4, unfreeze=["block1", "stem"])
    elif name == "discriminative rates":
        plan.set_layer_decay(1 / 2.6)
    elif name == "fine-tune recipe":
        fine_tune_recipe(plan, model)
    return plan


STRATEGIES = ["head only", "full fine-tune", "gradual unfreezing", "discriminative rates", "fine-tune recipe"]


def pretrain(data: Dataset, epochs: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = SmallCNN(len(data.classes))
    result = train(model, FreezePlan.from_model(model), data,
                   TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, device="cpu", seed=seed))
    print(f"pretrained on {', '.join(data.classes)}: val acc {100 * result.val_acc:.1f}% "
          f"in {result.seconds:.0f}s", flush=True)
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def transfer(body: dict, data: Dataset, strategy: str, seed: int, epochs: int, lr: float) -> list[float]:
    torch.manual_seed(seed)
    model = SmallCNN(len(data.classes))  # a fresh head, seeded
    model.load_state_dict(body, strict=False)
    plan = strategy_plan(strategy, model)
    result = train(model, plan, data, TrainConfig(epochs=epochs, batch_size=32, lr=lr, device="cpu", seed=seed))
    assert result.frozen_unchanged, result.changed
    return [e.val_acc for e in result.history]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def plot(curves: dict[str, list[list[float]]], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a text plot instead
        import plotext as plt

        path = path.with_suffix(".txt")
        plt.clear_figure()
        for name, runs in curves.items():
            mean = [statistics.mean(col) for col in zip(*runs)]
            plt.plot(list(range(1, len(mean) + 1)), [100 * m for m in mean], label=name)
        plt.title("transfer to 5 new shapes: val acc (%) by epoch")
        path.write_text(plt.build())
        return path
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    for name, runs in curves.items():
        cols = list(zip(*runs))
        mean = [100 * statistics.mean(c) for c in cols]
        sd = [100 * (statistics.stdev(c) if len(c) > 1 else 0) for c in cols]
        xs = list(range(1, len(mean) + 1))
        ax.plot(xs, mean, marker="o", label=name)
        ax.fill_between(xs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title("transfer to 5 new shapes (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    finals = {n: mean_sd([r[-1] for r in runs]) for n, runs in curves.items()}
    bx.barh(list(finals), [100 * m for m, _ in finals.values()], xerr=[100 * s for _, s in finals.values()],
            color=[f"C{i}" for i in range(len(finals))])
    bx.invert_yaxis()
    bx.set_xlabel("final val accuracy (%)")
    lo = min(100 * (m - s) for m, s in finals.values())
    bx.set_xlim(max(0, lo - 5), 100)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=50, help="training images per class in the target task")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--plot", default="assets/transfer.png")
    ap.add_argument("--json", help="write the numbers here too")
    args = ap.parse_args()

    t0 = time.perf_counter()
    shapes = load_data("shapes", shapes_train=3000, shapes_val=1000)
    source = subset(shapes, SOURCE, None, "shapes-source")
    target = subset(shapes, TARGET, args.per_class, "shapes-target", val_per_class=80)
    body = pretrain(source, args.pretrain_epochs)
    curves: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}
    for seed in range(args.seeds):
        for s in STRATEGIES:
            curves[s].append(transfer(body, target, s, seed, args.epochs, args.lr))
        print(f"seed {seed}: " + ", ".join(f"{s} {100 * curves[s][-1][-1]:.1f}%" for s in STRATEGIES), flush=True)

    print(f"\n{len(target.train)} training images of {', '.join(target.classes)}; {args.epochs} epochs, "
          f"cosine schedule, lr {args.lr:g}, {args.seeds} seeds\n")
    print("| strategy | final val acc (%) | best val acc (%) | epoch-1 val acc (%) |")
    print("|---|---|---|---|")
    table = {}
    for s, runs in curves.items():
        final, best, first = (mean_sd([f(r) for r in runs]) for f in (lambda r: r[-1], max, lambda r: r[0]))
        table[s] = {"final": final, "best": best, "epoch1": first}
        print(f"| {s} | {100 * final[0]:.1f} ± {100 * final[1]:.1f} | {100 * best[0]:.1f} ± {100 * best[1]:.1f} "
              f"| {100 * first[0]:.1f} ± {100 * first[1]:.1f} |")
    out = plot(curves, Path(args.plot))
    print(f"\nplot: {out}; {time.perf_counter() - t0:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
