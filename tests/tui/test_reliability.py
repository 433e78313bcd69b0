"""The TUI under faults: a dropped SSH session, a resumed run, a plan file changed on disk, and
a long random key sequence."""

import json
import os
import random
import signal

from freezetui.tui.app import default_trainer
from freezetui.tui.format import human
from freezetui.tui.screens.torchrun import TorchrunScreen
from freezetui.tui.widgets.totals import Totals
from tui.fakes import blocking_trainer, make_app

SIZE = (110, 34)


async def test_hangup_stops_the_run_and_exits(tmp_path):
    app = make_app(tmp_path, trainer=blocking_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await pilot.pause(0.2)
        app.hang_up()  # what SIGHUP calls
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert app.workspace.runs[0].status == "stopped"
    assert app.return_code == 0  # the run ended first, then the app quit normally


async def test_hangup_when_idle_exits_with_129(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.hang_up()
        await pilot.pause()
    assert app.return_code == 128 + signal.SIGHUP


def _stops_after_the_first_epoch(workspace, record, callbacks, stop, runs_dir):
    """The real trainer, asked to stop as epoch 1 ends (after its checkpoint): a quiet machine
    trains this tiny run faster than the UI could poll for it."""
    from freezetui.core.train import Callback

    class StopAfterFirst(Callback):
        def on_checkpoint(self, state):
            stop.set()

    return default_trainer(workspace, record, [*callbacks, StopAfterFirst()], stop, runs_dir)


async def test_stopped_run_resumes_from_the_runs_table(tmp_path):
    app = make_app(tmp_path, trainer=_stops_after_the_first_epoch, epochs=4, lr=5e-3, batch_size=16)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        record = app.workspace.runs[0]
        while len(record.epochs) < 1:  # stop once the first checkpoint exists
            await pilot.pause(0.05)
        app.stop_event.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert record.status == "stopped" and sum(not e["partial"] for e in record.epochs) < 4
        app.main("#runs").focus()
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert record.status == "done" and [e["epoch"] for e in record.epochs] == [1, 2, 3, 4]
        metrics = [json.loads(l)["epoch"] for l in (record.folder / "metrics.jsonl").read_text().splitlines()]
        assert metrics == [1, 2, 3, 4]
        assert json.loads((record.folder / "summary.json").read_text())["frozen_unchanged"] is True
        await pilot.press("r")  # a finished run has nothing to resume
        assert app.workspace.runs[0].status == "done"


async def test_plan_file_changed_or_deleted_on_disk_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path)
    said = []
    async with app.run_test(size=SIZE) as pilot:
        monkeypatch.setattr(app, "notify", lambda message, **kw: said.append(message))
        await pilot.press("e", "enter")
        plan = tmp_path / "freeze-plan.json"
        assert plan.exists() and said == ["Plan saved to freeze-plan.json"]
        app.check_plan_file()
        assert len(said) == 1  # unchanged: nothing to say
        plan.write_text(plan.read_text().replace('"freeze"', '"train"'))
        os.utime(plan, (1, 1))
        app.check_plan_file()
        assert "freeze-plan.json changed on disk" in said[-1]
        plan.unlink()
        app.check_plan_file()
        assert "freeze-plan.json was deleted" in said[-1]
        app.check_plan_file()
        assert len(said) == 3  # said once
        assert app.workspace.batchnorm == "freeze"  # the app's plan is untouched


async def test_torchrun_command_matches_plan_and_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path, lr=0.01, augment=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("T")
        assert isinstance(app.screen, TorchrunScreen)
        command = app.screen.command
        assert command.startswith("torchrun --standalone --nproc-per-node ")
        for part in ("-m freezetui train", "--plan freeze-plan.json", "--epochs 3", "--lr 0.01", "--no-augment",
                     "--device cpu", "--model tiny:tiny_cnn", f"--out {tmp_path / 'runs'}/"):
            assert part in command
        assert all(line.endswith(" \\") for line in command.splitlines()[:-1])  # a shell reads it whole
        assert "--out runs/torchrun" not in command  # a fresh folder each time

        def notes():
            return " ".join(str(w.render()) for w in app.screen.query(".dialog-help"))
        assert "Export the current plan" in notes() and "OSC 52" in notes()
        await pilot.press("q")  # q closes it too
        assert not isinstance(app.screen, TorchrunScreen)
        await pilot.press("e", "enter", "T")
        assert "holds the current plan" in notes()


KEYS = ["space", "f", "u", "F", "H", "A", "b", "j", "k", "h", "l", "t", "e", "o", "c", "slash", "escape",
        "enter", "y", "n", "question_mark", "tab", "up", "down", "T", "r", "x", "1"]


async def test_monkey_keeps_totals_consistent_with_the_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(1234)
    app = make_app(tmp_path, epochs=1)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        for i in range(400):
            await pilot.press(rng.choice(KEYS))
            if i % 50 == 49:
                await app.workers.wait_for_complete()
                await pilot.pause()
                while app.screen is not app.screen_stack[0]:
                    await pilot.press("escape")
                app.main("#tree").focus()
                frozen = sum(int(n) for n, f in zip(ws.numel, ws.frozen) if f)
                totals = ws.totals()
                assert totals["frozen"] == frozen and totals["trainable"] == totals["total"] - frozen
                assert f"frozen {human(frozen)}" in str(app.main(Totals).render())
                # every expanded node's glyph state agrees with its parameters
                for node in [app.main("#tree").root, *app.main("#tree").root.children]:
                    name = node.data
                    flags = ws.frozen[ws.nodes[name].start:ws.nodes[name].end]
                    expected = "frozen" if flags.all() else "trainable" if not flags.any() else "mixed"
                    assert ws.state(name) == expected or len(flags) == 0
        assert app.is_running
