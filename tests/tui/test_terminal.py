"""The real app in a real terminal (tmux): start, freeze, export, train, quit."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_for(session: str, text: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; screen was:\n{_screen(session)}")


def _keys(session: str, *keys: str) -> None:
    for k in keys:
        subprocess.run(["tmux", "send-keys", "-t", session, k], check=True)
        time.sleep(0.15)


def test_start_freeze_export_train_quit(tmp_path, cli_env):
    session = f"freezetui-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    # COLUMNS/LINES from the test runner would override the terminal's real size
    cmd = (f"cd {tmp_path} && env -u COLUMNS -u LINES {sys.executable} -m freezetui --model tiny:tiny_cnn --weights none "
           f"--epochs 1 --device cpu; echo $? > {done}")
    cli_env = {**cli_env, "PYTHONPATH": os.pathsep.join([ROOT, cli_env["PYTHONPATH"]])}  # this checkout's code
    env_args = [arg for k in ("PYTHONPATH", "FREEZETUI_OFFLINE") for arg in ("-e", f"{k}={cli_env[k]}")]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", *env_args, cmd], check=True)
    try:
        _wait_for(session, "tiny:tiny_cnn · random init · shapes")
        _keys(session, "j", "f")  # freeze the stem
        _wait_for(session, "backward stops at stem, before a trainable parameter")
        _keys(session, "e")
        _wait_for(session, "Export the freeze plan")
        _keys(session, "Enter")
        _wait_for(session, "Plan saved to freeze-plan.json")
        plan = json.loads((tmp_path / "freeze-plan.json").read_text())
        assert plan["frozen"][:2] == ["stem.0.weight", "stem.0.bias"]
        _keys(session, "t")
        _wait_for(session, "run #1 done", timeout=180)
        _wait_for(session, "saved to")  # where the run is, on screen
        _keys(session, "q")
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
        runs = list((tmp_path / "runs").iterdir())
        assert len(runs) == 1 and (runs[0] / "model.pt").exists() and (runs[0] / "summary.json").exists()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_q_during_a_run_asks_then_stops_and_exits_at_80x24(tmp_path, cli_env):
    session = f"freezetui-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    cmd = (f"cd {tmp_path} && env -u COLUMNS -u LINES {sys.executable} -m freezetui --model tiny:tiny_cnn --weights none "
           f"--epochs 500 --device cpu; echo $? > {done}; sleep 10")  # the pane stays to be read
    cli_env = {**cli_env, "PYTHONPATH": os.pathsep.join([ROOT, cli_env["PYTHONPATH"]])}
    env_args = [arg for k in ("PYTHONPATH", "FREEZETUI_OFFLINE") for arg in ("-e", f"{k}={cli_env[k]}")]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", *env_args, cmd], check=True)
    try:
        _wait_for(session, "tiny:tiny_cnn · random init · shapes")
        _keys(session, "t")
        _wait_for(session, "epoch 1/500", timeout=120)
        _keys(session, "q")
        _wait_for(session, "stop it and quit?")
        _keys(session, "y")
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
        assert "run #1 stopped; its files are in" in _screen(session)  # the exit message, on the terminal
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
