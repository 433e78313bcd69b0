"""Which layers should train, from the keyboard (issue 23): m measures the signal in a worker and
the tree gains a heat column; M makes the suggestion the plan; the numbers leave when the plan
changes otherwise; N turns Auto-RGN on and the rate column says so."""

import torch

from freezetui.tui.widgets.module_tree import ModuleTree
from tui.fakes import make_app

SIZE = (120, 40)


def tree_line(tree: ModuleTree, name: str) -> str:
    node = tree.root if name == "" else next(n for n in tree.root.children if n.data == name)
    return tree.render_label(node, tree.rich_style, tree.rich_style).plain


async def test_measure_shows_heat_and_the_suggestion_becomes_the_plan(tmp_path):
    app = make_app(tmp_path, batch_size=32)
    async with app.run_test(size=SIZE) as pilot:
        ws, tree = app.workspace, app.query_one(ModuleTree)
        weights = {k: v.clone() for k, v in ws.model.state_dict().items()}
        await pilot.press("m")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.suggestion is not None and tree.heat_shown
        assert "signal" in str(app.query_one("#tree-header").render())
        assert any(c in tree_line(tree, "block1") for c in "█▏▎▍▌▋▊▉")
        now = ws.model.state_dict()
        assert all(torch.equal(now[k], weights[k]) for k in weights)  # measured, not trained
        blocks = app.suggestion.blocks
        await pilot.press("M")
        await pilot.pause()
        assert ws.plan.trainable == app.suggestion.plan.trainable
        assert {"fc.weight", "fc.bias"} <= set(ws.plan.trainable) and blocks
        assert tree.heat_shown  # applying the suggestion keeps the numbers
        await pilot.press("j", "space")  # any other edit (stem toggled): they no longer describe the plan
        await pilot.pause()
        assert not tree.heat_shown and app.suggestion is None
        assert "signal" not in str(app.query_one("#tree-header").render())
        await pilot.press("M")  # nothing to apply now
        await pilot.press("N")
        await pilot.pause()
        assert ws.plan.auto_rgn and "rgn" in tree_line(tree, "fc")
