"""The schedule side of the plan being edited (the TUI's E, x, R, L, X, N keys) and its numbers
per tree node: when each subtree first trains and at what rate, in numpy over cached glob
matches so that a toggle on a 10,000-tensor model stays cheap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PlanError
from .plan import NEVER, Stage, escape_glob, glob_matches


@dataclass(frozen=True)
class ScheduleSpan:
    """A subtree's schedule as numbers (the TUI words them): (lowest, highest) first epoch its
    parameters train from, and (lowest, highest) rate multiplier; None when none ever trains."""

    epochs: tuple[int, int] | None
    rates: tuple[float, float] | None
    auto_rgn: bool = False  # and each rate × the tensor's signal, every step




class ScheduleEdits:
    """Mixed into :class:`~freezetui.core.workspace.Workspace`: it uses the workspace's ``plan``,
    ``frozen``, ``param_names``, ``nodes``, ``model``, ``order``, ``version`` and its
    ``_check_unlocked``/``_changed``/``_names``."""

    @staticmethod
    def glob_for(name: str) -> str:
        """The glob that names exactly this node's subtree (``*`` for the whole model)."""
        return escape_glob(name) if name else "*"

    def has_schedule(self) -> bool:
        p = self.plan
        return bool(p.stages or p.lr_mult or p.layer_decay is not None or p.auto_rgn)

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
            if st.unfreeze or st.freeze or st.batchnorm is not None or st.lr_scale is not None or st.lr_mult \
                    or st.restart:
                kept.append(st)
        trial.stages = kept
        trial.set_frozen(names, epoch > 1)
        if trial.train_bn:  # norm layers train in every epoch under train_bn, this subtree's too
            trial.set_train_bn(True)
        earlier = min((trial.stage_of(n) or NEVER for n in names), default=NEVER)
        if 1 < epoch < earlier:  # a stage unfreezing it before then (e.g. "*") makes this one moot
            same = next((st for st in kept if st.epoch == epoch), None)
            if same is not None:
                same.unfreeze.append(glob)
            else:
                kept.append(Stage(epoch, [glob]))
        trial.stages = []
        for st in sorted(kept, key=lambda x: x.epoch):
            trial.add_stage(st.epoch, st.unfreeze, st.freeze, st.batchnorm, st.lr_scale, st.lr_mult, st.restart)
        if not trial.trainable:
            raise PlanError(f"nothing would train in epoch 1 (the first epoch always trains something); "
                            f"leave a part trainable, e.g. the head, before unfreezing {name or 'the model'} "
                            f"later", fix="train-something")
        if trial.params != self.plan.params or trial.stages != self.plan.stages:  # a no-op keeps the plan's name
            self.plan.params, self.plan.stages = trial.params, trial.stages
            self._schedule_edited()
        norms = set(self.plan.norm_params) if self.plan.train_bn else set()  # they train throughout
        return min((self.plan.stage_of(n) or NEVER for n in names if n not in norms), default=epoch)

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
        """fastai's fine-tune recipe: the head (and the norm layers, train_bn) alone for an epoch,
        then everything at half the rate, spread 100× over fastai's parameter groups (see
        :func:`schedule.fine_tune_recipe`)."""
        from .schedule import fine_tune_recipe

        self._check_unlocked()
        trial = fine_tune_recipe(self.plan.copy(), self.model, self.order)
        self.plan.params, self.plan.stages = trial.params, trial.stages
        self.plan.lr_mult, self.plan.layer_decay = trial.lr_mult, trial.layer_decay
        self.plan.train_bn, self.plan.batchnorm = trial.train_bn, trial.batchnorm
        self._changed()
        self.plan.extra["recipe"] = "fine-tune"  # after _changed, which forgets how a plan was made

    def clear_schedule(self) -> None:
        """No stages and no rate rules; what trains in epoch 1 stays as it is."""
        self._check_unlocked()
        self.plan.stages, self.plan.lr_mult, self.plan.layer_decay = [], [], None
        self.plan.train_bn = False
        self.plan.auto_rgn = False
        self._schedule_edited()

    def set_auto_rgn(self, on: bool) -> None:
        """Auto-RGN rates on or off (see :mod:`freezetui.core.rgn`)."""
        self._check_unlocked()
        self.plan.auto_rgn = bool(on)
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
            mult = self._mult
            if any(st.lr_mult for st in plan.stages):  # a stage's rules, from the epoch it starts training
                mult = mult.copy()
                for st in plan.stages:
                    for g, m in st.lr_mult:
                        idx = self._glob_index(g)
                        mult[idx[first[idx] >= st.epoch]] = m
            self._sched = (first, mult)
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
            (float(rates.min()), float(rates.max())) if rates.size else None,
            self.plan.auto_rgn)

    def schedule_lines(self) -> list[str]:
        from .schedule import describe

        return describe(self.plan)

