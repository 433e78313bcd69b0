"""Nothing lost: checkpoints every epoch, exact resume after a signal, clear errors on write failures."""

import errno
import json
import signal
import subprocess
import sys

import pytest
import torch

from conftest import make_image_folder
from freezetui import FreezePlan, TrainConfig, build_model, train
from freezetui.cli import main
from freezetui.core.data import load_data
from freezetui.core.errors import TrainingError
from freezetui.core.runs import RunWriter, load_checkpoint

EPOCHS = 30


def _cli(env, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "freezetui", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_interrupted_and_resumed_run_matches_one_run_bit_for_bit(tmp_path, cli_env, sig):
    data = make_image_folder(tmp_path / "imgs", per_class=40, size=16)
    plan = tmp_path / "plan.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--num-classes", "3", "--freeze", "stem",
                 "-o", str(plan)]) == 0
    common = ["train", "--plan", str(plan), "--model", "tiny:tiny_cnn", "--device", "cpu", "--data", str(data), "--epochs", str(EPOCHS), "--lr", "0.01"]

    whole = _cli(cli_env, *common, "--out", str(tmp_path / "whole"))
    broken = _cli(cli_env, *common, "--out", str(tmp_path / "broken"))
    for line in broken.stderr:  # signal as soon as the first epoch is reported
        if line.startswith("epoch 1/"):
            broken.send_signal(sig)
            break
    _, err = broken.communicate(timeout=120)
    assert broken.returncode == 128 + sig, err
    assert f"freezetui train --resume {tmp_path / 'broken'}" in err
    done = load_checkpoint(tmp_path / "broken")["epoch"]
    assert 1 <= done < EPOCHS

    resumed = _cli(cli_env, "train", "--resume", str(tmp_path / "broken"))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert whole.wait(timeout=120) == 0

    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["frozen_unchanged"] is True and summary["epochs"] == EPOCHS


def test_resume_of_a_finished_or_missing_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "has no checkpoint.pt to resume from" in capsys.readouterr().err


def test_full_disk_ends_the_run_and_keeps_earlier_files(tmp_path, monkeypatch):
    data = load_data("shapes", shapes_train=128, shapes_val=32)
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = FreezePlan.from_model(model)
    exported = plan.save(tmp_path / "exported-plan.json").read_text()
    out = tmp_path / "run"
    writer = RunWriter(out, model, plan, TrainConfig(epochs=3), extra={"data": "shapes"})
    real = writer.on_checkpoint
    calls = []

    def fill_disk(state):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            monkeypatch.setattr("freezetui.core.runs.atomic_write",
                                lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        real(state)

    writer.on_checkpoint = fill_disk
    with pytest.raises(TrainingError, match=r"cannot write .*checkpoint.pt \(No space left on device: it needs about .* free, .* is\)"):
        train(model, plan, data, TrainConfig(epochs=3), callbacks=[writer])
    assert load_checkpoint(out)["epoch"] == 1  # the previous checkpoint is intact
    assert (tmp_path / "exported-plan.json").read_text() == exported
