"""Benchmark: decoding a folder of phone photos. (a) first decode, images/s, against single-threaded
full-size Pillow decoding; (b) the second run's data-ready time (the cache); (c) peak resident
memory of loading at N and 4N images (memory-mapped: it should not grow with N).

    python benchmarks/decode.py [--images 2000] [--dir DIR] [--baseline-images 300] [--no-large]

The folder (1600x1200 JPEGs at quality 90, a quarter stored rotated with an EXIF tag, train/ and
valid/) is generated under DIR once and reused. The 4N folder repeats the N images as hard links
under new names: decoding work and memory are what they would be for 4N distinct files.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def _photo(args):
    path, seed, rotated = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    a = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (1200, 1600, 3), dtype=np.int16)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if rotated:
        im = im.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    im.save(path, quality=90, exif=exif.tobytes())


def make_folder(root: Path, n: int) -> Path:
    marker = root / f".complete-{n}"
    if marker.exists():
        return root
    jobs = []
    for i in range(n):
        split = "valid" if i % 10 == 0 else "train"
        cls = "a" if i % 2 else "b"
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"img{i:05d}.jpg", i, i % 4 == 0))
    with cf.ProcessPoolExecutor() as pool:
        list(pool.map(_photo, jobs, chunksize=16))
    marker.touch()
    return root


def make_repeated(src: Path, dst: Path, times: int) -> Path:
    marker = dst / f".complete-x{times}"
    if marker.exists():
        return dst
    for p in sorted(src.rglob("*.jpg")):
        rel = p.relative_to(src)
        for t in range(times):
            q = dst / rel.parent / f"{p.stem}-{t}.jpg"
            q.parent.mkdir(parents=True, exist_ok=True)
            if not q.exists():
                os.link(p, q)
    marker.touch()
    return dst


def baseline(files: list[Path], size: int = 256) -> float:
    """Images/s for plain single-threaded decoding at full size, then resize and centre crop."""
    from PIL import Image, ImageOps

    t0 = time.perf_counter()
    for p in files:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            np.asarray(im.crop((left, top, left + size, top + size)))
    return len(files) / (time.perf_counter() - t0)


def child(folder: str, cache: str) -> None:
    """One load in a fresh process: seconds, and peak resident memory before and after."""
    import resource

    from freezetui.core.data import load_data

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ds = load_data(folder, cache_dir=cache)
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "decoded": ds.decoded, "train": len(ds.train), "val": len(ds.val),
                      "stored_px": ds.image_size, "input_px": ds.input_size, "rss_before_mb": rss0 / 1024,
                      "rss_peak_mb": rss1 / 1024, "warnings": ds.warnings}))


def load_in_child(folder: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(cache)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def streamed_vs_in_memory(folder: Path, cache: Path) -> dict:
    """Epoch throughput of a small CNN at the stored size, data in memory against streamed from
    the memory-mapped cache (the budget forced to 1 byte); the second epoch of each."""
    import torch
    from torch import nn

    from freezetui import FreezePlan, TrainConfig, train
    from freezetui.core.data import load_data

    os.environ["FREEZETUI_DATA"] = str(cache)
    data = load_data(str(folder))
    speed = {}
    for name, budget in (("in_memory", None), ("streamed", 1)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, data.num_classes))
        config = TrainConfig(epochs=2, batch_size=64, device="cpu", data_budget=budget)
        speed[name] = train(model, FreezePlan.from_model(model), data, config).history[-1].images_per_s
    return {"in_memory_images_per_s": round(speed["in_memory"], 1), "streamed_images_per_s": round(speed["streamed"], 1),
            "streamed_share": round(speed["streamed"] / speed["in_memory"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None, help="where the generated folders live (kept)")
    ap.add_argument("--baseline-images", type=int, default=300, help="images timed for the baseline")
    ap.add_argument("--no-large", action="store_true", help="skip the 4x folder (memory check)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    base = args.dir or Path(tempfile.gettempdir()) / "freezetui-decode-bench"
    t0 = time.perf_counter()
    folder = make_folder(base / f"photos-{args.images}", args.images)
    gen_s = time.perf_counter() - t0
    files = sorted(folder.rglob("*.jpg"))
    base_ips = baseline(files[: args.baseline_images])
    results = {"machine": f"{os.cpu_count()} CPU cores", "images": args.images, "generate_s": round(gen_s, 1),
               "baseline_images_per_s": round(base_ips, 1)}
    with tempfile.TemporaryDirectory() as cache:
        first = load_in_child(folder, Path(cache))
        second = load_in_child(folder, Path(cache))
        results.update(streamed_vs_in_memory(folder, Path(cache)))
    results.update({
        "first_decode_s": round(first["seconds"], 2),
        "first_images_per_s": round(first["decoded"] / first["seconds"], 1),
        "speedup": round(first["decoded"] / first["seconds"] / base_ips, 1),
        "second_ready_s": round(second["seconds"], 3),
        "stored_px": first["stored_px"], "input_px": first["input_px"],
        "rss_mb": {args.images: {"first": round(first["rss_peak_mb"]), "second": round(second["rss_peak_mb"]),
                                 "after_import": round(first["rss_before_mb"])}},
    })
    if not args.no_large:
        large = make_repeated(folder, base / f"photos-{args.images}x4", 4)
        with tempfile.TemporaryDirectory() as cache:
            lf = load_in_child(large, Path(cache))
            ls = load_in_child(large, Path(cache))
        results["rss_mb"][4 * args.images] = {"first": round(lf["rss_peak_mb"]), "second": round(ls["rss_peak_mb"]),
                                              "after_import": round(lf["rss_before_mb"])}
        results["large_first_decode_s"] = round(lf["seconds"], 1)
        results["large_second_ready_s"] = round(ls["seconds"], 3)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decode.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['machine']}, {args.images} photos 1600x1200 -> stored {results['stored_px']} px")
    print(f"{'baseline (1 thread, full-size decode)':44s} {base_ips:8.1f} images/s")
    print(f"{'first decode (pool + draft + cache write)':44s} {results['first_images_per_s']:8.1f} images/s"
          f"   x{results['speedup']}")
    print(f"{'second run, data ready':44s} {results['second_ready_s']:8.3f} s")
    print(f"{'epoch, streamed / in memory (small CNN)':44s} {results['streamed_images_per_s']:8.1f} / "
          f"{results['in_memory_images_per_s']:.1f} images/s   {100 * results['streamed_share']:.0f} %")
    for n, r in results["rss_mb"].items():
        print(f"{'peak RSS, ' + str(n) + ' images (first / second)':44s} {r['first']:5d} / {r['second']} MB"
              f"   (after imports {r['after_import']} MB)")


if __name__ == "__main__":
    main()
