"""torchrun with gloo on the CPU: two processes train one plan, only rank 0 writes."""

import json
import os
import subprocess
import sys

from conftest import make_image_folder
from freezetui.cli import main


def test_two_process_run_matches_one_process(tmp_path, cli_env):
    data = make_image_folder(tmp_path / "imgs", per_class=60, size=16)
    plan = tmp_path / "plan.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--num-classes", "3", "--freeze", "stem",
                 "-o", str(plan)]) == 0
    args = ["train", "--plan", str(plan), "--model", "tiny:tiny_cnn", "--data", str(data), "--epochs", "6", "--batch-size", "16",
            "--lr", "0.01", "--device", "cpu"]
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "freezetui", *args, "--out", str(tmp_path / "ddp")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("done: val acc") == 1  # rank 1 prints nothing
    assert sorted(os.listdir(tmp_path / "ddp")) == [".lock", "checkpoint.pt", "config.json", "metrics.jsonl", "model.pt",
                                                    "plan.json", "summary.json"]
    assert os.listdir(work) == []
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["frozen_unchanged"] and two["epochs"] == 6
    assert two["val_acc"] >= 0.9 and abs(two["val_acc"] - one["val_acc"]) <= 0.1


def torchrun(args, work, env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "freezetui", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_a_staged_plan_under_two_processes_unfreezes_at_its_epoch(tmp_path, cli_env):
    """Epoch 1 trains block2 and the head; epoch 2 rebuilds DDP (and the feature cache) with block1 too."""
    import torch

    from freezetui.core.models import build_model

    data = make_image_folder(tmp_path / "imgs", per_class=40, size=16)
    plan = tmp_path / "plan.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--weights", "none", "--num-classes", "3",
                 "--freeze", "stem", "--freeze", "block1", "--stage", "2:block1", "-o", str(plan)]) == 0
    args = ["train", "--plan", str(plan), "--model", "tiny:tiny_cnn", "--data", str(data), "--epochs", "3",
            "--batch-size", "16", "--lr", "0.01", "--device", "cpu", "--no-augment"]
    work = tmp_path / "cwd"
    work.mkdir()
    ddp = torchrun([*args, "--out", str(tmp_path / "ddp")], work, {**cli_env, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("done: val acc") == 1
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["frozen_unchanged"] and summary["epochs"] == 3
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == [1, 2, 2]
    block1 = 16 * 32 * 9 + 32 + 2 * 32
    assert metrics[1]["trainable"] - metrics[0]["trainable"] == block1 == metrics[2]["trainable"] - metrics[0]["trainable"]
    torch.manual_seed(0)
    initial = build_model("tiny:tiny_cnn", weights="none", num_classes=3).state_dict()
    trained = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    for name in ("stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias", "stem.1.running_mean"):
        assert torch.equal(trained[name], initial[name]), name  # frozen all along
    for name in ("block1.0.weight", "block1.0.bias", "block1.1.weight", "block2.0.weight", "fc.weight"):
        assert not torch.equal(trained[name], initial[name]), name  # trained, block1 from epoch 2
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert [json.loads(line)["stage"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 2]
    assert summary["val_acc"] >= 0.8 and abs(summary["val_acc"] - one["val_acc"]) <= 0.15


def test_a_sweep_under_two_processes_keeps_one_process_group(tmp_path, cli_env):
    data = make_image_folder(tmp_path / "imgs", per_class=20, size=16)
    work = tmp_path / "cwd"
    work.mkdir()
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "tiny:tiny_cnn", "--weights", "none", "--data", str(data), "--rungs", "2",
            "--epochs", "2", "--batch-size", "16", "--lr", "0.01", "--device", "cpu", "--out", str(out)]
    run = torchrun(argv, work, {**cli_env, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    # rank 1 prints nothing: one table, one "wrote", one note per rung
    assert run.stdout.count("best accuracy:") == 1 and run.stdout.count("sweep.json") == 1, run.stdout
    assert run.stderr.count("rung 1/2 head:") == 1 and run.stderr.count("rung 2/2 all:") == 1, run.stderr[-3000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in rows] == ["head", "all"]
    assert sorted(os.listdir(out)) == ["00-head", "01-all", "sweep-settings.json", "sweep.json"]
    assert os.listdir(work) == []
    for r in rows:
        assert r["val_acc"] is not None and r["frozen_unchanged"] and r["epochs"] == 2 and not r["stopped"]
        assert sorted(os.listdir(r["run"])) == [".lock", "checkpoint.pt", "config.json", "metrics.jsonl", "model.pt",
                                                "plan.json", "summary.json"]
        summary = json.loads((out / r["run"] / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["epochs"] == 2
        assert len((out / r["run"] / "metrics.jsonl").read_text().splitlines()) == 2
    # again: rank 0 finds the first rung finished and the second one's checkpoint, and the other process follows
    (out / "01-all" / "summary.json").unlink()
    again = torchrun(argv, work, {**cli_env, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("rung 1/2 head: finished before, kept") == 1
    assert again.stderr.count("rung 2/2 all: resuming after epoch 2") == 1, again.stderr[-3000:]
    assert [r["name"] for r in json.loads((out / "sweep.json").read_text())] == ["head", "all"]
    assert json.loads((out / "01-all" / "summary.json").read_text())["epochs"] == 2
