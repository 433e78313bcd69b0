"""What a freeze plan costs before it trains: memory (weights, gradients, optimizer state, the
activations autograd keeps for backward) and FLOPs per image, against full fine-tuning.

The model is measured once (:func:`profile_model`): a few forward passes at a small batch record
every tensor autograd saves, which torch call saved it, which parameters each call used, and
each call's FLOPs. A plan is then priced by array arithmetic (:func:`estimate`), cheap enough
to run on every toggle.

How a plan is priced. The frozen prefix runs without gradients, so nothing is saved before the
first call that uses a trainable parameter. After it, a call that uses a trainable parameter
saves what it saves with everything trainable (the first pass); any other call saves what it
saves with its parameters frozen but its input needing a gradient (the second pass: a frozen
convolution keeps its weight, not its input). A tensor saved by several calls counts once.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .adapters import adapter_tensors, is_adapter_hook, lora_saved, module_io
from .plan import NEVER, FreezePlan, _keep_eval
from .rgn import flops_per_step

PROFILE_BATCHES = (2, 4)  # two sizes give each saved tensor a per-image part and a fixed part
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1}  # state tensors per trainable parameter
_SEGMENT = 1 << 24  # call keys: segment (module hook count) * _SEGMENT + call index in the segment
PASS_TRAINABLE, PASS_FROZEN_EVAL, PASS_FROZEN_TRAIN = 0, 1, 2

_FLOPS = dict(flop_registry)
_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _cpu_flash is not None:  # the CPU attention kernel counts like the CUDA one
    _FLOPS[_cpu_flash] = flop_registry[torch.ops.aten._scaled_dot_product_flash_attention]


# ----------------------------------------------------------------------------- the profile


@dataclass
class _Pass:
    """What one forward pass recorded, as arrays."""

    call_key: np.ndarray  # int64, per call
    call_flops: np.ndarray  # float64, per call: forward FLOPs per image
    call_module: np.ndarray  # int32, per call: the innermost module running
    use_call: np.ndarray  # int32: (call, parameter) pairs, a call using a parameter
    use_param: np.ndarray  # int32
    ev_call: np.ndarray  # int32: (call, stored tensor) pairs, a call saving a tensor for backward
    ev_store: np.ndarray  # int32
    reads: list[list[int]] = field(default_factory=list)  # per call: the earlier calls whose results it reads


@dataclass
class ModelProfile:
    """A model measured once, for pricing any plan at any batch size."""

    image_size: int
    device: str
    dtype: str
    param_names: list[str]
    param_bytes: np.ndarray  # int64, per parameter
    param_numel: np.ndarray  # int64
    first_use: np.ndarray  # int64, per parameter: key of the first call using it (NEVER: unused)
    passes: dict[int, _Pass]
    store_per_image: np.ndarray  # float64, per saved tensor: bytes per image
    store_fixed: np.ndarray  # float64, per saved tensor: bytes independent of the batch
    module_names: list[str]
    seconds: float = 0.0
    index: dict[str, int] = field(default_factory=dict)
    _full: dict = field(default_factory=dict, repr=False)
    module_io: dict = field(default_factory=dict)  # LoRA-able module -> (input, output positions) per image
    _same_order: dict | None = field(default=None, repr=False)  # the last plan.params seen in model order  # full fine-tuning, per (batch, BatchNorm pass)

    def __post_init__(self):
        self.index = {n: i for i, n in enumerate(self.param_names)}
        # a Linear or convolution whose only trainable parameter is its bias saves no more than a
        # frozen one (the bias's gradient is a sum of the output's): BitFit priced as measured.
        # Not a norm layer's: BatchNorm saves its input for any trainable parameter.
        self._is_bias = np.array([n.rsplit(".", 1)[-1].endswith("bias") for n in self.param_names], dtype=bool)
        p0 = self.passes[PASS_TRAINABLE]
        self._has_params = np.bincount(p0.use_call, minlength=len(p0.call_key)) > 0

    def trainable_mask(self, plan: FreezePlan) -> np.ndarray:
        n = len(self.param_names)
        params = plan.params
        if params is self._same_order or (len(params) == n and list(params) == self.param_names):
            self._same_order = params  # a plan's names never change, only whether each is frozen
            return ~np.fromiter(params.values(), dtype=bool, count=n)
        mask = np.zeros(n, dtype=bool)
        index = self.index
        mask[[index[name] for name, frozen in plan.params.items() if not frozen and name in index]] = True
        return mask


class _Recorder:
    """Shared state of the two modes and the hooks while one pass runs."""

    def __init__(self, param_ptrs: dict[int, list[int]], skip_ptrs: set[int], pass_id: int, batch: int):
        self.param_ptrs, self.skip_ptrs = param_ptrs, skip_ptrs
        self.pass_id, self.batch = pass_id, batch
        self.segment, self.in_segment = 0, 0
        self.fresh_in_segment = 0
        self.stack: list[int] = [0]
        self.call_key: list[int] = []
        self.call_flops: list[float] = []
        self.call_module: list[int] = []
        self.uses: list[tuple[int, int]] = []
        self.current = -1
        self.unknown_in_call = 0
        self.producer: dict[int, tuple] = {}
        self.keep: list[torch.Tensor] = []  # outputs stay alive: no address is reused in a pass
        self.saved: dict[tuple, int] = {}  # identity -> bytes (unique storages)
        self.events: list[tuple[int, tuple]] = []  # (call, identity)
        self.first_use: dict[int, int] = {}
        self.writer: dict[int, int] = {}  # storage -> the call that last wrote it
        self.reads: list[list[int]] = []  # per call: the calls whose results it reads
        self.busy = False

    def tick(self) -> None:
        self.segment += 1
        self.in_segment = 0
        self.fresh_in_segment = 0

    def begin_call(self, tensors: list[torch.Tensor]) -> set[int]:
        key = self.segment * _SEGMENT + self.in_segment
        self.in_segment += 1
        cid = len(self.call_key)
        self.call_key.append(key)
        self.call_flops.append(0.0)
        self.call_module.append(self.stack[-1])
        ptrs = {_ptr(t) for t in tensors}
        for p in ptrs:
            for i in self.param_ptrs.get(p, ()):
                self.uses.append((cid, i))
                self.first_use.setdefault(i, key)
        writer = self.writer
        self.reads.append(sorted({writer[p] for p in ptrs if p in writer}))
        self.current = cid
        self.unknown_in_call = 0
        return ptrs

    def end_call(self, out, inputs: set[int]) -> None:
        for t in _tensors(out, []):
            p = _ptr(t)
            if p and p not in self.param_ptrs:
                self.writer[p] = self.current  # a view or an in-place result: it now depends on this call
            if p and p not in inputs and p not in self.producer:
                self.producer[p] = ("out", self.segment, self.fresh_in_segment)
                self.fresh_in_segment += 1
                self.keep.append(t)

    def pack(self, t: torch.Tensor):
        if self.busy or not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return t
        self.busy = True
        try:
            p = _ptr(t)
            if p and p not in self.skip_ptrs:
                ident = self.producer.get(p)
                if ident is None:  # a temporary made inside the call
                    ident = ("tmp", self.pass_id, self.call_key[self.current], self.unknown_in_call)
                    self.unknown_in_call += 1
                    self.producer[p] = ident
                    self.keep.append(t)
                self.saved[ident] = t.untyped_storage().nbytes()
                self.events.append((self.current, ident))
        finally:
            self.busy = False
        return t


def _tensors(obj, out: list) -> list:
    """The tensors in a call's arguments or result (lists, tuples and dicts, two levels deep;
    cheaper than a full pytree walk on every call)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            if isinstance(x, torch.Tensor):
                out.append(x)
            elif isinstance(x, (list, tuple)):
                out.extend(y for y in x if isinstance(y, torch.Tensor))
    elif isinstance(obj, dict):
        _tensors(list(obj.values()), out)
    return out


