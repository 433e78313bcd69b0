"""Split a model at the end of its frozen prefix, found from the forward graph (torch.fx), not
from attribute order.

The graph is traced so that it is the same in train and in eval mode: a module whose forward
branches on ``self.training`` stays one opaque call that reads its own flag at run time, so the
traced halves behave like the model in both modes. So does a module whose Python changes its
own state (a counter, timm's ``BatchNormAct2d`` counting batches): fx would run that code once,
at trace time, and leave it out of the graph; tracing puts such changes back, so it never alters
the model. The prefix runs under ``no_grad`` (no activations kept); when nothing in it is
random or depends on the mode its output can be computed once and cached. Both halves share the
model's own modules, so training the rest trains the model, and read its tensors wherever it
has moved.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field

import torch
from torch import fx, nn

# Module classes, by name, that are random in train mode unless their drop probability is 0
# (torchvision's StochasticDepth, timm's DropPath/DropBlock, user copies of them).
STOCHASTIC = ("Dropout", "StochasticDepth", "AlphaDropout", "DropPath", "DropBlock")

# Functions and tensor methods that draw random numbers. For the dropout family the entry says
# where the drop probability and the training flag are: (p position, p names, training position,
# training names, training default); the call is deterministic when p == 0 or training is False.
_DROPOUT_ARGS = {
    "dropout": (1, ("p",), 2, ("training", "train"), True),
    "dropout1d": (1, ("p",), 2, ("training",), True),
    "dropout2d": (1, ("p",), 2, ("training",), True),
    "dropout3d": (1, ("p",), 2, ("training",), True),
    "alpha_dropout": (1, ("p",), 2, ("training", "train"), True),
    "feature_alpha_dropout": (1, ("p",), 2, ("training", "train"), True),
    "feature_dropout": (1, ("p",), 2, ("training", "train"), True),
    "stochastic_depth": (1, ("p",), 3, ("training",), True),
    "drop_path": (1, ("drop_prob",), 2, ("training",), True),
    "rrelu": (None, (), 3, ("training",), False),
}
_RANDOM_CALLS = frozenset({
    "bernoulli", "bernoulli_", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
    "randperm", "multinomial", "normal", "normal_", "poisson", "uniform_", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "random_", "rrelu_", "drop_block_2d", "drop_block_fast_2d",
})

_MAX_ROUNDS = 32  # each round makes at least one more module opaque


@dataclass
class Traced:
    """A model's forward graph, traced once and reused for every plan. The graph is the same in
    train and eval mode; ``refused`` says why the model gets no split when that cannot be had."""

    gm: fx.GraphModule
    nodes: list[fx.Node]
    node_params: list[list[str]]  # parameter names each node uses directly
    live_after: list[int]  # how many values of nodes[0..i] are still needed after node i
    last_use: list[int]  # index of the last node that uses node i (i itself when none)
    kinds: list[str]  # class name of each call_module node's module, "" for other nodes
    param_order: list[str]  # parameters in the order the forward pass first uses them
    stacks: list[tuple[str, ...]] = field(default_factory=list)  # modules each node runs inside, outermost first
    volatile: list[str] = field(default_factory=list)  # per node: what makes it random or mode-dependent, "" if nothing
    batchnorm: list[bool] = field(default_factory=list)  # per node: runs a BatchNorm a freeze plan keeps in eval mode
    opaque: frozenset[str] = frozenset()  # modules kept whole: their forward depends on the mode or changes their state
    refused: str | None = None  # why this model is never split, None when it may be
    model: nn.Module | None = None  # the live model: the halves read its tensors, wherever it has moved


@dataclass
class Cut:
    index: int  # the prefix is nodes[0..index]
    name: str  # the module (or node) whose output crosses the cut
    has_batchnorm: bool  # its output depends on BatchNorm statistics
    deterministic: bool = True  # nothing in the prefix is random or depends on train/eval mode (BatchNorm aside)
    module: str = ""  # the model's module whose output crosses the cut, for people: "layer3"
    reason: str = ""  # why the prefix stops there: "a trainable parameter in layer4.0.conv1"

    def cacheable(self, batchnorm: str) -> bool:
        """Whether the prefix's output, computed once in eval mode, equals what it computes at
        every training step under a plan with this ``batchnorm`` mode."""
        return self.deterministic and (batchnorm == "freeze" or not self.has_batchnorm)


# ----------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """The standard tracer, with some more modules kept whole."""

    def __init__(self, opaque: frozenset[str]):
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or super().is_leaf_module(m, module_qualified_name)


def _defaults(model: nn.Module) -> dict | None:
    """The forward's optional arguments at their defaults (timm's ``attn_mask=None``, say): the
    model is called with its input alone, and an argument left open would stay live throughout."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    return {p.name: p.default for p in params[1:]
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD} or None


