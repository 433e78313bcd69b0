"""The schedule from the keyboard (issue 11): E unfreezes the highlighted subtree at an epoch,
x sets its rate multiplier, R and L are the recipe and layer-decay presets, X clears; the
tree, the details, the runs table and the charts show it; an exported plan holds it."""

import json

from freezetui.core.plan import FreezePlan
from freezetui.tui.widgets.charts import Charts, LossChart
from freezetui.tui.widgets.details import Details
from freezetui.tui.widgets.module_tree import ModuleTree
from freezetui.tui.widgets.runs_table import RunsTable
from tui.fakes import make_app

SIZE = (120, 40)


def text_of(widget) -> str:
    return str(widget.render())


def tree_line(tree: ModuleTree, name: str) -> str:
    node = tree.root if name == "" else next(n for n in tree.root.children if n.data == name)
    return tree.render_label(node, tree.rich_style, tree.rich_style).plain


async def type_value(pilot, text: str) -> None:
    await pilot.press("ctrl+a", "ctrl+k", *text, "enter")
    await pilot.pause()


async def test_unfreeze_at_epoch_and_rate_from_the_tree(tmp_path):
    app = make_app(tmp_path, epochs=4)
    async with app.run_test(size=SIZE) as pilot:
        ws, tree = app.workspace, app.query_one(ModuleTree)
        assert "from" not in str(app.query_one("#tree-header").render())  # no schedule: no column
        await pilot.press("j", "j", "E")  # block1
        assert app.screen.id == "epoch-dialog"
        await type_value(pilot, "3")
        assert [s.to_dict() for s in ws.plan.stages] == [{"epoch": 3, "unfreeze": ["block1"]}]
        assert ws.state("block1") == "frozen"  # frozen until epoch 3
        assert ws.plan.stage_of("block1.0.weight") == 3
        assert "from" in str(app.query_one("#tree-header").render())
        assert "@3" in tree_line(tree, "block1") and "@1–3" in tree_line(tree, "")
        assert "@3" not in tree_line(tree, "block2")
        assert "unfreezes at epoch 3" in text_of(app.query_one(Details))

        await pilot.press("x")
        assert app.screen.id == "rate-dialog"
        await type_value(pilot, "abc")  # refused inside the dialog, nothing changes
        assert app.screen.id == "rate-dialog" and "not a number" in str(app.screen.query_one("#error").render())
        await type_value(pilot, "0.1")
        assert ws.plan.lr_mult == [("block1", 0.1)]
        assert "×0.1" in tree_line(tree, "block1") and "×.1–1" in tree_line(tree, "")

        await pilot.press("E")  # back to epoch 1: the stage goes, block1 trains from the start
        await type_value(pilot, "1")
        assert ws.plan.stages == [] and ws.state("block1") == "trainable"

        await pilot.press("e")
        await pilot.pause()
        path = tmp_path / "plan.json"
        await type_value(pilot, str(path))
        saved = json.loads(path.read_text())
        assert saved["lr_mult"] == [["block1", 0.1]] and "stages" not in saved
        assert FreezePlan.load(path).lr_multiplier("block1.0.weight") == 0.1


async def test_bad_epoch_and_escape_change_nothing(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        before = ws.version
        await pilot.press("j", "E")
        await type_value(pilot, "0")
        assert "whole number from 1" in str(app.screen.query_one("#error").render())
        await pilot.press("escape")
        await pilot.pause()
        assert ws.version == before and ws.plan.stages == []


async def test_recipe_layer_decay_and_clear(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        ws, tree = app.workspace, app.query_one(ModuleTree)
        await pilot.press("R")
        await pilot.pause()
        assert ws.plan.trainable == ["stem.1.weight", "stem.1.bias", "block1.1.weight", "block1.1.bias",
                                     "block2.1.weight", "block2.1.bias", "fc.weight", "fc.bias"]  # train_bn
        assert [s.to_dict() for s in ws.plan.stages] == [{"epoch": 2, "unfreeze": ["*"], "lr_scale": 0.5,
                                                          "lr_mult": [["*", 0.01], ["fc", 1.0]], "restart": True}]
        assert ws.plan.train_bn and "fine-tune recipe" in app.query_one("#tree-box").border_title
        assert "@1–2" in tree_line(tree, "stem") and "×.01–.1" in tree_line(tree, "stem")

        await pilot.press("L")
        await type_value(pilot, "0.5")
        assert ws.plan.layer_decay == 0.5 and "layer decay 0.5" in app.query_one("#tree-box").border_title
        await pilot.press("x")  # per-module rates while layer decay is on: refused with a reason
        await type_value(pilot, "0.5")
        assert "layer decay" in str(app.screen.query_one("#error").render())
        await pilot.press("escape", "X")
        await pilot.pause()
        assert not ws.has_schedule() and not ws.plan.train_bn and "fc.weight" in ws.plan.trainable
        assert "from" not in str(app.query_one("#tree-header").render())


async def test_staged_run_is_named_and_its_stage_marked(tmp_path):
    app = make_app(tmp_path, epochs=3)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        await pilot.press("j", "E")  # stem from epoch 2
        await type_value(pilot, "2")
        await pilot.press("t")
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.query_one(RunsTable)
        assert table.get_cell("1", "schedule") == "1 stage"
        record = ws.runs[-1]
        assert record.stages == [{"epoch": 2, "unfreeze": ["stem"]}]
        chart = app.query_one(LossChart)
        drawn = []
        chart.plt.vline = lambda x, color=None, xside=None: drawn.append(x)
        app.query_one(Charts).dirty = True
        app.redraw_charts(force=True)
        steps = record.total_steps // record.config.epochs
        assert drawn == [steps + 1]  # the first step of epoch 2

        await pilot.press("g")  # the learning rate: between runs, the next run's under the edited plan
        assert chart.border_title.startswith("lr/step")
        rates = []
        real_plot = chart.plt.plot
        chart.plt.plot = lambda xs, ys, **kw: (rates.append(list(ys)), real_plot(xs, ys, **kw))
        app.query_one(Charts).dirty = True
        app.redraw_charts(force=True)
        assert rates and max(rates[-1]) <= record.config.effective_lr + 1e-12 and len(rates[-1]) > 1


async def test_lr_chart_shows_the_running_runs_own_rates_sampled(tmp_path):
    from tui.fakes import blocking_trainer

    app = make_app(tmp_path, trainer=blocking_trainer, epochs=1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("g", "t")
        await pilot.pause(0.3)
        chart = app.query_one(LossChart)
        drawn = []
        real_plot = chart.plt.plot
        chart.plt.plot = lambda xs, ys, **kw: (drawn.append((list(xs), list(ys), kw.get("color"))),
                                                real_plot(xs, ys, **kw))
        app.query_one(Charts).dirty = True
        app.redraw_charts(force=True)
        # the run's million steps, drawn from at most one point per column, in the run's colour
        (xs, ys, color), = drawn
        assert color == "cyan" and xs[0] == 1 and xs[-1] == 10**6 and len(xs) <= chart.size.width
        assert "#1" in chart.border_title
        app.controller.request_stop()
        await app.workers.wait_for_complete()
