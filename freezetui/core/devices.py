"""Devices as a run sees them: which one a name means, what it may hold, and the lock a model
is moved under."""

from __future__ import annotations

import gc
import threading
import weakref

import torch
from torch import nn

from .errors import TrainingError

_model_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_model_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """Held while a run moves ``model`` to its device or memory format. Whoever copies a model
    another thread may be training (the TUI's cost profile) copies under it: never a model
    with half its tensors moved."""
    with _model_locks_guard:
        return _model_locks.setdefault(model, threading.Lock())


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name} asked for CUDA, but torch sees no CUDA GPU here; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise TrainingError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def device_budget(device: torch.device) -> int | None:
    """Bytes a feature store may take on ``device``: half of what is free there, counting the
    allocator's cached blocks as free (None: no limit, the CPU)."""
    if device.type != "cuda":
        return None
    free = torch.cuda.mem_get_info(device)[0]
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(0.5 * (free + cached))


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect cyclic garbage (optimizers, traced modules) and return cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def memory_in_use(device: str) -> str:
    """' · 1.2 GiB used / 3.0 GiB reserved' of CUDA memory on ``device``; '' elsewhere."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return ""
    return (f" · {torch.cuda.memory_allocated(dev) / 2**30:.1f} GiB used / "
            f"{torch.cuda.memory_reserved(dev) / 2**30:.1f} GiB reserved")
