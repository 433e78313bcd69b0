"""Pilot tests: every key against a small model, checked through the workspace, the widgets and
the files the app writes."""

import json

import pytest

from freezetui.tui.app import default_trainer
from freezetui.tui.widgets.lints import LintsPanel
from freezetui.tui.widgets.module_tree import ModuleTree
from freezetui.tui.widgets.totals import Totals
from tui.fakes import blocking_trainer, failing_trainer, make_app, small_workspace

SIZE = (110, 34)


def text_of(widget) -> str:
    return str(widget.render())


async def test_starts_on_root_expanded_one_level(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        tree = app.query_one(ModuleTree)
        assert tree.cursor_node is tree.root and tree.root.is_expanded
        assert [c.data for c in tree.root.children] == ["stem", "block1", "block2", "pool", "fc"]
        assert not tree.root.children[0].children  # lazily filled
        await pilot.press("l", "l")  # to stem, expand it
        assert [c.data for c in tree.root.children[0].children] == ["stem.0", "stem.1", "stem.2"]
        assert "tiny:tiny_cnn" in app.sub_title and "shapes" in app.sub_title and "cpu" in app.sub_title


async def test_space_toggles_and_totals_follow(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        await pilot.press("space")
        assert ws.state("") == "frozen"
        assert "trainable 0 of 24.5k (0%)" in text_of(app.query_one(Totals))
        await pilot.press("j", "space")  # stem back to trainable: root is mixed
        assert ws.state("stem") == "trainable" and ws.state("") == "mixed"
        await pilot.press("k", "space")  # a mixed node becomes frozen
        assert ws.state("") == "frozen"
        assert "frozen 24.5k" in text_of(app.query_one(Totals))


async def test_f_u_and_freeze_before(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        await pilot.press("j", "j", "f")  # block1
        assert ws.state("block1") == "frozen" and ws.state("stem") == "trainable"
        await pilot.press("u")
        assert ws.state("block1") == "trainable"
        await pilot.press("j", "F")  # freeze everything before block2
        assert ws.plan.frozen == [n for n in ws.param_names if n.startswith(("stem.", "block1."))]
        # named as a module of the tree, with the reason it stops there
        assert "backward stops at block1, before a trainable parameter in block2.0" in text_of(app.query_one(Totals))
        await pilot.press("j", "F")  # pool has no parameters: everything before it, i.e. all but fc
        assert ws.plan.trainable == ["fc.weight", "fc.bias"]


async def test_presets_and_batchnorm(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        await pilot.press("H")
        assert ws.plan.trainable == ["fc.weight", "fc.bias"]
        await pilot.press("A")
        assert ws.plan.frozen == []
        await pilot.press("b")
        assert ws.batchnorm == "train"
        await pilot.press("H")
        assert "BatchNorm" in text_of(app.query_one(LintsPanel))
        await pilot.press("w")  # the lints in full, the highlighted one with its fix as keys
        await pilot.pause()
        lints = text_of(app.query_one(LintsPanel))
        assert app.query_one(LintsPanel).has_focus and "running statistics still move" in lints
        assert "b keeps BatchNorm statistics" in lints
        await pilot.press("escape")
        assert app.query_one("#tree").has_focus
        await pilot.press("b")
        assert ws.batchnorm == "freeze"


async def test_frozen_new_head_lint_is_visible(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(LintsPanel)
        assert "no problems found" in text_of(panel) and not panel.has_class("has-error")
        await pilot.press("space")
        assert panel.display and panel.has_class("has-error")
        assert "fc is new (randomly initialised) and frozen" in " ".join(text_of(panel).split())


async def test_glob_dialog_freezes_and_reports_no_match(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        await pilot.press(*"*.1.*", "enter")  # BatchNorm layers: stem.1, block1.1, block2.1
        assert app.workspace.plan.frozen == [n for n in app.workspace.param_names if ".1." in n]
        await pilot.press("slash", *"nothing*", "enter")
        error = app.screen.query_one("#error")
        assert "matches no parameter" in text_of(error)
        await pilot.press("escape")
        await pilot.press("slash", *"block2", "tab", "down", "enter")  # choose "unfreeze"
        await pilot.press("shift+tab", "enter")
        # back at the main screen; unfreezing block2 removed its BN from the frozen set
        assert "block2.1.weight" not in app.workspace.plan.frozen


async def test_export_writes_plan_and_asks_before_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("H", "e")
        assert app.screen.query_one("#path").value == "freeze-plan.json"
        await pilot.press("enter")
        saved = json.loads((tmp_path / "freeze-plan.json").read_text())
        assert saved["trainable"] == ["fc.weight", "fc.bias"] and saved["version"] == 1
        assert saved["counts"]["trainable"] == 650
        await pilot.press("A", "e", "enter")  # file exists: a question
        assert "Overwrite" in text_of(app.screen.query("Label").first())
        await pilot.press("n")
        assert json.loads((tmp_path / "freeze-plan.json").read_text()) == saved
        await pilot.press("escape", "e", "enter", "y")
        assert json.loads((tmp_path / "freeze-plan.json").read_text())["frozen"] == []


async def test_open_plan_applies_or_changes_nothing(tmp_path):
    ws = small_workspace()
    ws.head_only()
    good = ws.export(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    d = json.loads(good.read_text())
    d["frozen"] = d["frozen"][1:]  # a parameter missing
    bad.write_text(json.dumps(d))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("o")
        app.screen.query_one("#path").value = str(bad)
        await pilot.press("enter")
        assert "does not fit this model" in text_of(app.screen.query_one("#error"))
        assert app.workspace.plan.frozen == []  # nothing applied half-way
        app.screen.query_one("#path").value = str(good)
        await pilot.press("enter")
        assert app.workspace.plan.trainable == ["fc.weight", "fc.bias"]


async def test_settings_validate_and_apply(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        app.screen.query_one("#epochs").value = "0"
        await pilot.press("enter")
        assert "epochs must be a positive" in text_of(app.screen.query_one("#error"))
        app.screen.query_one("#epochs").value = "2"
        app.screen.query_one("#lr").value = "0.01"
        await pilot.press("enter")
        assert app.config.epochs == 2 and app.config.lr == 0.01


async def test_t_trains_and_runs_table_compares(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await app.workers.wait_for_complete()
        await pilot.pause()
        run1 = app.workspace.runs[0]
        assert run1.status == "done" and len(run1.epochs) == 3 and len(run1.steps) == 12
        await pilot.press("H", "t")
        await app.workers.wait_for_complete()
        await pilot.pause()
        run2 = app.workspace.runs[1]
        assert run2.trainable == 650 and run1.trainable == app.workspace.totals()["total"]
        table = app.query_one("#runs")
        assert table.row_count == 2
        table.focus()
        await pilot.press("up", "enter")  # overlay run #1
        assert app.compare_id == 1
        assert "#1 ◆" in str(table.get_row("1")[0])


async def test_tree_is_read_only_during_a_run_and_t_asks_to_stop(tmp_path):
    app = make_app(tmp_path, trainer=blocking_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await pilot.pause(0.2)
        assert app.training
        await pilot.press("space")
        assert app.workspace.state("") == "trainable"  # unchanged
        await pilot.press("t")
        assert "Stop the run?" in text_of(app.screen.query("Label").first())
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.workspace.runs[0].status == "stopped" and not app.training


async def test_q_during_a_run_stops_worker_and_exits(tmp_path):
    app = make_app(tmp_path, trainer=blocking_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await pilot.pause(0.2)
        await pilot.press("q", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert app.workspace.runs[0].status == "stopped"
    assert not any(w.is_running for w in app.workers)
    assert app.return_code == 0


async def test_failed_run_names_the_cause_and_app_stays_up(tmp_path):
    app = make_app(tmp_path, trainer=failing_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await app.workers.wait_for_complete()
        await pilot.pause()
        record = app.workspace.runs[0]
        assert record.status == "failed" and "loss became nan" in record.error
        assert "lower the learning rate" in text_of(app.query_one("#run-status"))
        assert app.is_running


async def test_real_training_run_writes_a_run_folder(tmp_path):
    app = make_app(tmp_path, trainer=default_trainer, epochs=1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("j", "f", "t")  # freeze the stem, train
        await app.workers.wait_for_complete()
        await pilot.pause()
        record = app.workspace.runs[0]
        assert record.status == "done" and record.frozen_unchanged
        assert (record.folder / "model.pt").exists()
        summary = json.loads((record.folder / "summary.json").read_text())
        assert summary["frozen_unchanged"] is True
        assert json.loads((record.folder / "plan.json").read_text())["frozen"][:2] == ["stem.0.weight", "stem.0.bias"]
        status = text_of(app.query_one("#run-status"))
        assert record.folder.name in status  # the path's end, never cut off
        assert "kB" in status or "MB" in status  # and its size


async def test_help_and_command_palette_list_every_key(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for expected in ("Toggle (space)", "Freeze (f)", "Freeze everything before this (F)", "Train/stop (t)",
                         "Export plan (e)", "Freeze/unfreeze by glob (/)", "Train only the head (H)",
                         "Settings (c)", "Open plan (o)", "Quit"):
            assert expected in titles
        assert len(titles) == len(set(titles)) and "Quit (q)" not in titles  # each command once
        await pilot.press("question_mark")
        help_text = text_of(app.screen.query_one("#keys")) + text_of(app.screen.query_one("#keys-anywhere"))
        assert "Freeze everything before" in help_text and "Train/stop" in help_text
        await pilot.press("escape")
        assert app.screen is app.screen_stack[0]


async def test_caching_features_shows_its_count_and_a_bar(tmp_path):
    from freezetui.core.train import RunStart, TrainResult

    def caching_trainer(workspace, record, callbacks, stop, runs_dir):
        record.folder = tmp_path / "fake"
        for cb in callbacks:
            cb.on_run_start(RunStart(1, 10, "cpu", 5000, 1000, 32, 0.001))
            cb.on_caching(1234, 5000)
        stop.wait(20)
        return TrainResult(epochs=0, stopped=True, device="cpu")

    app = make_app(tmp_path, trainer=caching_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        for _ in range(50):
            await pilot.pause(0.05)
            if "caching" in str(app.main("#run-status").render()):
                break
        assert str(app.main("#run-status").render()) == "run #1: caching features 1,234/5,000"
        bar = app.main("#run-progress")
        assert bar.display and (bar.progress, bar.total) == (1234, 5000)
        app.stop_event.set()
        await app.workers.wait_for_complete()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_cost_line_fits_says_what_it_prices_and_follows_the_settings(tmp_path, size):
    from dataclasses import replace

    from freezetui.tui.widgets.totals import Totals

    app = make_app(tmp_path, batch_size=32)
    app.workspace.compute_cost_profile()
    async with app.run_test(size=size) as pilot:
        totals = app.main(Totals)
        await pilot.pause()

        def lines() -> list[str]:
            return [line.plain for line in totals.render().wrap(totals.content_size.width)]

        assert len(lines()) <= totals.content_size.height, lines()  # nothing cut off
        assert "batch 32 at 32 px" in " ".join(lines()) and "activations" in " ".join(lines())
        await pilot.press("R")  # a staged plan is priced at its costliest stage, and says so
        await pilot.pause()
        assert "of stage 2/2 (epoch 2+, the costliest)" in " ".join(" ".join(lines()).split())
        assert len(lines()) <= totals.content_size.height, lines()
        app.action_settings()
        await pilot.pause()
        app.screen.dismiss(replace(app.config, image_size=64, batch_size=16))
        for _ in range(600):  # measured again at the new size, off the UI thread
            await pilot.pause(0.05)
            if "at 64 px" in " ".join(lines()):
                break
        assert "batch 16 at 64 px" in " ".join(lines())


async def test_settings_enter_saves_from_a_checkbox_and_space_toggles(tmp_path):
    from freezetui.tui.screens.settings import SettingsScreen, TickBox

    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("c")
        box = app.screen.query_one("#augment", TickBox)
        assert box.value and "✓" in box._button.plain
        box.focus()
        await pilot.press("space")  # space ticks and unticks; not only the colour changes
        assert not box.value and "✓" not in box._button.plain
        keys = app.screen.query_one("#settings-keys")
        assert keys.region.bottom <= 24 and "Enter: save" in str(keys.render())  # visible at 80×24
        await pilot.press("enter")  # on the checkbox: saves
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen) and app.config.augment is False


def test_a_staged_run_lists_its_first_and_largest_trainable_share():
    from freezetui.core.train import TrainConfig
    from freezetui.tui.widgets.runs_table import _trainable

    ws = small_workspace()
    record = ws.new_run(TrainConfig(epochs=2))
    record.trainable, record.total = 650, 24458
    record.epochs = [{"epoch": 1, "trainable": 650}, {"epoch": 2, "trainable": 24458}]
    assert _trainable(record) == "2.7%→100%"
    record.epochs = [{"epoch": 1, "trainable": 650}]
    assert _trainable(record) == "2.7%"


async def test_toasts_come_one_at_a_time_short_and_left_of_the_totals(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("b", "b", "H")
        await pilot.pause(0.3)
        notes = list(app._notifications)
        assert len(notes) == 1 and notes[0].message.startswith("Training only the head")
        assert notes[0].timeout <= 3
        toast = app.screen.query_one("Toast")
        for panel in ("#totals", "#lints"):  # what the key just changed stays readable
            assert not toast.region.overlaps(app.main(panel).region), panel


def test_accuracy_ticks_are_whole_or_half_points_over_a_sensible_span():
    from freezetui.tui.widgets.charts import percent_ticks

    lo, hi, ticks = percent_ticks([17.0, 17.033, 17.1, 16.967], 5)  # a 0.4-point change
    assert hi - lo >= 2 and lo <= 16.967 and hi >= 17.1
    assert all(t * 2 == int(t * 2) for t in ticks) and len(ticks) <= 6
    lo, hi, ticks = percent_ticks([99.8, 100.0], 4)
    assert hi == 100 and lo <= 98 and ticks[-1] <= 100
    lo, hi, ticks = percent_ticks([12.0, 84.0], 4)
    assert len(ticks) <= 5 and all(t == int(t) for t in ticks)


def test_the_eta_knows_later_stages_are_slower():
    from freezetui.tui.widgets.run_panel import work_between

    # 10 steps an epoch; epoch 1 trains the head (cost 1), epochs 2-3 everything (cost 4)
    weights = [1.0, 4.0, 4.0]
    assert work_between(weights, 10, 0, 10) == 10 and work_between(weights, 10, 10, 30) == 80
    assert work_between(weights, 10, 5, 15) == 5 + 20
    ws = small_workspace()
    ws.compute_cost_profile()
    ws.apply_recipe()  # the head for an epoch, then everything
    costs = ws.epoch_costs(3)
    assert costs[0] < costs[1] == costs[2]
