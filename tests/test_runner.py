"""The one run path: RunSpec → runner.prepare_run → runner.execute, as the CLI, --resume, sweeps and
the TUI's controller use it (the controller itself: test_controller.py)."""

import json

import pytest
import torch

from conftest import make_image_folder
from freezetui.cli import main
from freezetui.core.data import load_data
from freezetui.core.models import build_model
from freezetui.core.runner import execute, prepare_run, resume_spec
from freezetui.core.specs import ModelSpec, RunSpec
from freezetui.core.train import TrainConfig


@pytest.fixture(scope="module")
def small_data():
    return load_data("shapes", shapes_train=128, shapes_val=32)


def test_train_from_model_and_rules_without_a_plan_file(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=12, size=16)
    out = tmp_path / "run"
    code = main(["train", "--model", "tiny:tiny_cnn", "--weights", "none", "--freeze", "stem", "--data", str(data),
                 "--epochs", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["frozen"] == ["stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"]
    assert plan["model"]["num_classes"] == 3 and plan["rules"] == [{"action": "freeze", "glob": "stem"}]


def test_a_plan_naming_code_needs_the_same_model_on_the_command_line(tmp_path, capsys):
    plan = tmp_path / "p.json"
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "-o", str(plan)]) == 0
    capsys.readouterr()
    for argv in (["plan", "show", str(plan)],
                 ["train", "--plan", str(plan), "--out", str(tmp_path / "r")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "runs code named in a plan only when you also pass --model tiny:tiny_cnn" in err, err
    # another model beside the plan is refused, never silently ignored
    assert main(["train", "--plan", str(plan), "--model", "tiny:nan_cnn", "--out", str(tmp_path / "r")]) == 1
    assert "the plan is for tiny:tiny_cnn, but --model names tiny:nan_cnn" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["plan", "show", str(plan), "--model", "tiny:tiny_cnn"]) == 0


@pytest.mark.parametrize("make", ["file", "run"])
def test_out_is_never_overwritten_by_accident(tmp_path, capsys, make):
    out = tmp_path / "out"
    if make == "file":
        out.write_text("precious")
    else:
        out.mkdir()
        (out / "metrics.jsonl").write_text("precious")
    argv = ["train", "--model", "tiny:tiny_cnn", "--weights", "none", "--data", "shapes", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("freezetui: error:") and len(err.strip().splitlines()) == 1
    assert ("is a file" in err) if make == "file" else ("--resume" in err and "--force" in err)
    precious = out if make == "file" else out / "metrics.jsonl"
    assert precious.read_text() == "precious"


def _finished_run(tmp_path, data, epochs=1):
    torch.manual_seed(0)
    model = build_model("tiny:tiny_cnn", weights="none", num_classes=data.num_classes)
    from freezetui.core.runner import plan_from_rules

    plan = plan_from_rules(model, [("freeze", "stem")])
    spec = RunSpec(data="shapes", config=TrainConfig(epochs=epochs, batch_size=32, device="cpu"),
                   out=tmp_path / "run", plan=plan, model=ModelSpec("tiny:tiny_cnn"))
    return execute(spec, inputs=prepare_run(spec, data=data)), spec


def test_resume_extends_a_finished_run_and_refuses_other_options(tmp_path, capsys, small_data):
    result, spec = _finished_run(tmp_path, small_data)
    assert result.epochs == 1
    assert main(["train", "--resume", str(spec.out), "--lr", "0.5"]) == 1
    assert "only --epochs and --device may change (--lr given)" in capsys.readouterr().err
    extended = resume_spec(spec.out, epochs=2, device="cpu")
    assert extended.config.epochs == 2 and extended.resume["epoch"] == 1
    result = execute(extended, inputs=prepare_run(extended, data=small_data))
    epochs = [json.loads(l)["epoch"] for l in (spec.out / "metrics.jsonl").read_text().splitlines()]
    assert result.epochs == 2 and epochs == [1, 2]
