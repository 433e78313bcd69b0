"""The editable state behind the TUI, in plain Python: a model's module tree and the one
:class:`FreezePlan` being edited, with the numpy views the tree needs to stay fast.

Widgets read this; they never touch torch. Every edit goes through the plan; the views
(``frozen``, counts, states) are derived from it, cheap enough to recompute per key press on
models with tens of thousands of parameter tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from .data import BatchTransform, Dataset
from .errors import PlanError
from .lints import Lint, check
from .models import ModelInfo, find_heads, model_info
from .plan import BATCHNORM_MODES, NEVER, FreezePlan, Stage, escape_glob, glob_matches
from .runner import RunInputs
from .specs import ModelSpec
from .runs import RunRecord  # noqa: F401 - where the runs table's records used to live
from .split import Prefix, frozen_prefix, trace
from .train import TrainConfig, model_lock, resolve_device


@dataclass(frozen=True)
class ScheduleSpan:
    """A subtree's schedule as numbers (the TUI words them): (lowest, highest) first epoch its
    parameters train from, and (lowest, highest) rate multiplier; None when none ever trains."""

    epochs: tuple[int, int] | None
    rates: tuple[float, float] | None


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


class Workspace:
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
        self.numel = np.array([self.plan.numels[n] for n in self.param_names], dtype=np.int64)
        self.frozen = np.zeros(len(self.param_names), dtype=bool)  # a view of the plan, see _changed
        self.nodes = self._build_nodes()
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
        if loaded is not None and model.weights not in ("auto", None):
            loaded.model["weights"] = model.weights  # --weights beside a plan: the user's file wins
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

    @property
    def batchnorm(self) -> str:
        return self.plan.batchnorm

    def has_batchnorm(self) -> bool:
        """Whether any module is a BatchNorm (the BN setting matters only then)."""
        if not hasattr(self, "_has_bn"):
            self._has_bn = any("BatchNorm" in n.kind for n in self.nodes.values() if not n.is_param)
        return self._has_bn

    def frozen_prefix(self) -> Prefix | None:
        """Where backward stops under the plan being edited (see :func:`split.frozen_prefix`),
        computed once per edit."""
        if getattr(self, "_prefix_key", None) != self.version:
            frozen = {n for n, f in zip(self.param_names, self.frozen) if f}
            self._prefix = frozen_prefix(self.traced, frozen, self.param_names)
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
        n = self.nodes[name]
        return self.param_names[n.start:n.end]

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

    def apply_glob(self, pattern: str, frozen: bool) -> int:
        """Freeze or unfreeze every parameter the glob matches; a glob matching nothing is an error."""
        self._check_unlocked()
        hits = self.plan.freeze(pattern) if frozen else self.plan.unfreeze(pattern)
        self._changed()
        return len(hits)

    # ------------------------------------------------------------------ the schedule

    @staticmethod
    def glob_for(name: str) -> str:
        """The glob that names exactly this node's subtree (``*`` for the whole model)."""
        return escape_glob(name) if name else "*"

    def has_schedule(self) -> bool:
        p = self.plan
        return bool(p.stages or p.lr_mult or p.layer_decay is not None)

    def _schedule_edited(self) -> None:
        self._changed()

    def unfreeze_at(self, name: str, epoch: int) -> int:
        """Make the node's subtree train from ``epoch`` (1: from the start): frozen for the
        epochs before, unfrozen by a stage at ``epoch``. Replaces what an earlier call set for
        the same subtree; all or nothing. Returns the epoch it now trains from, which is earlier
        when another stage (e.g. one unfreezing ``*``) unfreezes it first."""
        self._check_unlocked()
        if type(epoch) is not int or epoch < 1:
            raise PlanError(f"the epoch must be a whole number from 1 on, got {epoch!r}")
        glob = self.glob_for(name)
        names = self._names(name)
        if not names:
            raise PlanError(f"{name or 'the model'} has no parameters to unfreeze")
        trial = self.plan.copy()
        kept = []
        node = self.nodes[name]

        def within(g: str) -> bool:  # every match of g lies in this subtree
            idx = self._glob_index(g)
            return bool(idx.size) and node.start <= idx.min() and idx.max() < node.end

        for st in trial.stages:  # what earlier calls set for this subtree or parts of it goes
            st.unfreeze = [g for g in st.unfreeze if g != glob and not within(g)]
            if st.unfreeze or st.freeze or st.batchnorm is not None or st.lr_scale is not None:
                kept.append(st)
        trial.stages = kept
        trial.set_frozen(names, epoch > 1)
        earlier = min((trial.stage_of(n) or NEVER for n in names), default=NEVER)
        if 1 < epoch < earlier:  # a stage unfreezing it before then (e.g. "*") makes this one moot
            same = next((st for st in kept if st.epoch == epoch), None)
            if same is not None:
                same.unfreeze.append(glob)
            else:
                kept.append(Stage(epoch, [glob]))
        trial.stages = []
        for st in sorted(kept, key=lambda x: x.epoch):
            trial.add_stage(st.epoch, st.unfreeze, st.freeze, st.batchnorm, st.lr_scale)
        if not trial.trainable:
            raise PlanError(f"nothing would train in epoch 1 (the first epoch always trains something); "
                            f"leave a part trainable, e.g. the head, before unfreezing {name or 'the model'} "
                            f"later", fix="train-something")
        if trial.params != self.plan.params or trial.stages != self.plan.stages:  # a no-op keeps the plan's name
            self.plan.params, self.plan.stages = trial.params, trial.stages
            self._schedule_edited()
        return min((self.plan.stage_of(n) or NEVER for n in names), default=epoch)

    def set_rate(self, name: str, multiplier: float | None) -> None:
        """The node's subtree trains at ``multiplier`` × the rate (None or 1 with no broader
        rule: the rule is removed); later rules win, as in the plan file."""
        self._check_unlocked()
        if self.plan.layer_decay is not None:
            raise PlanError(f"the plan spaces rates by layer decay {self.plan.layer_decay:g}; turn it off "
                            f"to set rates per module", fix="layer-decay-off")
        glob = self.glob_for(name)
        trial = self.plan.copy()
        trial.lr_mult = [(g, m) for g, m in trial.lr_mult if g != glob]
        if multiplier is not None:
            trial.set_lr_mult(glob, multiplier)
        self.plan.lr_mult = trial.lr_mult
        self._schedule_edited()

    def set_layer_decay(self, decay: float | None) -> None:
        """Space rates over the blocks (``decay`` per block before the head), replacing any
        per-module rates; None turns it off."""
        self._check_unlocked()
        trial = self.plan.copy()
        if decay is not None:
            trial.lr_mult = []
        trial.set_layer_decay(decay)
        self.plan.lr_mult, self.plan.layer_decay = trial.lr_mult, trial.layer_decay
        self._schedule_edited()

    def apply_recipe(self) -> None:
        """fastai's fine-tune recipe: the head alone for an epoch, then everything at half the
        rate, rates spread 100× over the blocks (see :func:`schedule.fine_tune_recipe`)."""
        from .schedule import fine_tune_recipe

        self._check_unlocked()
        trial = fine_tune_recipe(self.plan.copy(), self.model, self.order)
        self.plan.params, self.plan.stages = trial.params, trial.stages
        self.plan.lr_mult, self.plan.layer_decay = trial.lr_mult, trial.layer_decay
        self._changed()
        self.plan.extra["recipe"] = "fine-tune"  # after _changed, which forgets how a plan was made

    def clear_schedule(self) -> None:
        """No stages and no rate rules; what trains in epoch 1 stays as it is."""
        self._check_unlocked()
        self.plan.stages, self.plan.lr_mult, self.plan.layer_decay = [], [], None
        self._schedule_edited()

    def _glob_index(self, glob: str) -> np.ndarray:
        """The indices of the parameters a glob matches (names never change: cached)."""
        cache = self.__dict__.setdefault("_globs", {})
        if glob not in cache:
            cache[glob] = np.fromiter((i for i, n in enumerate(self.param_names) if glob_matches(glob, n)),
                                      dtype=np.int64)
        return cache[glob]

    def _schedule_views(self) -> tuple[np.ndarray, np.ndarray]:
        """(first epoch each parameter trains, NEVER when it never does; its rate multiplier), once per edit,
        in numpy over cached glob matches: a toggle on a 10,000-tensor model stays cheap."""
        if getattr(self, "_sched_key", None) != self.version:
            plan = self.plan
            frozen = self.frozen.copy()
            first = np.where(frozen, NEVER, 1).astype(np.int64)
            for st in plan.stages:  # as FreezePlan.stage_of, for every parameter at once
                for g in st.unfreeze:
                    frozen[self._glob_index(g)] = False
                for g in st.freeze:
                    frozen[self._glob_index(g)] = True
                first[~frozen & (first == NEVER)] = st.epoch
            rates = (tuple(plan.lr_mult), plan.layer_decay)
            if getattr(self, "_rates_key", None) != rates:  # rates do not depend on what is frozen
                mult = np.ones(len(self.param_names))
                if plan.layer_decay is not None:
                    from .schedule import param_multipliers

                    mults = param_multipliers(plan, self.model, self.order)
                    mult = np.fromiter((mults[p] for p in self.param_names), dtype=np.float64, count=mult.size)
                for g, m in plan.lr_mult:  # later rules win
                    mult[self._glob_index(g)] = m
                self._mult, self._rates_key = mult, rates
            self._sched = (first, self._mult)
            self._sched_key = self.version
        return self._sched

    def schedule_span(self, name: str = "") -> ScheduleSpan:
        """When and how fast the node's subtree trains, as numbers: the first epochs its
        parameters train from (those that ever train) and their rate multipliers."""
        first, mult = self._schedule_views()
        node = self.nodes[name]
        sl = slice(node.start, node.end)
        trains = first[sl] < NEVER  # a parameter that never trains has no epoch and no rate to show
        epochs, rates = first[sl][trains], mult[sl][trains]
        return ScheduleSpan(
            (int(epochs.min()), int(epochs.max())) if epochs.size else None,
            (float(rates.min()), float(rates.max())) if rates.size else None)

    def schedule_lines(self) -> list[str]:
        from .schedule import describe

        return describe(self.plan)

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