def _ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


class _Calls(TorchFunctionMode):
    """Numbers every torch call, notes the parameters it uses and the tensors it makes."""

    def __init__(self, rec: _Recorder):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        if rec.busy:
            return func(*args, **kwargs)
        inputs = rec.begin_call(_tensors(args, _tensors(kwargs, [])))
        out = func(*args, **kwargs)
        rec.end_call(out, inputs)
        return out


class _Flops(TorchDispatchMode):
    """Adds each aten op's FLOPs (torch's own formulas) to the call running it."""

    def __init__(self, rec: _Recorder):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FLOPS.get(func._overloadpacket)
        if formula is not None and self.rec.current >= 0 and not self.rec.busy:
            self.rec.call_flops[self.rec.current] += formula(*args, **kwargs, out_val=out)
        return out


def _run_pass(model: nn.Module, x: torch.Tensor, pass_id: int, param_ptrs, skip_ptrs, amp: bool) -> _Recorder:
    rec = _Recorder(param_ptrs, skip_ptrs, pass_id, x.shape[0])
    names = {id(m): i for i, m in enumerate(model.modules())}

    def pre(m, args):
        rec.tick()
        rec.stack.append(names[id(m)])

    def post(m, args, out):
        rec.tick()
        rec.stack.pop()

    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    rec.producer[_ptr(x)] = ("input",)
    rec.keep.append(x)
    try:
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), _Calls(rec), _Flops(rec), \
                torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        del out
    finally:
        for h in handles:
            h.remove()
    rec.keep.clear()
    return rec


