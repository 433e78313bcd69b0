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
    assert sorted(os.listdir(tmp_path / "ddp")) == ["checkpoint.pt", "config.json", "metrics.jsonl", "model.pt",
                                                    "plan.json", "summary.json"]
    assert os.listdir(work) == []
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["frozen_unchanged"] and two["epochs"] == 6
    assert two["val_acc"] >= 0.9 and abs(two["val_acc"] - one["val_acc"]) <= 0.1