def _graph_in_mode(model: nn.Module, opaque: frozenset[str],
                   training: bool) -> tuple[fx.Graph | None, set[nn.Module]]:
    """The graph in one mode (None: untraceable), and the modules whose state the trace changed
    (put back already)."""
    model.train(training)
    state = _state(model)
    try:
        graph = _Tracer(opaque).trace(model, concrete_args=_defaults(model))
    except Exception:  # noqa: BLE001 - untraceable models simply get no split
        graph = None
    finally:
        touched = _put_back(state)
    return graph, touched


def _stack(n: fx.Node) -> tuple[str, ...]:
    return tuple(q for q, _ in n.meta.get("nn_module_stack", {}).values())


def _target(root: nn.Module, n: fx.Node):
    if n.op == "get_attr" and n.target.startswith("_tensor_constant"):
        # each trace names its constants anew (and may compute them anew): compare the values
        t = _attr(root, n.target)
        if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel() <= 1 << 16:
            raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            return ("constant", t.dtype, tuple(t.shape), raw)
        return ("constant", id(t))
    return repr(n.target)


def _arguments(n: fx.Node, ref) -> str:
    if n.op in ("call_function", "call_method") and _is_identity_dropout(n):
        return f"identity({ref(n.args[0]) if isinstance(n.args[0], fx.Node) else n.args[0]!r})"
    return repr(fx.map_arg((n.args, n.kwargs), ref))


def _shape(root: nn.Module, nodes: list[fx.Node]) -> list[tuple]:
    """Each node with where it runs and its constants, its inputs left out: two traces that
    differ by a few nodes still line up everywhere else."""
    return [(n.op, _target(root, n), _stack(n), _arguments(n, lambda a: "%")) for n in nodes]


def _full(root: nn.Module, nodes: list[fx.Node]) -> list[tuple]:
    pos = {n: i for i, n in enumerate(nodes)}
    return [(n.op, _target(root, n), _arguments(n, lambda a: pos[a])) for n in nodes]


def _modes_differ(model: nn.Module, tracer_opaque: frozenset[str], a: list[fx.Node],
                  b: list[fx.Node]) -> set[str] | None:
    """The modules to keep whole so that the train-mode trace ``a`` and the eval-mode trace ``b``
    become the same: for every place they differ, the innermost module around the difference
    that is not already opaque. Empty when they are the same; None when a difference is in the
    root module's own forward."""
    fa, fb = _full(model, a), _full(model, b)
    if fa == fb:
        return set()
    tracer = _Tracer(tracer_opaque)

    def innermost(stacks: list[tuple[str, ...]]) -> str | None:
        common = list(stacks[0]) if stacks else []
        for s in stacks[1:]:
            k = 0
            while k < min(len(common), len(s)) and common[k] == s[k]:
                k += 1
            del common[k:]
        while common and tracer.is_leaf_module(model.get_submodule(common[-1]), common[-1]):
            common.pop()
        return common[-1] if common else None

    found: set[str] = set()
    sa, sb = _shape(model, a), _shape(model, b)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, sa, sb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        # nodes changed one for one (a training flag passed on) are placed one by one
        groups = (list(zip(a[i1:i2], b[j1:j2])) if i2 - i1 == j2 - j1 else [a[i1:i2] + b[j1:j2]])
        for group in groups:
            module = innermost([_stack(n) for n in group])
            if module is None:
                return None
            found.add(module)
    if not found:
        # The same nodes wired differently: the module whose forward chose between values.
        first = next(i for i, (x, y) in enumerate(zip(fa, fb)) if x != y)
        module = innermost([_stack(a[first])])
        return None if module is None else {module}
    return found


