"""Benchmark: does the best block to tune depend on the kind of shift, and does ``suggest`` find it?

A local, CPU-sized version of Lee et al., "Surgical Fine-Tuning Improves Adaptation to
Distribution Shifts" (ICLR 2023), Figure 2. A small CNN (stem, block1, block2, block3, head
``fc``; ``benchmarks/transfer.py``'s) is pretrained on five filled ``shapes`` classes (circle,
square, triangle, diamond, plus), then adapted from a small labelled set to three targets:

* input-level: the same images corrupted (Gaussian noise, blur or colour inversion, one each);
* feature-level: the same classes drawn differently (outlines instead of fills, smaller);
* output-level: the same images with the labels permuted (each class takes the next one's name).

As in the paper every strategy starts from the whole source model, its head included (the label
space is the same). Strategies: each single block alone (surgical: ``stem`` … ``block3``, and
``head`` = the last layer), full fine-tuning, ``suggest``'s plan (measured on the target's
training set) and Auto-RGN (everything trainable, rates × normalised ‖g‖/‖w‖ every step). Same
epochs and optimizer for all; as in the paper each strategy gets its own learning rate, the one of
``--lrs`` with the best mean accuracy on a held-out selection set, and is reported on a separate
test set (mean ± sd over seeds). Then: the best single block per shift, Spearman's rank
correlation between suggest's block signals and the single-block accuracies, and suggest's time
against the sweep's (``freezetui sweep``'s ladder on the target, one rate).

    python benchmarks/surgical.py [--seeds 3] [--epochs 8] [--per-class 30] [--svg assets/surgical.svg]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer import SmallCNN, mean_sd  # noqa: E402

from freezetui import FreezePlan, TrainConfig, train  # noqa: E402
from freezetui.core.data import Dataset, Split  # noqa: E402
from freezetui.core.runner import RunInputs  # noqa: E402
from freezetui.core.shapes import CLASSES, SIZE, _masks  # noqa: E402
from freezetui.core.specs import ModelSpec  # noqa: E402
from freezetui.core.split import trace  # noqa: E402
from freezetui.core.suggest import suggest  # noqa: E402
from freezetui.core.sweep import run_sweep  # noqa: E402

SOURCE = [0, 1, 2, 3, 4]  # circle, square, triangle, diamond, plus
BLOCKS = ["stem", "block1", "block2", "block3", "head"]
SHIFTS = ["input", "feature", "output"]
STRATEGIES = BLOCKS + ["full", "suggested", "auto-rgn"]


# ----------------------------------------------------------------------------- the tasks


def draw(n: int, seed: int, outline: bool = False, r_range=(6.0, 11.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """``shapes``' drawing (freezetui.core.shapes.make_shapes) for the SOURCE classes, filled or
    as outlines, at radii ``r_range``: uint8 (n, 3, 32, 32) and labels 0..4."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(SOURCE)
    labels = labels[torch.randperm(n, generator=g)]
    r = torch.empty(n, 1, 1).uniform_(*r_range, generator=g)
    cx = torch.empty(n, 1, 1).uniform_(11.0, 21.0, generator=g)
    cy = torch.empty(n, 1, 1).uniform_(11.0, 21.0, generator=g)
    grid = torch.arange(SIZE, dtype=torch.float32)
    dx, dy = grid.view(1, 1, SIZE) - cx, grid.view(1, SIZE, 1) - cy
    masks = torch.stack([_masks(dx, dy, r)[c] for c in SOURCE], dim=1)
    if outline:  # the shape minus a shrunken copy of itself: a stroke about 2 px wide
        inner = torch.stack([_masks(dx, dy, r - 2.2)[c] for c in SOURCE], dim=1)
        masks = masks & ~inner
    mask = masks[torch.arange(n), labels].unsqueeze(1)
    bg = torch.randint(0, 256, (n, 3, 1, 1), generator=g).float()
    fg = torch.remainder(bg + 128 + torch.empty(n, 3, 1, 1).uniform_(-40, 40, generator=g), 256)
    img = torch.where(mask, fg, bg) + torch.randn(n, 3, SIZE, SIZE, generator=g) * 18
    return img.clamp_(0, 255).to(torch.uint8), labels


