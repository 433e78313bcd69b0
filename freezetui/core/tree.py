"""A model's module tree as the TUI shows it: one node per module and per parameter, each
holding the range of parameter indices under it, so counts over a subtree are numpy slices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn


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


class ModuleIndex:
    """The nodes of ``model`` over its parameters in ``param_names`` order; ``new_modules`` (and
    everything inside them) are marked new."""

    def __init__(self, model: nn.Module, param_names: list[str], new_modules: list[str] | tuple = ()):
        self.model, self.param_names = model, param_names
        self.numel = np.array([model.get_parameter(n).numel() for n in param_names], dtype=np.int64)
        self.nodes = self._build(set(new_modules))
        self.has_batchnorm = any("BatchNorm" in n.kind for n in self.nodes.values() if not n.is_param)

    def _build(self, new: set[str]) -> dict[str, Node]:
        model = self.model
        nodes: dict[str, Node] = {}
        own: dict[str, list[str]] = {}  # a module's own parameters come first, as in parameter order
        for name, module in model.named_modules():
            label = name.rpartition(".")[2] if name else type(model).__name__
            nodes[name] = Node(name, label, type(module).__name__, 0, 0,
                               new=name in new or any(name.startswith(m + ".") for m in new))
            own[name] = []
            if name:
                nodes[name.rpartition(".")[0]].children.append(name)
        ranges: dict[str, list[int]] = {}
        for i, pname in enumerate(self.param_names):
            owner = pname.rpartition(".")[0]
            p = model.get_parameter(pname)
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

    def names(self, name: str) -> list[str]:
        """The parameter names under a node."""
        n = self.nodes[name]
        return self.param_names[n.start:n.end]

    def counts(self, frozen: np.ndarray, name: str = "") -> tuple[int, int]:
        """(parameters, trainable parameters) under a node, with ``frozen`` per parameter."""
        n = self.nodes[name]
        sl = slice(n.start, n.end)
        total = int(self.numel[sl].sum())
        return total, total - int(self.numel[sl][frozen[sl]].sum())

    def state(self, frozen: np.ndarray, name: str = "") -> str:
        """"trainable", "frozen", "mixed", or "empty" (no parameters)."""
        n = self.nodes[name]
        if n.end <= n.start:
            return "empty"
        sl = frozen[n.start:n.end]
        return "frozen" if sl.all() else "trainable" if not sl.any() else "mixed"
