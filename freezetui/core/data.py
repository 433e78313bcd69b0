"""Datasets as uint8 tensors, and batch transforms that run on the training device.

Image folders are decoded once into a memory-mapped cache (``imagecache``); resizing,
augmentation and normalisation happen per batch on the device, so there is no per-image Python
in the training loop. Data that does not fit the device is streamed from the map (``StreamedSplit``).
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .folders import IMAGE_EXTENSIONS, SMALL, STORAGE_MARGIN
from .imagecache import available_ram, check_decoded, describe_skipped, load_folder
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import shapes_splits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_DATASETS = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
}


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, H, W); for folders a view of the memory-mapped cache
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: Split
    val: Split
    warnings: list[str] = field(default_factory=list)
    model_size: int | None = None  # the side the model should see; None: the stored side
    cache_path: Path | None = None  # the decoded-image cache entry a folder was read from
    decoded: int = 0  # images decoded by this load (0 when everything came from the cache)
    load_seconds: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The side the images are stored at."""
        return int(self.train.images.shape[-1])

    @property
    def input_size(self) -> int:
        """The side the model should see (see :func:`freezetui.core.folders.input_size`)."""
        return int(self.model_size or self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes of training plus validation images, as stored (what :func:`placement` weighs)."""
        return self.train.nbytes + self.val.nbytes


def data_names() -> list[str]:
    return ["shapes", *TORCHVISION_DATASETS]


def default_cache_dir() -> Path:
    base = os.environ.get("FREEZETUI_DATA") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "freezetui"
    return Path(base)


def load_data(spec: str, seed: int = 0, size: int | None = None, root: str | os.PathLike | None = None,
              shapes_train: int = 5000, shapes_val: int = 1000, *, resize_size: int | None = None,
              crop_size: int | None = None, progress: Callable[[int, int], None] | None = None,
              cache_dir: str | os.PathLike | None = None, cache: bool = True,
              workers: int | None = None, stop=None) -> Dataset:
    """Load ``shapes``, a torchvision dataset name, or an image folder.

    For folders: ``size`` is the user's ``--image-size`` and ``resize_size``/``crop_size`` the
    pretrained weights' (None without weights); together with the images' headers they decide
    the stored side (:func:`freezetui.core.folders.stored_size`) and ``Dataset.input_size``.
    Images are decoded once on all cores (``workers``) into a memory-mapped cache under
    ``cache_dir`` (default :func:`default_cache_dir`) and reused while the folder is unchanged;
    ``progress(done, total)`` is called as images are decoded; ``stop`` (an Event) ends decoding
    with :class:`~freezetui.core.errors.Stopped`.
    """
    t0 = time.perf_counter()
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
    ds = _folder_dataset(path, seed=seed, size=size, resize_size=resize_size, crop_size=crop_size,
                         progress=progress, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                         cache=cache, workers=workers, stop=stop)
    ds.load_seconds = time.perf_counter() - t0
    return ds


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


def _mapped(a: np.ndarray) -> torch.Tensor:
    """A tensor over ``a`` without copying (``a`` is a copy-on-write memory map or an array)."""
    return torch.from_numpy(a) if len(a) else torch.zeros((0, *a.shape[1:]), dtype=torch.uint8)


def _folder_dataset(path: Path, seed: int, size: int | None, resize_size: int | None = None,
                    crop_size: int | None = None, progress=None, cache_dir: Path | None = None,
                    cache: bool = True, workers: int | None = None, stop=None) -> Dataset:
    d = load_folder(path, seed=seed, image_size=size, resize_size=resize_size, crop_size=crop_size,
                    cache_dir=cache_dir, progress=progress, workers=workers, use_cache=cache, stop=stop)
    check_decoded(d, path)
    images, labels = _mapped(d.images), torch.from_numpy(np.asarray(d.labels, dtype=np.int64))
    nt = d.n_train
    ws = list(d.notes)
    skipped = describe_skipped(d.skipped)
    if skipped:
        ws.insert(0, skipped)
    return Dataset(path.name or str(path), list(d.classes), Split(images[:nt], labels[:nt]),
                   Split(images[nt:], labels[nt:]), warnings=ws, model_size=d.input_size, cache_path=d.path,
                   decoded=d.decoded)


# ----------------------------------------------------------------------------- where the data lives


def memory_budget(device) -> int:
    """Bytes a dataset may take on ``device``: half of the free GPU memory on CUDA, half of the
    available RAM elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    return int(0.5 * available_ram())


def placement(nbytes: int, device, budget: int | None = None) -> str:
    """``"device"`` when ``nbytes`` (training plus validation images) fit the budget on ``device``
    (default :func:`memory_budget`), else ``"stream"``: batches are read from the memory map."""
    if budget is None:
        budget = memory_budget(device)
    return "device" if nbytes <= budget else "stream"


class StreamedSplit:
    """Batches of a (memory-mapped) split for a device it does not fit on: rows are gathered on
    the CPU into a pinned buffer and copied with ``non_blocking=True``; :meth:`prefetch`
    prepares the next batch in a background thread while the current one trains."""

    def __init__(self, split: Split, device, batch_size: int, pin: bool | None = None):
        self.split = split
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin is None else pin
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.split)

    def _buffer(self) -> torch.Tensor:
        shape = (self.batch_size, *self.split.images.shape[1:])
        buf = torch.empty(shape, dtype=self.split.images.dtype)
        return buf.pin_memory() if self.pin else buf

    def _gather(self, idx: torch.Tensor, buf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to("cpu", torch.int64)
        if buf is None or len(idx) > len(buf):
            x = torch.index_select(self.split.images, 0, idx)
        else:
            x = torch.index_select(self.split.images, 0, idx, out=buf[:len(idx)])
        return x, self.labels.index_select(0, idx)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) for the rows ``idx`` (a CPU index tensor), on the device."""
        x, y = self._gather(idx, None)
        if self.pin:
            x = x.pin_memory()
        return x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin)

    def prefetch(self, perm: torch.Tensor, batch_size: int | None = None, steps: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on the device for consecutive slices of ``perm`` (CPU indices), at
        most ``steps`` of them; the next batch is read and copied while this one is used."""
        bs = int(batch_size or self.batch_size)
        perm = perm.to("cpu")
        slices = [perm[i:i + bs] for i in range(0, len(perm), bs)][:steps]
        q: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        side = torch.cuda.Stream(self.device) if self.cuda else None

        def work():
            bufs = [self._buffer(), self._buffer()] if self.cuda and bs <= self.batch_size else [None, None]
            events: list = [None, None]
            try:
                for k, idx in enumerate(slices):
                    if stop.is_set():
                        return
                    j = k % 2
                    if events[j] is not None:
                        events[j].synchronize()  # the copy out of this buffer has finished
                    x, y = self._gather(idx, bufs[j])
                    if side is not None:
                        with torch.cuda.stream(side):
                            x = x.to(self.device, non_blocking=self.pin)
                            y = y.to(self.device, non_blocking=self.pin)
                            ev = torch.cuda.Event()
                            ev.record(side)
                        events[j] = ev
                    else:
                        ev = None
                        x, y = x.to(self.device), y.to(self.device)
                    while not stop.is_set():
                        try:
                            q.put((x, y, ev), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                q.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(e)

        t = threading.Thread(target=work, name="freezetui-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, y, ev = item
                if ev is not None:
                    cur = torch.cuda.current_stream(self.device)
                    cur.wait_event(ev)
                    x.record_stream(cur)
                    y.record_stream(cur)
                yield x, y
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass


# ----------------------------------------------------------------------------- batch transforms


class BatchTransform:
    """uint8 batch -> normalised float batch at the model's input size, on the batch's device.

    With pretrained weights (and no size override) this is the weights' own ``transforms()``,
    which torchvision applies to batched tensors as well as to single images. Otherwise the
    stored images are resized to ``resize`` (when it differs from their side) and centre-cropped
    to ``size`` (or resized up to ``size`` when ``resize`` is smaller).

    :meth:`augment` is the training-time version: at ``size`` >= 128 a per-image random resized
    crop with horizontal flip (:func:`random_resized_crop_flip`), below that the stored image as
    for evaluation, then pad-crop and flip (:func:`random_crop_flip`).
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

    @classmethod
    def for_data(cls, info, data, image_size: int | None = None) -> "BatchTransform":
        """The transform for ``data`` (a :class:`Dataset`) and a model: the weights' transforms when
        pretrained and no ``image_size`` is given; else ``data.input_size`` (or ``image_size``),
        centre-cropped out of the stored side when that is larger, as "resize 256, crop 224" does."""
        weights = getattr(info, "weights_enum", None) if info is not None else None
        small = bool(getattr(info, "small_input", False))
        if weights is not None and not small and not image_size:
            return cls.for_model(info, data.image_size, None)
        fixed = getattr(info, "input_size", None) if getattr(info, "fixed_size", False) else None
        size = int(image_size or fixed or data.input_size)  # a fixed-size model (ViT) gets its own size
        stored = data.image_size
        resize = min(stored, round(size * STORAGE_MARGIN)) if stored > size else size
        if weights is not None:
            t = weights.transforms()
            return cls(size, resize, t.mean, t.std)
        return cls(size, resize)

    def describe(self) -> str:
        if self.weights_transform is not None:
            return f"weights' transforms (resize {self.resize}, crop {self.size})"
        if self.resize and self.resize > self.size:
            return f"{self.size} px (resized to {self.resize}, centre crop)"
        return f"{self.size} px" + (f" (resized)" if self.resize else "")

    def _norm(self, device, dtype):
        key = (device, dtype)
        if key not in self._stats:
            self._stats[key] = (
                torch.tensor(self.mean, device=device, dtype=dtype).view(1, 3, 1, 1),
                torch.tensor(self.std, device=device, dtype=dtype).view(1, 3, 1, 1),
            )
        return self._stats[key]

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        mean, std = self._norm(out.device, out.dtype)
        out = out.sub_(mean).div_(std)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights_transform is not None:
            out = self.weights_transform(x)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
            return out
        out = x.float().div_(255)
        side = out.shape[-1]
        r = self.resize or side
        if r != side or out.shape[-2] != side:
            out = F.interpolate(out, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        if r > self.size:
            o = (r - self.size) // 2
            out = out[..., o:o + self.size, o:o + self.size]
        elif r < self.size:
            out = F.interpolate(out, size=(self.size, self.size), mode="bilinear", antialias=True,
                                align_corners=False)
        return self._finish(out.contiguous())

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A training batch: random crops and flips drawn from ``generator`` (on ``x``'s device),
        then normalised like :meth:`__call__`."""
        if self.size >= SMALL:
            return self._finish(random_resized_crop_flip(x, self.size, generator))
        return random_crop_flip(self(x), generator)


def _uniform(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``n`` uniform numbers on ``device``, drawn there when the generator lives there (no host
    round trip); from a generator elsewhere (e.g. an old CPU one) they are drawn and copied."""
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        return torch.rand(n, generator=generator).to(device)
    return torch.rand(n, generator=generator, device=device)


def random_resized_crop_flip(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
                             scale: tuple[float, float] = (0.35, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Each image its own random crop (area ``scale`` of the image, aspect ``ratio``, log-uniform),
    resized to ``size`` and flipped left-right with probability 1/2, all in one ``grid_sample``.

    Returns floats in [0, 1] for a uint8 batch (the input's scale otherwise). The scale range is
    milder than torchvision's 0.08-1: fine-tuning on a few hundred photos loses too much of each
    subject at 8 %. Crops that would not fit are clamped to the image instead of redrawn.
    """
    b = x.shape[0]
    dev = x.device
    out = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    if b == 0:
        return out.new_zeros((0, x.shape[1], size, size))
    h_img, w_img = x.shape[-2:]
    u = _uniform(5 * b, generator, dev).view(5, b)
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    aspect = torch.exp(log_r) * (h_img / w_img)  # width/height of the crop, in pixels
    cw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width as a fraction of the image width
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (u[2] * (1 - cw) + cw / 2) * 2 - 1  # crop centre in [-1, 1]
    cy = (u[3] * (1 - ch) + ch / 2) * 2 - 1
    sign = torch.where(u[4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=out.dtype)
    theta[:, 0, 0] = cw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by 1/8 of the size, crop back at a random offset per image, flip half of them.

    The offsets and flips are drawn on ``x``'s device when ``generator`` lives there."""
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    u = _uniform(3 * b, generator, dev).view(3, b)
    oy = (u[0] * (2 * pad + 1)).long().clamp_(max=2 * pad)
    ox = (u[1] * (2 * pad + 1)).long().clamp_(max=2 * pad)
    flip = u[2] < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
    out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return out
