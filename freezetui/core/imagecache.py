"""Decode an image folder once, on all cores, into a memory-mappable uint8 file on disk.

An entry lives in ``<cache>/folders/<key>/`` as ``images.u8`` (raw (N, 3, S, S) uint8, training
rows first) and ``meta.json`` (shape, labels, classes, skipped files). The key digests the
folder's listing (relative paths, sizes, mtimes), the split and the size settings, so a changed
folder is decoded again. Entries are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import errno
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import write_json
from .errors import DataError, Stopped
from .folders import FolderLayout, decode_chunk, find_layout, input_size, read_headers, stored_size
from .readback import loads_json

VERSION = 2  # 2: meta.json carries a digest of the pixels and of the facts about them
CHUNK = 32  # files per task: large enough to amortise the transfer, small enough to balance cores
SERIAL_BELOW = 64  # files; a pool costs more than it saves for fewer

Progress = Callable[[int, int], None]


@dataclass
class Decoded:
    """A decoded folder: ``images`` (N, 3, S, S) uint8, memory-mapped when cached, rows
    ``[:n_train]`` for training and the rest for validation."""
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    n_train: int
    size: int
    input_size: int
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None  # the cache entry, None when held in memory only
    decoded: int = 0  # images decoded by this call (0 when the cache was used)

    @property
    def nbytes(self) -> int:
        return int(self.images.shape[0]) * 3 * self.size * self.size


def _workers(n_files: int, workers: int | None) -> int:
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:
            workers = os.cpu_count() or 1
    return max(1, min(workers, -(-n_files // CHUNK))) if n_files >= SERIAL_BELOW else 1


def _pool(n: int) -> cf.ProcessPoolExecutor:
    # Workers run only Pillow and numpy; fork spares them importing torch again.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_start, initargs=(os.getpid(),))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_start(parent: int) -> None:
    """A decoding process dies with its parent (SIGKILL, the OOM killer), where it would go on
    decoding into a dead pipe, and takes SIGTERM and SIGHUP as any process does, not with the
    stop-after-this-batch handler it was forked with; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched = False
    if sys.platform.startswith("linux"):
        try:
            watched = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the request took
        os._exit(1)
    if not watched:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


STOP_POLL = 0.1  # seconds between looks at the stop event while chunks decode


def _stopped(stop) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stopped while decoding images, before training began: nothing to resume")


def _run_chunks(fn, root: Path, files: list[str], args: tuple, pool: cf.Executor | None, on_chunk,
                stop=None) -> None:
    """Call ``fn(root, chunk, *args)`` for chunks of ``files`` (in ``pool`` when given), and
    ``on_chunk(start, result)`` as each finishes; :class:`Stopped` soon after ``stop`` is set."""
    starts = list(range(0, len(files), CHUNK))
    if pool is None:
        for s in starts:
            _stopped(stop)
            on_chunk(s, fn(root, files[s:s + CHUNK], *args))
        return
    futures = {pool.submit(fn, root, files[s:s + CHUNK], *args): s for s in starts}
    try:
        while futures:
            done, _ = cf.wait(futures, timeout=STOP_POLL, return_when=cf.FIRST_COMPLETED)
            _stopped(stop)
            for fut in done:
                on_chunk(futures.pop(fut), fut.result())  # popped: a handled chunk is not kept alive
    except BrokenProcessPool:
        _stopped(stop)  # a signal sent to the whole process group ended the workers too
        raise DataError("a decoding process ended without finishing (killed, or out of memory?)") from None
    except BaseException:
        for fut in list(futures):
            fut.cancel()
        raise


