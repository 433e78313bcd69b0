"""All benchmarks in one command; prints a markdown table and writes benchmarks/out/<device>.json.

    python benchmarks/run.py            # CPU: everything, including the UI (needs Textual, tmux)
    python benchmarks/run.py --gpu      # the GPU half and every GPU check (torch and torchvision, no Textual),
                                        # sized to fit 10 minutes on one H100/H200 (about 8 expected)
    python benchmarks/run.py --checks [--device cpu] [NAME ...]   # only benchmarks/gpu_checks.py, on any device

Speeds are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
os.environ.setdefault("FREEZETUI_OFFLINE", "1")

import feature_cache  # noqa: E402
import gpu_checks  # noqa: E402
import prefix_savings  # noqa: E402
import scaling  # noqa: E402
import seed_workload  # noqa: E402


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.machine()}, {os.cpu_count()} cores"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--gpu", action="store_true", help="run the GPU half (needs CUDA)")
    p.add_argument("--checks", action="store_true", help="run only the GPU checks, on --device (the CPU too)")
    p.add_argument("--device", default=None, help="for --checks: cpu, cuda (default: cuda when there is one)")
    p.add_argument("names", nargs="*", help="for --checks: only these checks (names in benchmarks/gpu_checks.py)")
    args = p.parse_args()
    device = "cuda" if args.gpu else "cpu"
    if args.checks:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("run.py: error: --gpu needs a CUDA GPU", file=sys.stderr)
        return 1
    rows = []
    if args.checks:
        rows += gpu_checks.run(device, args.names)
    else:
        rows += seed_workload.run(device, images=10000 if args.gpu else 1000, repeats=3)
        rows += feature_cache.run(224 if args.gpu else 64, device, train_images=10000 if args.gpu else 5000)
        rows += prefix_savings.run(device, 224 if args.gpu else 64, 64 if args.gpu else 32,
                                   images=2048 if args.gpu else 512)
        rows += scaling.run(device, images=2048 if args.gpu else 512)
    if args.gpu:
        rows += gpu_checks.run(device)
    if not args.gpu and not args.checks:
        import ui

        rows += ui.run()
    stamp = {"date": str(date.today()), "machine": machine(device), "torch": torch.__version__}
    for r in rows:
        r.update(stamp)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"{'checks-' if args.checks else ''}{device}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"| benchmark | result | machine | date |\n|---|---|---|---|")
    for r in rows:
        result = ", ".join(f"{k} {v}" for k, v in r.items()
                           if k not in ("benchmark", "date", "machine", "torch", "trace", "stderr_tail"))
        print(f"| {r['benchmark']} | {result} | {r['machine']} | {r['date']} |")
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
