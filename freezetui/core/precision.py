"""How a run computes: the precision its matmuls use, and ``--deterministic``'s settings for the
length of a run, with the operations that have no deterministic implementation recorded."""

from __future__ import annotations

import os
import warnings

import torch

# torch's wording when an operation without a deterministic implementation runs under
# use_deterministic_algorithms(True, warn_only=True); the operation's name comes first
NONDETERMINISTIC = " does not have a deterministic implementation"
# cuBLAS picks reduction orders per call unless its workspace is fixed; read when cuBLAS starts
CUBLAS_WORKSPACE = ":4096:8"


def run_precision(device: torch.device, amp: bool) -> str:
    """The run's arithmetic, in words for its first line. On CUDA, fp32 matmuls run in TF32
    (10-bit mantissa on the tensor cores, several times faster than full fp32 on A100/H100),
    for ``--no-amp`` runs and for what stays fp32 under bf16 autocast; convolutions already do
    by torch's default. This sets it for the process."""
    if device.type != "cuda":
        return "fp32"
    torch.backends.cuda.matmul.allow_tf32 = True  # same as set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return "bf16 autocast" if amp else "fp32, matmuls and convolutions in TF32"


class Deterministic:
    """``--deterministic`` between :meth:`start` and :meth:`stop`: deterministic algorithms
    wherever torch has them (``warn_only``: an operation without one warns instead of failing
    the run), cuBLAS's fixed workspace, and ``ops``: the operations that warned, in order."""

    def __init__(self):
        self.ops: list[str] = []
        self._before = None
        self._show = None

    def start(self) -> None:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        self._before = (torch.are_deterministic_algorithms_enabled(),
                        torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
        self._show = warnings.showwarning
        warnings.showwarning = self._record
        # every occurrence reaches _record, also in a second run from the same line
        warnings.filterwarnings("always", message=".*" + NONDETERMINISTIC)

    def _record(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if NONDETERMINISTIC not in text:
            return self._show(message, category, filename, lineno, file, line)
        op = text.split(NONDETERMINISTIC)[0].strip()
        if op not in self.ops:
            self.ops.append(op)

    def stop(self) -> None:
        if self._before is None:
            return
        torch.use_deterministic_algorithms(self._before[0], warn_only=self._before[1])
        if warnings.showwarning == self._record:
            warnings.showwarning = self._show
        warnings.filters[:] = [f for f in warnings.filters
                               if not (f[0] == "always" and f[1] is not None and NONDETERMINISTIC in f[1].pattern)]
        getattr(warnings, "_filters_mutated", lambda: None)()  # what filterwarnings itself calls
        self._before = None