def _kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    """End the pool's processes now, not after their chunks (stopped, or an error)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            proc.kill()


def _headers_chunk(root, files, max_pixels):
    return read_headers(root, files, max_pixels)


def _reserve(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` reserved, so writing into its memory map cannot hit a full
    disk (which would kill the process with SIGBUS rather than raise)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, max(1, nbytes))
        else:
            os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


DIGEST_BLOCK = 16 << 20  # bytes a thread hashes at a time (blake2b releases the GIL: ~0.3-1 GB/s a core)


def _digest(path: Path, meta: dict) -> str:
    """blake2b of the facts in ``meta`` (labels, counts, classes, sizes) and of the pixels in
    ``path``, hashed in blocks on all cores, so a flipped label or a zeroed page is noticed."""
    facts = json.dumps({k: meta.get(k) for k in ("count", "size", "input_size", "n_train", "classes", "labels",
                                                "skipped")}, sort_keys=True)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        def block(start: int) -> bytes:
            h = hashlib.blake2b(digest_size=16)
            view = os.pread(fd, min(DIGEST_BLOCK, size - start), start)
            h.update(view)
            return h.digest()

        starts = range(0, size, DIGEST_BLOCK)
        with cf.ThreadPoolExecutor(max(1, min(len(starts), os.cpu_count() or 1))) as pool:
            blocks = list(pool.map(block, starts))
    finally:
        os.close(fd)
    h = hashlib.blake2b(facts.encode(), digest_size=16)
    for b in blocks:
        h.update(b)
    return h.hexdigest()


def meta_problem(meta) -> str | None:
    """What in a cache entry's ``meta.json`` makes no sense (types, counts, labels out of range), or None."""
    def whole(v, low=0):
        return type(v) is int and v >= low

    if not isinstance(meta, dict):
        return "meta.json is not an object"
    if meta.get("version") != VERSION:
        return "an older cache version"
    if not (whole(meta.get("count")) and whole(meta.get("size"), 1) and whole(meta.get("input_size"), 1)):
        return "count and sizes are not whole numbers"
    n = meta["count"]
    if not whole(meta.get("n_train")) or meta["n_train"] > n:
        return "more training images than images"
    classes, labels = meta.get("classes"), meta.get("labels")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes are not a list of names"
    if not isinstance(labels, list) or len(labels) != n:
        return "labels do not match the count"
    if not all(type(k) is int and 0 <= k < len(classes) for k in labels):
        return "a label out of range"
    for key in ("skipped", "notes"):
        if not isinstance(meta.get(key), list) or not all(isinstance(x, str) for x in meta[key]):
            return f"{key} is not a list of strings"
    if not isinstance(meta.get("blake2b"), str):
        return "no digest"
    return None


def _open_entry(entry: Path) -> Decoded:
    """A cache entry, memory-mapped, after its meta.json is checked for sense and its pixels and
    labels against their digest; raises ValueError/OSError if anything in it is off."""
    meta = loads_json((entry / "meta.json").read_text())
    why = meta_problem(meta)
    if why:
        raise ValueError(why)
    n, s = meta["count"], meta["size"]
    f = entry / "images.u8"
    if f.stat().st_size != n * 3 * s * s:
        raise ValueError("images.u8 has the wrong length")
    if _digest(f, meta) != meta["blake2b"]:
        raise ValueError("its pixels or labels do not match their digest")
    # copy-on-write: writable for torch.from_numpy, yet never writes back to the cache
    images = np.memmap(f, dtype=np.uint8, mode="c", shape=(n, 3, s, s)) if n else np.zeros((0, 3, s, s), np.uint8)
    return Decoded(images, np.asarray(meta["labels"], dtype=np.int64), meta["classes"], meta["n_train"], s,
                   meta["input_size"], meta["skipped"], meta["notes"], entry, 0)


def _max_pixels():
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def load_folder(path: Path, seed: int = 0, image_size: int | None = None, resize_size: int | None = None,
                crop_size: int | None = None, cache_dir: Path | None = None, progress: Progress | None = None,
                workers: int | None = None, use_cache: bool = True, stop=None) -> Decoded:
    """Decode ``path`` (see :func:`find_layout`) at the size :func:`stored_size` picks, reusing the
    cache under ``cache_dir`` when the folder has not changed. ``stop`` (a ``threading.Event``)
    ends the decoding with :class:`Stopped` within ~``STOP_POLL`` seconds."""
    layout = find_layout(path, seed)
    notes: list[str] = list(layout.notes)
    key = layout.key(VERSION, image_size, resize_size, crop_size, _max_pixels())
    entry = Path(cache_dir) / "folders" / key if (use_cache and cache_dir is not None) else None
    if entry is not None:
        remove_stale_temporaries(entry.parent)
    if entry is not None and entry.exists():
        try:
            d = _open_entry(entry)
            d.notes = notes
            if progress is not None:
                progress(len(d.images), len(d.images))
            return d
        except (OSError, ValueError) as e:  # ValueError: meta_problem's, JSON's, the digest's
            why = str(e).splitlines()[0] if isinstance(e, ValueError) else (e.strerror or type(e).__name__)
            notes.append(f"the decoded-image cache {entry} was damaged ({why}) and was rebuilt")
            shutil.rmtree(entry, ignore_errors=True)
    for attempt in (1, 2):
        d = _decode_layout(layout, image_size, resize_size, crop_size, entry, progress, workers, notes, stop)
        fresh = find_layout(path, seed)  # a file added, removed or rewritten meanwhile changes the key
        if fresh.key() == layout.key():
            return d
        if d.path is not None:  # the entry may mix old and new files; the open map stays readable
            shutil.rmtree(d.path, ignore_errors=True)
            d.path = None
        if attempt == 1:
            layout = fresh
            key = layout.key(VERSION, image_size, resize_size, crop_size, _max_pixels())
            entry = Path(cache_dir) / "folders" / key if entry is not None else None
    d.notes.append(f"{path} changed while it was being decoded, twice; using what was read and caching nothing")
    return d