def trace(model: nn.Module) -> Traced | None:
    """Trace ``model`` so that the graph is right in train and in eval mode; None when it cannot
    be traced at all (custom control flow, say). A model whose own forward differs between the
    modes (GoogLeNet's auxiliary heads) gets a ``Traced`` with ``refused`` set: its parameter
    order is known but it is never split. Tracing leaves the model as it was (its buffers and
    plain attributes put back)."""
    flags = [(m, m.training) for m in model.modules()]
    attrs = set(vars(model))
    opaque: frozenset[str] = frozenset()
    refused = None
    try:
        (train_g, touched_t), (eval_g, touched_e) = (_graph_in_mode(model, opaque, True),
                                                     _graph_in_mode(model, opaque, False))
        if train_g is None or eval_g is None:
            if train_g is None and eval_g is None:
                return None
            refused = f"it cannot be traced in {'train' if train_g is None else 'eval'} mode"
        for _ in range(_MAX_ROUNDS):
            if refused is not None:
                break
            more = _modes_differ(model, opaque, list(train_g.nodes), list(eval_g.nodes))
            if more is None:
                refused = "its own forward differs between train and eval mode"
                break
            more |= _side_effect_modules(model, opaque, touched_t | touched_e)
            if "" in more:
                refused = "its own forward changes its buffers or attributes in Python"
            elif not more:
                break
            else:
                opaque = opaque | more
                (a, touched_t), (b, touched_e) = (_graph_in_mode(model, opaque, True),
                                                  _graph_in_mode(model, opaque, False))
                if a is None or b is None:
                    refused = f"it cannot be traced with {', '.join(sorted(more))} kept whole"
                else:
                    train_g, eval_g = a, b
        else:
            refused = "its train and eval graphs still differ"
        graph = train_g if train_g is not None else eval_g
        gm = fx.GraphModule(model, graph, type(model).__name__)
    finally:
        for m, t in flags:
            m.training = t
        for name in set(vars(model)) - attrs:  # constants the tracer parked on the model; gm has its own
            if name.startswith("_tensor_constant"):
                delattr(model, name)
    return _index(gm, opaque, refused, model)


# ----------------------------------------------------------------------------- side effects


def _state(model: nn.Module) -> list[tuple]:
    """What a forward may change in Python, for :func:`_put_back`: every buffer (the tensor, its
    version counter, a copy) and every plain number or flag a module holds."""
    out = []
    for m in model.modules():
        for name, t in m._buffers.items():
            if t is not None:
                out.append((m, name, t, t._version, t.detach().clone()))
        for name, v in vars(m).items():
            if name != "training" and isinstance(v, (bool, int, float)):
                out.append((m, name, None, None, v))
    return out


def _put_back(state: list[tuple]) -> set[nn.Module]:
    """Undo what ran since :func:`_state`; the modules whose buffers or numbers changed."""
    changed = set()
    for m, name, t, version, kept in state:
        if t is None:
            if vars(m).get(name, kept) != kept:
                changed.add(m)
                vars(m)[name] = kept
        elif m._buffers.get(name) is not t or t._version != version:
            changed.add(m)
            m._buffers[name] = t
            with torch.no_grad():
                t.copy_(kept)
    return changed


def _side_effect_modules(model: nn.Module, opaque: frozenset[str], touched: set[nn.Module]) -> set[str]:
    """The modules to keep whole because tracing ran Python that changed their state (timm's
    ``BatchNormAct2d`` counting ``num_batches_tracked``, a counter, an EMA): fx runs such code
    once, at trace time, and leaves it out of the graph; kept whole, the module runs it at every
    call. A change made to a leaf module's state is its parent's doing. "" for the root."""
    names = {m: n for n, m in model.named_modules()}
    tracer = _Tracer(opaque)
    out = set()
    for m in touched:
        name = names.get(m)
        if name is None:
            continue
        while name and (name in opaque or tracer.is_leaf_module(model.get_submodule(name), name)):
            name = name.rpartition(".")[0]
        if name in opaque:
            continue
        out.add(name)
    return out


def _index(gm: fx.GraphModule, opaque: frozenset[str], refused: str | None, model: nn.Module) -> Traced:
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    node_params: list[list[str]] = []
    kinds, volatile, batchnorm = [], [], []
    for n in nodes:
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        if module is not None:
            node_params.append([f"{n.target}.{p}" for p, _ in module.named_parameters()])
            kinds.append(type(module).__name__)
            volatile.append(_opaque_volatile(module) if n.target in opaque else _module_volatile(module))
            batchnorm.append(any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()))
        else:
            if n.op == "get_attr" and isinstance(_attr(gm, n.target), nn.Parameter):
                node_params.append([n.target])
            else:
                node_params.append([])
            kinds.append("")
            volatile.append(_call_volatile(n) if n.op in ("call_function", "call_method") else "")
            batchnorm.append(False)
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
    return Traced(gm, nodes, node_params, live_after, last_use, kinds, order,
                  stacks=[_stack(n) for n in nodes], volatile=volatile, batchnorm=batchnorm,
                  opaque=opaque, refused=refused, model=model)


