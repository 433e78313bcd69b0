"""Time from a stop request (the key, `q`, a hang-up: all set the same event) to the run having
stopped and written its files, on ResNet-18 at 224 px on the CPU with a CPU-burning process
beside it. Two moments: in the middle of a training batch, and at the start of an epoch's
evaluation. Printed beside the batch time it should stay within (one batch plus the write).

    python benchmarks/stop_latency.py [--train 96] [--val 256] [--batch 16]

Run it against another checkout (PYTHONPATH=that checkout) for a before/after comparison.

Measured 2026-11-30 on 2 shared cores (load ~3-4 from other work, plus the burner), defaults:
                          before (main 40a550b)   after (issue 22)
    mid training batch         37.1 s                  6.2 s   (one batch 6.9-12.8 s)
    as evaluation starts       54.2 s                  4.1 s   (one batch 8.6-8.9 s)
Before, a stop evaluated the partial epoch (256 images) and a full epoch's evaluation ran to
its end; after, the stop waits for the batch in flight (training or evaluation) and model.pt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("FREEZETUI_OFFLINE", "1")

import torch  # noqa: E402

from freezetui.core.data import load_data  # noqa: E402
from freezetui.core.models import build_model  # noqa: E402
from freezetui.core.plan import FreezePlan  # noqa: E402
from freezetui.core.runs import RunWriter  # noqa: E402
from freezetui.core.train import Callback, TrainConfig, train  # noqa: E402


class Clock(Callback):
    """Step times; sets the stop half-way through a training batch, or as evaluation starts."""

    def __init__(self, stop: threading.Event, model, at: str):
        self.stop, self.at, self.asked = stop, at, None
        self.last = time.perf_counter()
        self.batch_seconds: list[float] = []
        if at == "evaluation":
            model.register_forward_pre_hook(self.evaluating)

    def on_step(self, ev) -> None:
        now = time.perf_counter()
        self.batch_seconds.append(now - self.last)
        self.last = now
        if self.at == "batch" and ev.step == 2 and self.asked is None:
            half = self.batch_seconds[-1] / 2
            threading.Timer(half, self.ask).start()  # the key lands in the middle of batch 3

    def evaluating(self, module, args) -> None:
        if not module.training and self.asked is None:
            self.ask()

    def ask(self) -> None:
        self.asked = time.perf_counter()
        self.stop.set()


def one(at: str, data, size: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", num_classes=len(data.classes))
    plan = FreezePlan.from_model(model)  # everything trains: the slowest batch
    stop = threading.Event()
    clock = Clock(stop, model, at)
    config = TrainConfig(epochs=2, batch_size=batch, image_size=size, device="cpu", augment=False, cache=False)
    with tempfile.TemporaryDirectory() as out:
        result = train(model, plan, data, config, [clock, RunWriter(out, model, plan, config)], stop=stop)
        ended = time.perf_counter()
    assert result.stopped and clock.asked is not None, "the stop was not asked for"
    batches = clock.batch_seconds[1:] or clock.batch_seconds  # the first includes set-up
    return {"moment": at, "stop_to_stopped_s": round(ended - clock.asked, 2),
            "batch_s": round(sum(batches) / len(batches), 2), "epochs_kept": result.epochs}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=96)
    p.add_argument("--val", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    torch.set_num_threads(1)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the busy machine
    try:
        data = load_data("shapes", shapes_train=args.train, shapes_val=args.val)
        rows = [one(at, data, args.size, args.batch) for at in ("batch", "evaluation")]
    finally:
        burner.kill()
        burner.wait()
    print(f"ResNet-18, {args.size} px, batch {args.batch}, CPU ({os.cpu_count()} cores, one busy), "
          f"torch threads 1")
    print(f"{'stop asked':<24}{'to stopped':>12}{'one batch':>12}")
    for r in rows:
        where = "mid training batch" if r["moment"] == "batch" else "as evaluation starts"
        print(f"{where:<24}{r['stop_to_stopped_s']:>11.2f}s{r['batch_s']:>11.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
