"""Image folders shaped like a user's: phone photos with EXIF rotation, odd modes, broken files."""

import errno
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from freezetui.core import imagecache
from freezetui.core.data import (BatchTransform, StreamedSplit, load_data, placement, random_crop_flip,
                                 random_resized_crop_flip)
from freezetui.core.errors import DataError
from freezetui.core.folders import decode_image, input_size, stored_size

ORIENT = 0x0112
# how to store an upright picture so that applying the EXIF tag brings it back upright
STORE_FOR_TAG = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def photo(up: bool, w: int, h: int, seed: int) -> Image.Image:
    """A noisy picture whose top (class "up") or bottom half is bright."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    half = slice(0, h // 2) if up else slice(h // 2, h)
    a[half] += 180
    return Image.fromarray(a)


def save_jpeg(im: Image.Image, path, tag: int = 1):
    if STORE_FOR_TAG[tag] is not None:
        im = im.transpose(STORE_FOR_TAG[tag])
    exif = Image.Exif()
    exif[ORIENT] = tag
    im.save(path, quality=85, exif=exif.tobytes())


def make_photo_folder(root, per_class=4):
    tags = [1, 6, 3, 8]
    for split in ("train", "valid"):
        for up, cls in ((True, "up"), (False, "down")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                w, h = (640, 480) if i % 2 == 0 else (480, 640)
                save_jpeg(photo(up, w, h, seed=i + 10 * up), d / f"img{i}.jpg", tag=tags[i % 4])
    d = root / "train" / "up"
    photo(True, 640, 480, 99).convert("CMYK").save(d / "cmyk.jpg", quality=90)
    pal = photo(True, 480, 480, 98).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    la = Image.merge("LA", (photo(True, 480, 480, 97).convert("L"), Image.new("L", (480, 480), 255)))
    la.save(d / "gray_alpha.png")
    g16 = np.zeros((480, 480), dtype=np.uint16)
    g16[:240] = 60000
    g16[240:] = 3000
    Image.fromarray(g16).save(d / "gray16.png")
    data = (d / "img0.jpg").read_bytes()
    (root / "train" / "down" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "train" / "down" / "notes.jpg").write_text("not a picture")
    return root


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZETUI_DATA", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def photos_master(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos") / "phone")


@pytest.fixture
def photos(photos_master, tmp_path):
    return shutil.copytree(photos_master, tmp_path / "phone")


def test_photo_folder_is_read_like_a_user_means_it(photos):
    ds = load_data(str(photos))
    assert ds.classes == ["down", "up"]  # train/ and valid/ are splits, not classes
    assert len(ds.train) == 8 + 4 and len(ds.val) == 8  # 4 odd formats in train/up, 2 broken files skipped
    assert ds.image_size == 256 and ds.input_size == 224  # stored for 224 px training, not native 480
    (warning,) = ds.warnings
    assert "skipped 2 file(s)" in warning and "truncated.jpg (truncated)" in warning and "notes.jpg" in warning
    for split in (ds.train, ds.val):
        top = split.images[:, :, :128].float().mean(dim=(1, 2, 3))
        bottom = split.images[:, :, 128:].float().mean(dim=(1, 2, 3))
        # only EXIF-aware decoding keeps every "up" image bright on top
        assert torch.equal(top > bottom, split.labels == ds.classes.index("up"))


def test_odd_modes_become_proper_rgb(photos):
    d = photos / "train" / "up"
    g = decode_image(d / "gray16.png", 64)
    assert g.shape == (3, 64, 64)
    assert abs(int(g[0, 0, 0]) - round(60000 / 257)) <= 1 and abs(int(g[0, -1, 0]) - round(3000 / 257)) <= 1
    pal = decode_image(d / "palette.png", 32)
    src = Image.open(d / "palette.png")
    transparent = np.asarray(src) == 0
    if transparent.any():  # transparent pixels become the white background
        assert (decode_image(d / "palette.png", 480)[:, transparent] == 255).all()
    assert pal.dtype == np.uint8
    cmyk = decode_image(d / "cmyk.jpg", 64).astype(int)
    assert cmyk[:, :32].mean() > cmyk[:, 32:].mean() + 100  # colours survived, not inverted
    la = decode_image(d / "gray_alpha.png", 64).astype(int)
    assert (la[0] == la[1]).all() and la[:, :32].mean() > la[:, 32:].mean() + 100


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), dtype=np.uint8)
    a[..., 0] = 200
    a[:, :4, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", 8)
    assert out[:, :, :4].tolist() == np.broadcast_to(np.array([200, 0, 0])[:, None, None], (3, 8, 4)).tolist()
    assert (out[:, :, 4:] == 255).all()


def test_decoded_once_then_reused_and_redecoded_when_changed(photos):
    calls = []
    first = load_data(str(photos), progress=lambda done, total: calls.append((done, total)))
    assert first.decoded == 20 and calls[-1] == (21, 21)  # the truncated file is tried, then dropped
    again = load_data(str(photos))
    assert again.decoded == 0 and again.cache_path == first.cache_path
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.val.labels, first.val.labels)
    assert isinstance(again.train.images, torch.Tensor) and again.train.images.dtype == torch.uint8
    again.train.images[0].zero_()  # copy-on-write: the cache on disk is untouched
    assert load_data(str(photos)).train.images[0].any()
    f = photos / "valid" / "up" / "img1.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    changed = load_data(str(photos))
    assert changed.decoded == 20 and changed.cache_path != first.cache_path


@pytest.mark.parametrize("damage", ["delete", "truncate", "meta"])
def test_a_damaged_cache_is_rebuilt(photos, damage):
    ds = load_data(str(photos))
    before = ds.train.images.clone()
    f = ds.cache_path / ("meta.json" if damage == "meta" else "images.u8")
    del ds  # a mapped file shrunk under a live map would fault on the next read
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(1000)
    else:
        f.write_text("{not json")
    again = load_data(str(photos))
    assert again.decoded == 20 and torch.equal(again.train.images, before)
    assert any("and was rebuilt" in w for w in again.warnings)


def test_full_disk_still_gives_the_data(photos, monkeypatch):
    def full(path, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imagecache, "_reserve", full)
    ds = load_data(str(photos))
    assert len(ds.train) == 12 and ds.cache_path is None
    assert [w for w in ds.warnings if "could not write the decoded-image cache" in w and "disk is full" in w]


def test_folder_changed_while_decoding_is_decoded_again(photos):
    passes = []

    def progress(done, total):
        if done == total and total:
            passes.append(total)
            if len(passes) == 1:
                (photos / "valid" / "up" / "late.jpg").write_bytes((photos / "valid" / "up" / "img0.jpg").read_bytes())

    ds = load_data(str(photos), progress=progress)
    assert len(passes) == 2 and len(ds.val) == 9 and ds.cache_path is not None
    assert load_data(str(photos)).decoded == 0


def test_folder_that_keeps_changing_is_said_so(photos):
    n = []

    def progress(done, total):
        if done == total and total:
            n.append(1)
            (photos / "valid" / "up" / f"late{len(n)}.jpg").write_bytes((photos / "valid" / "up" / "img0.jpg").read_bytes())

    ds = load_data(str(photos), progress=progress)
    assert len(n) == 2 and ds.cache_path is None
    assert any("changed while it was being decoded" in w for w in ds.warnings)


def _split_folder(root, splits, classes=("a", "b"), loose=()):
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    for s in splits:
        for c in classes.get(s, ("a", "b")) if isinstance(classes, dict) else classes:
            (root / s / c).mkdir(parents=True, exist_ok=True)
            img.save(root / s / c / "x.png")
    for c in loose:
        (root / c).mkdir(parents=True)
        img.save(root / c / "x.png")
    return root


@pytest.mark.parametrize("make, message", [
    (lambda p: _split_folder(p, ["train"]), r"split folder\(s\) train/ but no val/, valid/"),
    (lambda p: _split_folder(p, ["Valid"]), r"Valid/ but no train/ folder"),
    (lambda p: _split_folder(p, ["train", "valid"], loose=["cat"]), r"other folders beside them: cat/"),
    (lambda p: _split_folder(p, ["train", "val"], classes={"train": ("a",), "val": ("a",)}),
     r"needs at least two class subfolders, found 1 \(a\)"),
    (lambda p: _split_folder(p, ["train", "val"], classes={"train": ("a", "b"), "val": ("a", "c")}),
     r"class 'c' is in .*val but not in .*train"),
    (lambda p: (_split_folder(p, ["train"]), (p / "test" / "a").mkdir(parents=True)), r"test holds no images"),
    (lambda p: _split_folder(p, [""], classes=("only",)), r"at least two class subfolders, found 'only'"),
])
def test_folder_layout_mistakes_are_named(tmp_path, make, message):
    make(tmp_path / "d")
    with pytest.raises(DataError, match=message):
        load_data(str(tmp_path / "d"))


def test_split_folder_names_in_any_case(tmp_path):
    _split_folder(tmp_path / "d", ["TRAIN", "Validation"])
    ds = load_data(str(tmp_path / "d"))
    assert ds.classes == ["a", "b"] and len(ds.train) == 2 and len(ds.val) == 2
    _split_folder(tmp_path / "e", ["train", "valid", "test"])
    for _ in range(2):  # the note survives the cache
        ds = load_data(str(tmp_path / "e"))
        assert ds.warnings == ["used valid/ for validation and left out test/"]


def test_decompression_bombs_are_skipped(tmp_path, monkeypatch):
    _split_folder(tmp_path / "d", ["train", "val"])
    Image.new("RGB", (200, 200)).save(tmp_path / "d" / "train" / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    ds = load_data(str(tmp_path / "d"))
    assert len(ds.train) == 2 and "huge.png (too many pixels)" in ds.warnings[0]


def test_stored_and_input_sizes():
    photos = [(1600, 1200)] * 5
    assert stored_size(photos) == 256 and input_size(256) == 224  # neither weights nor --image-size
    assert stored_size(photos, image_size=160) == 183 and input_size(183, image_size=160) == 160
    assert stored_size(photos, resize_size=232) == 232 and input_size(232, resize_size=232, crop_size=224) == 224
    assert stored_size([(32, 32)] * 9) == 32 and input_size(32) == 32  # small images stay native
    assert stored_size([(32, 32)] * 9, image_size=64) == 32 and input_size(32, image_size=64) == 64
    assert stored_size([(300, 200), (20, 20), (400, 300)]) == 200  # the median, not one odd image


def test_large_folder_streams_and_streamed_batches_equal_in_memory_ones(photos):
    ds = load_data(str(photos))
    assert ds.nbytes == 20 * 3 * 256 * 256
    assert placement(ds.nbytes, "cpu", budget=ds.nbytes - 1) == "stream"
    assert placement(ds.nbytes, "cpu", budget=ds.nbytes) == "device"
    stream = StreamedSplit(ds.train, "cpu", batch_size=5)
    perm = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    x, y = stream.batch(perm[:5])
    assert torch.equal(x, ds.train.images[perm[:5]]) and torch.equal(y, ds.train.labels[perm[:5]])
    got = list(stream.prefetch(perm, steps=2))
    assert len(got) == 2
    for k, (x, y) in enumerate(got):
        idx = perm[k * 5:(k + 1) * 5]
        assert torch.equal(x, ds.train.images[idx]) and torch.equal(y, ds.train.labels[idx])
    for x, y in stream.prefetch(perm):  # leaving early stops the reader thread
        break


def test_random_resized_crop_flip():
    x = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8).expand(16, -1, -1, -1)
    out = random_resized_crop_flip(x, 24, torch.Generator().manual_seed(1))
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    again = random_resized_crop_flip(x, 24, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    flat = out.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(16) for j in range(i))  # each its own crop
    # a left-to-right ramp, cropped whole: flipped copies run right-to-left, about half of them
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).view(1, 1, 1, 32).expand(400, 3, 32, -1)
    full = random_resized_crop_flip(ramp, 32, torch.Generator().manual_seed(2), scale=(1, 1), ratio=(1, 1))
    flipped = (full[:, 0, 0, 0] > full[:, 0, 0, -1]).sum().item()
    assert 150 < flipped < 250
    assert torch.allclose(full[:, 0, 0].sort(1).values, ramp[:1, 0, 0].float().div(255), atol=1e-5)


def test_random_crop_flip_draws_on_the_batch_device():
    x = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).view(4, 3, 16, 16)
    a = random_crop_flip(x, torch.Generator(device=x.device).manual_seed(3))
    b = random_crop_flip(x, torch.Generator(device=x.device).manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape


def test_batch_transform_for_photos(photos):
    ds = load_data(str(photos))
    t = BatchTransform.for_data(None, ds)
    assert (t.size, t.resize) == (224, 256)
    x = ds.train.images[:4]
    ev = t(x)
    assert ev.shape == (4, 3, 224, 224)
    o = (256 - 224) // 2  # evaluation is the centre crop
    centre = x[:, :, o:o + 224, o:o + 224].float() / 255
    mean = torch.tensor(t.mean).view(1, 3, 1, 1)
    std = torch.tensor(t.std).view(1, 3, 1, 1)
    assert torch.allclose(ev, (centre - mean) / std, atol=1e-5)
    tr = t.augment(x, torch.Generator().manual_seed(0))
    assert tr.shape == (4, 3, 224, 224) and not torch.allclose(tr, ev)
    small = BatchTransform(24, None)
    assert small.augment(torch.zeros(2, 3, 24, 24, dtype=torch.uint8), torch.Generator()).shape == (2, 3, 24, 24)


def test_decoding_on_several_processes_gives_the_same_data(photos, tmp_path, monkeypatch):
    serial = load_data(str(photos), workers=1, cache=False)
    monkeypatch.setattr(imagecache, "SERIAL_BELOW", 1)
    monkeypatch.setattr(imagecache, "CHUNK", 4)
    seen = []
    pooled = load_data(str(photos), workers=2, cache_dir=tmp_path / "other", progress=lambda d, t: seen.append(d))
    assert torch.equal(serial.train.images, pooled.train.images) and torch.equal(serial.val.labels, pooled.val.labels)
    assert serial.warnings == pooled.warnings and seen == sorted(seen) and seen[-1] == 21


def test_full_disk_when_finishing_the_cache_still_gives_the_data(photos, monkeypatch):
    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imagecache, "write_json", full)
    ds = load_data(str(photos))
    assert len(ds.train) == 12 and ds.cache_path is None and ds.train.images[:, :, :128].float().mean() > 0
    assert any("disk is full" in w for w in ds.warnings)
    assert not list((photos.parent / "cache" / "folders").iterdir())  # no half-written entry left


def test_no_cache_and_no_memory_is_a_clear_error(photos, monkeypatch):
    def full(path, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imagecache, "_reserve", full)
    monkeypatch.setattr(imagecache, "available_ram", lambda: 1000)
    with pytest.raises(DataError, match="more than the free memory, and the decoded-image cache could not be written"):
        load_data(str(photos))
