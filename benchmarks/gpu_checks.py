"""Checks that only a GPU can really answer, written so that each also runs on the CPU (same
code, ``device`` a parameter): `python benchmarks/run.py --gpu` runs them all on CUDA in one
call; `tests/test_gpu.py` runs them under pytest where CUDA exists; `python
benchmarks/gpu_checks.py cpu [name ...]` runs them (or some) here.

Each check returns a dict row (``ok`` True/False plus what it measured) and never raises. The
seconds in each docstring are the expected time on one H200 (CUDA start-up included once).
"""

from __future__ import annotations

import io
import json
import os
import statistics
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
from freezetui.core.precision import CUBLAS_WORKSPACE

HERE = Path(__file__).resolve().parent
# cuBLAS reads its workspace setting once per process, at its first call: --deterministic sets it
# at the start of a run, which in this script comes after other checks' matmuls
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if _cuda(device) else 0


def _held_on_device(model, device: str) -> int:
    """Bytes of ``model``'s own tensors on the GPU: still referenced, so no leak."""
    if not _cuda(device):
        return 0
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.is_cuda)


def _weights(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Spy:
    """Wraps ``owner.name`` for the block, recording what ``record(*args)`` returns per call."""

    def __init__(self, owner, name, record):
        self.owner, self.name, self.record, self.seen = owner, name, record, []

    def __enter__(self):
        real = self.real = getattr(self.owner, self.name)

        def spy(*a, **k):
            self.seen.append(self.record(*a, **k))
            return real(*a, **k)
        setattr(self.owner, self.name, spy)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.real)


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
    """~25 s: ViT-B/16 at batch 4096 runs out of memory in its first forward."""
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
    train_mod.release_memory(device)
    leaked = _allocated(device) - before - _held_on_device(model, device)  # the model's weights are not a leak
    small = load_data("shapes", shapes_train=256, shapes_val=64)
    m2, p2 = _model()
    result = train(m2, p2, small, TrainConfig(epochs=1, batch_size=64, device=device))
    ok = bool(message and message.startswith("out of memory while training") and result.epochs == 1)
    return {"ok": ok and leaked < 64 * 2**20, "message": message, "leaked_mib_after_oom": round(leaked / 2**20, 1),
            "weights_mib": round(_held_on_device(model, device) / 2**20, 1)}


@_checked("feature store forced off the device by a small budget gives the same run")
def feature_store_fallback(device: str) -> dict:
    """~10 s. FeatureStore reads device_budget when it is built, so the patch below is seen
    (it was bound as a default argument before: 0 calls, the fallback never ran)."""
    data = load_data("shapes", shapes_train=512, shapes_val=64)
    config = TrainConfig(epochs=2, batch_size=64, augment=False, device=device, deterministic=True, amp=False)
    weights = []
    for budget in (None, 1):
        model, plan = _model()
        real = train_mod.device_budget
        calls = []
        if budget is not None:
            train_mod.device_budget = lambda dev: calls.append(dev) or budget
        try:
            store = []
            orig = train_mod.FeatureStore.__init__

            def spy(self, *a, **k):
                orig(self, *a, **k)
                store.append((self.features.device.type, self.pinned))
            train_mod.FeatureStore.__init__ = spy
            train(model, plan, data, config)
        finally:
            train_mod.device_budget = real
            train_mod.FeatureStore.__init__ = orig
        weights.append((_weights(model), store, len(calls)))
    (a, store_a, _), (b, store_b, calls_b) = weights
    same = _same(a, b)
    off = all(s == ("cpu", True) for s in store_b) if _cuda(device) else True  # on the CPU, pinned
    return {"ok": same and calls_b >= 1 and bool(store_b) and off, "stores_default": store_a,
            "stores_small_budget": store_b, "budget_calls": calls_b, "same_weights": same}


@_checked("resume with --deterministic ends bit-identical to the uninterrupted run")
def deterministic_resume(device: str) -> dict:
    """~15 s; also lists the operations torch has no deterministic version of."""
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
    last = train(resumed, plan, data, config, resume=cb.state)
    same = _same(_weights(whole), _weights(resumed))
    return {"ok": same and first.stopped, "bit_identical": same, "nondeterministic": last.nondeterministic}


