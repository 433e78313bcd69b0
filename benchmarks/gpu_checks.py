"""Checks that only a GPU can really answer, written so that each also runs on the CPU (same
code, ``device`` a parameter): `python benchmarks/run.py --gpu` runs them all on CUDA in one
call; `tests/test_gpu.py` runs them under pytest where CUDA exists.

Each check returns a dict row (``ok`` True/False plus what it measured) and never raises.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch

from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.core import train as train_mod
from freezetui.core.data import load_data
from freezetui.core.errors import TrainingError

HERE = Path(__file__).resolve().parent


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if _cuda(device) else 0


def _model(name="resnet18", classes=10, freeze=("conv1", "bn1", "layer1")):
    torch.manual_seed(0)
    model = build_model(name, weights="none", num_classes=classes)
    plan = FreezePlan.from_model(model)
    for g in freeze:
        plan.freeze(g)
    return model, plan


def _checked(name):
    def wrap(fn):
        def run(device: str) -> dict:
            t0 = time.perf_counter()
            try:
                row = fn(device)
            except Exception as e:  # noqa: BLE001 - a check reports, it does not crash the script
                row = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
            return {"benchmark": f"gpu check: {name}", "device": device, **row,
                    "seconds": round(time.perf_counter() - t0, 1)}
        run.__name__ = fn.__name__
        return run
    return wrap


@_checked("out of memory at the training step is a sentence, and the process recovers")
def oom_recovers(device: str) -> dict:
    data = load_data("shapes", shapes_train=4096, shapes_val=64)
    model = build_model("vit_b_16", weights="none", num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    before = _allocated(device)
    if _cuda(device):  # a batch far beyond an H100/H200: ~300 GB of activations
        config = TrainConfig(epochs=1, batch_size=4096, image_size=224, device=device)
    else:  # the CPU cannot be filled safely: the same path through an injected error
        config = TrainConfig(epochs=1, batch_size=64, device=device, image_size=224)
        real = train_mod._Run.train_step
        train_mod._Run.train_step = lambda self, *a: (_ for _ in ()).throw(train_mod.OutOfMemoryError("injected"))
    try:
        train(model, plan, data, config)
        message = None
    except TrainingError as e:
        message = str(e)
    finally:
        if not _cuda(device):
            train_mod._Run.train_step = real
    leaked = _allocated(device) - before
    small = load_data("shapes", shapes_train=256, shapes_val=64)
    m2, p2 = _model()
    result = train(m2, p2, small, TrainConfig(epochs=1, batch_size=64, device=device))
    ok = bool(message and message.startswith("out of memory while training") and result.epochs == 1)
    return {"ok": ok and leaked < 256 * 2**20, "message": message, "leaked_mib_after_oom": round(leaked / 2**20, 1)}


@_checked("feature store forced off the device by a small budget gives the same run")
def feature_store_fallback(device: str) -> dict:
    data = load_data("shapes", shapes_train=512, shapes_val=64)
    config = TrainConfig(epochs=2, batch_size=64, augment=False, device=device, deterministic=True, amp=False)
    weights = []
    for budget in (None, 1):
        model, plan = _model()
        real = train_mod.device_budget
        if budget is not None:
            train_mod.device_budget = lambda dev: budget
        try:
            store = []
            orig = train_mod.FeatureStore.__init__

            def spy(self, *a, **k):
                orig(self, *a, **k)
                store.append(self.features.device.type)
            train_mod.FeatureStore.__init__ = spy
            train(model, plan, data, config)
        finally:
            train_mod.device_budget = real
            train_mod.FeatureStore.__init__ = orig
        weights.append(({k: v.detach().cpu() for k, v in model.state_dict().items()}, store))
    (a, store_a), (b, store_b) = weights
    same = all(torch.equal(a[k], b[k]) for k in a)
    return {"ok": same and (not _cuda(device) or store_b[0] == "cpu"), "stores_default": store_a,
            "stores_small_budget": store_b, "same_weights": same}


@_checked("resume with --deterministic ends bit-identical to the uninterrupted run")
def deterministic_resume(device: str) -> dict:
    data = load_data("shapes", shapes_train=512, shapes_val=64)
    config = TrainConfig(epochs=3, batch_size=64, device=device, deterministic=True)

    class StopAfterFirst(train_mod.Callback):
        def __init__(self, stop):
            self.stop, self.state = stop, None

        def on_epoch(self, ev):
            if ev.epoch == 1:
                self.stop.set()

        def on_checkpoint(self, state):
            self.state = self.state or state

    whole, plan = _model()
    train(whole, plan, data, config)
    broken, plan = _model()
    stop = threading.Event()
    cb = StopAfterFirst(stop)
    first = train(broken, plan, data, config, callbacks=[cb], stop=stop)
    resumed, plan = _model()
    train(resumed, plan, data, config, resume=cb.state)
    a, b = whole.state_dict(), resumed.state_dict()
    same = all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
    return {"ok": same and first.stopped, "bit_identical": same}


@_checked("back-to-back runs in one process do not grow device memory")
def back_to_back(device: str) -> dict:
    data = load_data("shapes", shapes_train=512, shapes_val=64)
    after = []
    for _ in range(3):
        model, plan = _model(freeze=("conv1", "bn1", "layer1", "layer2"))
        train(model, plan, data, TrainConfig(epochs=1, batch_size=64, augment=False, device=device))
        del model
        train_mod.release_memory(device)
        after.append(_allocated(device))
    growth = after[-1] - after[0]
    return {"ok": growth <= 16 * 2**20, "allocated_mib_after_each": [round(x / 2**20, 1) for x in after]}


@_checked("host-device synchronisations per training step")
def syncs_per_step(device: str) -> dict:
    if not _cuda(device):
        return {"ok": True, "note": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    data = load_data("shapes", shapes_train=2048, shapes_val=64)
    model, plan = _model()
    config = TrainConfig(epochs=1, batch_size=64, device=device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, plan, data, config)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    steps = 2048 // 64
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {"ok": syncs / steps < 1, "syncs": syncs, "steps": steps, "syncs_per_step": round(syncs / steps, 2)}


@_checked("channels_last against NCHW, ResNet-50 bf16")
def channels_last_speed(device: str) -> dict:
    if not _cuda(device):
        return {"ok": True, "note": "CUDA only"}
    data = load_data("shapes", shapes_train=4096, shapes_val=64)
    speed = {}
    for cl in (False, True):
        model, plan = _model("resnet50", freeze=())
        config = TrainConfig(epochs=2, batch_size=128, image_size=224, device=device, channels_last=cl)
        speed["channels_last" if cl else "nchw"] = round(train(model, plan, data, config).history[-1].images_per_s)
    return {"ok": True, **speed, "speedup": round(speed["channels_last"] / speed["nchw"], 2)}


@_checked("torchrun with 2 processes (NCCL needs a GPU each; one GPU shares through gloo)")
def torchrun_two(device: str) -> dict:
    gpus = torch.cuda.device_count() if _cuda(device) else 0
    with tempfile.TemporaryDirectory() as tmp:
        tests = HERE.parent / "tests"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
               "FREEZETUI_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        if gpus < 2:
            env["FREEZETUI_BACKEND"] = "gloo"
        plan = Path(tmp) / "plan.json"
        subprocess.run([sys.executable, "-m", "freezetui", "plan", "make", "--model", "resnet18", "--weights", "none",
                        "--num-classes", "10", "--freeze", "layer1", "-o", str(plan)], env=env, check=True,
                       capture_output=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "freezetui", "train", "--plan", str(plan), "--data", "shapes", "--epochs", "1",
                               "--device", "cuda" if gpus else "cpu", "--out", str(Path(tmp) / "run")],
                              env=env, capture_output=True, text=True, timeout=400)
        ok = proc.returncode == 0 and (Path(tmp) / "run" / "summary.json").is_file()
        return {"ok": ok, "backend": "nccl" if gpus >= 2 else "gloo", "stderr_tail": proc.stderr[-600:]}


CHECKS = [oom_recovers, feature_store_fallback, deterministic_resume, back_to_back, syncs_per_step,
          channels_last_speed, torchrun_two]


def run(device: str = "cuda") -> list[dict]:
    return [check(device) for check in CHECKS]


if __name__ == "__main__":
    import json

    rows = run(sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu"))
    print(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)