def _decode_layout(layout: FolderLayout, image_size, resize_size, crop_size, entry: Path | None,
                   progress: Progress | None, workers: int | None, notes: list[str], stop=None) -> Decoded:
    files = [f for f, _ in layout.train] + [f for f, _ in layout.val]
    labels = np.array([k for _, k in layout.train] + [k for _, k in layout.val], dtype=np.int64)
    n_train_listed = len(layout.train)
    skipped = list(layout.skipped)
    max_pixels = _max_pixels()
    n_workers = _workers(len(files), workers)
    pool = _pool(n_workers) if n_workers > 1 else None
    try:
        return _decode_files(layout, files, labels, n_train_listed, skipped, max_pixels, pool, image_size,
                             resize_size, crop_size, entry, progress, notes, stop)
    except BaseException:
        if pool is not None:
            _kill_workers(pool)
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _decode_files(layout, files, labels, n_train_listed, skipped, max_pixels, pool, image_size, resize_size,
                  crop_size, entry, progress, notes, stop=None) -> Decoded:
    root = layout.root

    headers: list = [None] * len(files)

    def got_headers(start, result):
        headers[start:start + len(result)] = result

    _run_chunks(_headers_chunk, root, files, (max_pixels,), pool, got_headers, stop)
    ok = [i for i, h in enumerate(headers) if isinstance(h, tuple)]
    for i, h in enumerate(headers):
        if not isinstance(h, tuple):
            skipped.append(f"{files[i]} ({h})")
    size = stored_size([headers[i] for i in ok], image_size, resize_size)
    model_size = input_size(size, image_size, resize_size, crop_size)
    files = [files[i] for i in ok]
    labels = labels[ok]
    n_train = sum(1 for i in ok if i < n_train_listed)
    n = len(files)
    row = 3 * size * size

    # Rows go to the cache file with pwrite, not through a writable map: the pages then sit in
    # the page cache rather than in this process's resident memory, whatever the folder's size.
    tmp_dir = fd = images = None
    if entry is not None and n:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            # the pid in the name tells a later run whether its writer is still alive
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{entry.name}.{os.getpid()}.", dir=entry.parent))
            _reserve(tmp_dir / "images.u8", n * row)
            fd = os.open(tmp_dir / "images.u8", os.O_RDWR)
        except OSError as e:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir = fd = None
            notes.append(_cache_failed(entry, e))
    if fd is None:
        if n * row > 0.8 * available_ram():
            raise DataError(f"{root} needs {n * row / 1024**3:.1f} GB at {size} px, more than the free memory, "
                            f"and the decoded-image cache could not be written; free disk space under "
                            f"{entry.parent if entry is not None else 'the cache folder'} or use a smaller --image-size")
        images = np.empty((n, 3, size, size), dtype=np.uint8)

    failed = np.zeros(n, dtype=bool)
    done = 0
    if progress is not None:
        progress(0, n)

    def got_pixels(start, result):
        nonlocal done
        arr, errors = result
        if fd is not None:
            os.pwrite(fd, np.ascontiguousarray(arr).data, start * row)
        else:
            images[start:start + len(arr)] = arr
        for j, err in enumerate(errors):
            if err is not None:
                failed[start + j] = True
                skipped.append(f"{files[start + j]} ({err})")
        done += len(arr)
        if progress is not None:
            progress(done, n)

    try:
        _run_chunks(decode_chunk, root, files, (size, max_pixels), pool, got_pixels, stop)
        keep = np.flatnonzero(~failed)
        if len(keep) < n:  # close the gaps left by files that failed to decode
            for dst, src in enumerate(keep):
                if dst != src:
                    if fd is not None:
                        os.pwrite(fd, os.pread(fd, row, int(src) * row), dst * row)
                    else:
                        images[dst] = images[src]
            n_train -= int(failed[:n_train].sum())
            labels = labels[keep]
            n = len(keep)
            if fd is not None:
                os.ftruncate(fd, n * row)
            else:
                images = images[:n]
    except BaseException:
        if fd is not None:
            os.close(fd)
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    skipped.sort()
    decoded = Decoded(images, labels, list(layout.classes), n_train, size, model_size, skipped, notes, None, n)
    if fd is None:
        return decoded
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        meta = {"version": VERSION, "root": str(Path(root).resolve()), "count": n, "size": size, "input_size": model_size,
                "n_train": n_train, "classes": decoded.classes, "labels": labels.tolist(), "skipped": skipped,
                "notes": [], "created": time.time()}
        meta["blake2b"] = _digest(tmp_dir / "images.u8", meta)
        write_json(tmp_dir / "meta.json", meta)
        try:
            os.rename(tmp_dir, entry)
        except OSError:  # another process cached the same folder first: keep theirs
            shutil.rmtree(tmp_dir, ignore_errors=True)
        opened = _open_entry(entry)
        prune_entries(entry)
        opened.notes, opened.decoded = notes, n
        return opened
    except (OSError, ValueError) as e:
        decoded.images = np.fromfile(tmp_dir / "images.u8", dtype=np.uint8, count=n * row).reshape(n, 3, size, size)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        notes.append(_cache_failed(entry, e))
        return decoded