def _attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _drop_probability(m: nn.Module) -> float | None:
    for attr in ("p", "drop_prob"):
        v = getattr(m, attr, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _opaque_volatile(module: nn.Module) -> str:
    """A module kept whole because its forward depends on the mode: random or mode-dependent,
    unless it is a dropout-like layer that drops nothing."""
    kind = type(module).__name__
    return "" if any(s in kind for s in STOCHASTIC) and _drop_probability(module) == 0 else kind


def _module_volatile(module: nn.Module) -> str:
    """What in a standard (opaque) module is random or follows the train/eval mode, "" if nothing.
    BatchNorm with parameters is left to ``has_batchnorm``: a freeze plan keeps it in eval mode."""
    for m in module.modules():
        kind = type(m).__name__
        if isinstance(m, nn.modules.dropout._DropoutNd) or any(s in kind for s in STOCHASTIC):
            p = _drop_probability(m)
            if p is None or p > 0:
                return kind
        elif isinstance(m, nn.RReLU):
            return kind
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            return kind
        elif isinstance(m, nn.modules.rnn.RNNBase) and m.dropout > 0 and m.num_layers > 1:
            return kind
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
            return kind
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(True for _ in m.parameters(recurse=False)):
            return kind  # no parameters to freeze, so a freeze plan leaves it in train mode
    return ""


def _argument(n: fx.Node, pos: int | None, names: tuple[str, ...], default):
    for k in names:
        if k in n.kwargs:
            return n.kwargs[k]
    if pos is not None and len(n.args) > pos:
        return n.args[pos]
    return default


def _call_name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")


def _is_identity_dropout(n: fx.Node) -> bool:
    """A dropout-family call with drop probability 0: the identity in either mode."""
    name = _call_name(n)
    if name not in _DROPOUT_ARGS or _DROPOUT_ARGS[name][0] is None or not n.args:
        return False
    p_pos, p_names = _DROPOUT_ARGS[name][:2]
    p = _argument(n, p_pos, p_names, 0.5)
    return isinstance(p, (int, float)) and p == 0


def _call_volatile(n: fx.Node) -> str:
    name = _call_name(n)
    if name in _DROPOUT_ARGS:
        t_pos, t_names, t_default = _DROPOUT_ARGS[name][2:]
        if _is_identity_dropout(n) or _argument(n, t_pos, t_names, t_default) is False:
            return ""
        return name
    return name if name in _RANDOM_CALLS else ""


# ----------------------------------------------------------------------------- the cut

_COUNT = {2: "two", 3: "three", 4: "four"}


def find_cut(traced: Traced, frozen: set[str], random_ok: bool = False) -> Cut | None:
    """The deepest point where every node so far uses only frozen parameters and a single value
    carries everything forward. None when there is no useful prefix, or the model is refused.

    With ``random_ok=False`` the prefix also ends before anything random or mode-dependent, so
    it can be cached (BatchNorm aside, see :meth:`Cut.cacheable`). With ``random_ok=True`` it may
    contain such ops: run under ``no_grad`` in the model's mode it draws the same random numbers
    in the same order as the whole model, so it stays exact; ``Cut.deterministic`` is then False
    and it must not be cached."""
    if traced.refused is not None:
        return None
    best = None
    has_bn = False
    deterministic = True
    stop, stop_at = "the output", len(traced.nodes) - 1
    for i, n in enumerate(traced.nodes):
        if n.op == "output":
            stop_at = i
            break
        trainable = [p for p in traced.node_params[i] if p not in frozen]
        if trainable:
            owner = trainable[0].rpartition(".")[0]
            stop = f"a trainable parameter in {owner}" if owner else f"the trainable parameter {trainable[0]}"
            stop_at = i
            break
        what = traced.volatile[i] if traced.volatile else ""
        if what:
            if not random_ok:
                where = _where(traced, i)
                stop = f"a random op in {where} ({what})" if where else f"a random op ({what})"
                stop_at = i
                break
            deterministic = False
        has_bn |= traced.batchnorm[i] if traced.batchnorm else "BatchNorm" in traced.kinds[i]
        if traced.live_after[i] == 1 and traced.last_use[i] > i and n.op != "placeholder":
            best = Cut(i, n.target if n.op in ("call_module", "get_attr") else n.name, has_bn, deterministic)
    if best is None:
        return None
    best.module = _ended_module(traced, best.index)
    live = max(traced.live_after[best.index + 1:stop_at], default=1)
    best.reason = f"a branch ({_COUNT.get(live, live)} values live) before {stop}" if live > 1 else stop
    return best


@dataclass(frozen=True)
class Prefix:
    """Where backward stops under a plan: the one answer every screen and file gives (``plan
    show``, ``train``'s first lines, ``summary.json``, the cost estimate, the TUI's totals)."""

    module: str  # the model's module whose output crosses the cut, as the tree names it: "layer3"
    reason: str  # what comes right after it: "a trainable parameter in layer4.0"
    traced: bool = True  # False: the model cannot be traced, so this is by parameter order

    def sentence(self) -> str:
        how = "" if self.traced else " (by parameter order: the model cannot be traced)"
        return f"backward stops at {self.module}, before {self.reason}{how}"


def frozen_prefix(traced: Traced | None, frozen: set[str], order: list[str]) -> Prefix | None:
    """The frozen prefix of a plan (``frozen``: its frozen parameter names) in a model whose
    parameters, in forward order when known, are ``order``; None when backward runs to the
    input. The deepest cut is the answer: a run may cache features at a shallower, cacheable
    cut, but frozen layers past it record nothing, so backward stops here all the same."""
    if traced is not None and traced.refused is None:
        cut = find_cut(traced, frozen, random_ok=True)
        return Prefix(cut.module or cut.name, cut.reason) if cut else None
    if traced is not None:
        order = traced.param_order
    first = next((i for i, n in enumerate(order) if n not in frozen), None)
    if not first:  # None: nothing trains; 0: the first parameter trains
        return None
    module = order[first - 1].rpartition(".")[0] or order[first - 1]
    owner = order[first].rpartition(".")[0]
    return Prefix(module, f"a trainable parameter in {owner}" if owner else f"the trainable parameter {order[first]}",
                  traced=False)


def _where(traced: Traced, i: int) -> str:
    n = traced.nodes[i]
    if n.op == "call_module":
        return n.target
    return traced.stacks[i][-1] if traced.stacks and traced.stacks[i] else ""


def _ended_module(traced: Traced, i: int) -> str:
    """The outermost module of the model whose forward ends with node ``i``: the name people see
    in the tree. A node of the root's own forward (a flatten, say) is named after the last module
    before it."""
    if not traced.stacks:
        return ""
    j = i
    while j >= 0 and not traced.stacks[j]:
        j -= 1
    if j < 0:
        return traced.nodes[i].name
    after = set(traced.stacks[j + 1]) if j + 1 < len(traced.stacks) else set()
    for m in traced.stacks[j]:
        if m not in after:
            return m
    return traced.stacks[j][-1]


# ----------------------------------------------------------------------------- the halves


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
    half = fx.GraphModule(traced.gm, graph)
    if traced.model is not None:
        _bind(half, traced.model, traced.gm)
    return half


def _bind(half: fx.GraphModule, model: nn.Module, gm: fx.GraphModule) -> None:
    """Point every tensor ``half`` reads (``get_attr``) at the model's own, as it is now: the
    graph module copied the references it had when traced, and ``model.to(device)`` replaces
    them (Swin's attention mask and position index stayed on the CPU). Constants the trace made
    follow the model's device."""
    device = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    for n in half.graph.nodes:
        if n.op != "get_attr":
            continue
        try:
            live = _attr(model, n.target)
        except AttributeError:  # a constant of the trace's own
            live = _attr(gm, n.target)
            if isinstance(live, torch.Tensor) and device is not None and live.device != device:
                live = live.to(device)
                _set_attr(gm, n.target, live)
        if _attr(half, n.target) is not live:
            _set_attr(half, n.target, live)


def _set_attr(root: nn.Module, target: str, value) -> None:
    path, _, field = target.rpartition(".")
    owner = root.get_submodule(path) if path else root
    if field in owner._buffers:
        owner._buffers[field] = value
    elif field in owner._parameters and isinstance(value, nn.Parameter):
        owner._parameters[field] = value
    else:
        setattr(owner, field, value)


def split(traced: Traced, cut: Cut) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(prefix, rest): ``rest(prefix(x))`` computes what the model computes, in train mode (the
    prefix under ``no_grad``, at the same random state) and in eval mode."""
    prefix = _subgraph(traced, 0, cut.index, None)
    rest = _subgraph(traced, cut.index + 1, len(traced.nodes) - 1, traced.nodes[cut.index])
    return prefix, rest
