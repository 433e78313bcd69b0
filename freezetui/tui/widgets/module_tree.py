"""The model as a tree of modules and parameters, with a freeze glyph and counts on every row.

Children are added when a node is first expanded, so a model with thousands of parameters
opens at once; a freeze edit repaints only the visible lines.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ..format import GLYPHS, STATE_STYLES, human, schedule_cells
from ..messages import PlanChanged

PARAMS_WIDTH = 8  # "  148.0k"
TRAINABLE_WIDTH = 10  # " trainable"
WHEN_WIDTH, RATE_WIDTH = 7, 10  # " @10–12", " ×.025–.04"
SCHEDULE_WIDTH = WHEN_WIDTH + RATE_WIDTH  # shown while the plan has a schedule
HEAT_WIDTH = 7  # " ▇▇▇▇▆ ": the module's normalised ‖g‖/‖w‖, shown after m measured it
HEAT_CELLS = HEAT_WIDTH - 2
EIGHTHS = " ▏▎▍▌▋▊▉█"
MODE_WIDTH = 11  # " norm-only", shown once a mode beyond frozen/trainable is used (i)
TYPE_MIN_ROOM = 56  # narrower trees leave the type to the details panel
NAME_MIN = 8


def columns(width: int, type_width: int, schedule: bool = False, heat: bool = False,
            modes: bool = False) -> tuple[int, int, bool]:
    """(type column width, 0 when hidden; width of the columns after it; whether the params
    column shows) for a tree ``width`` columns wide. The schedule, the heat and the modes take
    the type's room first, then, in a narrow tree, the params column's (trainable counts stay)."""
    extra = (SCHEDULE_WIDTH if schedule else 0) + (HEAT_WIDTH if heat else 0) + (MODE_WIDTH if modes else 0)
    room = TYPE_MIN_ROOM + extra
    params = not extra or width >= TYPE_MIN_ROOM
    counts = (PARAMS_WIDTH if params else 0) + TRAINABLE_WIDTH + extra
    return (type_width + 1 if width >= room else 0), counts, params


def heat_bar(value: float) -> str:
    """``value`` in [0, 1] as a bar of HEAT_CELLS cells in eighths."""
    eighths = round(max(0.0, min(1.0, value)) * HEAT_CELLS * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(HEAT_CELLS)


def heat_style(value: float) -> str:
    return "bold red" if value >= 0.75 else "red" if value >= 0.5 else "yellow" if value >= 0.25 else "dim"


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns with an ellipsis (a long range: ``×0.0037–…``)."""
    return text if len(text) <= width else text[: width - 1] + "…"


