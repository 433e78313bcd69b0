"""Nothing lost, round three: two runs in one folder, full disks, processes and files left
behind, and files that lie (issue 21). Each test failed before its fix."""

import contextlib
import json
import os
import re
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
from freezetui.core.train import Callback


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


# ----------------------------------------------------------------------------- 2. a full disk under torch.save


def _short_write(real):
    """torch.save on a full disk: part of the file, then the RuntimeError torch raises (not OSError)."""
    def save(obj, f, *a, **k):
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1004")
    return save


@pytest.mark.parametrize("full_at", ["checkpoint", "model"])
def test_a_full_disk_under_torch_save_is_a_sentence_and_the_summary_still_written(tmp_path, monkeypatch, full_at):
    from freezetui.core.data import load_data

    data = load_data("shapes", shapes_train=64, shapes_val=16)
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = FreezePlan.from_model(model)
    out = tmp_path / "run"
    writer = RunWriter(out, model, plan, TrainConfig(epochs=3), extra={"data": "shapes"})
    real_checkpoint, real_end, real_save = writer.on_checkpoint, writer.on_run_end, torch.save

    def on_checkpoint(state):
        if full_at == "checkpoint" and state["epoch"] == 2:
            monkeypatch.setattr(torch, "save", _short_write(real_save))
        real_checkpoint(state)

    def on_run_end(result):
        if full_at == "model":
            monkeypatch.setattr(torch, "save", _short_write(real_save))
        real_end(result)

    writer.on_checkpoint, writer.on_run_end = on_checkpoint, on_run_end
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 500})())
    with pytest.raises(TrainingError) as e:
        train(model, plan, data, TrainConfig(epochs=3, device="cpu"), callbacks=[writer])
    name = "checkpoint.pt" if full_at == "checkpoint" else "model.pt"
    weights = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    need = re.search(r"\(the disk is full: it needs about ([\d.]+) KiB free, 500 B is\); the files written "
                     r"before are intact$", str(e.value))
    assert str(e.value).startswith(f"cannot write {out / name} ") and need, str(e.value)
    if full_at == "model":
        assert float(need[1]) == round(weights / 1024, 1)
    else:  # the weights, the optimizer's two moments and the RNG states
        assert 3 * weights / 1024 < float(need[1]) < 4 * weights / 1024
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out)["epoch"] == (1 if full_at == "checkpoint" else 3)  # the last good one kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] == str(e.value)
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert not (out / "model.pt").exists()


# ----------------------------------------------------------------------------- 8. files that load but are malformed


