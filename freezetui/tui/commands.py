"""Every key is also a command-palette command: the list is made from the bindings themselves."""

from __future__ import annotations

from typing import Iterable

from textual.app import SystemCommand
from textual.binding import Binding


def binding_commands(bindings: Iterable[Binding], run_action, where: str = "anywhere") -> Iterable[SystemCommand]:
    """One palette entry per binding: the title names the action and its key, the line under it
    says where the key works (not the title again)."""
    for b in bindings:
        if b.id and b.description:
            key = b.key_display or b.key.split(",")[0]
            yield SystemCommand(f"{b.description} ({key})", b.tooltip or f"key {key}, {where}",
                                lambda action=b.action: run_action(action))


def key_table(bindings: Iterable[Binding]) -> list[tuple[str, str]]:
    return [(b.key_display or b.key.split(",")[0], b.tooltip or b.description) for b in bindings if b.id]
