"""What protects a user's work: questions whose default is the safe answer, runs that cannot do
anything refused before a folder exists, unexported edits, quitting during a run, and the runs
of earlier sessions."""

import json
import threading

from freezetui.core.train import TrainConfig
from freezetui.core.controller import RunController
from freezetui.core.runs import load_past_runs, resume_command
from freezetui.tui.screens.confirm import ConfirmScreen
from tui.fakes import blocking_trainer, make_app, small_workspace

SIZE = (100, 30)


def question(app) -> str:
    return str(app.screen.query("Label").first().render())


async def test_t_asks_before_training_with_an_error_lint_and_enter_says_no(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.workspace.set_frozen("fc", True)  # the new head frozen: an ERROR lint
        app.workspace.set_frozen("stem", False)
        await pilot.press("t")
        assert isinstance(app.screen, ConfirmScreen) and "error" in question(app)
        await pilot.press("enter")  # the default is no
        assert app.workspace.runs == [] and not app.training
        await pilot.press("t", "y")
        await app.workers.wait_for_complete()
        assert len(app.workspace.runs) == 1


async def test_nothing_trainable_is_refused_without_a_run_folder(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")  # everything frozen
        await pilot.press("t")
        if isinstance(app.screen, ConfirmScreen):
            await pilot.press("y")
        await pilot.pause()
        assert app.workspace.runs == []
        assert not (tmp_path / "runs").exists()


async def test_overwrite_question_defaults_to_no(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "freeze-plan.json").write_text("{}")
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e", "enter")
        assert "Overwrite" in question(app)
        await pilot.press("enter")  # a second Enter must not overwrite
        assert (tmp_path / "freeze-plan.json").read_text() == "{}"


async def test_q_asks_when_the_plan_was_edited_and_not_exported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("H", "q")
        assert "not exported" in question(app)
        await pilot.press("enter")
        assert app.is_running and app.return_code is None
        await pilot.press("e", "enter")  # exported: q quits at once
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_q_during_a_run_stops_it_and_says_where_it_is(tmp_path):
    app = make_app(tmp_path, trainer=blocking_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await pilot.pause(0.2)
        await pilot.press("q", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
    record = app.workspace.runs[0]
    assert record.status == "stopped"
    message = app.controller.exit_message()
    assert str(record.folder) in message and "no checkpoint" in message


async def test_q_during_a_run_asks_says_stopping_and_keeps_the_export_question(tmp_path):
    """q while training asks first (Enter: no), names unexported edits in the same question, and
    once answered says at once what the stop waits for, until the run has ended."""
    release = threading.Event()

    def slow_to_stop(workspace, record, callbacks, stop, runs_dir):
        result = blocking_trainer(workspace, record, callbacks, stop, runs_dir)
        release.wait(20)  # the run's files being written
        return result

    app = make_app(tmp_path, trainer=slow_to_stop)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("H", "t")
        await pilot.pause(0.3)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        assert "stop it and quit" in question(app) and "not exported" in question(app)
        await pilot.press("enter")  # the default is no: the run goes on
        await pilot.pause(0.1)
        assert app.training and app.is_running and not app.stop_event.is_set()
        await pilot.press("q", "y")
        await pilot.pause(0.1)
        status = str(app.main("#run-status").render())
        assert status.startswith("stopping") and app.stop_event.is_set() and app.is_running
        release.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert app.workspace.runs[0].status == "stopped" and app.return_code == 0


def test_exit_message_gives_the_exact_resume_command(tmp_path):
    ws = small_workspace()
    controller = RunController(ws, tmp_path)
    record = ws.new_run(TrainConfig(epochs=2))
    record.folder = tmp_path / "run-1"
    record.folder.mkdir()
    (record.folder / "checkpoint.pt").write_bytes(b"x")
    record.status = "stopped"
    controller.stopped_for_quit = record
    assert f"resume it with: freezetui train --resume {record.folder}" in controller.exit_message()
    assert resume_command("runs/a b") == "freezetui train --resume 'runs/a b'"


def _write_run(folder, model="tiny:tiny_cnn", epochs=2, summary=True):
    folder.mkdir(parents=True)
    ws = small_workspace()
    ws.head_only()
    ws.plan.save(folder / "plan.json")
    (folder / "config.json").write_text(json.dumps({"epochs": epochs, "batch_size": 32, "lr": None,
                                                    "data": "shapes", "model": model, "device": "cpu"}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "epochs": epochs, "train_loss": 1.0, "val_loss": 1.0 / e, "val_acc": 0.2 * e,
                    "images_per_s": 100.0, "seconds": 1.0}) + "\n" for e in range(1, epochs + 1)))
    if summary:
        (folder / "summary.json").write_text(json.dumps({"stopped": False, "error": None, "seconds": 12.0,
                                                         "trainable_params": 650, "total_params": 24458}))
    else:
        (folder / "checkpoint.pt").write_bytes(b"x")


def test_past_runs_load_from_their_folders(tmp_path):
    runs = tmp_path / "runs"
    _write_run(runs / "20260101-000000-tiny-tiny_cnn-1")
    _write_run(runs / "20260101-000100-tiny-tiny_cnn-2", summary=False)
    _write_run(runs / "20260101-000200-resnet18-7", model="resnet18")
    (runs / "20260101-000200-resnet18-7" / "plan.json").write_text(json.dumps({"model": {"name": "resnet18"}}))
    found = load_past_runs(runs, "tiny:tiny_cnn", "shapes")
    assert [(r.id, r.status) for r in found] == [(1, "done"), (2, "stopped")]
    assert found[0].best_acc == 0.4 and found[0].trainable == 650 and found[0].seconds == 12.0


async def test_runs_table_shows_earlier_runs_and_numbering_continues(tmp_path):
    _write_run(tmp_path / "runs" / "20260101-000000-tiny-tiny_cnn-4")
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        table = app.main("#runs")
        assert table.row_count == 1 and str(table.get_row("4")[0]) == "#4"
        await pilot.press("t")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [r.label for r in app.workspace.runs] == ["#4", "#5"]
        table.focus()
        await pilot.press("up", "enter")  # an earlier session's run can be compared
        assert app.compare_id == 4


async def test_e_asks_before_exporting_a_plan_with_an_error_and_enter_says_no(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.workspace.set_frozen("fc", True)  # the new head frozen: an ERROR lint
        await pilot.press("e")
        assert isinstance(app.screen, ConfirmScreen) and "Export it anyway?" in question(app)
        assert "error: error" not in question(app)
        await pilot.press("enter")  # the default is no
        assert len(app.screen_stack) == 1 and not (tmp_path / "freeze-plan.json").exists()
        await pilot.press("e", "y")
        assert app.screen.id == "export-dialog"
        await pilot.press("enter")
        await pilot.pause()
        assert (tmp_path / "freeze-plan.json").exists()
