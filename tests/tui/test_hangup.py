"""A dropped terminal in every state of the app: the process is gone within a few seconds, and a
run it was training has its files written."""

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tui.test_terminal import ROOT, _keys, _screen, _wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


# (state, extra options, keys to get there (or text to wait for between them), text that shows the state)
STATES = [
    ("loading", ["--model", "vit_h_14"], [], "loading vit_h_14"),
    ("idle", [], [], "tiny:tiny_cnn · random init"),
    ("dialog", [], ["c"], "Training settings"),
    ("running", ["--epochs", "50"], ["t"], "epoch 1/50"),
    ("stopping", ["--epochs", "50"], ["t", "epoch 1/50", "t", "y"], ("stopping after this batch", "run #1 stopped")),
]


@pytest.mark.parametrize("state, options, keys, shown", STATES, ids=[s[0] for s in STATES])
def test_hang_up_in_every_state_ends_the_process(tmp_path, cli_env, state, options, keys, shown):
    session = f"freezetui-hup-{uuid.uuid4().hex[:8]}"
    pidfile = tmp_path / "pid"
    args = ["--model", "tiny:tiny_cnn", "--weights", "none", "--device", "cpu", *options]
    cmd = (f"cd {tmp_path} && echo $$ > {pidfile} && exec env -u COLUMNS -u LINES {sys.executable} -m freezetui "
           + " ".join(args))
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([ROOT, cli_env["PYTHONPATH"]])}
    env_args = [arg for k in ("PYTHONPATH", "FREEZETUI_OFFLINE", "FREEZETUI_DATA")
                for arg in ("-e", f"{k}={env[k]}")]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", *env_args, cmd], check=True)
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        if state != "loading":
            _wait_for(session, "tiny:tiny_cnn · random init")
        for k in keys:
            if len(k) > 1:
                _wait_for(session, k, timeout=120)
                continue
            _keys(session, k)
            time.sleep(0.3)
        texts = (shown,) if isinstance(shown, str) else shown  # a short state may already have passed
        deadline = time.monotonic() + 120
        while not any(t in _screen(session) for t in texts):
            assert time.monotonic() < deadline, f"none of {texts} appeared:\n{_screen(session)}"
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)  # the terminal goes away
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not _alive(pid)
    if not gone:
        os.kill(pid, 9)
    assert gone, f"the app was still running 15 s after its terminal went away ({state})"
    if state in ("running", "stopping"):
        runs = list((tmp_path / "runs").iterdir())
        assert len(runs) == 1 and (runs[0] / "summary.json").is_file()  # the run ended cleanly
