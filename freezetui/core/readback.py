"""Reading back files that may lie: JSON of bounded nesting, torch files checked before they are
unpickled. Each failure is a short reason the caller puts into its own sentence."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

MAX_DEPTH = 32  # freezetui writes at most ~5 levels; json and deepcopy recurse, ~1,000 levels is a RecursionError
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle, protocol 2 or later


class Unreadable(ValueError):
    """Why a file cannot be used, in a few words (``"is empty"``, ``"nested too deeply"``)."""


def too_deep(obj, limit: int = MAX_DEPTH) -> bool:
    """Whether dicts and lists in ``obj`` nest deeper than ``limit`` (without recursing)."""
    stack = [(obj, 0)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        elif not isinstance(o, (list, tuple)):
            continue
        if depth >= limit:
            return True
        stack.extend((v, depth + 1) for v in o)
    return False


def only_json(obj) -> bool:
    """Whether ``obj`` holds only what JSON can (dicts with string keys, lists, strings, numbers,
    booleans, None): a checkpoint's plan and settings, unpickled, may hold anything."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if not all(isinstance(k, str) for k in o):
                return False
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
        elif not (o is None or isinstance(o, (bool, int, float, str))):
            return False
    return True


def loads_json(text: str, limit: int = MAX_DEPTH):
    """``json.loads`` that refuses nesting deeper than ``limit``; raises ``json.JSONDecodeError``
    for bad syntax and :class:`Unreadable` for nesting."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise Unreadable(f"nested more than {limit} levels deep") from None
    if too_deep(obj, limit):
        raise Unreadable(f"nested more than {limit} levels deep")
    return obj


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a file torch.save wrote, judged without unpickling it; None when it may be."""
    path = Path(path)
    if path.is_dir():
        return "is a folder, not a file torch.save wrote"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not head:
        return "is empty"
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        kind = "text" if all(32 <= b < 127 or b in b"\t\n\r" for b in head) else "some other format"
        return f"is not a file torch.save wrote (it holds {kind})"
    return None


def torch_load(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` on the CPU, its failures as :class:`Unreadable`. The
    reason never repeats torch's advice to load with ``weights_only=False``, which runs the
    file's code."""
    import torch

    why = file_problem(path)
    if why:
        raise Unreadable(why)
    try:
        with warnings.catch_warnings():  # one sentence, not a torch warning before it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except RecursionError:
        raise Unreadable("is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - a truncated, foreign or booby-trapped file: one reason
        text = str(e).strip()
        if "weights_only" in text or "weights only" in text.lower():
            raise Unreadable("holds Python objects besides tensors, which freezetui does not unpickle") from None
        first = text.splitlines()[0][:200] if text else type(e).__name__
        raise Unreadable(f"is damaged or not a file torch.save wrote ({first})") from None


def state_digest(obj) -> str:
    """blake2b over everything in a checkpoint: its structure, plain values and tensors' bytes,
    so a byte changed on disk (which torch.load does not notice inside a tensor) is."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=16)
    stack = [("", obj)]
    while stack:
        path, o = stack.pop()
        if isinstance(o, dict):
            h.update(f"{path}{{{len(o)}".encode())
            stack.extend((f"{path}/{k!r}", o[k]) for k in sorted(o, key=repr))
        elif isinstance(o, (list, tuple)):
            h.update(f"{path}[{len(o)}".encode())
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(o))
        elif isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"{path}:{t.dtype}{tuple(t.shape)}".encode())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        else:
            h.update(f"{path}={o!r}".encode())
    return h.hexdigest()
