"""S runs a sweep from the TUI (issue 12): every rung is a real run in the runs table, the
results screen draws accuracy against trainable parameters and time, and picking a rung
loads its plan. V finds an earlier session's sweep."""

import json

from freezetui.core.runs import latest_sweep
from freezetui.tui.app import default_trainer
from freezetui.tui.screens.sweep import SweepPlot, SweepScreen
from freezetui.tui.widgets.runs_table import RunsTable
from tui.fakes import make_app

SIZE = (120, 40)


async def test_sweep_key_trains_the_ladder_into_the_runs_table_and_loads_a_rung(tmp_path):
    app = make_app(tmp_path, trainer=default_trainer, epochs=1, batch_size=64)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        await pilot.press("space")  # the plan being edited: everything frozen; a sweep leaves it alone
        edited = dict(ws.plan.params)
        await pilot.press("S")
        await pilot.pause()
        assert "head, +block2, +block1, all" in app.screen.question
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.pause()

        rungs = ws.runs
        assert [r.label for r in rungs] == ["#1 head", "#2 +block2", "#3 +block1", "#4 all"]
        assert all(r.status == "done" and r.epochs and r.frozen_unchanged for r in rungs)
        assert [r.trainable for r in rungs] == sorted(r.trainable for r in rungs) and rungs[-1].trainable == rungs[-1].total
        table = app.query_one(RunsTable)
        assert table.row_count == 4 and table.get_cell("2", "schedule") == "sweep: +block2"
        assert dict(ws.plan.params) == edited

        sweep = json.loads((app.controller.sweep_dir / "sweep.json").read_text())
        assert [r["name"] for r in sweep] == ["head", "+block2", "+block1", "all"]
        # the results open by themselves; both plots have every rung
        assert isinstance(app.screen, SweepScreen)
        plots = {p.key: p for p in app.screen.query(SweepPlot)}
        assert set(plots) == {"trainable", "seconds"}
        assert [r["name"] for r in plots["trainable"].rows] == [r["name"] for r in sweep]
        await pilot.press("down", "enter")  # +block2
        await pilot.pause()
        assert not isinstance(app.screen, SweepScreen)
        assert ws.plan.trainable == json.loads((app.controller.sweep_dir / "01-block2" / "plan.json").read_text())[
            "trainable"]
        assert ws.state("block2") == "trainable" and ws.state("block1") == "frozen"


def test_latest_sweep_is_found_for_its_model_only(tmp_path):
    runs = tmp_path / "runs"
    for name, model in (("20260101-000000-a-sweep", "tiny:tiny_cnn"), ("20260102-000000-b-sweep", "resnet18")):
        folder = runs / name
        (folder / "00-head").mkdir(parents=True)
        (folder / "00-head" / "plan.json").write_text(json.dumps({"model": {"name": model}}))
        (folder / "sweep.json").write_text(json.dumps([{"name": "head", "run": str(folder / "00-head"),
                                                        "plan": str(folder / "00-head" / "plan.json")}]))
    found = latest_sweep(runs, "tiny:tiny_cnn")
    assert found is not None and found[0].name == "20260101-000000-a-sweep"
    assert latest_sweep(runs, "resnet18")[0].name == "20260102-000000-b-sweep"
    assert latest_sweep(runs, "vit_b_16") is None


async def test_a_stopped_sweep_says_so_and_continues_from_the_results(tmp_path, monkeypatch):
    from freezetui.tui.bridge import UIBridge

    app = make_app(tmp_path, trainer=default_trainer, epochs=2, batch_size=64)
    original = UIBridge.on_epoch

    def stop_in_the_second_rung(self, event):  # as if t, y were pressed during +block2's second epoch
        original(self, event)
        if self.record.label.endswith("+block2") and event.epoch == 1 and not app.controller.stop_event.is_set():
            app.controller.request_stop()

    monkeypatch.setattr(UIBridge, "on_epoch", stop_in_the_second_rung)
    async with app.run_test(size=SIZE) as pilot:
        ws = app.workspace
        await pilot.press("S", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [(r.label, r.status) for r in ws.runs] == [("#1 head", "done"), ("#2 +block2", "stopped")]
        folder = app.controller.sweep_dir
        rows = json.loads((folder / "sweep.json").read_text())
        assert [(r["name"], r["stopped"]) for r in rows] == [("head", False), ("+block2", True)]
        assert "sweep stopped" in str(app.query_one("#run-status").render())
        assert not isinstance(app.screen, SweepScreen)  # a stopped sweep does not open its results

        monkeypatch.setattr(UIBridge, "on_epoch", original)
        await pilot.press("V")
        await pilot.pause()
        assert isinstance(app.screen, SweepScreen) and app.screen.go_on is not None
        await pilot.press("c")
        await app.workers.wait_for_complete()
        await pilot.pause()
        # the head is kept, +block2 goes on in its own row, the rest train
        assert [(r.label, r.status) for r in ws.runs] == [("#1 head", "done"), ("#2 +block2", "done"),
                                                           ("#3 +block1", "done"), ("#4 all", "done")]
        rows = json.loads((folder / "sweep.json").read_text())
        assert [(r["name"], r["stopped"]) for r in rows] == [("head", False), ("+block2", False),
                                                             ("+block1", False), ("all", False)]
        metrics = (folder / "01-block2" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]  # resumed after epoch 1, not restarted
