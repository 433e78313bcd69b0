"""The editable state behind the TUI, in plain Python: a model's module tree (:mod:`.tree`) and
the one :class:`FreezePlan` being edited, its schedule edits (:mod:`.schedule_edits`), the
inputs its runs are made of, and this session's runs.

Widgets read this; they never touch torch. Every edit goes through the plan; the views
(``frozen``, counts, states) are derived from it, cheap enough to recompute per key press on
models with tens of thousands of parameter tensors.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
from torch import nn

from .data import BatchTransform, Dataset
from .errors import PlanError
from .lints import Lint, check
from .models import ModelInfo, find_heads, is_factory, model_info
from .plan import BATCHNORM_MODES, FreezePlan
from .runner import RunInputs
from .runs import RunRecord
from .schedule_edits import ScheduleEdits
from .specs import ModelSpec
from .split import Prefix, frozen_prefix, trace
from .config import TrainConfig
from .devices import model_lock, resolve_device
from .tree import ModuleIndex


class Workspace(ScheduleEdits):
    """A model, the plan being edited for it, the data to train on, and this session's runs."""

    def __init__(self, model: nn.Module, data: Dataset | None = None, plan: FreezePlan | None = None,
                 data_name: str = "", device: str = "auto", traced=None):
        self.model = model
        self.info: ModelInfo = model_info(model) or ModelInfo(type(model).__name__, None, None, False)
        self.data = data
        self.data_name = data_name or (data.name if data else "")
        self.device = device
        self.plan = FreezePlan.from_model(model, spec=self.info.spec())  # the one source of truth
        self.param_names = list(self.plan.params)
        self.tree = ModuleIndex(model, self.param_names, self.info.new_modules)
        self.nodes, self.numel = self.tree.nodes, self.tree.numel
        self.frozen = np.zeros(len(self.param_names), dtype=bool)  # a view of the plan, see _changed
        self.heads = find_heads(model)
        self.version = 0
        self.locked = False  # read-only while a run is in progress
        # Taken when the first run starts (on the worker thread): copying ViT-L's 1.2 GB here
        # would delay the first drawn tree by seconds.
        self.initial_state: dict | None = None
        self.runs: list[RunRecord] = []
        self.traced = traced if traced is not None else trace(model)  # once: every edit finds its cut in O(nodes)
        self.order = self.traced.param_order if self.traced else self.param_names
        # what a run of this workspace is made of (the TUI's runs and sweeps use these, measured once)
        self.inputs = RunInputs(model, self.plan.copy(), data, self.traced, resolve_device(device)) \
            if data is not None else None
        self._changed()
        if plan is not None:
            self.load_plan_object(plan)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, model: ModelSpec | None = None, data: str = "shapes", plan: str | Path | FreezePlan | None = None,
             config: TrainConfig | None = None, progress=None) -> "Workspace":
        """Load the data, build the model sized to it, and apply ``plan`` if given (its model
        wins; a plan naming a Python factory needs ``model`` to name it too), through the same
        :func:`~freezetui.core.runner.prepare_run` as every run. ``config``: the settings the
        model is opened with (device, seed, image size)."""
        from .runner import Reporter, check_settings, prepare_run
        from .specs import RunSpec

        model = model or ModelSpec()
        config = config or TrainConfig()
        loaded = FreezePlan.load(plan) if isinstance(plan, (str, Path)) else plan
        if loaded is not None:
            if model.weights not in ("auto", None):
                loaded.model["weights"] = model.weights  # --weights beside a plan: the user's file wins
            if not is_factory(loaded.model["name"]):  # the plan's model wins over the default --model;
                model = dataclasses.replace(model, name=loaded.model["name"])  # code runs only if named
        reporter = Reporter()
        if progress is not None:
            reporter.progress = progress
        spec = RunSpec(data=data, config=config, out=None, plan=loaded, model=model)
        inputs = prepare_run(spec, reporter, check_settings(spec))
        return cls.from_inputs(inputs, data_name=data, device=config.device, plan=loaded)

    @classmethod
    def from_inputs(cls, inputs: "RunInputs", data_name: str = "", device: str = "auto",
                    plan: FreezePlan | None = None) -> "Workspace":
        ws = cls(inputs.model, inputs.data, plan, data_name=data_name, device=device, traced=inputs.traced)
        ws.inputs = inputs
        return ws

    # ------------------------------------------------------------------ the tree

    def counts(self, name: str = "") -> tuple[int, int]:
        """(parameters, trainable parameters) under a node."""
        return self.tree.counts(self.frozen, name)

    def state(self, name: str = "") -> str:
        """"trainable", "frozen", "mixed", or "empty" (no parameters)."""
        return self.tree.state(self.frozen, name)

    def totals(self) -> dict:
        total, trainable = self.counts("")
        return {"total": total, "trainable": trainable, "frozen": total - trainable,
                "percent": 100.0 * trainable / total if total else 0.0,
                "adapters": (self.plan.adapter_numel or 0) if self.plan.adapters else 0}

    @property
    def batchnorm(self) -> str:
        return self.plan.batchnorm

    def has_batchnorm(self) -> bool:
        """Whether any module is a BatchNorm (the BN setting matters only then)."""
        return self.tree.has_batchnorm

    def frozen_prefix(self) -> Prefix | None:
        """Where backward stops under the plan being edited (see :func:`split.frozen_prefix`),
        computed once per edit."""
        if getattr(self, "_prefix_key", None) != self.version:
            self._prefix = frozen_prefix(self.traced, self.plan.prefix_frozen(), self.param_names)
            self._prefix_key = self.version
        return self._prefix

    # ------------------------------------------------------------------ editing

    def _check_unlocked(self) -> None:
        if self.locked:
            raise PlanError("the plan is read-only while a run is in progress", fix="stop-run")

    def _changed(self, edited: bool = True) -> None:
        """Derive the tree's view from the plan after an edit (``edited``: by the user, so the
        plan is no longer the sweep rung it may have been opened as)."""
        self.frozen = np.fromiter(self.plan.params.values(), dtype=bool, count=len(self.param_names))
        if edited:  # how the plan was made no longer describes it
            for key in ("sweep_rung", "recipe", "rules"):
                self.plan.extra.pop(key, None)
        self.version += 1

    def _names(self, name: str) -> list[str]:
        return self.tree.names(name)

    def set_frozen(self, name: str, frozen: bool) -> None:
        self._check_unlocked()
        self.plan.set_frozen(self._names(name), frozen)
        self._changed()

    def toggle(self, name: str) -> None:
        """Trainable becomes frozen, frozen trainable, mixed frozen."""
        self.set_frozen(name, self.state(name) != "frozen")

    def freeze_before(self, name: str) -> None:
        """Freeze every parameter before this node in parameter order; the rest trains."""
        self._check_unlocked()
        start = self.nodes[name].start
        if start < len(self.param_names):
            self.plan.freeze_before(self.param_names[start])
        else:
            self.plan.set_frozen(self.param_names, True)
        self._changed()

    def head_only(self) -> None:
        """The head trains, and so does every new (randomly initialised) module: a frozen new
        stem would feed the head noise, the seed's bug."""
        self._check_unlocked()
        self.plan.set_frozen(self.param_names, True)
        for h in [*self.heads, *self.plan.new_modules]:
            if h in self.nodes:
                self.plan.set_frozen(self._names(h), False)
        self._changed()

    def all_trainable(self) -> None:
        self._check_unlocked()
        self.plan.set_frozen(self.param_names, False)
        self._changed()

    def set_batchnorm(self, mode: str) -> None:
        self._check_unlocked()
        if mode not in BATCHNORM_MODES:
            raise PlanError(f"batchnorm must be one of {BATCHNORM_MODES}")
        self.plan.batchnorm = mode
        self._changed()

    def cycle_mode(self, name: str, r: int = 8, alpha: float = 16.0) -> str:
        """The subtree's next mode: frozen → trainable → bias-only → norm-only → LoRA (rank ``r``,
        ``alpha``) → frozen, skipping modes that mean nothing there. Returns the new mode."""
        from .adapters import available_modes, next_mode, set_mode

        self._check_unlocked()
        mode = next_mode(self.mode(name), available_modes(self.plan, self.model, name))
        set_mode(self.plan, self.model, name, mode, r, alpha)
        self.modes_used = True  # the tree shows its mode column from now on
        self._changed()
        return mode

    def mode(self, name: str = "") -> str:
        """The subtree's mode (see :func:`adapters.subtree_mode`), computed once per edit."""
        from .adapters import subtree_mode

        if getattr(self, "_modes_key", None) != self.version:
            self._modes, self._modes_key = {}, self.version
        if name not in self._modes:
            self._modes[name] = subtree_mode(self.plan, name)
        return self._modes[name]

    def apply_glob(self, pattern: str, frozen: bool) -> int:
        """Freeze or unfreeze every parameter the glob matches; a glob matching nothing is an error."""
        self._check_unlocked()
        hits = self.plan.freeze(pattern) if frozen else self.plan.unfreeze(pattern)
        self._changed()
        return len(hits)

    # ------------------------------------------------------------------ plans

    def lints(self, image_size: int | None = None) -> list[Lint]:
        """The core's lints for the current state, computed once per edit (the details panel
        asks on every cursor move)."""
        size = self.seen_size(image_size)
        key = (self.version, size)
        if getattr(self, "_lints_key", None) != key:
            self._lints = check(self.plan, self.model, image_size=size, order=self.order)
            self._lints_key = key
        return self._lints

    def seen_size(self, image_size: int | None = None) -> int | None:
        """The size the model will see with this ``--image-size`` (None: the default)."""
        if self.data is None:
            return image_size or self.info.input_size
        return BatchTransform.for_data(self.info, self.data, image_size).size

    def export(self, path: str | Path) -> Path:
        return self.plan.save(path)

    def load_plan_object(self, plan: FreezePlan) -> None:
        """Apply a plan, all or nothing: a plan that does not fit changes nothing."""
        self._check_unlocked()
        name = plan.model.get("name")
        if name != self.info.name:
            raise PlanError(f"the plan is for {name}, but this model is {self.info.name}")
        plan.check_fits(self.model)
        self.plan.set_frozen(self.param_names, False)
        self.plan.set_frozen(plan.frozen, True)
        self.plan.batchnorm = plan.batchnorm
        self.plan.extra = dict(plan.extra)
        # the schedule travels with the plan: a staged plan opened in the TUI trains staged
        self.plan.lr_mult = copy.deepcopy(plan.lr_mult)
        self.plan.layer_decay = plan.layer_decay
        self.plan.stages = copy.deepcopy(plan.stages)
        self.plan.train_bn = plan.train_bn
        self.plan.auto_rgn = plan.auto_rgn
        self.plan.adapters = copy.deepcopy(plan.adapters)
        self.plan.learn_adapters(self.model)
        self._changed(edited=False)

    def load_plan(self, path: str | Path) -> FreezePlan:
        plan = FreezePlan.load(path)
        self.load_plan_object(plan)
        return plan

    # ------------------------------------------------------------------ runs

    def new_run(self, config: TrainConfig, plan: FreezePlan | None = None, name: str = "",
                folder: Path | None = None) -> RunRecord:
        """A run of the plan being edited (or of ``plan``, a sweep's rung ``name``), numbered
        on; complete before it joins the runs (the UI thread may be reading them)."""
        from .schedule import short_name

        plan = plan or self.plan
        counts = plan.counts
        number = max((r.id for r in self.runs), default=0) + 1  # on from earlier sessions' runs
        record = RunRecord(number, f"#{number} {name}".rstrip(), counts["trainable"], counts["total"], config,
                           folder=folder, schedule=short_name(plan), stages=[s.to_dict() for s in plan.stages])
        self.runs.append(record)
        return record

    def reset_weights(self) -> None:
        """Every run starts from the weights the model was opened with."""
        if self.initial_state is None:
            self.initial_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.model.load_state_dict(self.initial_state)

    # ------------------------------------------------------------------ cost

    @property
    def cost_profile(self):
        """The model's cost profile (see :meth:`compute_cost_profile`); None: not measured, or
        the model cannot be profiled."""
        return self.inputs.profile if self.inputs is not None else getattr(self, "_profile", None)

    @cost_profile.setter
    def cost_profile(self, profile) -> None:
        if self.inputs is not None:
            self.inputs.profile = profile
        else:
            self._profile = profile

    def compute_cost_profile(self, image_size: int | None = None) -> None:
        """Measure the model once for the cost estimate, on a copy of it: call it off the UI
        thread (forward passes), at any time, even while a run trains the model itself. A model
        that cannot be profiled gets none. ``image_size``: the ``--image-size`` setting (the
        profile is taken at the size the model then sees)."""
        from .cost import profile_model

        try:
            with model_lock(self.model):  # not while a run moves it to the device
                model = copy.deepcopy(self.model)
            self.cost_profile = profile_model(model, self.seen_size(image_size) or 224)
        except Exception:  # noqa: BLE001 - advice only
            self.cost_profile = None

    def epoch_costs(self, epochs: int) -> list[float] | None:
        """Each epoch's training FLOPs per image under the plan (its stages applied): the ETA's
        weights, later stages training more being slower. None when not measured."""
        if self.cost_profile is None:
            return None
        from .cost import estimate

        by_stage: dict[int, float] = {}
        for epoch in range(1, epochs + 1):
            stage = self.plan.stage_index(epoch)
            if stage not in by_stage:
                plan = self.plan.at_epoch(epoch)
                by_stage[stage] = float(estimate(self.cost_profile, plan, 1, "sgd")["flops_per_image"]) or 1.0
        return [by_stage[self.plan.stage_index(e)] for e in range(1, epochs + 1)]

    def cost(self, batch_size: int, optimizer: str) -> dict | None:
        """The current plan's price at this batch size (:func:`cost.estimate`'s dict, its
        ``backward_stop`` where backward stops, as :meth:`frozen_prefix` says); None when not
        measured. A plan with stages is priced at its most expensive stage: ``stage`` (1: the
        plan's own frozen set), ``first_epoch`` and ``stage_count`` say which."""
        if self.cost_profile is None:
            return None
        from .cost import estimate

        worst = estimate(self.cost_profile, self.plan, batch_size, optimizer, prefix=self.frozen_prefix())
        worst.update(stage=1, first_epoch=1, stage_count=1 + len(self.plan.stages))
        for epoch in sorted({s.epoch for s in self.plan.stages}):
            plan = self.plan.at_epoch(epoch)
            prefix = frozen_prefix(self.traced, set(plan.frozen), self.param_names)
            est = estimate(self.cost_profile, plan, batch_size, optimizer, prefix=prefix)
            if est["activation_bytes"] > worst["activation_bytes"]:
                est.update(stage=self.plan.stage_index(epoch), first_epoch=epoch, stage_count=worst["stage_count"])
                worst = est
        return worst
