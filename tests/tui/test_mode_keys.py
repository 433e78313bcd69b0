"""The mode key (issue 24): i cycles the highlighted subtree through frozen → trainable →
bias-only → norm-only → LoRA (rank and alpha asked once), the tree shows a mode column, the
totals the adapters and their price, and an exported plan holds the adapters."""

import json

from freezetui.tui.widgets.module_tree import ModuleTree
from freezetui.tui.widgets.totals import Totals
from tui.fakes import make_app

SIZE = (120, 40)


def tree_line(tree: ModuleTree, name: str) -> str:
    node = tree.root if name == "" else next(n for n in tree.root.children if n.data == name)
    return tree.render_label(node, tree.rich_style, tree.rich_style).plain


async def test_m_cycles_modes_and_asks_the_rank_once(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        ws, tree = app.workspace, app.query_one(ModuleTree)
        assert "mode" not in str(app.query_one("#tree-header").render())  # no modes yet: no column
        await pilot.press("j", "j")  # block1
        assert tree.cursor_node.data == "block1"
        assert ws.mode("block1") == "trainable"
        seen = []
        for _ in range(2):
            await pilot.press("i")
            seen.append(ws.mode("block1"))
        assert seen == ["bias-only", "norm-only"]
        assert "mode" in str(app.query_one("#tree-header").render())
        assert "norm-only" in tree_line(tree, "block1")
        await pilot.press("i")  # LoRA: the rank is asked
        assert app.screen.id == "lora-dialog"
        await pilot.press("ctrl+a", "ctrl+k", *"4:8", "enter")
        await pilot.pause()
        assert ws.mode("block1") == "lora"
        assert [r.to_dict() for r in ws.plan.adapters] == [
            {"modules": "block1", "type": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0}]
        assert "lora" in tree_line(tree, "block1")
        assert "LoRA" in str(app.query_one(Totals).render())
        await pilot.press("i")  # back to frozen: the adapter goes
        assert ws.mode("block1") == "frozen" and ws.plan.adapters == []
        await pilot.press("j", "i", "i", "i")  # block2: bias-only, norm-only, LoRA (not asked again)
        await pilot.pause()
        assert app.screen.id != "lora-dialog" and ws.mode("block2") == "lora"
        assert ws.plan.adapters[0].r == 4
        ws.export(tmp_path / "plan.json")
        d = json.loads((tmp_path / "plan.json").read_text())
        assert d["adapters"][0]["modules"] == "block2" and "block2.0.weight" in d["frozen"]