@_checked("back-to-back runs in one process do not grow device memory")
def back_to_back(device: str) -> dict:
    """~10 s."""
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
    """~8 s. Sync-debug is on only while the epochs' steps run: not for moving the model,
    caching, evaluation or the end-of-run checks, which synchronise once each by design."""
    if not _cuda(device):
        return {"ok": True, "note": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    data = load_data("shapes", shapes_train=2048, shapes_val=64)
    model, plan = _model()
    config = TrainConfig(epochs=2, batch_size=64, device=device)
    real_epoch, real_eval = train_mod._Run.train_epoch, train_mod.evaluation_sums

    def epoch(self, *a):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return real_epoch(self, *a)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    def evaluation(*a):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real_eval(*a)
        finally:
            torch.cuda.set_sync_debug_mode("warn")

    train_mod._Run.train_epoch, train_mod.evaluation_sums = epoch, evaluation
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(model, plan, data, config)
    finally:
        train_mod._Run.train_epoch, train_mod.evaluation_sums = real_epoch, real_eval
        torch.cuda.set_sync_debug_mode(0)
    steps = 2 * (2048 // 64)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {"ok": syncs / steps < 1 and result.epochs == 2, "syncs": syncs, "steps": steps,
            "syncs_per_step": round(syncs / steps, 2)}


@_checked("channels_last against NCHW, ResNet-50 bf16")
def channels_last_speed(device: str) -> dict:
    """~40 s."""
    if not _cuda(device):
        return {"ok": True, "note": "CUDA only"}
    data = load_data("shapes", shapes_train=2048, shapes_val=64)
    speed = {}
    for cl in (False, True):
        model, plan = _model("resnet50", freeze=())
        config = TrainConfig(epochs=2, batch_size=128, image_size=224, device=device, channels_last=cl)
        speed["channels_last" if cl else "nchw"] = round(train(model, plan, data, config).history[-1].images_per_s)
    return {"ok": True, **speed, "speedup": round(speed["channels_last"] / speed["nchw"], 2)}


@_checked("torchrun with 2 processes and a stage change (NCCL needs a GPU each; one GPU shares through gloo)")
def torchrun_two(device: str) -> dict:
    """~60 s: 2 epochs, layer1 unfrozen at epoch 2 (DDP rebuilt, features re-cached)."""
    gpus = torch.cuda.device_count() if _cuda(device) else 0
    with tempfile.TemporaryDirectory() as tmp:
        tests = HERE.parent / "tests"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
               "FREEZETUI_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        if gpus < 2:
            env["FREEZETUI_BACKEND"] = "gloo"
        plan = Path(tmp) / "plan.json"
        subprocess.run([sys.executable, "-m", "freezetui", "plan", "make", "--model", "resnet18", "--weights", "none",
                        "--num-classes", "10", "--freeze", "conv1", "--freeze", "bn1", "--freeze", "layer1",
                        "--stage", "2:layer1", "-o", str(plan)], env=env, check=True, capture_output=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "freezetui", "train", "--plan", str(plan), "--data", "shapes", "--epochs", "2",
                               "--no-augment", "--device", "cuda" if _cuda(device) else "cpu",
                               "--out", str(Path(tmp) / "run")],
                              env=env, capture_output=True, text=True, timeout=400)
        out = Path(tmp) / "run"
        stages = [json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()] \
            if (out / "metrics.jsonl").is_file() else []
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        ok = proc.returncode == 0 and stages == [1, 2] and summary.get("frozen_unchanged") is True
        return {"ok": ok, "backend": "nccl" if gpus >= 2 else "gloo", "stages": stages,
                "stderr_tail": proc.stderr[-600:]}


