"""Generated command lines for every subcommand: whatever the arguments, the CLI answers with a
result or one sentence, never a traceback."""

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_image_folder
from freezetui.cli import main

_count = itertools.count()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_image_folder(root / "imgs", per_class=6, size=12)
    (root / "one-class" / "only").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a folder")
    (root / "bad.json").write_text("{not json")
    (root / "list.json").write_text("[1, 2]")
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--freeze", "stem", "-o", str(root / "tiny.json")]) == 0
    d = json.loads((root / "tiny.json").read_text())
    d["frozen"] = d["frozen"] + ["ghost.weight"]
    (root / "ghost.json").write_text(json.dumps(d))
    (root / "torch.pt").write_bytes(b"\x80\x04not a pickle at all")
    return root


def _values(root):
    folders = [str(root / n) for n in ("imgs", "one-class", "empty", "file.txt", "missing")]
    plans = [str(root / n) for n in ("tiny.json", "bad.json", "list.json", "ghost.json", "missing.json", "imgs")]
    return {
        "--model": st.sampled_from(["tiny:tiny_cnn", "tiny:nan_cnn", "resnet18", "resnt18", ":foo", "os:system",
                                    "os:getcwd", "a:b:c", "foo:", "timm:", "timm:zzz_not_a_model", "tiny:nothing",
                                    "no_such_pkg.mod:make", ""]),
        "--weights": st.sampled_from(["none", "auto", "IMAGENET1K_V1", "NOPE", str(root / "torch.pt"),
                                      str(root / "missing.pt"), str(root / "imgs")]),
        "--num-classes": st.sampled_from(["3", "0", "-2", "x", "99999999999999999999"]),
        "--freeze": st.sampled_from(["stem", "nothing*", "*", "[", "fc"]),
        "--unfreeze": st.sampled_from(["fc", "*", "nothing*"]),
        "--bn": st.sampled_from(["train", "freeze", "maybe"]),
        "--data": st.sampled_from(folders + ["shapes_not", "cifar10"]),
        "--epochs": st.sampled_from(["1", "0", "-1", "1.5", "x"]),
        "--batch-size": st.sampled_from(["4", "0", "x"]),
        "--lr": st.sampled_from(["0.01", "-1", "nan", "inf", "1e400", "x"]),
        "--weight-decay": st.sampled_from(["0", "-0.1", "nan"]),
        "--optimizer": st.sampled_from(["sgd", "adam", "lamb"]),
        "--image-size": st.sampled_from(["16", "4", "0", "x"]),
        "--device": st.sampled_from(["cpu", "cuda", "cuda:7", "tpu", "auto"]),
        "--seed": st.sampled_from(["0", "-1", "18446744073709551621", "x"]),
        "--plan": st.sampled_from(plans),
        "--resume": st.sampled_from(folders + [str(root / "tiny.json")]),
        "-o": st.sampled_from([str(root / "imgs"), str(root / "file.txt"), "OUT"]),
        "--out": st.sampled_from([str(root / "imgs"), str(root / "file.txt"), "OUT"]),
        "--depth": st.sampled_from(["1", "0", "x"]),
        "--stage": st.sampled_from(["2:fc", "2:nothing*", "0:fc", "x", "2:", "1:block1,fc"]),
        "--lr-mult": st.sampled_from(["fc=0.1", "block*=0.5", "nothing*=2", "fc=-1", "fc", "fc=nan"]),
        "--layer-decay": st.sampled_from(["0.65", "0", "1.5", "x"]),
        "--recipe": st.sampled_from(["fine-tune", "nope"]),
        "--rungs": st.sampled_from(["2", "0", "-1", "x"]),
    }


FLAGS = ["--small-input", "--no-augment", "--no-amp", "--no-cache", "--force", "--json-not-an-option"]
COMMANDS = {
    "models": ([], []),
    "plan make": (["--model", "--weights", "--num-classes", "--freeze", "--unfreeze", "--bn", "--image-size", "-o",
                   "--stage", "--lr-mult", "--layer-decay", "--recipe"], ["--small-input"]),
    "plan show": (["--model", "--depth", "--image-size"], []),
    "train": (["--plan", "--model", "--weights", "--num-classes", "--freeze", "--unfreeze", "--data", "--epochs",
               "--batch-size", "--lr", "--weight-decay", "--optimizer", "--image-size", "--device", "--seed",
               "--resume", "--out", "--stage", "--lr-mult", "--layer-decay", "--recipe"], FLAGS),
    "sweep": (["--model", "--weights", "--data", "--epochs", "--batch-size", "--lr", "--optimizer", "--image-size",
               "--device", "--seed", "--rungs", "--bn", "--out"], FLAGS),
    "suggest": (["--model", "--weights", "--num-classes", "--data", "--batch-size", "--image-size", "--device",
                 "--seed", "-o"], ["--small-input", "--no-amp", "--json-not-an-option"]),
}


@st.composite
def command_lines(draw, root):
    values = _values(root)
    command = draw(st.sampled_from(sorted(COMMANDS)))
    options, flags = COMMANDS[command]
    argv = command.split()
    if command == "plan show":
        argv.append(draw(values["--plan"]))
    # the options that get a command past its first check, most of the time
    if command == "plan make":
        argv += ["--model", draw(st.sampled_from(["tiny:tiny_cnn", "resnet18"]) | values["--model"]),
                 "-o", draw(values["-o"])]
    if command == "sweep":  # one epoch, two rungs by default: a sweep that gets far stays short
        argv += ["--out", draw(values["--out"]), "--data", str(root / "imgs"), "--model", "tiny:tiny_cnn",
                 "--epochs", "1", "--rungs", "2"]
    if command == "train":
        argv += ["--out", draw(values["--out"]), "--data", str(root / "imgs")]
        argv += draw(st.sampled_from([["--plan", str(root / "tiny.json"), "--model", "tiny:tiny_cnn"],
                                      ["--model", "tiny:tiny_cnn"], []]))
    if command == "suggest":
        argv += ["--data", str(root / "imgs"), "--model", "tiny:tiny_cnn", "--batches", "1"]
    for opt in draw(st.lists(st.sampled_from(options), max_size=6)) if options else []:
        argv += [opt, draw(values[opt])]
    argv += draw(st.lists(st.sampled_from(flags), max_size=2, unique=True)) if flags else []
    return argv


def test_no_command_line_ends_in_a_traceback(place, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(command_lines(place))
    def check(argv):
        argv = [a.replace("OUT", str(tmp_path / f"out{next(_count)}")) for a in argv]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: usage errors exit 2, -h exits 0
            code = e.code
            assert code in (0, 2), argv
            return
        err = capsys.readouterr().err
        assert "Traceback" not in err, (argv, err)
        assert isinstance(code, int), argv
        if code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            assert last.startswith("freezetui: error:"), (argv, err)  # one sentence, last

    check()
