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

from ..format import GLYPHS, STATE_STYLES, human
from ..messages import PlanChanged

COUNTS_WIDTH = 26  # type (10) + params (7) + trainable (7) + gaps


class ModuleTree(Tree[str]):
    """``node.data`` is the workspace name of the module or parameter ("" for the whole model)."""

    BINDINGS = [
        Binding("space", "toggle_freeze", "Toggle", id="toggle"),
        Binding("f", "freeze", "Freeze", id="freeze"),
        Binding("u", "unfreeze", "Unfreeze", id="unfreeze"),
        Binding("F", "freeze_before", "Freeze before", id="freeze_before"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("l,right", "expand", "Expand", show=False),
        Binding("h,left", "collapse", "Collapse", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__("model", **kwargs)
        self.workspace = None
        self.show_root = True
        self.auto_expand = False
        self.guide_depth = 3

    # ------------------------------------------------------------------ content

    def load(self, workspace) -> None:
        self.workspace = workspace
        self.clear()
        self.root.data = ""
        self.root.set_label(workspace.nodes[""].label)
        self._add_children(self.root)
        self.root.expand()
        self.move_cursor(self.root)

    def _add_children(self, node: TreeNode[str]) -> None:
        for child in self.workspace.nodes[node.data].children:
            info = self.workspace.nodes[child]
            node.add(info.label, data=child, allow_expand=bool(info.children))

    def on_tree_node_expanded(self, event: Tree.NodeExpanded) -> None:
        node = event.node
        if node.data is not None and not node.children and self.workspace.nodes[node.data].children:
            self._add_children(node)

    # ------------------------------------------------------------------ drawing

    def render_label(self, node: TreeNode[str], base_style: Style, style: Style) -> Text:
        if self.workspace is None or node.data is None:
            return super().render_label(node, base_style, style)
        ws = self.workspace
        info = ws.nodes[node.data]
        state = ws.state(node.data)
        depth = len(node.data.split(".")) if node.data else 0
        name_width = max(6, self.size.width - COUNTS_WIDTH - 6 - depth * self.guide_depth)
        icon = (self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE) if node.allow_expand else "  "
        suffix = " new" if info.name in ws.info.new_modules else ""
        name = info.label
        room = name_width - len(suffix)
        if len(name) > room:
            name = name[: max(1, room - 1)] + "…"
        text = Text.assemble((icon, base_style), (GLYPHS[state] + " ", STATE_STYLES[state]), (name, style),
                             (suffix, "bold magenta"))
        text.append(" " * max(1, name_width - len(name) - len(suffix) + 1))
        total, trainable = ws.counts(node.data)
        if info.is_param:
            kind = "×".join(map(str, info.shape)) or "scalar"
        else:
            kind = info.kind
        text.append(f"{kind[:10]:<10} ", "dim")
        text.append(f"{human(total):>7}")
        text.append(f"{human(trainable):>7}", "green" if trainable else "dim")
        return text

    def get_label_width(self, node: TreeNode[str]) -> int:
        # Every row is as wide as the widget: no render_label per line when the tree relayouts.
        return max(1, self.size.width - 4)

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