@_checked("streaming through pinned memory: a folder over the data budget trains like one in memory")
def streaming_pinned(device: str) -> dict:
    """~20 s: 2,000 PNGs at 64 px (160 on the CPU), decoded once, then streamed (budget 1 byte) or
    held on the device."""
    from conftest import make_image_folder
    from freezetui.core.data import StreamedSplit

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(Path(tmp) / "imgs", per_class=500 if _cuda(device) else 40, size=64,
                                   classes=("a", "b", "c", "d"))
        data = load_data(str(folder), cache_dir=Path(tmp) / "cache")
        config = dict(epochs=2, batch_size=64, device=device, deterministic=True, amp=False)
        runs = []
        for budget in (None, 1):
            model, plan = _model(classes=data.num_classes)
            with _Spy(StreamedSplit, "prefetch", lambda self, *a, **k: self.pin) as spy:
                result = train(model, plan, data, TrainConfig(**config, data_budget=budget))
            runs.append((spy.seen, result, _weights(model)))
    (seen_mem, r_mem, w_mem), (seen_stream, r_stream, w_stream) = runs
    threads = [t.name for t in threading.enumerate() if t.name == "freezetui-prefetch"]
    same = _same(w_mem, w_stream)
    pinned = all(seen_stream) if _cuda(device) else not any(seen_stream)
    return {"ok": not seen_mem and len(seen_stream) == 2 and pinned and same and not threads,
            "streamed_epochs": len(seen_stream), "pinned": seen_stream, "same_weights": same,
            "images_per_s_memory": round(r_mem.train_images_per_s), "images_per_s_streamed": round(r_stream.train_images_per_s)}


@_checked("--compile trains the trainable part and reaches the same loss scale")
def compile_run(device: str) -> dict:
    """~70 s on CUDA (inductor compiles ResNet-18's layer2-fc, forward and backward); the CPU
    uses the same path with a tiny model."""
    data = load_data("shapes", shapes_train=512 if _cuda(device) else 128, shapes_val=64)
    rows = {}
    for compiled in (False, True):
        model, plan = _model() if _cuda(device) else _model("tiny:tiny_cnn", freeze=("stem",))
        result = train(model, plan, data, TrainConfig(epochs=2, batch_size=64, device=device, compile=compiled))
        rows["compiled" if compiled else "eager"] = result
    eager, comp = rows["eager"], rows["compiled"]
    close = abs(comp.history[-1].train_loss - eager.history[-1].train_loss) < 0.5
    return {"ok": comp.epochs == 2 and close and comp.frozen_unchanged,
            "loss_eager": round(eager.history[-1].train_loss, 4), "loss_compiled": round(comp.history[-1].train_loss, 4),
            "images_per_s_eager": round(eager.history[-1].images_per_s), "images_per_s_compiled":
            round(comp.history[-1].images_per_s)}


@_checked("--no-amp runs its matmuls in TF32 and says so in the first line")
def no_amp_tf32(device: str) -> dict:
    """~10 s."""
    data = load_data("shapes", shapes_train=1024, shapes_val=64)
    before = torch.backends.cuda.matmul.allow_tf32
    starts, during = [], []

    class Watch(train_mod.Callback):
        def on_run_start(self, ev):
            starts.append(ev.precision)

        def on_epoch(self, ev):
            during.append(torch.backends.cuda.matmul.allow_tf32)

    model, plan = _model(freeze=())
    result = train(model, plan, data, TrainConfig(epochs=1, batch_size=128, device=device, amp=False),
                   callbacks=[Watch()])
    if _cuda(device):
        ok = starts == ["fp32, matmuls and convolutions in TF32"] and during == [True]
    else:
        ok = starts == ["fp32"] and during == [before]
    return {"ok": ok and result.epochs == 1, "precision": starts, "tf32_during": during,
            "images_per_s": round(result.history[-1].images_per_s)}


@_checked("a stage change on the device: layer2 unfrozen at epoch 2, its features re-cached")
def stage_change(device: str) -> dict:
    """~10 s."""
    data = load_data("shapes", shapes_train=1024, shapes_val=64)
    model, plan = _model(freeze=("conv1", "bn1", "layer1", "layer2"))
    plan.add_stage(2, ["layer2"])
    with _Spy(train_mod.FeatureStore, "__init__", lambda self, prefix, images, *a, **k: len(images)) as spy:
        result = train(model, plan, data, TrainConfig(epochs=2, batch_size=64, device=device, augment=False))
    stages = [e.stage for e in result.history]
    grew = result.history[1].trainable > result.history[0].trainable
    return {"ok": stages == [1, 2] and grew and result.frozen_unchanged and spy.seen == [1024, 64, 1024, 64],
            "stages": stages, "stores_built": spy.seen, "trainable": [e.trainable for e in result.history]}


