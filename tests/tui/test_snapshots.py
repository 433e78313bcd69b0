"""Snapshots of the main screen, the export dialog and a finished run (deterministic fake trainer)."""

from freezetui.core.train import TrainConfig
from freezetui.tui.app import AppOptions, create_app
from tui.fakes import fake_trainer, small_workspace

SIZE = (100, 32)


def _app():
    options = AppOptions(model="tiny:tiny_cnn", weights="none", runs_dir="runs",
                         config=TrainConfig(epochs=3, device="cpu"))
    return create_app(options, workspace=small_workspace(), trainer=fake_trainer)


class TestMainScreen:
    def test_opened(self, snap_compare):
        assert snap_compare(_app(), terminal_size=SIZE)

    def test_seed_bug_lint_after_freezing_everything(self, snap_compare):
        assert snap_compare(_app(), press=["space", "j", "j"], terminal_size=SIZE)


class TestExportDialog:
    def test_export_dialog(self, snap_compare):
        assert snap_compare(_app(), press=["H", "e"], terminal_size=SIZE)


class TestFinishedRun:
    def test_two_runs_compared(self, snap_compare):
        async def run_before(pilot):
            app = pilot.app
            await pilot.press("t")
            await app.workers.wait_for_complete()
            await pilot.pause()
            await pilot.press("H", "t")
            await app.workers.wait_for_complete()
            await pilot.pause()
            app.main("#runs").focus()
            await pilot.press("up", "enter")
            app.clear_notifications()
            app.redraw_charts(force=True)
            await pilot.pause()

        assert snap_compare(_app(), run_before=run_before, terminal_size=SIZE)


class TestSmallTerminal:
    def test_80x24_after_a_run(self, snap_compare):
        async def run_before(pilot):
            await pilot.press("j", "f", "t")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            pilot.app.clear_notifications()
            pilot.app.redraw_charts(force=True)
            await pilot.pause()

        assert snap_compare(_app(), run_before=run_before, terminal_size=(80, 24))