def _measure(work: nn.Module, params, image_size: int, device, amp: bool, batches, buffers):
    param_ptrs: dict[int, list[int]] = {}
    for i, (_, p) in enumerate(params):
        param_ptrs.setdefault(_ptr(p), []).append(i)
    skip_ptrs = set(param_ptrs) | {_ptr(b) for b in work.buffers()}
    bns = [m for m in work.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    pass_ids = [PASS_TRAINABLE, PASS_FROZEN_EVAL] + ([PASS_FROZEN_TRAIN] if bns else [])
    recs: dict[tuple[int, int], _Recorder] = {}
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        x0 = torch.randn(b, 3, image_size, image_size, generator=gen).to(device)
        for pid in pass_ids:
            work.train()
            for _, p in params:
                p.requires_grad_(pid == PASS_TRAINABLE)
            if pid == PASS_FROZEN_EVAL:
                for m in bns:
                    m.eval()
            x = x0.clone().requires_grad_(pid != PASS_TRAINABLE)
            recs[b, pid] = _run_pass(work, x, pid, param_ptrs, skip_ptrs, amp)
            with torch.no_grad():
                for t, kept in buffers:
                    t.copy_(kept)
    return recs, pass_ids


PROFILE_FORMAT = 1  # bump when ModelProfile changes: older stored profiles are measured again


def stored_profile(model: nn.Module, image_size: int, key: dict, folder=None) -> ModelProfile:
    """:func:`profile_model`, kept under the cache folder by (``key``: what builds the model, the
    size, torch's version): ``plan show`` measured a ResNet for ~20 s on a CPU each time. A
    stored profile that does not match the model's parameters, or cannot be read, is measured
    again."""
    import hashlib
    import json
    import pickle

    from .atomic import atomic_write
    from .data import default_cache_dir

    digest = hashlib.sha256(json.dumps([key, image_size, torch.__version__, PROFILE_FORMAT], sort_keys=True,
                                       default=str).encode()).hexdigest()[:24]
    path = (Path(folder) if folder is not None else default_cache_dir() / "profiles") / f"{digest}.pkl"
    names = [n for n, _ in model.named_parameters()]
    try:
        with open(path, "rb") as f:
            profile = pickle.load(f)  # the user's own cache folder, written below
        if isinstance(profile, ModelProfile) and profile.param_names == names and profile.image_size == image_size:
            return profile
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError, ImportError):
        pass
    profile = profile_model(model, image_size)
    try:
        atomic_write(path, lambda f: pickle.dump(profile, f), mode="wb")
    except OSError:
        pass  # a read-only cache: measured each time, as before
    return profile


