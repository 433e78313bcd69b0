"""Relative gradient norms, ‖g‖/‖w‖ per tensor (Lee et al., "Surgical Fine-Tuning Improves
Adaptation to Distribution Shifts", ICLR 2023): the signal ``freezetui suggest`` measures, and
Auto-RGN, the schedule that scales each trainable tensor's rate by its signal at every step.

A tensor's signal is its ratio divided by the largest ratio among the tensors compared, so it
lies in [0, 1]. A tensor whose weights are all (nearly) zero — a zero-initialised bias or layer
scale — has no meaningful ratio: it is left out of the maximum and keeps the factor 1 (it trains
at its plain rate), rather than dividing by zero and pushing every other tensor's factor to 0.
"""

from __future__ import annotations

import torch

ZERO_WEIGHT = 1e-12  # a weight norm below this counts as zero (see the module docstring)


def norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of each tensor, as one float32 vector on their device (no host sync)."""
    if not tensors:
        return torch.zeros(0)
    try:
        out = torch._foreach_norm(tensors)
    except (RuntimeError, AttributeError):  # mixed devices or dtypes: one at a time
        out = [t.norm() for t in tensors]
    return torch.stack([n.float() for n in out])


def ratios(grad_norms: torch.Tensor, weight_norms: torch.Tensor) -> torch.Tensor:
    """‖g‖/‖w‖ per tensor; NaN where the weights' norm is (nearly) zero."""
    undefined = weight_norms < ZERO_WEIGHT
    return torch.where(undefined, torch.full_like(grad_norms, float("nan")),
                       grad_norms / weight_norms.clamp_min(ZERO_WEIGHT))


def normalise(values: torch.Tensor) -> torch.Tensor:
    """Each value over the largest (NaNs left out of it), in [0, 1]; NaN -> 1; all zero -> 1."""
    finite = torch.nan_to_num(values, nan=0.0)
    top = finite.max() if finite.numel() else finite.new_zeros(())
    out = torch.where(top > 0, finite / top.clamp_min(torch.finfo(finite.dtype).tiny), torch.ones_like(finite))
    return torch.where(torch.isnan(values), torch.ones_like(out), out)


class AutoRGN:
    """Auto-RGN in the training loop. The optimizer holds one group per tensor (see
    :func:`freezetui.core.train.optimizer_groups`); after ``backward`` and before ``step``,
    :meth:`scale` multiplies each group's rate (already set for this step from the schedule,
    the stage and the tensor's multiplier) by the tensor's signal this step, among the tensors
    that have a gradient. Frozen tensors have none and are untouched.

    The factors are a function of this step's weights and gradients only: nothing to save in a
    checkpoint, so a resumed run takes the same steps. Cost: two norms per trainable tensor per
    step (about 4 FLOPs per trainable parameter) and one host-device synchronisation per step to
    read the factors; no memory beyond a vector per step."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def scale(self) -> None:
        live = [(g, p) for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not live:
            return
        grads = norms([p.grad.detach() for _, p in live])
        weights = norms([p.detach() for _, p in live])
        for (g, _), f in zip(live, normalise(ratios(grads, weights)).tolist()):
            g["lr"] = g["lr"] * f


def flops_per_step(trainable_params: int) -> int:
    """What Auto-RGN adds to a step: a squared norm of each trainable tensor's gradient and of its
    weights (a multiply and an add per scalar each)."""
    return 4 * int(trainable_params)