# ----------------------------------------------------------------------------- the cache's entries


@dataclass
class CacheEntry:
    """One decoded folder in the cache (``folder`` None when its meta.json cannot be read)."""
    path: Path
    folder: str | None
    size: int | None  # stored side, px
    images: int | None
    nbytes: int  # on disk
    created: float  # seconds since the epoch


def cache_entries(cache_dir: Path) -> list[CacheEntry]:
    """Every entry under ``cache_dir``, newest first."""
    out = []
    for entry in (Path(cache_dir) / "folders").glob("[!.]*"):
        if not entry.is_dir():
            continue
        try:
            meta = loads_json((entry / "meta.json").read_text())
            folder, size, images = str(meta["root"]), int(meta["size"]), int(meta["count"])
        except (OSError, ValueError, KeyError, TypeError):
            folder = size = images = None
        try:
            nbytes = sum(f.stat().st_size for f in entry.iterdir())
            created = entry.stat().st_mtime
        except OSError:
            continue  # removed meanwhile
        out.append(CacheEntry(entry, folder, size, images, nbytes, created))
    return sorted(out, key=lambda e: -e.created)


def prune_entries(keep: Path) -> list[CacheEntry]:
    """Remove the older entries of ``keep``'s folder at its size (each change of a folder
    leaves one as large as the folder); returns them."""
    entries = cache_entries(keep.parent.parent)
    mine = next((e for e in entries if e.path == keep), None)
    if mine is None or mine.folder is None:
        return []
    old = [e for e in entries if e.path != keep and (e.folder, e.size) == (mine.folder, mine.size)]
    for e in old:
        shutil.rmtree(e.path, ignore_errors=True)
    return old


def clear_cache(cache_dir: Path, folder: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Remove every entry (or ``folder``'s), and temporaries no live process writes; returns the
    entries removed."""
    target = str(Path(folder).resolve()) if folder is not None else None
    gone = [e for e in cache_entries(cache_dir) if target is None or e.folder == target]
    for e in gone:
        shutil.rmtree(e.path, ignore_errors=True)
    remove_stale_temporaries(Path(cache_dir) / "folders")
    return gone


def remove_stale_temporaries(folders: Path, legacy_age: float = 3600.0) -> list[Path]:
    """Remove ``.<key>.<pid>.*`` folders whose writer is dead (killed mid-decode); one without a
    pid (written by an older freezetui) once it is ``legacy_age`` seconds old."""
    removed = []
    for tmp in folders.glob(".*"):
        parts = tmp.name.split(".")
        pid = parts[2] if len(parts) > 3 else ""
        try:
            stale = not _alive(int(pid)) if pid.isdigit() else time.time() - tmp.stat().st_mtime > legacy_age
        except OSError:
            continue
        if stale and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def available_ram() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def _cache_failed(entry: Path, e: BaseException) -> str:
    why = "the disk is full" if getattr(e, "errno", None) == errno.ENOSPC else (
        getattr(e, "strerror", None) or type(e).__name__)
    return f"could not write the decoded-image cache under {entry.parent} ({why}); decoding into memory this time"


def folder_nbytes(path: Path, seed: int = 0, image_size: int | None = None, resize_size: int | None = None,
                  max_pixels: int | None = None) -> tuple[int, int]:
    """(bytes needed for training plus validation images, stored side), from the headers only."""
    layout = find_layout(path, seed)
    files = [f for f, _ in layout.train] + [f for f, _ in layout.val]
    sizes = [h for h in read_headers(path, files, max_pixels) if isinstance(h, tuple)]
    s = stored_size(sizes, image_size, resize_size)
    return len(sizes) * 3 * s * s, s


def describe_skipped(skipped: list[str], shown: int = 5) -> str | None:
    if not skipped:
        return None
    text = "; ".join(skipped[:shown]) + (f"; and {len(skipped) - shown} more" if len(skipped) > shown else "")
    return f"skipped {len(skipped)} file(s): {text}"


def check_decoded(d: Decoded, path: Path) -> None:
    if d.n_train == 0:
        raise DataError(f"{path} holds no readable training images")
    if len(d.images) - d.n_train == 0:
        raise DataError(f"{path} holds no readable validation images (each class needs at least two images)")
