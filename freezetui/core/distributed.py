"""Several processes through torch.distributed (started by torchrun): NCCL on GPUs, gloo on CPUs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything here is a no-op and a
run is a single process.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import TrainingError

# How long the other processes wait for rank 0 to decode a folder or download weights
# (rank_zero_first): far beyond NCCL's default 10 minutes, which a large folder exceeds.
RANK_ZERO_WAIT = timedelta(hours=12)


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_from_env() -> int:
    """This process's rank as torchrun announced it, before the process group exists."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def setup(device: str) -> tuple[int, int]:
    """Join the process group torchrun prepared; return (rank, world size)."""
    if not launched():
        return 0, 1
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_index())
        # NCCL wants a GPU per process; FREEZETUI_BACKEND=gloo lets processes share one (tests)
        dist.init_process_group(os.environ.get("FREEZETUI_BACKEND") or ("nccl" if cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def process_group(device: str):
    """Join torchrun's process group for the block and leave it afterwards; yields (rank, world
    size). A group that is up already (a sweep holds one for all its runs) is used and kept."""
    owned = launched() and not initialized()
    ranks = setup(device)
    try:
        yield ranks
    finally:
        if owned:
            teardown()


_quiet = False


def quiet_stdout() -> None:
    """Workers other than rank 0 print nothing: their stdout goes to the null device (once)."""
    global _quiet
    if rank() and not _quiet:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this worker process
        _quiet = True


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every process; the value itself for one."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_by_rank_zero(fn):
    """``fn()`` run on rank 0 alone (it reads or writes shared files), its result, or its
    one-sentence error, on every process."""
    from .errors import FreezeTUIError

    value, error = None, None
    if rank() == 0:
        try:
            value = fn()
        except FreezeTUIError as e:
            error = e
    value, error = broadcast((value, error))
    if error is not None:
        raise error
    return value


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_index())
    return device


def local_index() -> int:
    """This process's GPU: its LOCAL_RANK, wrapped around when processes share GPUs."""
    return int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())


def sum_all(*values: float, device: torch.device) -> list[float]:
    """Sum numbers over all processes (identity for one)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_all(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on one: a stop seen by one rank stops all."""
    return flags_all([flag], device)[0]


def flags_all(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on every process when it is true on one, in one collective."""
    if not active():
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


class RankZeroFailed(TrainingError):
    """Rank 0 failed inside :func:`rank_zero_first`; its own process reports why."""

    def __init__(self):
        super().__init__("rank 0 failed while preparing the data or the model; see its message")


@contextlib.contextmanager
def rank_zero_first(timeout: timedelta = RANK_ZERO_WAIT):
    """Rank 0 runs the block first (downloads, decodes into a shared cache), the others after
    it: never several processes writing the same files at once. The others wait in a gloo group
    of their own with ``timeout`` (the main group's may be NCCL's 10 minutes), and learn whether
    rank 0 got through: when it did not, they raise :class:`RankZeroFailed` instead of entering."""
    if not active():
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        if dist.get_rank() != 0:
            if not _rank_zero_ok(group, None):
                raise RankZeroFailed()
            yield
            return
        ok = False
        try:
            yield
            ok = True
        finally:
            _rank_zero_ok(group, ok)
    finally:
        dist.destroy_process_group(group)


def _rank_zero_ok(group, ok: bool | None) -> bool:
    """Rank 0 sends ``ok``; the others receive it (the wait itself)."""
    box = [ok]
    dist.broadcast_object_list(box, src=0, group=group)
    return bool(box[0])


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
