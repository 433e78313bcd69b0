"""Property tests over the files freezetui reads back (a plan, a checkpoint, metrics.jsonl, a
decoded-image cache entry): whatever corruption is generated, the answer is a FreezeTUIError
sentence or a rebuild, never another exception and never a silently different result."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import make_image_folder
from freezetui import FreezePlan
from freezetui.cli import main
from freezetui.core.errors import FreezeTUIError, PlanError
from freezetui.core.imagecache import load_folder
from freezetui.core.runs import load_checkpoint, read_metrics

# no shrinking: a failing example prints its draws, and shrinking resumes of a run costs minutes
SETTINGS = settings(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
json_scalars = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


# ----------------------------------------------------------------------------- corruptions


def _paths(obj, prefix=()):
    """Every place inside ``obj`` (dict keys, list items), tensors being leaves."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _corrupt_tree(data, obj, tensors=False):
    """``obj`` with one place deleted or replaced (by JSON, a deep nest, or with ``tensors`` a tensor)."""
    obj = copy.deepcopy(obj)
    paths = list(_paths(obj))
    path = data.draw(st.sampled_from(paths))
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    how = data.draw(st.sampled_from(["delete", "replace", "deep"] + (["tensor"] if tensors else [])))
    if how == "delete":
        del parent[path[-1]]
    elif how == "replace":
        parent[path[-1]] = data.draw(json_values)
    elif how == "tensor":
        parent[path[-1]] = torch.zeros(data.draw(st.lists(st.integers(0, 3), max_size=3)))
    elif tensors:  # pickled: deep, but within what pickle itself can write
        deep = []
        for _ in range(data.draw(st.integers(33, 400))):
            deep = [deep]
        parent[path[-1]] = deep
    else:  # JSON: as deep as a hostile file likes (see _dump)
        parent[path[-1]] = f"{DEEP}{data.draw(st.integers(33, 100_000))}"
    return obj, path, how


DEEP = "\x00deep:"


def _dump(obj) -> str:
    """JSON text of ``obj``, a ``DEEP`` marker written as that many nested lists."""
    text = json.dumps(obj)
    marker = json.dumps(DEEP)[:-1]
    while marker in text:
        start = text.index(marker)
        end = text.index('"', start + 1)
        n = int(text[start + len(marker):end])
        text = text[:start] + "[" * n + "]" * n + text[end + 1:]
    return text


