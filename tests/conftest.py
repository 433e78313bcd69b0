"""Tests run offline: no weights download, and any connection off this machine fails loudly."""

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["FREEZETUI_OFFLINE"] = "1"
# decoded-folder caches of the tests' own folders go to a temporary place, never ~/.cache
os.environ.setdefault("FREEZETUI_DATA", tempfile.mkdtemp(prefix="freezetui-test-data-"))
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect


@pytest.fixture
def tiny():
    from tiny import tiny_cnn

    return tiny_cnn


@pytest.fixture
def cli_env(monkeypatch):
    """Environment for running ``python -m freezetui`` with the tests' models importable."""
    env = dict(os.environ)
    # this checkout's package first (not whatever copy is installed), then the tests' models
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), env.get("PYTHONPATH", "")])
    env["FREEZETUI_OFFLINE"] = "1"
    return env


def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class=12, size=24, seed=0, layout="flat"):
    """A folder of class subfolders holding small PNGs, each class a different colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (200, 200, 40)]
    splits = {"flat": [root], "split": [root / "train", root / "val"]}[layout]
    for split in splits:
        for k, c in enumerate(classes):
            d = split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = np.clip(rng.normal(colours[k % 4], 25, (size, size, 3)), 0, 255).astype("uint8")
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def torchvision_models(default) -> list:
    """Every torchvision classifier's name for ``parametrize``: those outside ``default`` (one per
    family, say) skipped unless FREEZETUI_ALL_MODELS=1."""
    import torchvision

    every = sorted(torchvision.models.list_models(module=torchvision.models))
    return [n if n in default or os.environ.get("FREEZETUI_ALL_MODELS") else
            pytest.param(n, marks=pytest.mark.skip(reason="slow; set FREEZETUI_ALL_MODELS=1")) for n in every]


@pytest.fixture(scope="module")
def one_thread():
    """Small convolutions on a shared machine run several times faster without thread hand-offs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