def corrupt(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image gets one of: heavy Gaussian noise, a blur, colour inversion."""
    g = torch.Generator().manual_seed(seed)
    x = images.float()
    kind = torch.arange(len(x)) % 3
    noisy = x + torch.randn(x.shape, generator=g) * 70
    k = torch.ones(3, 1, 5, 5) / 25
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=3)
    inverted = 255 - x
    out = torch.where((kind == 0).view(-1, 1, 1, 1), noisy, torch.where((kind == 1).view(-1, 1, 1, 1), blurred, inverted))
    return out.clamp(0, 255).to(torch.uint8)


def task(shift: str | None, n_train: int, n_val: int, seed: int = 0, n_test: int = 0) -> tuple[Dataset, Split]:
    """The source task (shift None) or a target: ``n_train`` training images, ``n_val`` to
    validate on (the selection set), and a test split of ``n_test``."""
    names = [CLASSES[c] for c in SOURCE]
    splits = []
    for k, n in enumerate((n_train, n_val, n_test)):
        s = 1000 * seed + 10 * k + 7
        if shift == "feature":
            x, y = draw(n, s, outline=True, r_range=(5.0, 8.0))
        else:
            x, y = draw(n, s)
        if shift == "input":
            x = corrupt(x, s)
        if shift == "output":
            y = (y + 1) % len(SOURCE)
        splits.append(Split(x, y))
    if shift == "output":
        names = names[1:] + names[:1]
    return Dataset(f"shapes-{shift or 'source'}", names, *splits[:2]), splits[2]


# ----------------------------------------------------------------------------- the strategies


def plan_for(strategy: str, model, signal_plan: FreezePlan | None) -> FreezePlan:
    plan = FreezePlan.from_model(model)
    plan.set_frozen(list(plan.params), False)
    if strategy in BLOCKS:
        plan.freeze("*")
        plan.unfreeze("fc" if strategy == "head" else strategy)
    elif strategy == "suggested":
        plan = signal_plan
    elif strategy == "auto-rgn":
        plan.auto_rgn = True
    return plan


def config(args, seed: int) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr, device="cpu", seed=seed, augment=False,
                       warmup_epochs=0.0)


def pretrain(data: Dataset, epochs: int) -> dict:
    torch.manual_seed(0)
    model = SmallCNN(len(data.classes))
    result = train(model, FreezePlan.from_model(model), data,
                   TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, device="cpu", seed=0))
    print(f"pretrained on {', '.join(data.classes)}: val acc {100 * result.val_acc:.1f}% in {result.seconds:.0f}s",
          flush=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def source_model(weights: dict) -> SmallCNN:
    model = SmallCNN(len(SOURCE))
    model.load_state_dict(weights)
    return model


def run(weights: dict, data: Dataset, test: Split, strategy: str, seed: int, args,
        suggested: FreezePlan | None) -> tuple[float, float]:
    """(accuracy on the selection set, on the test set) after training."""
    torch.manual_seed(seed)
    model = source_model(weights)
    plan = plan_for(strategy, model, suggested)
    result = train(model, plan, data, config(args, seed))
    assert result.frozen_unchanged, result.changed
    return result.val_acc, accuracy(model, test)


def measure(weights: dict, data: Dataset, args, seed: int):
    model = source_model(weights)
    inputs = RunInputs(model, FreezePlan.from_model(model), data, trace(model), torch.device("cpu"))
    return suggest(inputs, TrainConfig(batch_size=32, seed=seed, device="cpu"), batches=args.batches,
                   threshold=args.threshold)


def block_signals(signal) -> dict[str, float]:
    """The measurement's ‖g‖/‖w‖ of each of BLOCKS over the largest among the four body blocks
    (the sweep's stages merge the tiny stem into block1; here each block is scored alone), and
    the head's over the same maximum."""
    names = {b: [n for n in signal.names if n.startswith(("fc." if b == "head" else b + "."))] for b in BLOCKS}
    raw = {b: signal.rgn(ns) or 0.0 for b, ns in names.items()}
    top = max(raw[b] for b in BLOCKS if b != "head") or 1.0
    return {b: v / top for b, v in raw.items()}


def sweep_seconds(weights: dict, data: Dataset, args) -> float:
    """The time ``freezetui sweep``'s ladder takes on this target (head, +block3, …, all)."""
    model = source_model(weights)
    inputs = RunInputs(model, FreezePlan.from_model(model), data, trace(model), torch.device("cpu"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_sweep(ModelSpec("SmallCNN"), data.name, config(args, 0), out, inputs=inputs, data=data)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- statistics and the plot


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=xs.__getitem__)
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    sa = sum((x - ma) ** 2 for x in ra) ** 0.5
    sb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (sa * sb) if sa and sb else None


def svg(table: dict, path: Path) -> Path:
    """Grouped bars: accuracy ± sd per strategy, one group per shift (a plain SVG, no plotting library)."""
    colours = ["#3b6fb6", "#5a8fd6", "#7fb0ea", "#a9cdf5", "#1b3f7a", "#888888", "#d9822b", "#2e9e5b"]
    w, h, left, top, bottom = 900, 360, 50, 30, 70
    group = (w - left - 20) / len(SHIFTS)
    bar = group / (len(STRATEGIES) + 1.5)
    y = lambda acc: top + (h - top - bottom) * (1 - acc)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">Surgical fine-tuning on shapes: test '
             f'accuracy (mean ± sd over seeds, each strategy at its selected rate)</text>']
    for t in range(0, 11, 2):
        yy = y(t / 10)
        parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10 * t}%</text>')
    for gi, shift in enumerate(SHIFTS):
        x0 = left + gi * group + bar * 0.75
        for si, s in enumerate(STRATEGIES):
            m, sd = table[shift][s]
            x = x0 + si * bar
            parts.append(f'<rect x="{x:.1f}" y="{y(m):.1f}" width="{bar * 0.85:.1f}" height="{y(0) - y(m):.1f}" '
                         f'fill="{colours[si]}"><title>{shift} · {s}: {100 * m:.1f} ± {100 * sd:.1f}%</title></rect>')
            cx = x + bar * 0.425
            parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(min(1, m + sd)):.1f}" y2="{y(max(0, m - sd)):.1f}" '
                         f'stroke="black"/>')
        parts.append(f'<text x="{left + gi * group + group / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle" '
                     f'font-size="12">{shift}-level shift</text>')
    lx = left
    for si, s in enumerate(STRATEGIES):
        parts.append(f'<rect x="{lx}" y="{h - 30}" width="12" height="12" fill="{colours[si]}"/>'
                     f'<text x="{lx + 16}" y="{h - 20}">{s}</text>')
        lx += 16 + 8 * len(s) + 18
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
    return path


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=30, help="labelled training images per class in each target")
    ap.add_argument("--val-per-class", type=int, default=40, help="selection-set images per class (choose the rate)")
    ap.add_argument("--test-per-class", type=int, default=100, help="test images per class (reported)")
    ap.add_argument("--lrs", default="0.001,0.003,0.01,0.03", help="rates tried for every strategy")
    ap.add_argument("--lr", type=float, default=3e-3, help="the sweep's rate (timing only)")
    ap.add_argument("--batches", type=int, default=8, help="suggest's batches")
    ap.add_argument("--threshold", type=float, default=0.5, help="suggest's threshold")
    ap.add_argument("--svg", default="assets/surgical.svg")
    ap.add_argument("--json", help="write the numbers here too")
    args = ap.parse_args()

    t0 = time.perf_counter()
    weights = pretrain(task(None, 3000, 500)[0], args.pretrain_epochs)
    n_train, n_val = args.per_class * len(SOURCE), args.val_per_class * len(SOURCE)
    lrs = [float(x) for x in args.lrs.split(",")]
    results: dict = {}
    for shift in SHIFTS:
        data, test = task(shift, n_train, n_val, seed=1, n_test=args.test_per_class * len(SOURCE))
        zero_shot = accuracy(source_model(weights), test)
        # (strategy, lr) -> per seed (selection acc, test acc)
        raw = {(s, lr): [] for s in STRATEGIES for lr in lrs}
        signals, chosen, suggest_s = [], [], []
        for seed in range(args.seeds):
            sig = measure(weights, data, args, seed)
            suggest_s.append(sig.signal.seconds)
            signals.append(block_signals(sig.signal))
            chosen.append(sig.blocks)
            for s in STRATEGIES:
                for lr in lrs:
                    raw[s, lr].append(run(weights, data, test, s, seed, argparse.Namespace(**{**vars(args), "lr": lr}),
                                          sig.plan))
            print(f"{shift} seed {seed}: " + ", ".join(
                f"{s} " + "/".join(f"{100 * raw[s, lr][-1][1]:.0f}" for lr in lrs) for s in STRATEGIES)
                + f" | suggested {'+'.join(sig.blocks) or 'head alone'} | signal "
                + " ".join(f"{b} {signals[-1][b]:.2f}" for b in BLOCKS), flush=True)
        best_lr = {s: max(lrs, key=lambda lr: statistics.mean(a for a, _ in raw[s, lr])) for s in STRATEGIES}
        accs = {s: [t for _, t in raw[s, best_lr[s]]] for s in STRATEGIES}
        body = [b for b in BLOCKS if b != "head"]
        rhos = [spearman([signals[k][b] for b in body], [accs[b][k] for b in body]) for k in range(args.seeds)]
        sweep_s = sweep_seconds(weights, data, args)
        results[shift] = {"accuracy": {s: mean_sd(v) for s, v in accs.items()}, "runs": accs, "lr": best_lr,
                          "all": {f"{s}@{lr:g}": v for (s, lr), v in raw.items()},
                          "zero_shot": zero_shot, "signals": signals, "suggested": chosen, "spearman": rhos,
                          "suggest_seconds": suggest_s, "sweep_seconds": sweep_s}

    print(f"\n{n_train} labelled training images per target, {n_val} to choose the rate, "
          f"{args.test_per_class * len(SOURCE)} to test; {args.epochs} epochs, AdamW, cosine, batch 32, rate per "
          f"strategy from {args.lrs}, {args.seeds} seeds; suggest: {args.batches} batches of 32, "
          f"threshold {args.threshold:g}\n")
    print("| strategy | " + " | ".join(f"{s}-level" for s in SHIFTS) + " |")
    print("|---|" + "---|" * len(SHIFTS))
    print("| source model, no tuning | " + " | ".join(f"{100 * results[s]['zero_shot']:.1f}" for s in SHIFTS) + " |")
    for st in STRATEGIES:
        cells = []
        for s in SHIFTS:
            m, sd = results[s]["accuracy"][st]
            cells.append(f"{100 * m:.1f} ± {100 * sd:.1f} (lr {results[s]['lr'][st]:g})")
        print(f"| {st} | " + " | ".join(cells) + " |")
    print()
    for s in SHIFTS:
        acc = results[s]["accuracy"]
        best = max(BLOCKS, key=lambda b: acc[b][0])
        rho = [r for r in results[s]["spearman"] if r is not None]
        sig = {b: statistics.mean(x[b] for x in results[s]["signals"]) for b in BLOCKS}
        print(f"{s}-level: best single block {best}; suggest's mean signal (blocks over the largest body block) "
              + ", ".join(f"{b} {v:.2f}" for b, v in sig.items())
              + f"; suggested {', '.join('+'.join(c) or 'head alone' for c in results[s]['suggested'])}; "
              f"Spearman(signal, single-block acc) {statistics.mean(rho) if rho else float('nan'):+.2f} "
              f"(per seed {', '.join(f'{r:+.2f}' for r in rho)}); suggest {statistics.mean(results[s]['suggest_seconds']):.2f}s "
              f"vs sweep {results[s]['sweep_seconds']:.1f}s")
    out = svg({s: results[s]["accuracy"] for s in SHIFTS}, Path(args.svg))
    print(f"\nplot: {out}; {time.perf_counter() - t0:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


@torch.no_grad()
def accuracy(model, split: Split) -> float:
    from freezetui.core.data import BatchTransform
    from freezetui.core.train import evaluate

    return evaluate(model, split, BatchTransform(SIZE), 256, torch.device("cpu"), False)[1]


if __name__ == "__main__":
    main()
