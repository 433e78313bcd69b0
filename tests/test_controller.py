"""The TUI's runs without the TUI (core.controller): start, stop, quit while running, resume
refusals, sweeps; and the run folders it reads back (core.runs)."""

import json
import sys
import threading
from pathlib import Path

import pytest
import torch

from freezetui.core.controller import RunController, default_trainer
from freezetui.core.data import load_data
from freezetui.core.errors import PlanError
from freezetui.core.models import build_model
from freezetui.core.runs import read_sweep
from freezetui.core.train import TrainConfig
from freezetui.core.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))
from tui.fakes import small_workspace  # noqa: E402


@pytest.fixture(scope="module")
def small_data():
    return load_data("shapes", shapes_train=128, shapes_val=32)


def test_controller_runs_quits_and_refuses_resume_without_textual(tmp_path, small_data):
    torch.manual_seed(0)
    ws = Workspace(build_model("tiny:tiny_cnn", weights="none", num_classes=10), small_data, data_name="shapes",
                   device="cpu")
    ws.set_frozen("stem", True)
    ctl = RunController(ws, tmp_path / "runs", default_trainer)
    assert ctl.quit() is True  # idle: exit at once
    record = ctl.start(TrainConfig(epochs=1, batch_size=32, device="cpu"))
    assert ws.locked and ctl.running
    with pytest.raises(PlanError, match="read-only"):
        ws.set_frozen("fc", True)
    from freezetui.tui.format import explain

    assert explain(ctl.resume_refusal(record)) == "A run is in progress; stop it first (t)."
    result = ctl.work([])
    text = ctl.finished(result)
    assert not ws.locked and record.status == "done" and "saved to" in text
    assert (record.folder / "summary.json").is_file()
    assert json.loads((record.folder / "plan.json").read_text())["frozen"][:1] == ["stem.0.weight"]
    assert "nothing to resume" in str(ctl.resume_refusal(record))

    # quit while a run is going: the run is asked to stop, the app exits when it has ended
    ctl.start(TrainConfig(epochs=50, batch_size=32, device="cpu"))
    done = threading.Event()
    box = {}
    worker = threading.Thread(target=lambda: (box.setdefault("r", ctl.work([])), done.set()))
    worker.start()
    assert ctl.quit() is False and ctl.quit_requested and ctl.stop_event.is_set()
    worker.join(120)
    assert done.is_set() and box["r"].stopped
    ctl.finished(box["r"])
    assert ws.runs[-1].status == "stopped"


def test_sweep_rows_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("runs") / "s"
    (folder / "00-head").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps([{"name": "head", "run": str(folder / "00-head"),
                                                    "plan": str(folder / "00-head" / "plan.json")}]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = read_sweep(tmp_path / "runs" / "s")
    assert rows[0]["plan"] == str(tmp_path / "runs" / "s" / "00-head" / "plan.json")


def test_quitting_during_a_sweep_says_how_to_go_on(tmp_path):
    controller = RunController(small_workspace(), tmp_path / "runs")
    folder = controller.start_sweep(TrainConfig(epochs=1, device="cpu"))
    assert controller.quit() is False  # the sweep stops first
    from freezetui.tui.format import fix_keys

    message = controller.exit_message(fix_keys)  # the app words the fix as its keys
    assert "sweep stopped" in message and str(folder) in message and "V, then c" in message
    controller.finished(None, RuntimeError("stopped before its first rung"))
    assert not controller.sweeping and not controller.workspace.locked
