import json
import subprocess
import sys

import pytest
import torch

from conftest import make_image_folder
from freezetui.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_lists_torchvision_names(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "resnet18" in out.split() and "alexnet" in out.split()


def test_plan_make_and_show_the_seed_scenario(tmp_path, capsys):
    plan = tmp_path / "seed.json"
    code, out, err = run(capsys, "plan", "make", "--model", "alexnet", "--weights", "none", "--num-classes", "10",
                         "--small-input", "--freeze", "features.*", "-o", str(plan))
    assert code == 0, err
    d = json.loads(plan.read_text())
    assert d["model"]["new_modules"] == ["features.0", "classifier.6"]
    assert len(d["frozen"]) == 10 and d["rules"] == [{"action": "freeze", "glob": "features.*"}]
    assert "features.0 is new" in out
    code, out, _ = run(capsys, "plan", "show", str(plan))
    assert code == 0
    lines = out.splitlines()
    features = next(l for l in lines if l.strip().startswith("features"))
    assert "frozen" in features and f"{d['counts']['frozen']:,}" in features
    assert "ERROR" in out and "features.0 is new" in out
    assert '"The plan in your own training loop"' in out  # where a script of one's own learns the calls


def test_train_headless_on_an_image_folder(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=30, size=16)
    plan = tmp_path / "p.json"
    assert run(capsys, "plan", "make", "--model", "tiny:tiny_cnn", "--num-classes", "5", "--freeze", "stem",
               "-o", str(plan))[0] == 0
    # a 5-way head for a folder of 3 classes: a clear error, nothing written
    code, _, err = run(capsys, "train", "--plan", str(plan), "--model", "tiny:tiny_cnn", "--data", str(data), "--out", str(tmp_path / "r0"))
    assert code == 1 and "head has 5 outputs but imgs has 3 classes" in err
    assert not (tmp_path / "r0").exists()

    plan3 = tmp_path / "p3.json"
    # no --num-classes: the head is sized from the data when training
    assert run(capsys, "plan", "make", "--model", "tiny:tiny_cnn", "--freeze", "stem", "-o", str(plan3))[0] == 0
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--plan", str(plan3), "--model", "tiny:tiny_cnn", "--data", str(data), "--epochs", "3",
                         "--lr", "0.01", "--out", str(out_dir))
    assert code == 0, err
    metrics = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_acc", "images_per_s", "seconds"} <= set(metrics[0])
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["frozen_unchanged"] is True and summary["epochs"] == 3
    assert summary["best_val_acc"] >= summary["val_acc"] > 0.6  # three colours: far above chance (33 %)
    state = torch.load(out_dir / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (3, 64)
    assert "epoch 3/3" in err and "frozen parameters unchanged" in out
    saved_plan = json.loads((out_dir / "plan.json").read_text())
    assert saved_plan["model"]["num_classes"] == 3 and saved_plan["model"]["new_modules"] == ["fc"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--plan", "MISSING.json", "--data", "shapes", "--out", "o"], "does not exist"),
    (["plan", "make", "--model", "resnt18", "-o", "x.json"], "did you mean resnet18"),
    (["plan", "make", "--model", "tiny:tiny_cnn", "--freeze", "nothing*", "-o", "x.json"], "matches no parameter"),
    (["train", "--plan", "p.json", "--data", "shapes", "--device", "cuda", "--out", "o"], "CUDA"),
])
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    if torch.cuda.is_available() and "cuda" in argv:
        pytest.skip("CUDA present")
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert message in err and "Traceback" not in err
    assert err.startswith("freezetui: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv", [["train", "--plan", "p", "--out", "o", "--epochs", "0"],
                                  ["train", "--plan", "p", "--out", "o", "--lr", "-1"]])
def test_non_positive_numbers_are_refused(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_plan_for_another_model_is_refused(tmp_path, capsys):
    plan = tmp_path / "p.json"
    run(capsys, "plan", "make", "--model", "tiny:tiny_cnn", "-o", str(plan))
    d = json.loads(plan.read_text())
    d["model"]["name"] = "resnet18"
    plan.write_text(json.dumps(d))
    code, _, err = run(capsys, "plan", "show", str(plan))
    assert code == 1 and "does not fit this model" in err and "missing from the model: stem.0.weight" in err


def test_python_dash_m_entry_point(tmp_path, cli_env):
    plan = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "freezetui", "plan", "make", "--model", "tiny:tiny_cnn",
                           "--freeze", "stem", "-o", str(plan)], env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(plan.read_text())["frozen"] == ["stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"]
    proc = subprocess.run([sys.executable, "-m", "freezetui", "plan", "show", str(tmp_path / "nope.json")],
                          env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == f"freezetui: error: plan file '{tmp_path / 'nope.json'}' does not exist"


def test_train_without_a_plan_file_takes_the_schedule_flags(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=10, size=16)
    out_dir = tmp_path / "staged"
    code, out, err = run(capsys, "train", "--model", "tiny:tiny_cnn", "--weights", "none", "--data", str(data),
                         "--freeze", "stem", "--freeze", "block1", "--stage", "3:block1", "--lr-mult", "block2=0.5",
                         "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--out", str(out_dir))
    assert code == 0, err
    metrics = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == [1, 1, 2]
    assert metrics[2]["trainable"] > metrics[1]["trainable"] == metrics[0]["trainable"]
    saved = json.loads((out_dir / "plan.json").read_text())
    assert saved["stages"] == [{"epoch": 3, "unfreeze": ["block1"]}] and saved["lr_mult"] == [["block2", 0.5]]
    # the same flags make the same plan with plan make: one code path
    made = tmp_path / "made.json"
    assert run(capsys, "plan", "make", "--model", "tiny:tiny_cnn", "--freeze", "stem", "--freeze", "block1",
               "--stage", "3:block1", "--lr-mult", "block2=0.5", "-o", str(made))[0] == 0
    made = json.loads(made.read_text())
    assert {k: made[k] for k in ("frozen", "stages", "lr_mult")} == {k: saved[k] for k in ("frozen", "stages", "lr_mult")}
    # --resume continues with the run's own schedule
    code, _, err = run(capsys, "train", "--resume", str(out_dir), "--stage", "4:stem")
    assert code == 1 and "--stage given" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--stage", "2:nothing*"], "the stage at epoch 2 unfreezes 'nothing*', which matches no parameter"),
    (["--lr-mult", "block2=2", "--layer-decay", "0.5"], "either --lr-mult or --layer-decay"),
    (["--recipe", "fine-tune", "--freeze", "stem"], "--recipe fine-tune sets the stages"),
    (["--plan", "p.json", "--stage", "2:block1"], "the plan file p.json holds its own schedule"),
])
def test_bad_schedule_flags_for_train_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    data = make_image_folder(tmp_path / "imgs", per_class=4, size=16)
    model = [] if "--plan" in extra else ["--model", "tiny:tiny_cnn", "--weights", "none"]
    code, _, err = run(capsys, "train", *model, "--data", str(data), "--device", "cpu", "--out", "o", *extra)
    assert code == 1 and message in err and "Traceback" not in err
    assert err.startswith("freezetui: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_help_names_every_subcommand(capsys):
    from freezetui.options import SUBCOMMANDS

    with pytest.raises(SystemExit):
        main(["-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out.split("Subcommands:")[1] for name in SUBCOMMANDS), out
