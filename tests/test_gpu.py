"""The GPU checks of benchmarks/gpu_checks.py under pytest, on CUDA only (`pytest -m gpu`); the
same code paths run on the CPU in test_faults.py and test_runner.py."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_checks  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("check", gpu_checks.CHECKS, ids=[c.__name__ for c in gpu_checks.CHECKS])
def test_gpu_check(check):
    row = check("cuda")
    assert row["ok"], row
