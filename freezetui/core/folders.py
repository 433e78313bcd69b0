"""Image folders: which files make up the training and validation splits, and decoding one photo
to a square uint8 array. Plain numpy and Pillow, so decoding processes stay light."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
TRAIN_NAMES = ("train",)
VAL_NAMES = ("val", "valid", "validation", "test")  # in order of preference when several are there
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
STORAGE_MARGIN = 256 / 224  # room for random crops: stored side = model side x 256/224, as ImageNet does
DEFAULT_INPUT = 224  # photos with neither weights nor --image-size are trained at 224 px
SMALL = 128  # below this, images are "small" (CIFAR-like): stored and trained at their native size


# ----------------------------------------------------------------------------- sizes


def stored_size(native_sizes: Sequence[tuple[int, int]], image_size: int | None = None,
                resize_size: int | None = None) -> int:
    """The side of the square every image is stored at, decided from the headers alone.

    The target is ``image_size`` x 256/224 when the user gave one (room for random crops), else
    the pretrained weights' ``resize_size``, else 256 (photos trained at 224 px). Storage never
    upscales: the target is capped at the median shorter side of the images, so a folder of 32 px
    images stays at 32 px whatever the model wants (the device resizes per batch instead).
    """
    if image_size:
        target = round(image_size * STORAGE_MARGIN)
    elif resize_size:
        target = int(resize_size)
    else:
        target = round(DEFAULT_INPUT * STORAGE_MARGIN)
    if not native_sizes:
        return target
    native = int(np.median([min(w, h) for w, h in native_sizes]))
    return max(1, min(target, native))


def input_size(stored: int, image_size: int | None = None, resize_size: int | None = None,
               crop_size: int | None = None) -> int:
    """The side the model sees: ``image_size`` when given; the weights' crop (``crop_size``, else
    ``resize_size`` x 224/256) with pretrained weights; else 224/256 of the stored side, or the
    stored side itself for small images, which keep their native size."""
    if image_size:
        return int(image_size)
    if resize_size:
        return int(crop_size or round(resize_size / STORAGE_MARGIN))
    if stored < SMALL:
        return stored
    return max(1, round(stored / STORAGE_MARGIN))


# ----------------------------------------------------------------------------- layout


@dataclass
class FolderLayout:
    """What a folder holds: the classes and the files of each split, as paths relative to ``root``."""
    root: Path
    classes: list[str]
    train: list[tuple[str, int]]  # (relative path, label)
    val: list[tuple[str, int]]
    split_dirs: tuple[str, str] | None  # the (train, val) folder names, or None for a seeded split
    listing: list[tuple[str, int, int]]  # every file considered: (relative path, size, mtime_ns)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def key(self, *extra) -> str:
        """A digest of the files (names, sizes, times), their order in the splits, and ``extra``."""
        h = hashlib.sha256()
        h.update(repr((self.classes, self.listing, self.train, self.val, extra)).encode())
        return h.hexdigest()[:24]


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(class_dir: Path, root: Path, listing: list, skipped: list[str]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(f"{rel} (not an image)")
                continue
            try:
                st = p.stat()
            except OSError:
                skipped.append(f"{rel} (unreadable)")
                continue
            listing.append((rel, st.st_size, st.st_mtime_ns))
            out.append(rel)
    return out


def find_layout(path: Path, seed: int = 0, val_fraction: float = 0.1) -> FolderLayout:
    """Split folders (``train/`` with ``val/``, ``valid/``, ``validation/`` or ``test/``, any case),
    else class subfolders and a seeded ``val_fraction`` split per class.

    Raises :class:`DataError` for a folder whose top level looks like split folders but does not
    fit that layout, rather than taking ``train`` and ``valid`` as two classes.
    """
    top = _subdirs(path)
    by_lower: dict[str, list[Path]] = {}
    for p in top:
        by_lower.setdefault(p.name.lower(), []).append(p)
    split_like = [p for p in top if p.name.lower() in TRAIN_NAMES + VAL_NAMES]
    listing: list[tuple[str, int, int]] = []
    skipped: list[str] = []
    notes: list[str] = []
    if split_like:
        names = ", ".join(f"{p.name}/" for p in split_like)
        others = [p for p in top if p not in split_like]
        trains = [p for p in split_like if p.name.lower() in TRAIN_NAMES]
        vals = [p for n in VAL_NAMES for p in by_lower.get(n, [])]
        if len(trains) != 1 or not vals or others or any(len(v) > 1 for v in by_lower.values()):
            if not trains:
                why = "no train/ folder beside it"
            elif len(trains) > 1 or any(len(v) > 1 for v in by_lower.values()):
                why = "split folders that differ only in case"
            elif not vals:
                why = "no val/, valid/, validation/ or test/ folder beside it"
            else:
                why = "other folders beside them: " + ", ".join(f"{p.name}/" for p in others[:5])
            raise DataError(f"{path} holds split folder(s) {names} but {why}; use train/ with val/ (or valid/, "
                            f"validation/, test/) holding the same class folders, or class folders only")
        train_dir, val_dir = trains[0], vals[0]
        for extra in vals[1:]:
            notes.append(f"used {val_dir.name}/ for validation and left out {extra.name}/")
        classes = [p.name for p in _subdirs(train_dir)]
        if len(classes) < 2:
            raise DataError(f"{train_dir} needs at least two class subfolders, found "
                            f"{len(classes)}{' (' + classes[0] + ')' if classes else ''}")
        for p in sorted(train_dir.iterdir()) + sorted(val_dir.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                skipped.append(f"{p.relative_to(path).as_posix()} (not in a class folder)")
        splits = []
        for split_dir in (train_dir, val_dir):
            files = []
            for c in _subdirs(split_dir):
                if c.name not in classes:
                    raise DataError(f"class {c.name!r} is in {val_dir} but not in {train_dir}")
                files += [(f, classes.index(c.name)) for f in _files(c, path, listing, skipped)]
            if not files:
                raise DataError(f"{split_dir} holds no images; put images in its class folders")
            splits.append(files)
        train, val = splits
        return FolderLayout(path, classes, train, val, (train_dir.name, val_dir.name), listing, skipped, notes)

    if not top:
        raise DataError(f"{path} has no class subfolders; expected {path}/<class>/<image>")
    if len(top) < 2:
        raise DataError(f"{path} needs at least two class subfolders, found {top[0].name!r} only")
    classes = [p.name for p in top]
    rng = np.random.Generator(np.random.PCG64(seed))
    train, val = [], []
    for k, c in enumerate(top):
        files = _files(c, path, listing, skipped)
        n_val = max(1, round(len(files) * val_fraction)) if len(files) >= 2 else 0
        if len(files) == 1:
            notes.append(f"class {c.name!r} has a single image: it trains, but validation never sees that "
                         f"class (add another image)")
        chosen = set(rng.permutation(len(files))[:n_val].tolist())
        for j, f in enumerate(files):
            (val if j in chosen else train).append((f, k))
    for p in sorted(path.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            skipped.append(f"{p.name} (not in a class folder)")
    return FolderLayout(path, classes, train, val, None, listing, skipped, notes)


# ----------------------------------------------------------------------------- headers and decoding


def _describe(e: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too many pixels"
    if isinstance(e, UnidentifiedImageError):
        return "unreadable: not a valid image"
    text = str(e).lower()
    if "truncated" in text:
        return "truncated"
    return f"unreadable: {type(e).__name__}"


def _open(path: Path, max_pixels: int | None):
    from PIL import Image

    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def read_headers(root: Path, files: Sequence[str], max_pixels: int | None = None
                 ) -> list[tuple[int, int] | str]:
    """Each file's (width, height) from its header, or why it cannot be used. Decodes no pixels."""
    out: list[tuple[int, int] | str] = []
    for rel in files:
        try:
            with _open(root / rel, max_pixels) as im:
                out.append(tuple(im.size))
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for broken files
            out.append(_describe(e))
    return out