def profile_model(model: nn.Module, image_size: int, device: str | torch.device | None = None, amp: bool = False,
                  batches: tuple[int, int] = PROFILE_BATCHES) -> ModelProfile:
    """Measure ``model`` once at ``image_size``: forward passes at two small batch sizes,
    (1) everything trainable, (2) everything frozen with BatchNorm in eval mode and the input
    needing a gradient, and (3) the same with BatchNorm in training mode (models with BatchNorm
    only). It runs on the model itself, on its device, unless ``device`` names another (then on
    a copy), and leaves it as it was. ``amp`` measures under bf16 autocast, as CUDA training runs."""
    t0 = time.perf_counter()
    own = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device) if device is not None else own
    work = model if device == own else copy.deepcopy(model).to(device)
    params = list(work.named_parameters())
    flags = [p.requires_grad for _, p in params]
    modes = [m.training for m in work.modules()]
    held_hooks = []  # a plan's keep-in-eval hooks and adapters would change what the passes measure
    for m in work.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k, hook in list(hooks.items()):
                if hook is _keep_eval or is_adapter_hook(hook):
                    held_hooks.append((hooks, k, hook))
                    del hooks[k]
    buffers = [(t, t.detach().clone()) for t in work.buffers()]  # BatchNorm statistics move
    try:
        recs, pass_ids = _measure(work, params, image_size, device, amp, batches, buffers)
        io = module_io(work, image_size, device, amp)
    finally:
        with torch.no_grad():
            for t, kept in buffers:
                t.copy_(kept)
        for (_, p), flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in zip(work.modules(), modes):
            m.training = mode
        for hooks, k, hook in held_hooks:
            hooks[k] = hook

    b1, b2 = batches
    idents: dict[tuple, int] = {}
    for pid in pass_ids:
        for _, ident in recs[b1, pid].events:
            idents.setdefault(ident, len(idents))
    size1, size2 = np.zeros(len(idents)), np.zeros(len(idents))
    for pid in pass_ids:
        for ident, nbytes in recs[b1, pid].saved.items():
            size1[idents[ident]] = nbytes
        for ident, nbytes in recs[b2, pid].saved.items():
            if ident in idents:
                size2[idents[ident]] = nbytes
    per_image = np.maximum((size2 - size1) / (b2 - b1), 0.0)
    fixed = np.maximum(size1 - b1 * per_image, 0.0)

    passes = {}
    for pid in pass_ids:
        r1, r2 = recs[b1, pid], recs[b2, pid]
        f1, f2 = np.array(r1.call_flops, dtype=np.float64), np.array(r2.call_flops, dtype=np.float64)
        if len(f2) != len(f1):  # the two batch sizes took different paths: per-image from one
            f2 = f1 * b2 / b1
        uses = np.array(r1.uses, dtype=np.int32).reshape(-1, 2)
        events = sorted({(c, idents[i]) for c, i in r1.events})
        ev = np.array(events, dtype=np.int32).reshape(-1, 2)
        passes[pid] = _Pass(np.array(r1.call_key, dtype=np.int64), np.maximum(f2 - f1, 0) / (b2 - b1),
                            np.array(r1.call_module, dtype=np.int32), uses[:, 0].copy(), uses[:, 1].copy(),
                            ev[:, 0].copy(), ev[:, 1].copy(), r1.reads)
    first = recs[b1, PASS_TRAINABLE].first_use
    return ModelProfile(
        image_size=image_size, device=str(device), dtype="bfloat16" if amp else "float32",
        param_names=[n for n, _ in params],
        param_bytes=np.array([p.numel() * p.element_size() for _, p in params], dtype=np.int64),
        param_numel=np.array([p.numel() for _, p in params], dtype=np.int64),
        first_use=np.array([first.get(i, NEVER) for i in range(len(params))], dtype=np.int64),
        passes=passes, store_per_image=per_image, store_fixed=fixed,
        module_names=[n for n, _ in model.named_modules()], seconds=time.perf_counter() - t0, module_io=io,
    )


# ----------------------------------------------------------------------------- pricing a plan