def _corrupt_bytes(data, b: bytes) -> bytes:
    """``b`` torn (cut short), with a byte flipped, or with bytes inserted."""
    b = bytearray(b)
    at = data.draw(st.integers(0, max(0, len(b) - 1)))
    how = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    if how == "cut":
        return bytes(b[:at])
    if how == "flip" and b:
        b[at] ^= data.draw(st.integers(1, 255))
        return bytes(b)
    return bytes(b[:at]) + data.draw(st.binary(min_size=1, max_size=16)) + bytes(b[at:])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or a != a and b != b)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "imgs", per_class=20, size=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--model", "tiny:tiny_cnn", "--device", "cpu", "--data", str(folder), "--epochs", "2",
                 "--freeze", "stem", "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- plan


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_a_corrupted_plan_is_a_sentence_or_a_plan_that_plan_show_takes(data, run, tmp_path, capsys):
    text = (run / "plan.json").read_text()
    if data.draw(st.booleans()):
        bad = _corrupt_bytes(data, text.encode())
    else:
        bad = _dump(_corrupt_tree(data, json.loads(text))[0]).encode()
    path = tmp_path / "plan.json"
    path.write_bytes(bad)
    try:
        FreezePlan.load(path)
    except PlanError as e:
        assert "\n" not in str(e)
    code = main(["plan", "show", str(path), "--model", "tiny:tiny_cnn"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 0 or err.startswith("freezetui: error: ") and len(err.splitlines()) == 1, err


# ----------------------------------------------------------------------------- checkpoint


def _damaged_run(run, tmp_path, data):
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out)
    raw = torch.load(out / "checkpoint.pt", weights_only=True)
    if data.draw(st.booleans()):
        (out / "checkpoint.pt").write_bytes(_corrupt_bytes(data, (out / "checkpoint.pt").read_bytes()))
        how = "bytes"
    else:
        damaged, path, how = _corrupt_tree(data, raw, tensors=True)
        torch.save(damaged, out / "checkpoint.pt")
        if path == ("digest",):
            how = "digest"
    return out, raw, how


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_a_corrupted_checkpoint_is_a_sentence_or_exactly_what_was_written(data, run, tmp_path):
    out, raw, how = _damaged_run(run, tmp_path, data)
    raw.pop("digest")
    try:
        state = load_checkpoint(out)
    except FreezeTUIError as e:
        assert "\n" not in str(e) and "weights_only" not in str(e)
        return
    assert _same(state, raw), f"a damaged checkpoint ({how}) loaded as something else"


@settings(SETTINGS, max_examples=60)
@given(data=st.data())
def test_a_corrupted_checkpoint_without_a_digest_resumes_or_is_a_sentence(data, run, tmp_path, capsys):
    """Older checkpoints have no digest: the structure checks and the restore stand alone."""
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out)
    raw = torch.load(out / "checkpoint.pt", weights_only=True)
    raw.pop("digest")
    damaged, path, how = _corrupt_tree(data, raw, tensors=True)
    torch.save(damaged, out / "checkpoint.pt")
    code = main(["train", "--resume", str(out), "--epochs", "3"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 1), err
    if code == 1:
        assert [l for l in err.splitlines() if l.startswith("freezetui: error: ")], err


# ----------------------------------------------------------------------------- metrics


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_torn_or_garbled_metrics_read_as_a_prefix_or_a_value_error(data, run, tmp_path):
    good = (run / "metrics.jsonl").read_bytes()
    records = [json.loads(l) for l in good.decode().splitlines()]
    how = data.draw(st.sampled_from(["torn", "trailing garbage", "garbled line"]))
    if how == "torn":
        bad = good[:data.draw(st.integers(0, len(good)))]
    elif how == "trailing garbage":
        bad = good + data.draw(st.binary(min_size=1, max_size=40))
    else:
        lines = good.splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = data.draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b)) + b"\n"
        bad = b"".join(lines)
    (tmp_path / "metrics.jsonl").write_bytes(bad)
    try:
        got = read_metrics(tmp_path)
    except ValueError:
        return
    assert got == records[:len(got)], how


# ----------------------------------------------------------------------------- decoded-image cache entries


@pytest.fixture(scope="module")
def cached(folder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    d = load_folder(folder, cache_dir=cache)
    return cache, d.path, np.array(d.images), d.labels.copy(), d.n_train, list(d.classes)


@settings(SETTINGS, max_examples=80)
@given(data=st.data())
def test_a_corrupted_cache_entry_is_rebuilt_or_used_never_wrong(data, folder, cached):
    cache, entry, images, labels, n_train, classes = cached
    meta_path, pixels = entry / "meta.json", entry / "images.u8"
    meta_text, pixel_bytes = meta_path.read_text(), pixels.read_bytes()
    where = data.draw(st.sampled_from(["meta bytes", "meta tree", "pixels"]))
    if where == "meta bytes":
        meta_path.write_bytes(_corrupt_bytes(data, meta_text.encode()))
    elif where == "meta tree":
        meta_path.write_text(_dump(_corrupt_tree(data, json.loads(meta_text))[0]))
    else:
        pixels.write_bytes(_corrupt_bytes(data, pixel_bytes))
    try:
        d = load_folder(folder, cache_dir=cache)
        assert np.array_equal(np.asarray(d.images), images), where
        assert np.array_equal(d.labels, labels) and d.n_train == n_train and d.classes == classes, where
        assert d.path == entry
    finally:  # the next example starts from the good entry
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir()
        meta_path.write_text(meta_text)
        pixels.write_bytes(pixel_bytes)
