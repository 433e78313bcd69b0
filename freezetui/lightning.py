"""A plan in a Lightning ``Trainer``: :class:`FreezePlanCallback` freezes, groups, schedules
and stages a user's ``LightningModule`` exactly as ``freezetui train`` does, on the same
functions (:meth:`FreezePlan.param_groups`, :meth:`FreezePlan.enter_epoch`,
:class:`PlanSchedule`). Needs ``pip install freezetui[lightning]``; ``import freezetui`` never
imports Lightning.

The callback owns the optimizer's parameter groups and rates; the module keeps its choice of
optimizer::

    plan_cb = FreezePlanCallback(FreezePlan.load("plan.json"), lr=1e-3, weight_decay=1e-4)

    class Classifier(L.LightningModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(plan_param_groups(self))  # no lr scheduler: the plan sets the rates

    L.Trainer(max_epochs=5, callbacks=[plan_cb]).fit(Classifier(model), loader)

Unlike Lightning's ``BaseFinetuning``, every parameter is in the optimizer from the start (a
frozen one has no gradient, hence no update, no state and no decay), so nothing is added at a
stage and a resumed fit needs no optimizer surgery; rates are a function of the epoch and step,
set before every batch.
"""

from __future__ import annotations

from torch import nn

import lightning.pytorch as pl

from .core.errors import PlanError
from .core.plan import FreezePlan
from .core.schedule import PlanSchedule


class FreezePlanCallback(pl.Callback):
    """Puts ``plan`` on the module's model for a fit of ``trainer.max_epochs`` epochs (or ``epochs``).

    - ``setup``: finds the model the plan names (the ``LightningModule`` itself, or the
      submodule whose parameters are exactly the plan's; or the attribute named ``module``) and
      puts epoch 1's plan on it.
    - :meth:`param_groups` (or :func:`plan_param_groups` from ``configure_optimizers``): the
      optimizer's groups at ``lr`` and ``weight_decay`` (no decay on biases, norm layers and
      the model's ``no_weight_decay()``, unless ``decay_all``).
    - each epoch's start: the stage in force (``requires_grad``, BatchNorm policy, ``train_bn``);
      each batch's start: every plan group's rate (``schedule``, ``warmup_epochs``, stage
      ``lr_scale``/``lr_mult``/``restart``, a later group's warmup).

    One optimizer, one optimizer step per batch (``accumulate_grad_batches=1``), and no
    learning-rate scheduler of the module's own for the plan's groups.
    """

    def __init__(self, plan: FreezePlan, lr: float, weight_decay: float = 0.0, schedule: str = "cosine",
                 warmup_epochs: float = 0.5, decay_all: bool = False, epochs: int | None = None,
                 module: str | None = None):
        self.plan, self.lr, self.weight_decay = plan, lr, weight_decay
        self.schedule, self.warmup_epochs, self.decay_all = schedule, warmup_epochs, decay_all
        self.epochs, self.module = epochs, module
        self.model: nn.Module | None = None
        self.rates: PlanSchedule | None = None
        PlanSchedule(plan, lr, 1, 1, schedule, warmup_epochs)  # a bad schedule fails here, not mid-fit

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.model = self.find_model(pl_module)
        self.plan.check_fits(self.model)
        self.plan.enter_epoch(self.model, 1)

    def find_model(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module whose parameter names are the plan's."""
        if self.module is not None:
            return pl_module.get_submodule(self.module)
        want = set(self.plan.params)
        for name, m in pl_module.named_modules():
            if {n for n, _ in m.named_parameters()} == want:
                return m
        raise PlanError(f"no module of {type(pl_module).__name__} has exactly the plan's parameters "
                        f"(plan for {self.plan.model.get('name')}); name it with FreezePlanCallback(module=...)")

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (call from ``configure_optimizers``, after ``setup``)."""
        if self.model is None:
            raise RuntimeError("FreezePlanCallback.param_groups() is called from configure_optimizers, "
                               "once the Trainer has set the callback up")
        return self.plan.param_groups(self.model, self.lr, self.weight_decay, self.decay_all)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise PlanError("FreezePlanCallback sets rates per optimizer step of one batch; "
                            "use accumulate_grad_batches=1 (or a larger batch)")
        if len(trainer.optimizers) != 1:
            raise PlanError("FreezePlanCallback needs exactly one optimizer, built from plan_param_groups(self)")
        ours = {id(p) for g in trainer.optimizers[0].param_groups if "first_epoch" in g for p in g["params"]}
        missing = [n for n, p in self.model.named_parameters() if id(p) not in ours]
        if missing:
            raise PlanError(f"the optimizer's groups are not the plan's ({missing[0]} is missing); build it with "
                            f"torch.optim.AdamW(plan_param_groups(self)) in configure_optimizers")
        if trainer.lr_scheduler_configs:
            raise PlanError("FreezePlanCallback sets the rates itself; return no lr scheduler from "
                            "configure_optimizers")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.plan.enter_epoch(self.model, trainer.current_epoch + 1)
        if self.rates is None:
            epochs = self.epochs or trainer.max_epochs
            if not epochs or epochs < 1:
                raise PlanError("FreezePlanCallback needs the run's length: Trainer(max_epochs=...) or epochs=...")
            self.rates = PlanSchedule(self.plan, self.lr, epochs, int(trainer.num_training_batches), self.schedule,
                                      self.warmup_epochs)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.rates.set_rates(trainer.optimizers[0], trainer.current_epoch + 1, batch_idx + 1)


def plan_param_groups(pl_module: pl.LightningModule) -> list[dict]:
    """The parameter groups of the :class:`FreezePlanCallback` in ``pl_module``'s trainer, for
    ``configure_optimizers``: ``return torch.optim.AdamW(plan_param_groups(self))``."""
    found = [cb for cb in pl_module.trainer.callbacks if isinstance(cb, FreezePlanCallback)]
    if len(found) != 1:
        raise PlanError(f"the Trainer has {len(found)} FreezePlanCallback(s); give it exactly one")
    return found[0].param_groups()