@_checked("a timm Swin run: buffers of the split halves (attention masks, position indices) on the device")
def timm_swin(device: str) -> dict:
    """~30 s: Swin-T at 224 px, patch_embed and layers.0 frozen (a frozen prefix), one epoch."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return {"ok": True, "note": "timm is not installed"}
    gpu = _cuda(device)
    data = load_data("shapes", shapes_train=1024 if gpu else 32, shapes_val=64 if gpu else 16)
    torch.manual_seed(0)
    model = build_model("timm:swin_tiny_patch4_window7_224", weights="none", num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    plan.freeze("patch_embed")
    plan.freeze("layers.0")
    result = train(model, plan, data, TrainConfig(epochs=1, batch_size=64 if gpu else 16, device=device))
    return {"ok": result.epochs == 1 and result.frozen_unchanged and result.frozen_prefix is not None,
            "frozen_prefix": result.frozen_prefix, "val_acc": result.val_acc,
            "images_per_s": round(result.history[-1].images_per_s)}


@_checked("resume across device types: a CUDA checkpoint continues on the CPU and a CPU one on CUDA")
def resume_across_devices(device: str) -> dict:
    """~15 s. On a CPU-only machine the CUDA side is a checkpoint carrying a 16-byte state."""
    data = load_data("shapes", shapes_train=256, shapes_val=64)

    class Keep(train_mod.Callback):
        def __init__(self):
            self.state, self.notes = None, []

        def on_run_start(self, ev):
            self.notes += ev.notes

        def on_checkpoint(self, state):
            self.state = self.state or state

    rows = {}
    for first, then in ((device, "cpu"), ("cpu", device)):
        keep = Keep()
        model, plan = _model()
        train(model, plan, data, TrainConfig(epochs=1, batch_size=64, device=first), callbacks=[keep])
        buf = io.BytesIO()  # through a file, as --resume reads it: tensors on the CPU, weights_only
        torch.save(keep.state, buf)
        buf.seek(0)
        state = torch.load(buf, map_location="cpu", weights_only=True)
        if first == then == "cpu":  # no GPU here: what a CUDA run would have saved
            state = {**state, "rng": {**state["rng"], "augment": torch.zeros(16, dtype=torch.uint8)}}
        later = Keep()
        model, plan = _model()
        result = train(model, plan, data, TrainConfig(epochs=2, batch_size=64, device=then), callbacks=[later],
                       resume=state)
        rows[f"{first}->{then}"] = (result.epochs, later.notes)
    ok = all(epochs == 2 and len(notes) == (1 if _cuda(device) or k == "cpu->cpu" else 0)
             for k, (epochs, notes) in rows.items())
    return {"ok": ok, **{k: notes for k, (_, notes) in rows.items()}}


@_checked("evaluation and feature caching at a small --batch-size")
def small_batch_evaluation(device: str) -> dict:
    """~15 s: ViT-B/16 at 224 px, batch 8; no forward sees more than 8 images."""
    from freezetui.core.data import BatchTransform

    gpu = _cuda(device)
    data = load_data("shapes", shapes_train=64 if gpu else 16, shapes_val=200 if gpu else 24)
    torch.manual_seed(0)
    model = build_model("vit_b_16" if gpu else "resnet18", weights="none", num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    plan.freeze("*")
    plan.unfreeze("heads" if gpu else "fc")
    with _Spy(BatchTransform, "__call__", lambda self, x: len(x)) as spy:
        result = train(model, plan, data, TrainConfig(epochs=1, batch_size=8, augment=False, device=device,
                                                       image_size=224))
    return {"ok": result.epochs == 1 and max(spy.seen) <= 8, "largest_batch": max(spy.seen),
            "peak_memory_gib": round((result.peak_memory_bytes or 0) / 2**30, 2)}


CHECKS = [oom_recovers, feature_store_fallback, deterministic_resume, back_to_back, syncs_per_step,
          channels_last_speed, torchrun_two, streaming_pinned, compile_run, no_amp_tf32, stage_change, timm_swin,
          resume_across_devices, small_batch_evaluation]


def run(device: str = "cuda", names: list[str] | None = None) -> list[dict]:
    return [check(device) for check in CHECKS if not names or check.__name__ in names]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "tests"))  # conftest's image folders, the tests' tiny models
    device = sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = run(device, sys.argv[2:])
    for r in rows:
        print(json.dumps(r), flush=True)
    sys.exit(0 if all(r["ok"] for r in rows) else 1)
