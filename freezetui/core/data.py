"""Datasets as uint8 tensors in memory, and batch transforms that run on the training device.

Everything is decoded once; resizing, augmentation and normalisation happen per batch on the
device, so there is no per-image Python in the training loop.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import shapes_splits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TORCHVISION_DATASETS = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
}
MAX_IN_MEMORY_BYTES = 6 * 1024**3


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: Split
    val: Split
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def data_names() -> list[str]:
    return ["shapes", *TORCHVISION_DATASETS]


def default_cache_dir() -> Path:
    base = os.environ.get("FREEZETUI_DATA") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "freezetui"
    return Path(base)


def load_data(spec: str, seed: int = 0, size: int | None = None, root: str | os.PathLike | None = None,
              shapes_train: int = 5000, shapes_val: int = 1000) -> Dataset:
    """Load ``shapes``, a torchvision dataset name, or an image folder.

    ``size`` only matters for folders, whose images are brought to one square size as they are
    decoded (the first image's size when not given).
    """
    if spec == "shapes":
        (xt, yt), (xv, yv) = shapes_splits(shapes_train, shapes_val, seed=seed)
        return Dataset("shapes", list(SHAPES_CLASSES), Split(xt, yt), Split(xv, yv))
    if spec.lower() in TORCHVISION_DATASETS:
        return _torchvision_dataset(spec.lower(), Path(root) if root else default_cache_dir() / "datasets")
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data {spec!r} is neither a folder nor one of {', '.join(data_names())}")
    if not path.is_dir():
        raise DataError(f"data {spec!r} is a file; give a folder of class subfolders")
    return _folder_dataset(path, seed=seed, size=size)


# ----------------------------------------------------------------------------- torchvision


def _torchvision_dataset(name: str, root: Path) -> Dataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION_DATASETS[name])
    splits = []
    for train in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = cls(str(root), train=train, download=True)
        except Exception as e:  # noqa: BLE001 - offline, blocked, or corrupt: one sentence
            raise DataError(
                f"{name} is not in {root} and could not be downloaded ({type(e).__name__}); "
                f"copy it there, set FREEZETUI_DATA, or use --data shapes or an image folder"
            ) from None
        x = torch.as_tensor(np.asarray(ds.data))
        if x.ndim == 3:  # grayscale (N, H, W) -> 3 channels
            x = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        else:
            x = x.permute(0, 3, 1, 2).contiguous()
        splits.append(Split(x.to(torch.uint8), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)))
        classes = list(ds.classes)
    return Dataset(name, classes, splits[0], splits[1])


# ----------------------------------------------------------------------------- folders


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(class_dir: Path, skipped: list[str]) -> list[Path]:
    files = []
    for p in sorted(class_dir.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            skipped.append(f"{p} (not an image)")
    return files


def _decode(paths: list[Path], size: int | None, skipped: list[str]) -> tuple[list[torch.Tensor], list[int], int | None]:
    from PIL import Image

    out, keep = [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is None:
                    size = min(im.size)
                w, h = im.size
                if (w, h) != (size, size):
                    scale = size / min(w, h)
                    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                    im = im.crop((left, top, left + size, top + size))
                out.append(torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1))
                keep.append(i)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken files
            skipped.append(f"{p} (unreadable: {type(e).__name__})")
    return out, keep, size


def _folder_dataset(path: Path, seed: int, size: int | None) -> Dataset:
    subdirs = {p.name.lower(): p for p in _class_dirs(path)}
    val_dir = subdirs.get("val") or subdirs.get("test")
    train_dir = subdirs.get("train")
    skipped: list[str] = []
    if train_dir and val_dir:
        classes = [p.name for p in _class_dirs(train_dir)]
        if len(classes) < 2:
            raise DataError(f"{train_dir} needs at least two class subfolders, found {len(classes)}")
        splits = []
        for split_dir in (train_dir, val_dir):
            files, labels = [], []
            for c in _class_dirs(split_dir):
                if c.name not in classes:
                    raise DataError(f"class {c.name!r} is in {split_dir} but not in {train_dir}")
                imgs = _list_images(c, skipped)
                files += imgs
                labels += [classes.index(c.name)] * len(imgs)
            splits.append((files, labels))
        (tf, tl), (vf, vl) = splits
    else:
        class_dirs = _class_dirs(path)
        if not class_dirs:
            raise DataError(f"{path} has no class subfolders; expected {path}/<class>/<image>")
        if len(class_dirs) < 2:
            raise DataError(f"{path} needs at least two class subfolders, found {class_dirs[0].name!r} only")
        classes = [p.name for p in class_dirs]
        g = torch.Generator().manual_seed(seed)
        tf, tl, vf, vl = [], [], [], []
        for k, c in enumerate(class_dirs):
            imgs = _list_images(c, skipped)
            order = torch.randperm(len(imgs), generator=g).tolist()
            n_val = max(1, round(len(imgs) * 0.1)) if len(imgs) >= 2 else 0
            for j, idx in enumerate(order):
                (vf if j < n_val else tf).append(imgs[idx])
                (vl if j < n_val else tl).append(k)
    if len(tf) * 3 * (size or 64) ** 2 > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{path} is too large to hold in memory at {size or 'native'} px; use a smaller --image-size")
    t_imgs, t_keep, size = _decode(tf, size, skipped)
    v_imgs, v_keep, size = _decode(vf, size, skipped)
    if not t_imgs:
        raise DataError(f"{path} holds no readable training images")
    if not v_imgs:
        raise DataError(f"{path} holds no readable validation images (each class needs at least two images)")
    ws = []
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        ws.append(f"skipped {len(skipped)} file(s): {shown}")
    return Dataset(
        path.name or str(path),
        classes,
        Split(torch.stack(t_imgs), torch.tensor([tl[i] for i in t_keep], dtype=torch.int64)),
        Split(torch.stack(v_imgs), torch.tensor([vl[i] for i in v_keep], dtype=torch.int64)),
        warnings=ws,
    )


# ----------------------------------------------------------------------------- batch transforms


class BatchTransform:
    """uint8 batch -> normalised float batch at the model's input size, on the batch's device.

    With pretrained weights (and no size override) this is the weights' own ``transforms()``,
    which torchvision applies to batched tensors as well as to single images.
    """

    def __init__(self, size: int, resize: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=None,
                 channels_last: bool = False):
        self.size = size
        self.resize = resize
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.weights_transform = weights.transforms() if weights is not None else None
        self.channels_last = channels_last
        self._stats: dict = {}

    @classmethod
    def for_model(cls, info, native_size: int, image_size: int | None = None) -> "BatchTransform":
        weights = getattr(info, "weights_enum", None) if info is not None else None
        small = bool(getattr(info, "small_input", False))
        if image_size:
            if weights is not None:
                t = weights.transforms()
                return cls(image_size, image_size, t.mean, t.std)
            return cls(image_size, image_size)
        if weights is not None and not small:
            t = weights.transforms()
            return cls(t.crop_size[0], t.resize_size[0], t.mean, t.std, weights=weights)
        return cls(native_size, None)

    def describe(self) -> str:
        if self.weights_transform is not None:
            return f"weights' transforms (resize {self.resize}, crop {self.size})"
        return f"{self.size} px" + (f" (resized)" if self.resize else "")

    def _norm(self, device, dtype):
        key = (device, dtype)
        if key not in self._stats:
            self._stats[key] = (
                torch.tensor(self.mean, device=device, dtype=dtype).view(1, 3, 1, 1),
                torch.tensor(self.std, device=device, dtype=dtype).view(1, 3, 1, 1),
            )
        return self._stats[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights_transform is not None:
            out = self.weights_transform(x)
        else:
            out = x.float().div_(255)
            if self.resize and out.shape[-1] != self.size:
                out = F.interpolate(out, size=(self.size, self.size), mode="bilinear", antialias=True,
                                    align_corners=False)
            mean, std = self._norm(out.device, out.dtype)
            out = out.sub_(mean).div_(std)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by 1/8 of the size, crop back at a random offset per image, flip half of them."""
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    flip = torch.rand(b, generator=generator).to(dev) < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
    out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return out
