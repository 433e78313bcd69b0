"""Benchmark 4: the UI. Time to the first drawn tree once the model is built (ResNet-50,
ViT-L/16), a root toggle on a model with 10,000 parameter tensors, key latency while training
on the CPU, and the TUI's cost in training throughput.

    python benchmarks/ui.py
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))  # tiny:tiny_cnn, the tests' small model
sys.path.insert(0, str(ROOT))  # this checkout's freezetui, not an installed one

from freezetui import FreezePlan, TrainConfig, build_model, train  # noqa: E402
from freezetui.core.data import load_data  # noqa: E402
from freezetui.core.specs import ModelSpec  # noqa: E402
from freezetui.core.workspace import Workspace  # noqa: E402
from freezetui.tui.app import AppOptions, create_app  # noqa: E402

SIZE = (120, 40)


async def first_tree(name: str, data) -> dict:
    t0 = time.perf_counter()
    model = build_model(name, weights="none", num_classes=data.num_classes)
    built = time.perf_counter()
    ws = Workspace(model, data, data_name="shapes", device="cpu")
    app = create_app(AppOptions(model=ModelSpec(name, weights="none")), workspace=ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.main("#tree").root.children
        drawn = time.perf_counter()
    return {"benchmark": f"first tree after the model is built: {name}", "model_build_s": round(built - t0, 2),
            "first_tree_s": round(drawn - built, 3), "params": ws.totals()["total"]}


async def press_latency(app, pilot, key: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await pilot.press(key)
        await pilot.pause()
        times.append(time.perf_counter() - t0)
    return times


async def toggle_wide(data, scheduled: bool = False) -> dict:
    model = build_model("wide:wide_model", weights="none")
    ws = Workspace(model, data, data_name="shapes", device="cpu")
    if scheduled:  # the tree's schedule columns on: a stage and a rate rule
        name = ws.nodes[""].children[len(ws.nodes[""].children) // 2]
        ws.unfreeze_at(name, 2)
        ws.set_rate(name, 0.1)
    app = create_app(AppOptions(model=ModelSpec("wide:wide_model", weights="none")), workspace=ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        idle = await press_latency(app, pilot, "z", 10)  # an unbound key: Pilot's own round trip
        times = await press_latency(app, pilot, "space", 10)
    overhead = statistics.median(idle)
    what = ", with a schedule shown" if scheduled else ""
    return {"benchmark": f"root toggle to redraw, 10,002 parameter tensors{what}", "tensors": len(ws.param_names),
            "median_ms": round(1000 * statistics.median(times), 1), "max_ms": round(1000 * max(times), 1),
            "pilot_overhead_ms": round(1000 * overhead, 1),
            "beyond_pilot_ms": round(1000 * (statistics.median(times) - overhead), 1)}


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait(session: str, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in _screen(session):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} did not appear")
        time.sleep(0.05)


def keys_while_training(data, tmp: str) -> dict:
    """Key-to-screen latency in a real terminal (tmux) while a run trains on the CPU: send j/k,
    poll the screen until the details panel names the newly highlighted module."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "FREEZETUI_OFFLINE": "1"}
    session = "freezetui-bench"
    epochs = 4
    cmd = (f"cd {tmp} && env -u COLUMNS -u LINES {sys.executable} -m freezetui --model tiny:tiny_cnn --weights none --epochs {epochs} "
           f"--device cpu --lr 0.005")
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                    "-e", f"PYTHONPATH={env['PYTHONPATH']}", "-e", "FREEZETUI_OFFLINE=1", cmd], check=True)
    times = []
    try:
        _wait(session, "tiny:tiny_cnn ·")
        subprocess.run(["tmux", "send-keys", "-t", session, "j"], check=True)  # cursor on stem
        _wait(session, "stem  Sequential")
        subprocess.run(["tmux", "send-keys", "-t", session, "t"], check=True)
        _wait(session, f"epoch 1/{epochs}")
        for i in range(30):
            key, target = ("j", "block1  Sequential") if i % 2 == 0 else ("k", "stem  Sequential")
            t0 = time.perf_counter()
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            while target not in _screen(session):
                if time.perf_counter() - t0 > 5:
                    break
            times.append(time.perf_counter() - t0)
            time.sleep(0.2)
        _wait(session, "run #1 done", timeout=300)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    run_dir = next(Path(tmp, "runs").iterdir())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    in_app = statistics.mean(m["images_per_s"] for m in metrics[1:])
    config = TrainConfig(epochs=epochs, device="cpu", lr=5e-3)
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=data.num_classes)
    headless = train(model, FreezePlan.from_model(model), data, config)
    headless_ips = statistics.mean(e.images_per_s for e in headless.history[1:])
    return {"benchmark": "keys in a real terminal while training tiny_cnn on the CPU", "presses": len(times),
            "median_ms": round(1000 * statistics.median(times), 1),
            "p95_ms": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 1),
            "headless_images_per_s": round(headless_ips), "in_app_images_per_s": round(in_app),
            "tui_cost_percent": round(100 * (1 - in_app / headless_ips), 1)}


BENCHMARKS = ("first_tree", "toggle_wide", "keys_while_training")


async def main(only: tuple[str, ...] = BENCHMARKS) -> list[dict]:
    import tempfile

    data = load_data("shapes")
    rows = []
    if "first_tree" in only:
        rows += [await first_tree("resnet50", data), await first_tree("vit_l_16", data)]
    if "toggle_wide" in only:
        rows += [await toggle_wide(data), await toggle_wide(data, scheduled=True)]
    if "keys_while_training" in only:
        with tempfile.TemporaryDirectory() as tmp:
            if shutil.which("tmux"):
                rows.append(keys_while_training(data, tmp))
            else:
                rows.append({"benchmark": "keys_while_training", "skipped": "tmux is not installed"})
    return rows


def run(only: tuple[str, ...] = BENCHMARKS) -> list[dict]:
    return asyncio.run(main(only))


if __name__ == "__main__":
    names = tuple(sys.argv[1:]) or BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    print(json.dumps(run(names), indent=2))