def _one_error_line(err: str, alone: bool = True) -> str:
    """The one error line of ``err`` (its only line, or, not ``alone``, its last after progress lines)."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err and "Warning" not in err, err
    assert [l for l in lines if l.startswith("freezetui: error: ")] == lines[-1:] and (len(lines) == 1 or not alone), err
    return lines[-1]


def test_a_deeply_nested_plan_is_one_sentence_in_plan_show_and_train(tmp_path, capsys, folder):
    plan = tmp_path / "deep.json"
    plan.write_text('{"version": 1, "model": {"name": "resnet18", "x": ' + "[" * 50_000 + "]" * 50_000 + "}}")
    for argv in (["plan", "show", str(plan)], ["train", "--plan", str(plan), "--data", str(folder),
                                               "--out", str(tmp_path / "r")]):
        assert main(argv) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert line.endswith(f"plan file {str(plan)!r} is nested more than 32 levels deep; a plan is a few "
                             f"levels deep")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(_train_args(folder, out, 1)) == 0
    return out


@pytest.mark.parametrize("damage, why", [
    (lambda s: s.pop("plan"), "no 'plan'"),
    (lambda s: s.update(config=[1, 2]), "'config' is a list"),
    (lambda s: s.update(epoch="1"), "'epoch' is a str"),
    (lambda s: s.update(history=[{"epoch": 1, "val_acc": "high"}]), "its history does not match its epoch"),
    (lambda s: s.update(config={**s["config"], "lr": "fast"}), "settings of the wrong kind"),
    (lambda s: s["model"]["fc.bias"].add_(1e-3), "digest"),
    (lambda s: s["model"].update({"fc.weight": torch.zeros(2)}) or s.pop("digest"), None),  # an older checkpoint
])
def test_a_checkpoint_missing_keys_or_of_the_wrong_type_is_one_sentence(tmp_path, finished_run, capsys, damage,
                                                                        why):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    damage(state)
    torch.save(state, out / "checkpoint.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 1
    line = _one_error_line(capsys.readouterr().err, alone=why is not None)
    if why == "digest":
        assert line == (f"freezetui: error: cannot resume from {out / 'checkpoint.pt'}: it was damaged on disk (its "
                        f"contents do not match their digest); start the run again, or restore the file from a backup")
    elif why is not None:
        assert line == (f"freezetui: error: cannot resume from {out / 'checkpoint.pt'}: it is not a freezetui "
                        f"checkpoint ({why})") or line.startswith(
            f"freezetui: error: cannot resume from {out / 'checkpoint.pt'}: it is not a freezetui checkpoint ({why}")
    else:
        assert "the checkpoint's weights do not fit this model (size mismatch for fc.weight" in line
    torch.save([1, 2], out / "checkpoint.pt")
    assert main(["train", "--resume", str(out)]) == 1
    assert _one_error_line(capsys.readouterr().err).endswith("it is not a freezetui checkpoint (it holds a list)")


def test_metrics_with_a_torn_last_line_read_without_it(tmp_path):
    from freezetui.core.runs import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 2}]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not a metrics record"):
        read_metrics(tmp_path)


# ----------------------------------------------------------------------------- 9. messages


class _Trap:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "is a folder, not a file torch.save wrote"),
    (lambda p: p.write_text("hello, these are not weights\n"), "is not a file torch.save wrote (it holds text)"),
    (lambda p: p.write_bytes(b""), "is empty"),
])
def test_weights_that_are_a_folder_a_text_file_or_empty_get_a_clear_sentence(tmp_path, capsys, make, words):
    w = tmp_path / "w.pt"
    make(w)
    for model in ("resnet18", "tiny:tiny_cnn"):
        assert main(["plan", "make", "--model", model, "--weights", str(w), "-o", str(tmp_path / "p.json")]) == 1
        assert _one_error_line(capsys.readouterr().err) == f"freezetui: error: weights file {str(w)!r} {words}"


def test_a_code_running_file_is_refused_without_quoting_torchs_advice(tmp_path, capsys, finished_run):
    import shutil

    w = tmp_path / "trap.pt"
    torch.save({"fc.weight": torch.zeros(3, 64), "x": _Trap()}, w)
    assert main(["plan", "make", "--model", "tiny:tiny_cnn", "--weights", str(w), "-o", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert line.endswith("it holds Python objects besides tensors, which freezetui does not unpickle")
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    state = load_checkpoint(out)
    state["extra"]["trap"] = _Trap()
    torch.save(state, out / "checkpoint.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 1
    err += capsys.readouterr().err
    assert _one_error_line(err[len(line) + 1:]).endswith("does not unpickle")
    assert "weights_only" not in err and "this ran" not in err


def test_a_newline_in_a_file_name_stays_on_the_warning_line(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=4, size=16)
    (data / "cat" / "evil\nwarning: all is well.txt").write_text("x")
    assert main(_train_args(data, tmp_path / "run", 1)) == 0
    err = capsys.readouterr().err
    assert "warning: skipped 1 file(s): cat/evil\\nwarning: all is well.txt (not an image)" in err.splitlines()
    assert "warning: all is well.txt (not an image)" not in err.splitlines()


def test_a_class_with_a_single_image_gets_a_warning(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=4, size=16)
    for p in sorted((data / "fox").iterdir())[1:]:
        p.unlink()
    assert main(_train_args(data, tmp_path / "run", 1)) == 0
    assert ("warning: class 'fox' has a single image: it trains, but validation never sees that class "
            "(add another image)") in capsys.readouterr().err.splitlines()


# ----------------------------------------------------------------------------- 7. the decoded-image cache is checked


def _zero_pixels(entry):
    with open(entry / "images.u8", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 4000)


def _meta(change):
    def apply(entry):
        meta = json.loads((entry / "meta.json").read_text())
        change(meta)
        (entry / "meta.json").write_text(json.dumps(meta) if isinstance(meta, dict) else meta["text"])
    return apply


CORRUPTIONS = {
    "zeroed pixels": (_zero_pixels, "its pixels or labels do not match their digest"),
    "labels flipped": (_meta(lambda m: m.update(labels=[(k + 1) % 3 for k in m["labels"]])),
                       "its pixels or labels do not match their digest"),
    "one training image fewer": (_meta(lambda m: m.update(n_train=m["n_train"] - 1)),
                                 "its pixels or labels do not match their digest"),
    "n_train past the count": (_meta(lambda m: m.update(n_train=m["count"] + 5)), "more training images than images"),
    "label out of range": (_meta(lambda m: m["labels"].__setitem__(0, 7)), "a label out of range"),
    "count a string": (_meta(lambda m: m.update(count=str(m["count"]))), "count and sizes are not whole numbers"),
}


@pytest.mark.parametrize("name", [*CORRUPTIONS, "deeply nested", "not JSON"])
def test_a_damaged_cache_entry_is_rebuilt_with_one_note_never_used(tmp_path, folder, name):
    from freezetui.core.data import load_data

    cache = tmp_path / "cache"
    fresh = load_data(str(folder), cache_dir=cache)
    fresh.train.images, fresh.val.images = fresh.train.images.clone(), fresh.val.images.clone()  # off the map
    [entry] = (cache / "folders").iterdir()
    if name == "deeply nested":
        (entry / "meta.json").write_text('{"version": 2, "labels": ' + "[" * 100_000 + "]" * 100_000 + "}")
        why = "nested more than 32 levels deep"
    elif name == "not JSON":
        (entry / "meta.json").write_text('{"version": 2, "lab')
        why = "Unterminated string"
    else:
        damage, why = CORRUPTIONS[name]
        damage(entry)
    for _ in range(2):  # rebuilt once, then used as it is
        again = load_data(str(folder), cache_dir=cache)
        notes = [w for w in again.warnings if "decoded-image cache" in w]
        assert torch.equal(again.train.images, fresh.train.images) and torch.equal(again.val.images, fresh.val.images)
        assert torch.equal(again.train.labels, fresh.train.labels) and torch.equal(again.val.labels, fresh.val.labels)
        if _ == 0:
            assert len(notes) == 1 and notes[0].startswith(f"the decoded-image cache {entry} was damaged ({why}")
            assert notes[0].endswith("and was rebuilt")
        else:
            assert notes == [] and again.decoded == 0


# ----------------------------------------------------------------------- 6. cache entries: newest kept, listed, cleared


def test_cache_keeps_the_newest_entry_per_folder_and_size_and_lists_and_clears(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from freezetui.core.data import load_data
    from freezetui.core.imagecache import cache_entries

    cache = tmp_path / "cache"
    monkeypatch.setenv("FREEZETUI_DATA", str(cache))
    a = make_image_folder(tmp_path / "a", per_class=4, size=16)
    b = make_image_folder(tmp_path / "b", per_class=5, size=16, seed=1)
    load_data(str(a), cache_dir=cache)
    load_data(str(a), cache_dir=cache, size=8)  # another size: another entry, kept
    load_data(str(b), cache_dir=cache)
    assert len(cache_entries(cache)) == 3
    Image.new("RGB", (16, 16)).save(a / "cat" / "new.png")  # a changed: its 16 px copy is replaced
    load_data(str(a), cache_dir=cache)
    entries = cache_entries(cache)
    assert sorted((e.folder, e.size, e.images) for e in entries) == [
        (str(a.resolve()), 9, 12), (str(a.resolve()), 16, 13), (str(b.resolve()), 16, 15)]

    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["on", "disk", "images", "px", "made", "folder"]
    assert sorted(l.split()[-1] for l in out[1:4]) == sorted([str(a.resolve())] * 2 + [str(b.resolve())])
    assert out[4].endswith(f"in 3 decoded folder(s) under {cache / 'folders'}; `freezetui cache clear [FOLDER]` "
                           f"removes them")
    assert main(["cache", "clear", str(a)]) == 0
    assert capsys.readouterr().out.startswith(f"removed 2 decoded folder(s) of {a} from {cache / 'folders'}, ")
    assert [e.folder for e in cache_entries(cache)] == [str(b.resolve())]
    assert main(["cache", "clear"]) == 0 and cache_entries(cache) == []
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"no decoded folders in {cache / 'folders'}"


# ----------------------------------------------------------------------------- 3, 4. decoding processes and signals

SLOW_DECODE = """
import sys, time
import freezetui.core.imagecache as ic
real = ic.decode_chunk
def slow(root, files, *args):  # a big folder, in small: each image takes a while
    time.sleep(0.05 * len(files))
    return real(root, files, *args)
