import pytest
import torch

from conftest import make_image_folder
from freezetui.core.data import BatchTransform, load_data, random_crop_flip
from freezetui.core.errors import DataError
from freezetui.core.shapes import CLASSES, make_shapes


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZETUI_DATA", str(tmp_path / "cache"))


def test_shapes_is_deterministic_and_balanced():
    a, la = make_shapes(200, seed=3)
    b, lb = make_shapes(200, seed=3)
    c, _ = make_shapes(200, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    assert a.shape == (200, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.bincount(la, minlength=10).tolist() == [20] * 10


def test_shapes_dataset_splits_differ():
    ds = load_data("shapes", shapes_train=100, shapes_val=50)
    assert ds.classes == CLASSES and len(ds.train) == 100 and len(ds.val) == 50
    assert not torch.equal(ds.train.images[:50], ds.val.images)


def test_folder_with_deterministic_split(tmp_path):
    make_image_folder(tmp_path / "d", per_class=20, size=24)
    ds = load_data(str(tmp_path / "d"), seed=1)
    assert ds.classes == ["cat", "dog", "fox"]
    assert len(ds.val) == 6 and len(ds.train) == 54  # 10 % of each class
    assert ds.train.images.shape[1:] == (3, 24, 24)
    again = load_data(str(tmp_path / "d"), seed=1)
    assert torch.equal(ds.val.images, again.val.images)


def test_folder_with_train_and_val(tmp_path):
    make_image_folder(tmp_path / "d", per_class=5, layout="split")
    ds = load_data(str(tmp_path / "d"), size=16)
    assert len(ds.train) == 15 and len(ds.val) == 15
    assert ds.input_size == 16 and ds.image_size == 18  # stored with room for random crops


def test_bad_files_are_skipped_and_named(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6)
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = load_data(str(root))
    assert len(ds.train) + len(ds.val) == 18
    (warning,) = ds.warnings
    assert "notes.txt (not an image)" in warning and "broken.png (unreadable" in warning


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "neither a folder nor"),
    (lambda p: p.mkdir(), "no class subfolders"),
    (lambda p: (p / "only").mkdir(parents=True), "at least two class subfolders"),
    (lambda p: [(p / c).mkdir(parents=True) for c in "ab"], "no readable training images"),
    (lambda p: p.write_text("x"), "is a file"),
])
def test_bad_data_is_named(tmp_path, setup, message):
    p = tmp_path / "data"
    setup(p)
    with pytest.raises(DataError, match=message):
        load_data(str(p))


def test_torchvision_dataset_offline_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="could not be downloaded"):
        load_data("cifar10", root=tmp_path)


def test_random_crop_flip_moves_content_within_padding():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape
    # every output row is a (possibly flipped, shifted) row of the input or zero padding
    row = out[0, 0, 8]
    src_rows = x[0, 0]
    nonzero = row[row != 0]
    assert any(set(nonzero.tolist()) <= set(r.tolist()) for r in src_rows)


def test_batch_transform_resizes_and_normalises():
    t = BatchTransform(48, 48)
    x = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = t(x)
    assert out.shape == (2, 3, 48, 48)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], (1 - 0.485) / 0.229), atol=1e-4)
