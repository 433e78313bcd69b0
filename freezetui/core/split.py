"""Split a model at the end of its frozen prefix, found from the forward graph (torch.fx), not
from attribute order.

The prefix runs under ``no_grad`` (no activations kept); when it is also deterministic its
output can be computed once and cached, and training runs only the rest. Both halves share the
model's own modules, so training the rest trains the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

STOCHASTIC = ("Dropout", "StochasticDepth", "AlphaDropout", "DropPath")


@dataclass
class Traced:
    """A model's forward graph, traced once (in eval mode) and reused for every plan."""

    gm: fx.GraphModule
    nodes: list[fx.Node]
    node_params: list[list[str]]  # parameter names each node uses directly
    live_after: list[int]  # how many values of nodes[0..i] are still needed after node i
    last_use: list[int]  # index of the last node that uses node i (i itself when none)
    kinds: list[str]  # class name of each call_module node's module, "" for other nodes
    param_order: list[str]  # parameters in the order the forward pass first uses them


@dataclass
class Cut:
    index: int  # the prefix is nodes[0..index]
    name: str  # the module (or node) whose output crosses the cut
    has_batchnorm: bool  # its output depends on BatchNorm statistics


def trace(model: nn.Module) -> Traced | None:
    """Trace ``model``; None when it cannot be traced (custom control flow, say)."""
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models simply get no split
        return None
    finally:
        model.train(was_training)
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    node_params: list[list[str]] = []
    for n in nodes:
        if n.op == "call_module":
            node_params.append([f"{n.target}.{p}" for p, _ in gm.get_submodule(n.target).named_parameters()])
        elif n.op == "get_attr" and isinstance(_attr(gm, n.target), nn.Parameter):
            node_params.append([n.target])
        else:
            node_params.append([])
    last_use = [max((index[u] for u in n.users), default=i) for i, n in enumerate(nodes)]
    live_after, live = [], 0
    ends_at = [0] * (len(nodes) + 1)
    for i in range(len(nodes)):
        ends_at[last_use[i]] += 1
    for i in range(len(nodes)):
        live += 1 - ends_at[i]  # node i becomes live; values last used at i die
        live_after.append(live)
    order, seen = [], set()
    for ps in node_params:
        for p in ps:
            if p not in seen:
                seen.add(p)
                order.append(p)
    kinds = [type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else "" for n in nodes]
    return Traced(gm, nodes, node_params, live_after, last_use, kinds, order)


def _attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def find_cut(traced: Traced, frozen: set[str]) -> Cut | None:
    """The deepest point where every node so far uses only frozen parameters, nothing random
    has run (so the prefix's output can be cached), and a single value carries everything
    forward. None when there is no useful prefix."""
    best = None
    has_bn = False
    for i, n in enumerate(traced.nodes):
        if n.op == "output" or any(p not in frozen for p in traced.node_params[i]):
            break
        if n.op == "call_module":
            kind = traced.kinds[i]
            if any(s in kind for s in STOCHASTIC):
                break
            has_bn |= "BatchNorm" in kind
        elif n.op == "call_function" and "dropout" in getattr(n.target, "__name__", ""):
            break
        if traced.live_after[i] == 1 and traced.last_use[i] > i and n.op != "placeholder":
            best = Cut(i, n.target if n.op in ("call_module", "get_attr") else n.name, has_bn)
    return best


def _subgraph(traced: Traced, start: int, stop: int, source: fx.Node | None) -> fx.GraphModule:
    """Nodes [start, stop] as a module; ``source`` (the cut value) becomes its input."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if source is not None:
        env[source] = graph.placeholder("features")
    last = None
    for n in traced.nodes[start:stop + 1]:
        if n.op == "output":
            graph.output(fx.map_arg(n.args[0], lambda a: env[a]))
            last = None
            break
        last = env[n] = graph.node_copy(n, lambda a: env[a])
    if last is not None:
        graph.output(last)
    return fx.GraphModule(traced.gm, graph)


def split(traced: Traced, cut: Cut) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(prefix, rest): ``rest(prefix(x))`` computes what the model computes."""
    prefix = _subgraph(traced, 0, cut.index, None)
    rest = _subgraph(traced, cut.index + 1, len(traced.nodes) - 1, traced.nodes[cut.index])
    return prefix, rest