class ModuleTree(Tree[str]):
    """``node.data`` is the workspace name of the module or parameter ("" for the whole model)."""

    BINDINGS = [
        Binding("space", "toggle_freeze", "Toggle", id="toggle"),
        Binding("f", "freeze", "Freeze", id="freeze", show=False),
        Binding("u", "unfreeze", "Unfreeze", id="unfreeze", show=False),
        Binding("F", "freeze_before", "Freeze everything before this", id="freeze_before", show=False),
        Binding("E", "unfreeze_at", "Unfreeze at epoch…", id="unfreeze_at", show=False),
        Binding("x", "rate", "Learning-rate multiplier…", id="rate", show=False),
        Binding("i", "cycle_mode", "Mode: frozen, trainable, bias-only, norm-only, LoRA", id="cycle_mode", show=False),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("l,right", "expand", "Expand", show=False),
        Binding("h,left", "collapse", "Collapse", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__("model", **kwargs)
        self.workspace = None
        self.new_inside: set[str] = set()
        self.show_root = True
        self.auto_expand = False
        self.guide_depth = 3
        self.heat: dict[str, float] | None = None  # module/tensor -> normalised ‖g‖/‖w‖ (core.suggest)
        self.heat_version: int | None = None  # the plan version it was measured for

    @property
    def heat_shown(self) -> bool:
        """The heat column shows while the plan is the one it was measured with."""
        return self.heat is not None and self.workspace is not None and self.heat_version == self.workspace.version

    def show_heat(self, heat: dict[str, float] | None, version: int | None) -> None:
        self.heat, self.heat_version = heat, version
        self.show_header()
        self.repaint()

    # ------------------------------------------------------------------ content

    def load(self, workspace) -> None:
        self.workspace = workspace
        self.new_inside = set()
        for name in workspace.info.new_modules:
            parts = name.split(".")
            self.new_inside.update(".".join(parts[:k]) for k in range(1, len(parts)))
        self.clear()
        self.root.data = ""
        self.root.set_label(workspace.nodes[""].label)
        self._add_children(self.root)
        self.root.expand()
        self.move_cursor(self.root)
        self.show_header()

    def _add_children(self, node: TreeNode[str]) -> None:
        for child in self.workspace.nodes[node.data].children:
            info = self.workspace.nodes[child]
            node.add(info.label, data=child, allow_expand=bool(info.children))

    def on_tree_node_expanded(self, event: Tree.NodeExpanded) -> None:
        node = event.node
        if node.data is not None and not node.children and self.workspace.nodes[node.data].children:
            self._add_children(node)

    # ------------------------------------------------------------------ drawing

    @property
    def row_width(self) -> int:
        return max(1, self.scrollable_content_region.width)

    def type_width(self) -> int:
        if self.workspace is None:
            return 0
        if not hasattr(self, "_type_width"):
            kinds = [n.kind for n in self.workspace.nodes.values() if not n.is_param]
            self._type_width = min(18, max(map(len, kinds), default=6))
        return self._type_width

    def header(self) -> Text:
        """The column titles, aligned with the rows' columns."""
        width = self.row_width
        sched = self.schedule_shown
        heat = self.heat_shown
        type_w, counts_w, params = columns(width, self.type_width(), sched, heat, self.modes_shown)
        name_w = max(1, width - type_w - counts_w - 4)
        text = Text("    " + "module".ljust(name_w), "bold")
        if type_w:
            text.append("type".ljust(type_w), "bold")
        if heat:
            text.append(" signal".ljust(HEAT_WIDTH), "bold red")
        if self.modes_shown:
            text.append("mode".rjust(MODE_WIDTH), "bold magenta")
        if sched:
            text.append("from".rjust(WHEN_WIDTH) + "×lr".rjust(RATE_WIDTH), "bold yellow")
        if params:
            text.append("params".rjust(PARAMS_WIDTH), "bold")
        text.append("trainable".rjust(TRAINABLE_WIDTH), "bold green")
        return text

    @property
    def schedule_shown(self) -> bool:
        """The schedule columns ("@2" trains from epoch 2, "×0.1" of the rate) show while the
        plan has stages or rate rules."""
        return self.workspace is not None and self.workspace.has_schedule()

    @property
    def modes_shown(self) -> bool:
        """The mode column shows once the plan has adapters or the mode key was used."""
        ws = self.workspace
        return ws is not None and (bool(ws.plan.adapters) or getattr(ws, "modes_used", False))

    def render_label(self, node: TreeNode[str], base_style: Style, style: Style) -> Text:
        if self.workspace is None or node.data is None:
            return super().render_label(node, base_style, style)
        ws = self.workspace
        info = ws.nodes[node.data]
        state = ws.state(node.data)
        depth = node.data.count(".") + 1 if node.data else 0
        width = max(NAME_MIN + 4, self.row_width - depth * self.guide_depth)  # the label's columns
        sched = self.schedule_shown
        heat = self.heat_shown
        type_w, counts_w, params = columns(self.row_width, self.type_width(), sched, heat, self.modes_shown)
        name_w = max(NAME_MIN, width - 4 - type_w - counts_w)
        icon = (self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE) if node.allow_expand else "  "
        if info.name in ws.info.new_modules:
            suffix = " new"
        elif info.name in self.new_inside:
            suffix = " +new"  # a new module is inside this one
        else:
            suffix = ""
        name = info.label
        room = name_w - len(suffix)
        if len(name) > room:
            name = name[: max(1, room - 1)] + "…"
        text = Text.assemble((icon, base_style), (GLYPHS[state] + " ", STATE_STYLES[state]), (name, style),
                             (suffix, "bold magenta"))
        text.append(" " * max(0, name_w - len(name) - len(suffix)))
        if type_w:
            kind = ("×".join(map(str, info.shape)) or "scalar") if info.is_param else info.kind
            if len(kind) > type_w - 1:
                kind = kind[: type_w - 2] + "…"
            text.append(kind.ljust(type_w), "dim")
        if heat:
            value = self.heat.get(node.data)
            if value is None:
                text.append(" " * HEAT_WIDTH)
            else:
                text.append(" " + heat_bar(value) + " ", heat_style(value))
        if self.modes_shown:
            text.append(fit(ws.mode(node.data), MODE_WIDTH - 1).rjust(MODE_WIDTH), "magenta")
        if sched:
            when, rate = schedule_cells(ws.schedule_span(node.data))
            text.append(fit(when, WHEN_WIDTH - 1).rjust(WHEN_WIDTH), "bold yellow")
            text.append(fit(rate, RATE_WIDTH - 1).rjust(RATE_WIDTH), "yellow")
        total, trainable = ws.counts(node.data)
        if params:
            text.append(human(total).rjust(PARAMS_WIDTH))
        text.append(human(trainable).rjust(TRAINABLE_WIDTH), "green" if trainable else "dim")
        return text

    def on_resize(self) -> None:
        self.show_header()

    def show_header(self) -> None:
        for header in self.screen.query("#tree-header"):
            header.update(self.header())

    def get_label_width(self, node: TreeNode[str]) -> int:
        # Every row ends at the right edge whatever its depth (cheap: no render_label per line
        # when the tree relayouts), so the columns line up and nothing scrolls sideways.
        depth = node.data.count(".") + 1 if node.data else 0
        return max(NAME_MIN + 4, self.row_width - depth * self.guide_depth)

    def repaint(self) -> None:
        """Redraw visible lines after a freeze edit (the line cache keys on ``_updates``)."""
        self._updates += 1
        self.refresh()

    # ------------------------------------------------------------------ keys

    def _edit(self, fn) -> None:
        node = self.cursor_node
        if self.workspace is None or node is None:
            return
        if self.workspace.locked:
            self.app.notify("The plan is read-only while a run is in progress (t stops it).", severity="warning")
            return
        fn(node.data)
        self.post_message(PlanChanged())  # the app repaints the tree and the panels once

    def action_toggle_freeze(self) -> None:
        self._edit(self.workspace.toggle if self.workspace else None)

    def action_freeze(self) -> None:
        self._edit(lambda name: self.workspace.set_frozen(name, True))

    def action_unfreeze(self) -> None:
        self._edit(lambda name: self.workspace.set_frozen(name, False))

    def action_freeze_before(self) -> None:
        self._edit(lambda name: self.workspace.freeze_before(name))

    def action_unfreeze_at(self) -> None:
        if self.workspace is not None and self.cursor_node is not None:
            self.app.ask_unfreeze_at(self.cursor_node.data)

    def action_cycle_mode(self) -> None:
        if self.workspace is not None and self.cursor_node is not None:
            self.app.cycle_mode(self.cursor_node.data)

    def action_rate(self) -> None:
        if self.workspace is not None and self.cursor_node is not None:
            self.app.ask_rate(self.cursor_node.data)

    def action_expand(self) -> None:
        node = self.cursor_node
        if node is not None and node.allow_expand:
            if node.is_expanded and node.children:
                self.move_cursor(node.children[0])
            else:
                node.expand()

    def action_collapse(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)
