"""Time the plan operations that run when a plan is opened, for a model with 10,000 parameter tensors.

    python benchmarks/plan_load.py [--tensors 10000]

Prints one line per operation (milliseconds, best of 3); every step should be linear in the
number of tensors (well under 100 ms at 10k).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freezetui.core.plan import FreezePlan  # noqa: E402


def wide(tensors: int) -> nn.Module:
    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(tensors // 2)])


def best_ms(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=10_000)
    args = ap.parse_args(argv)
    model = wide(args.tensors)
    plan = FreezePlan.from_model(model)
    plan.freeze_before(list(plan.params)[len(plan.params) // 2])
    d = plan.to_dict()
    loaded = FreezePlan.from_dict(d)
    steps = {
        "from_model": lambda: FreezePlan.from_model(model),
        "to_dict": plan.to_dict,
        "from_dict": lambda: FreezePlan.from_dict(d),
        "check_fits": lambda: loaded.check_fits(model),
        "reorder_like": lambda: loaded.reorder_like(model),
        "freeze_before": lambda: loaded.freeze_before(list(loaded.params)[len(loaded.params) // 2]),
        "counts": lambda: plan.counts,
        "apply": lambda: loaded.apply(model),
    }
    print(f"plan operations for {len(plan.params):,} parameter tensors (best of 3):")
    total = 0.0
    for name, fn in steps.items():
        ms = best_ms(fn)
        total += ms
        print(f"  {name:14} {ms:9.1f} ms")
    print(f"  {'all':14} {total:9.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
