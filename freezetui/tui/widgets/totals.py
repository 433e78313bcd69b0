"""Total, trainable and frozen parameters of the current plan, where backward stops, and what a
training step costs (at the settings' batch and image size; a staged plan at its costliest stage)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ...core.cost import human_bytes
from ..format import human, share


def cost_line(est: dict) -> str:
    """A plan's price (:meth:`Workspace.cost`), short enough for the totals panel: what one
    training step keeps for backward, beside full fine-tuning."""
    ratio = est.get("flops_ratio") or 1.0
    flops = f" · {ratio:.1f}× fewer FLOPs" if ratio > 1.005 else ""
    return (f"activations {human_bytes(est['activation_bytes'])} of {human_bytes(est['full_activation_bytes'])}"
            f"{flops}")


def cost_context(est: dict, batch_size: int) -> str:
    """What the price is of: the batch, the image size, and which stage of a staged plan."""
    where = ""
    if est.get("stage_count", 1) > 1:
        where = f" of stage {est['stage']}/{est['stage_count']} (epoch {est['first_epoch']}+, the costliest)"
    return f"cost{where}, batch {batch_size} at {est['image_size']} px:"


class Totals(Static):
    def show(self, workspace, config=None, measuring: bool = False) -> None:
        t = workspace.totals()
        text = Text()
        text.append(f"trainable {human(t['trainable'])} of {human(t['total'])} "
                    f"({share(t['trainable'], t['total'])})", "green")
        if t.get("adapters"):
            text.append(f" + {human(t['adapters'])} LoRA", "bold green")
        text.append("\n")
        text.append(f"frozen {human(t['frozen'])}", "cyan")
        if workspace.has_batchnorm():
            text.append(f" · BN {'kept' if workspace.batchnorm == 'freeze' else 'updated'} (b)")
        text.append("\n")
        prefix = workspace.frozen_prefix()
        if prefix:
            head, _, tail = prefix.sentence().partition(prefix.module)
            text.append(head, "dim")
            text.append(prefix.module, "bold")
            text.append(tail, "dim")
        else:
            text.append("backward runs to the input: no frozen prefix", "dim")
        est = workspace.cost(config.batch_size, config.optimizer) if config is not None else None
        if est:
            text.append("\n")
            text.append(cost_context(est, config.batch_size) + " ", "dim")
            text.append(cost_line(est), "dim")
            if est.get("adapter_params"):  # the mix's training state, adapters included
                text.append(f" · grads+{config.optimizer} {human_bytes(est['grad_bytes'] + est['optimizer_bytes'])}",
                            "dim")
        elif measuring:
            text.append("\n(measuring cost…)", "dim")
        self.update(text, layout=False)  # fixed height: no layout pass