def to_rgb(im) -> np.ndarray:
    """Any Pillow image as an (H, W, 3) uint8 array: 16-bit and float images scaled (not clipped) to
    8 bits, CMYK and palettes converted, transparency composited on ``BACKGROUND``."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if mode == "F":
            peak = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0 if a.size and np.nanmax(a) <= 255 else 65535.0
        elif mode == "I":
            peak = 255.0 if a.size and a.max() <= 255 else 65535.0
        else:
            peak = 65535.0
        g = np.clip(np.nan_to_num(a) * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def decode_image(path: Path, size: int, max_pixels: int | None = None, draft: bool = True) -> np.ndarray:
    """One image as a (3, size, size) uint8 array: EXIF orientation applied, shorter side resized
    to ``size``, centre-cropped. Large JPEGs decode at a reduced scale (draft mode) first."""
    from PIL import Image, ImageOps

    with _open(path, max_pixels) as im:
        if draft and im.format == "JPEG" and min(im.size) >= 2 * size:
            im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im)
        arr = to_rgb(im)
    h, w = arr.shape[:2]
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = Image.fromarray(arr).resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)))
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_chunk(root: Path, files: Sequence[str], size: int, max_pixels: int | None = None
                 ) -> tuple[np.ndarray, list[str | None]]:
    """Decode ``files``; returns their (N, 3, size, size) array (failed rows zero) and, per file,
    None or why it failed. Runs in worker processes."""
    out = np.zeros((len(files), 3, size, size), dtype=np.uint8)
    errors: list[str | None] = []
    for i, rel in enumerate(files):
        try:
            out[i] = decode_image(root / rel, size, max_pixels)
            errors.append(None)
        except Exception as e:  # noqa: BLE001
            errors.append(_describe(e))
    return out, errors