def _activations(profile: ModelProfile, trainable: np.ndarray, t0: int, frozen_pass: int,
                 batch_size: int) -> float:
    counted = np.zeros(len(profile.store_per_image), dtype=bool)
    for pid, wants_trainable in ((PASS_TRAINABLE, True), (frozen_pass, False)):
        p = profile.passes[pid]
        uses_trainable = np.bincount(p.use_call, weights=trainable[p.use_param],
                                     minlength=len(p.call_key)) > 0
        active = (p.call_key[p.ev_call] >= t0) & (uses_trainable[p.ev_call] == wants_trainable)
        counted[p.ev_store[active]] = True
    return float(profile.store_per_image[counted].sum() * batch_size + profile.store_fixed[counted].sum())


def needs_input_grad(reads: list[list[int]], uses_trainable: np.ndarray) -> np.ndarray:
    """Per call: whether a result it reads needs a gradient (it came, through any chain of
    calls, from one using a trainable parameter). Only such a call computes its input's gradient:
    a trainable layer reading the frozen prefix's output (and a second reader of it, such as
    ResNet's ``downsample``) computes its weight's gradient alone."""
    grad_out = uses_trainable.tolist()
    grad_in = [False] * len(grad_out)
    for c, srcs in enumerate(reads):
        if any(grad_out[s] for s in srcs):
            grad_in[c] = grad_out[c] = True
    return np.array(grad_in, dtype=bool)


def _flops(profile: ModelProfile, trainable: np.ndarray, t0: int) -> tuple[float, float]:
    """(forward, backward) FLOPs per image. Backward: a call with a trainable weight computes the
    weight's gradient (once its forward); one reading a result that needs a gradient computes its
    input's (once more; twice for a call without weights, attention's products: both operands);
    nothing before the first trainable call."""
    p = profile.passes[PASS_TRAINABLE]
    fwd = float(p.call_flops.sum())
    if t0 == NEVER:
        return fwd, 0.0
    uses_trainable = np.bincount(p.use_call, weights=trainable[p.use_param], minlength=len(p.call_key)) > 0
    grad_in = needs_input_grad(p.reads, uses_trainable)
    factor = np.where(profile._has_params, uses_trainable + grad_in.astype(np.float64), 2.0 * grad_in)
    factor[p.call_key < t0] = 0.0
    return fwd, float((factor * p.call_flops).sum())


def estimate(profile: ModelProfile, plan: FreezePlan, batch_size: int, optimizer: str = "adamw",
             momentum: float = 0.9, prefix=None) -> dict:
    """The price of ``plan`` at ``batch_size``, and of full fine-tuning beside it. Bytes are per
    training step; FLOPs are per image. ``prefix``: where backward stops under the plan
    (:func:`split.frozen_prefix`, the one answer), recorded as ``backward_stop``."""
    trainable = profile.trainable_mask(plan)
    frozen_pass = PASS_FROZEN_TRAIN if plan.batchnorm == "train" and PASS_FROZEN_TRAIN in profile.passes \
        else PASS_FROZEN_EVAL
    # an adapted module trains through its adapter: backward reaches it (the prefix ends there)
    adapted = np.zeros_like(trainable)
    adapted[[profile.index[w] for ws in plan.adapted.values() for w in ws if w in profile.index]] = True
    reach = trainable | adapted
    t0 = int(profile.first_use[reach].min()) if reach.any() else NEVER
    saving = trainable & ~(profile._is_bias & ~np.isin(profile.param_names, plan.norm_params))
    act = _activations(profile, saving, t0, frozen_pass, batch_size) if t0 != NEVER else 0.0
    element = 2 if profile.dtype == "bfloat16" else 4
    act += lora_saved(profile.module_io, plan, element, batch_size)
    adapter_params = (plan.adapter_numel or 0) if plan.adapters else 0
    fwd, bwd = _flops(profile, reach, t0)  # an adapted layer priced as trainable: an upper bound
    full = profile._full.get((batch_size, frozen_pass))
    if full is None:
        everything = np.ones_like(trainable)
        t0_full = int(profile.first_use.min()) if len(profile.first_use) else NEVER
        full = profile._full[batch_size, frozen_pass] = (
            _activations(profile, everything, t0_full, frozen_pass, batch_size) if t0_full != NEVER else 0.0,
            _flops(profile, everything, t0_full)[1])
    full_act, full_bwd = full
    states = OPTIMIZER_STATES.get(optimizer, 2) if optimizer != "sgd" or momentum else 0
    trainable_bytes = int(profile.param_bytes[trainable].sum()) + 4 * adapter_params  # adapters are fp32
    total_bytes = int(profile.param_bytes.sum())
    first = None
    if t0 != NEVER:
        order = np.argsort(profile.first_use, kind="stable")
        first = profile.param_names[order[int(np.flatnonzero(reach[order])[0])]]
    backward_stop = prefix.module if prefix is not None and first is not None else None
    result = {
        "batch_size": batch_size,
        "image_size": profile.image_size,
        "optimizer": optimizer,
        "trainable_params": int(profile.param_numel[trainable].sum()) + adapter_params,
        "adapter_params": adapter_params,
        "total_params": int(profile.param_numel.sum()),
        "param_bytes": total_bytes,
        "trainable_param_bytes": trainable_bytes,
        "grad_bytes": trainable_bytes,
        "optimizer_bytes": states * trainable_bytes,
        "activation_bytes": int(act),
        "full_activation_bytes": int(full_act),
        "forward_flops_per_image": int(fwd),
        "backward_flops_per_image": int(bwd),
        "flops_per_image": int(fwd + bwd),
        "full_flops_per_image": int(fwd + full_bwd),
        "first_trainable": first,
        "backward_stop": backward_stop,
        "profiled": f"{profile.device} {profile.dtype}",
    }
    # Auto-RGN's two norms per trainable tensor per step; it holds nothing between steps
    result["auto_rgn_flops_per_step"] = flops_per_step(result["trainable_params"]) if plan.auto_rgn else 0
    result["total_bytes"] = total_bytes + 4 * adapter_params + trainable_bytes * (1 + states) + result["activation_bytes"]
    result["full_total_bytes"] = total_bytes * (2 + states) + result["full_activation_bytes"]
    result["activation_ratio"] = full_act / act if act else None
    result["flops_ratio"] = (fwd + full_bwd) / (fwd + bwd) if fwd + bwd else None
    return result