ic.decode_chunk = slow
from freezetui.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def slow_run(tmp_path, cli_env, folder):
    data = make_image_folder(tmp_path / "many", per_class=70, size=16)
    cli_env["FREEZETUI_DATA"] = str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DECODE, *_train_args(data, tmp_path / "run", 2)],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = _wait_for(proc, "decoding images: 0/")  # headers read, pixels being decoded in the workers
    yield proc, seen, data
    with contextlib.suppress(ProcessLookupError):  # workers that outlived it would hold its pipes open
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat))
    return out


def _signal_mask(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(field)


def _group_gone(pgid: int, polls: int = 300) -> bool:
    import time

    for _ in range(polls):  # a bound on the wait, not a measurement
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decoding_workers_take_sigterm_plainly_and_die_with_a_killed_parent(slow_run, tmp_path):
    from freezetui.core.data import load_data

    proc, _, data = slow_run
    workers = _children(proc.pid)
    assert len(workers) >= 1
    for w in workers:
        assert not _signal_mask(w, "SigCgt") & (1 << (signal.SIGTERM - 1))  # freezetui's handler is not theirs
        assert _signal_mask(w, "SigIgn") & (1 << (signal.SIGINT - 1))  # Ctrl-C is the parent's
    [tmp] = [p for p in (tmp_path / "cache" / "folders").iterdir() if p.name.startswith(".")]
    proc.send_signal(signal.SIGKILL)  # or the OOM killer
    proc.wait(timeout=120)  # not communicate: surviving workers would keep its pipes open
    assert _group_gone(proc.pid), "decoding processes outlived their parent"
    assert tmp.exists()  # what the killed run was writing; the next run removes it
    load_data(str(data), cache_dir=tmp_path / "cache")
    assert not tmp.exists()
    assert [p.name for p in (tmp_path / "cache" / "folders").iterdir() if p.name.startswith(".")] == []


def test_sigterm_while_decoding_stops_at_once_without_offering_a_resume(slow_run, tmp_path):
    proc, seen, _ = slow_run
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "freezetui: stopped while decoding images, before training began: nothing to resume" in err
    assert "training on" not in err and "--resume" not in err and "decoding images: 210/210" not in err
    assert _group_gone(proc.pid)
    assert not (tmp_path / "run").exists()  # nothing was written, so no folder is left
    assert [p.name for p in (tmp_path / "cache" / "folders").iterdir()] == []


def test_a_stop_in_the_first_epoch_does_not_offer_a_resume(tmp_path, folder, capsys, monkeypatch):

    from freezetui.core import runner

    real = runner.execute

    def stopped_early(spec, callbacks=(), stop=None, reporter=None, **kw):
        class StopAtFirstStep(Callback):
            def on_step(self, ev):
                stop.set()
        return real(spec, [*callbacks, StopAtFirstStep()], stop, reporter, **kw)

    monkeypatch.setattr(runner, "execute", stopped_early)
    assert main(_train_args(folder, tmp_path / "run", 3) + ["--batch-size", "8"]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "stopped: 0 of 3 epochs complete; no checkpoint was written, so there is nothing to resume" in err
    assert "--resume" not in err
