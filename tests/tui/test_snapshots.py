"""Snapshots at 80×24 and 120×40: the main screen, every dialog and finished runs (a fake,
deterministic trainer; runs under a fresh folder so no earlier run shows up)."""

import pytest

from freezetui.core.specs import ModelSpec
from freezetui.core.train import TrainConfig
from freezetui.tui.app import AppOptions, create_app
from tui.fakes import fake_sweep_trainer, fake_trainer, paused_trainer, small_workspace

SMALL, LARGE = (80, 24), (120, 40)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.delenv("TMUX", raising=False)  # the torchrun dialog's clipboard note
    monkeypatch.setattr("freezetui.tui.plan_actions.gpu_count", lambda: 0)
    monkeypatch.setattr("freezetui.tui.plan_actions.next_torchrun_dir", lambda runs, model: "runs/torchrun-1")
    monkeypatch.chdir(tmp_path)
    options = AppOptions(model=ModelSpec("tiny:tiny_cnn", weights="none"), runs_dir="runs",
                         config=TrainConfig(epochs=3, device="cpu"))
    return create_app(options, workspace=small_workspace(), trainer=fake_trainer)


async def _settle(pilot):
    pilot.app.clear_notifications()
    pilot.app.redraw_charts(force=True)
    await pilot.pause()


class TestMainScreen:
    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_opened(self, snap_compare, app, size):
        assert snap_compare(app, press=["l", "j", "l"], terminal_size=size)

    def test_error_lint_after_freezing_everything(self, snap_compare, app):
        assert snap_compare(app, press=["space", "j", "j"], terminal_size=SMALL)

    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_schedule_columns_and_planned_rates(self, snap_compare, app, size):
        # the recipe, block2 at a tenth of the rate from epoch 3, the LR chart's plan
        async def edit(pilot):
            await pilot.press("R", "X", "j", "j", "j", "E", "ctrl+a", "ctrl+k", "3", "enter")
            await pilot.press("x", "ctrl+a", "ctrl+k", "0", ".", "1", "enter", "g")
            await _settle(pilot)
        assert snap_compare(app, run_before=edit, terminal_size=size)


class TestDialogs:
    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_settings(self, snap_compare, app, size):
        assert snap_compare(app, press=["c"], terminal_size=size)

    def test_settings_error_beside_its_field(self, snap_compare, app):
        assert snap_compare(app, press=["c", "backspace", "0", "tab", "tab", "tab", "ctrl+u"], terminal_size=SMALL)

    def test_export(self, snap_compare, app):
        assert snap_compare(app, press=["H", "e"], terminal_size=SMALL)

    def test_open(self, snap_compare, app):
        assert snap_compare(app, press=["o"], terminal_size=SMALL)

    def test_glob(self, snap_compare, app):
        assert snap_compare(app, press=["slash"], terminal_size=SMALL)

    def test_help(self, snap_compare, app):
        assert snap_compare(app, press=["question_mark"], terminal_size=SMALL)

    def test_torchrun(self, snap_compare, app):
        assert snap_compare(app, press=["T"], terminal_size=SMALL)

    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_sweep_results(self, snap_compare, app, size):
        from freezetui.tui.screens.sweep import SweepScreen

        rows = [{"name": name, "plan": f"runs/s/{i:02d}/plan.json", "trainable": t, "best_val_acc": a, "val_acc": a,
                 "seconds": sec, "images_per_s": 256 / sec, "accuracy_per_s": a / sec,
                 "estimate": {"activation_bytes": act}}
                for i, (name, t, a, sec, act) in enumerate([("head", 650, 0.41, 1.2, 30_000),
                                                            ("+block2", 19_274, 0.78, 2.0, 900_000),
                                                            ("+block1", 23_978, 0.83, 3.1, 2_400_000),
                                                            ("all", 24_458, 0.84, 3.6, 3_100_000)])]

        async def show(pilot):
            await pilot.app.push_screen(SweepScreen(rows, "runs/20261129-050000-tiny-tiny_cnn-sweep", lambda p: None))
            await pilot.wait_for_scheduled_animations()
            await pilot.pause()
            await pilot.pause()
        assert snap_compare(app, run_before=show, terminal_size=size)

    def test_quit_with_unexported_edits(self, snap_compare, app):
        assert snap_compare(app, press=["H", "q"], terminal_size=SMALL)


class TestFinishedRun:
    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_two_runs_compared(self, snap_compare, app, size):
        async def run_before(pilot):
            await pilot.press("t")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            await pilot.press("H", "t")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            pilot.app.main("#runs").focus()
            await pilot.press("up", "enter")
            await _settle(pilot)

        assert snap_compare(app, run_before=run_before, terminal_size=size)


@pytest.fixture
def running_app(app, monkeypatch):
    """The app with a run that stops half-way through epoch 2, clocks frozen (no time on screen
    changes between runs of the test), the cost profile measured."""
    import itertools

    class Clock:
        ticks = itertools.count(0, 1.0)

        def monotonic(self):
            return 100.0

    class Ticking:  # every progress event posts: the last one shown is the last one sent
        def monotonic(self):
            return next(Clock.ticks)

    monkeypatch.setattr("freezetui.tui.widgets.run_panel.time", Clock())
    monkeypatch.setattr("freezetui.tui.bridge.time", Ticking())
    monkeypatch.setattr("freezetui.core.controller.sweep_trainer", fake_sweep_trainer)
    app.trainer = paused_trainer
    app.workspace.compute_cost_profile()
    return app


async def _until_batch(pilot, text="epoch 2/3"):
    for _ in range(200):
        await pilot.pause(0.05)
        if text in str(pilot.app.main("#run-status").render()):
            break
    await _settle(pilot)


class TestMidRun:
    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_cost_line_and_lint_fix_during_a_run(self, snap_compare, running_app, size):
        async def run_before(pilot):
            await pilot.press("b", "H", "t")  # BatchNorm statistics move under a frozen body: a warning
            await _until_batch(pilot)
            await pilot.press("w")  # the lint in full, with its fix
            await _settle(pilot)
        assert snap_compare(running_app, run_before=run_before, terminal_size=size)

    @pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
    def test_runs_table_with_a_sweep_running(self, snap_compare, running_app, size):
        async def run_before(pilot):
            await pilot.press("S", "y")
            await _until_batch(pilot)
        assert snap_compare(running_app, run_before=run_before, terminal_size=size)


class TestHelp:
    def test_help_fits_120x40(self, snap_compare, app):
        assert snap_compare(app, press=["question_mark"], terminal_size=LARGE)