# ----------------------------------------------------------------------------- words


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def human_flops(n: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} FLOP"


def describe(est: dict) -> str:
    """One line for the TUI's totals and ``plan show``:
    ``backward stops at layer3 · activations 1.1 GiB vs 3.9 GiB full · 2.3× fewer FLOPs``."""
    parts = []
    if est["backward_stop"]:
        parts.append(f"backward stops at {est['backward_stop']}")
    elif est["first_trainable"] is None:
        parts.append("nothing trains")
    else:
        parts.append("backward runs to the input")
    parts.append(f"activations {human_bytes(est['activation_bytes'])} vs "
                 f"{human_bytes(est['full_activation_bytes'])} full")
    if est["flops_ratio"] and est["flops_ratio"] > 1.005:
        parts.append(f"{est['flops_ratio']:.1f}× fewer FLOPs")
    if est.get("auto_rgn_flops_per_step"):
        parts.append(f"Auto-RGN +{human_flops(est['auto_rgn_flops_per_step'])}/step, no memory")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- checking


def measure_saved_bytes(model: nn.Module, plan: FreezePlan, x: torch.Tensor, traced=None) -> int:
    """The bytes autograd really keeps for backward in one training forward of ``model`` under
    ``plan`` on ``x``, run as training runs it (the frozen prefix without gradients): unique
    storages saved, parameters and buffers left out. For checking :func:`estimate`."""
    from .train import TrainConfig, plan_split

    plan.apply(model)
    model.train()
    prefix, rest, *_ = plan_split(model, plan, TrainConfig(cache=False), traced)
    skip = {_ptr(t) for t in (*model.parameters(), *model.buffers(), *(t for _, t in adapter_tensors(model)))}
    saved: dict[int, torch.Tensor] = {}

    def pack(t):
        p = _ptr(t)
        if p and p not in skip:
            saved.setdefault(p, t)
        return t

    if prefix is not None:
        with torch.no_grad():
            x = prefix(x)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = (rest if rest is not None else model)(x)
    total = sum(t.untyped_storage().nbytes() for t in saved.values())
    del out, saved
    return total
