"""The editable state behind the TUI, in plain Python: a model's module tree, the freeze state of
every parameter, totals, lints, and runs started from the same initial weights.

Widgets read this; they never touch torch. Everything here is cheap enough to call per key
press on models with tens of thousands of parameter tensors (numpy ranges, no model walks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Dataset, load_data
from .errors import PlanError
from .lints import Lint, check
from .models import ModelInfo, build_model, find_heads, model_info
from .plan import BATCHNORM_MODES, FreezePlan, glob_matches
from .runs import RunWriter, load_checkpoint, new_run_dir
from .split import find_cut, trace
from .train import Callback, TrainConfig, TrainResult, resolve_device, train


@dataclass
class Node:
    """One row of the module tree: a module or one of its parameters."""

    name: str  # "" for the whole model
    label: str
    kind: str  # module class name, or "Parameter"
    start: int  # parameter index range [start, end) in parameter order
    end: int
    children: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None  # parameters only
    new: bool = False  # re-initialised by the tool (or inside such a module)

    @property
    def is_param(self) -> bool:
        return self.shape is not None


@dataclass
class RunRecord:
    """One training run of this session, as the runs table and the charts see it."""

    id: int
    label: str
    trainable: int
    total: int
    config: TrainConfig
    folder: Path | None = None
    steps: list[float] = field(default_factory=list)  # loss per step
    epochs: list[dict] = field(default_factory=list)  # EpochEnd.to_dict() per epoch
    status: str = "running"  # running | done | stopped | failed
    error: str | None = None
    seconds: float = 0.0
    frozen_unchanged: bool | None = None
    total_steps: int = 0
    device: str = ""

    @property
    def best_acc(self) -> float | None:
        return max((e["val_acc"] for e in self.epochs), default=None)

    @property
    def final_acc(self) -> float | None:
        return self.epochs[-1]["val_acc"] if self.epochs else None


class Workspace:
    """A model, its freeze state and the data to train on."""

    def __init__(self, model: nn.Module, data: Dataset | None = None, plan: FreezePlan | None = None,
                 data_name: str = "", device: str = "auto"):
        self.model = model
        self.info: ModelInfo = model_info(model) or ModelInfo(type(model).__name__, None, None, False)
        self.data = data
        self.data_name = data_name or (data.name if data else "")
        self.device = device
        params = list(model.named_parameters())
        self.param_names = [n for n, _ in params]
        self.index = {n: i for i, n in enumerate(self.param_names)}
        self.numel = np.array([p.numel() for _, p in params], dtype=np.int64)
        self.frozen = np.array([not p.requires_grad for _, p in params], dtype=bool)
        self.batchnorm = "freeze"
        self.plan_extra: dict = {}
        self.nodes = self._build_nodes()
        self.heads = find_heads(model)
        self.version = 0
        self.locked = False  # read-only while a run is in progress
        # Taken when the first run starts (on the worker thread): copying ViT-L's 1.2 GB here
        # would delay the first drawn tree by seconds.
        self.initial_state: dict | None = None
        self.runs: list[RunRecord] = []
        self.traced = trace(model)  # once: every freeze edit then finds its cut in O(nodes)
        self.order = self.traced.param_order if self.traced else self.param_names
        if plan is not None:
            self.load_plan_object(plan)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, model: str = "resnet18", weights: str | None = "auto", data: str = "shapes",
             num_classes: int | None = None, small_input: bool = False, plan: str | None = None,
             device: str = "auto", seed: int = 0, image_size: int | None = None) -> "Workspace":
        """Load the data, build the model sized to it, and apply ``plan`` if given."""
        resolve_device(device)
        loaded_plan = FreezePlan.load(plan) if plan else None
        dataset = load_data(data, seed=seed, size=image_size)
        if loaded_plan is not None:
            spec = loaded_plan.model
            model, small_input = spec["name"], bool(spec.get("small_input"))
            num_classes = spec.get("num_classes") or num_classes
            if weights == "auto" and spec.get("weights"):
                weights = spec["weights"]
        torch.manual_seed(seed)
        net = build_model(model, weights=weights, num_classes=num_classes or dataset.num_classes,
                          small_input=small_input)
        return cls(net, dataset, loaded_plan, data_name=data, device=device)

    # ------------------------------------------------------------------ the tree

    def _build_nodes(self) -> dict[str, Node]:
        new = set(self.info.new_modules)
        nodes: dict[str, Node] = {}
        own: dict[str, list[str]] = {}  # a module's own parameters come first, as in parameter order
        for name, module in self.model.named_modules():
            label = name.rpartition(".")[2] if name else type(self.model).__name__
            nodes[name] = Node(name, label, type(module).__name__, 0, 0,
                               new=name in new or any(name.startswith(m + ".") for m in new))
            own[name] = []
            if name:
                nodes[name.rpartition(".")[0]].children.append(name)
        ranges: dict[str, list[int]] = {}
        for i, pname in enumerate(self.param_names):
            owner = pname.rpartition(".")[0]
            p = self.model.get_parameter(pname)
            nodes[pname] = Node(pname, pname.rpartition(".")[2], "Parameter", i, i + 1, shape=tuple(p.shape),
                                new=nodes[owner].new)
            own[owner].append(pname)
            parts = owner.split(".") if owner else []
            for k in range(len(parts) + 1):
                r = ranges.setdefault(".".join(parts[:k]), [i, i + 1])
                r[0], r[1] = min(r[0], i), max(r[1], i + 1)
        # A module without parameters sits between its neighbours in parameter order.
        seen = 0
        for name in own:
            if name not in ranges:
                nodes[name].start = nodes[name].end = seen
            seen += len(own[name])
        for name, (a, b) in ranges.items():
            nodes[name].start, nodes[name].end = a, b
        for name, params in own.items():
            nodes[name].children[:0] = params
        return nodes

    def counts(self, name: str = "") -> tuple[int, int]:
        """(parameters, trainable parameters) under a node."""
        n = self.nodes[name]
        sl = slice(n.start, n.end)
        total = int(self.numel[sl].sum())
        return total, total - int(self.numel[sl][self.frozen[sl]].sum())

    def state(self, name: str = "") -> str:
        """"trainable", "frozen", "mixed", or "empty" (no parameters)."""
        n = self.nodes[name]
        if n.end <= n.start:
            return "empty"
        sl = self.frozen[n.start:n.end]
        return "frozen" if sl.all() else "trainable" if not sl.any() else "mixed"

    def totals(self) -> dict:
        total, trainable = self.counts("")
        return {"total": total, "trainable": trainable, "frozen": total - trainable,
                "percent": 100.0 * trainable / total if total else 0.0}

    def backward_stop(self) -> str | None:
        """Where the frozen prefix ends in the forward graph (backward runs no further down),
        or, for a model that cannot be traced, the first trainable parameter's module."""
        if self.traced is not None:
            cut = find_cut(self.traced, {n for n, f in zip(self.param_names, self.frozen) if f})
            return cut.name if cut else None
        idx = np.flatnonzero(~self.frozen)
        return self.param_names[idx[0]].rpartition(".")[0] if len(idx) and idx[0] > 0 else None

    # ------------------------------------------------------------------ editing

    def _check_unlocked(self) -> None:
        if self.locked:
            raise PlanError("the plan is read-only while a run is in progress; stop it with t first")

    def _changed(self) -> None:
        self.version += 1

    def set_frozen(self, name: str, frozen: bool) -> None:
        self._check_unlocked()
        n = self.nodes[name]
        self.frozen[n.start:n.end] = frozen
        self._changed()

    def toggle(self, name: str) -> None:
        """Trainable becomes frozen, frozen trainable, mixed frozen."""
        self.set_frozen(name, self.state(name) != "frozen")

    def freeze_before(self, name: str) -> None:
        """Freeze every parameter before this node in parameter order; the rest trains."""
        self._check_unlocked()
        start = self.nodes[name].start
        self.frozen[:] = False
        self.frozen[:start] = True
        self._changed()

    def head_only(self) -> None:
        self._check_unlocked()
        self.frozen[:] = True
        for h in self.heads:
            n = self.nodes[h]
            self.frozen[n.start:n.end] = False
        self._changed()

    def all_trainable(self) -> None:
        self._check_unlocked()
        self.frozen[:] = False
        self._changed()

    def set_batchnorm(self, mode: str) -> None:
        self._check_unlocked()
        if mode not in BATCHNORM_MODES:
            raise PlanError(f"batchnorm must be one of {BATCHNORM_MODES}")
        self.batchnorm = mode
        self._changed()

    def apply_glob(self, pattern: str, frozen: bool) -> int:
        """Freeze or unfreeze every parameter the glob matches; a glob matching nothing is an error."""
        self._check_unlocked()
        hits = [i for i, n in enumerate(self.param_names) if glob_matches(pattern, n)]
        if not hits:
            raise PlanError(f"{pattern!r} matches no parameter or module")
        self.frozen[hits] = frozen
        self._changed()
        return len(hits)

    # ------------------------------------------------------------------ plans

    @property
    def plan(self) -> FreezePlan:
        spec = self.info.spec()
        plan = FreezePlan(model=spec, params=dict(zip(self.param_names, self.frozen.tolist())),
                          batchnorm=self.batchnorm, numels=dict(zip(self.param_names, self.numel.tolist())),
                          extra=dict(self.plan_extra))
        return plan

    def lints(self, image_size: int | None = None) -> list[Lint]:
        """The core's lints for the current state, computed once per edit (the details panel
        asks on every cursor move)."""
        size = image_size or (self.data.image_size if self.data else None)
        key = (self.version, size)
        if getattr(self, "_lints_key", None) != key:
            self._lints = check(self.plan, self.model, image_size=size, min_size=self.info.min_size,
                                order=self.order)
            self._lints_key = key
        return self._lints

    def export(self, path: str | Path) -> Path:
        return self.plan.save(path)

    def load_plan_object(self, plan: FreezePlan) -> None:
        """Apply a plan, all or nothing: a plan that does not fit changes nothing."""
        self._check_unlocked()
        name = plan.model.get("name")
        if name != self.info.name:
            raise PlanError(f"the plan is for {name}, but this model is {self.info.name}")
        plan.check_fits(self.model)
        self.frozen[:] = [plan.params[n] for n in self.param_names]
        self.batchnorm = plan.batchnorm
        self.plan_extra = dict(plan.extra)
        self._changed()

    def load_plan(self, path: str | Path) -> FreezePlan:
        plan = FreezePlan.load(path)
        self.load_plan_object(plan)
        return plan

    # ------------------------------------------------------------------ runs

    def new_run(self, config: TrainConfig) -> RunRecord:
        t = self.totals()
        record = RunRecord(len(self.runs) + 1, f"#{len(self.runs) + 1}", t["trainable"], t["total"], config)
        self.runs.append(record)
        return record

    def _reset_weights(self) -> None:
        if self.initial_state is None:
            self.initial_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.model.load_state_dict(self.initial_state)

    def run(self, record: RunRecord, callbacks: list[Callback], stop: threading.Event,
            runs_dir: str | Path = "runs") -> TrainResult:
        """Train from the initial weights under the current plan; write a run folder.

        Called on a worker thread. The tree is locked meanwhile.
        """
        if self.data is None:
            raise PlanError("no data loaded")
        self.locked = True
        try:
            self._reset_weights()
            plan = self.plan
            record.folder = new_run_dir(runs_dir, f"{self.info.name.replace(':', '-')}-{record.id}")
            writer = RunWriter(record.folder, self.model, plan, record.config,
                               extra={"data": self.data_name, "model": self.info.name})
            result = train(self.model, plan, self.data, record.config, callbacks=[*callbacks, writer], stop=stop)
        finally:
            self.locked = False
        return result

    def resume(self, record: RunRecord, callbacks: list[Callback], stop: threading.Event) -> TrainResult:
        """Continue a stopped or failed run from its last checkpoint, under the plan it started
        with, into the same folder. Called on a worker thread."""
        checkpoint = load_checkpoint(record.folder)
        plan = FreezePlan.from_dict(checkpoint["plan"], source=f"the checkpoint in {record.folder}")
        self.locked = True
        try:
            self._reset_weights()  # the frozen reference; the checkpoint's weights load over it
            record.epochs = list(checkpoint["history"])
            record.status, record.error = "running", None
            writer = RunWriter(record.folder, self.model, plan, record.config,
                               extra={"data": self.data_name, "model": self.info.name},
                               resume_epoch=checkpoint["epoch"])
            return train(self.model, plan, self.data, record.config, callbacks=[*callbacks, writer], stop=stop,
                         resume=checkpoint)
        finally:
            self.locked = False

    def describe(self) -> str:
        """Model · weights · data · device, for the header."""
        w = self.info.weights or "random init"
        if self.info.note:
            w += f" ({self.info.note})"
        dev = str(resolve_device(self.device))
        small = ", small input" if self.info.small_input else ""
        return f"{self.info.name}{small} · {w} · {self.data_name} · {dev}"
