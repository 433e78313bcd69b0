"""Two gloo processes on the CPU for tests/test_agreement.py: each runs scenarios that fail on
one rank at a chosen point, and reports how every rank ended (importable by spawned children)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from freezetui.core.errors import TrainingError


def _oom(*a, **k):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _train(rank: int, fail_on: int, where: str) -> str:
    """One small run in which rank ``fail_on`` fails at ``where``."""
    from freezetui import FreezePlan, TrainConfig, build_model, train
    from freezetui.core import train as train_mod
    from freezetui.core.data import Split, load_data

    data = load_data("shapes", shapes_train=64, shapes_val=32)
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=data.num_classes)
    plan = FreezePlan.from_model(model)
    plan.freeze("stem")
    plan.freeze("block1")
    callbacks = []
    patches = []

    def patch(owner, name, fn):
        patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, fn)

    if rank == fail_on:
        if where == "on_run_start":
            class Failing(train_mod.Callback):
                def on_run_start(self, ev):
                    raise TrainingError("cannot write config.json")
            callbacks.append(Failing())
        elif where == "moving the data":
            patch(Split, "to", _oom)
        elif where == "caching":
            patch(train_mod.FeatureStore, "__init__", _oom)
        elif where == "evaluating":
            patch(train_mod, "evaluation_sums", _oom)
        elif where in ("training", "optimizer step"):
            real, calls = train_mod._Run.train_step, []

            def step(self, *a):
                calls.append(1)
                if len(calls) == 2 and where == "training":
                    _oom()  # in the forward: before this step's gradients are reduced
                out = real(self, *a)
                if len(calls) == 2:
                    _oom()  # after the reduction, as a first optimizer step allocating its state
                return out
            patch(train_mod._Run, "train_step", step)
    try:
        cache = where != "training"  # the training case streams images through the prefix instead
        train(model, plan, data, TrainConfig(epochs=1, batch_size=8, augment=not cache, device="cpu", sync_steps=4),
              callbacks=callbacks)
        return "finished"
    finally:
        for owner, name, fn in patches:
            setattr(owner, name, fn)


def _slow_rank_zero(rank: int, seconds: float, fail: bool) -> str:
    from freezetui.core import distributed

    with distributed.rank_zero_first():
        if rank == 0:
            time.sleep(seconds)
            if fail:
                raise TrainingError("cannot decode the folder")
    dist.barrier()
    return "finished"


def worker(rank: int, world: int, store: str, timeout_s: float, scenarios: list, out) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    ended = []
    for name, args in scenarios:
        try:
            ended.append(globals()[name](rank, *args))
        except TrainingError as e:
            ended.append(f"TrainingError: {e}")
        except Exception as e:  # noqa: BLE001 - a hang ends as the group's timeout: reported, not raised
            ended.append(f"{type(e).__name__}: {str(e)[:200]}")
            break
    out.put((rank, ended))
    dist.destroy_process_group()


def run_ranks(tmp, scenarios: list, timeout_s: float = 60, world: int = 2) -> dict[int, list[str]]:
    """Each rank's endings of ``scenarios`` ((function name, args) pairs), run in order."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, str(tmp / "store"), timeout_s, scenarios, out))
             for r in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=timeout_s * (len(scenarios) + 2)) for _ in procs)
    for p in procs:
        p.join(30)
    return results
