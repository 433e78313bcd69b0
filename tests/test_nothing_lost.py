"""Nothing lost, round three: two runs in one folder, full disks, processes and files left
behind, and files that lie (issue 21). Each test failed before its fix."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import make_image_folder
from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.cli import main
from freezetui.core.errors import TrainingError
from freezetui.core.runs import LOCK, RunWriter, load_checkpoint


def _cli(env, *args):
    return subprocess.Popen([sys.executable, "-m", "freezetui", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc, prefix: str) -> list[str]:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"{prefix!r} never came: {''.join(seen)}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "imgs", per_class=20, size=16)


def _train_args(folder, out, epochs):
    return ["train", "--model", "tiny:tiny_cnn", "--device", "cpu", "--data", str(folder), "--epochs", str(epochs),
            "--out", str(out)]


# ----------------------------------------------------------------------------- 1. one run per folder


def test_a_second_run_or_resume_in_a_busy_folder_is_refused_naming_the_process(tmp_path, cli_env, folder):
    out = tmp_path / "run"
    first = _cli(cli_env, *_train_args(folder, out, 10_000))
    try:
        _wait_for(first, "epoch 1/")  # the run holds its folder and has written a checkpoint
        for args in (_train_args(folder, out, 2) + ["--force"], ["train", "--resume", str(out)]):
            second = _cli(cli_env, *args)
            _, err = second.communicate(timeout=120)
            assert second.returncode == 1, err
            assert err.strip().splitlines() == [
                f"freezetui: error: {out} is in use by another run (process {first.pid}); wait for it to end, "
                f"or give this run another folder"]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)  # one run's lines only
    # the lock died with its process: the folder can be resumed now
    assert main(["train", "--resume", str(out), "--epochs", str(load_checkpoint(out)["epoch"] + 1)]) == 0


def test_the_lock_holds_within_one_process_and_is_ignored_as_a_file(tmp_path, folder, capsys):
    from freezetui.core.runs import hold_run_folder

    out = tmp_path / "run"
    with hold_run_folder(out):
        assert main(_train_args(folder, out, 1)) == 1
    assert not out.exists()  # a folder the lock made is removed when nothing was written into it
    out.mkdir()
    with hold_run_folder(out):
        assert main(_train_args(folder, out, 1)) == 1
        assert f"{out} is in use by another run (process {os.getpid()})" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [LOCK]
    assert main(_train_args(folder, out, 1)) == 0  # a folder holding only the lock file is empty


# ----------------------------------------------------------------------------- 5. stale temporaries


def test_resume_removes_stale_temporaries_and_trims_metrics_to_the_checkpoint(tmp_path, folder):
    out = tmp_path / "run"
    assert main(_train_args(folder, out, 2)) == 0
    (out / "summary.json").unlink()
    stale = out / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 4096)  # what a SIGKILL during a checkpoint write leaves
    lines = (out / "metrics.jsonl").read_text().splitlines()
    ckpt = load_checkpoint(out)
    ckpt["epoch"], ckpt["history"] = 1, ckpt["history"][:1]  # the epoch-2 checkpoint was lost
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:17])  # and a torn line
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    assert not stale.exists()
    epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
