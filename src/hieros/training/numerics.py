"""torch's process-wide numerics switches for a block of work: float32 matmul precision and determinism
(``fabric.float32_matmul_precision``, ``fabric.deterministic``, ``fabric.cudnn_benchmark``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

MATMUL_PRECISIONS = ("highest", "high", "medium")
DETERMINISTIC = (False, True, "warn")
CUBLAS_WORKSPACE = ":4096:8"
"""What cuBLAS needs to be deterministic (``CUBLAS_WORKSPACE_CONFIG``); Lightning's Trainer sets the same."""


@contextlib.contextmanager
def torch_numerics(
    matmul_precision: str = "highest", deterministic: bool | str = False, cudnn_benchmark: bool = False
) -> Iterator[None]:
    """Apply the switches (torch's defaults: ``highest``, ``False``, ``False``) and restore the previous ones after.

    ``deterministic``: ``True`` makes torch raise on an operation without a deterministic implementation, ``"warn"``
    only warns; either also sets ``cudnn.deterministic`` and, unless already set, ``CUBLAS_WORKSPACE_CONFIG`` (read
    when cuBLAS starts: set it in the environment when CUDA was used before this block in the same process)."""
    cudnn = torch.backends.cudnn
    previous = (
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    torch.set_float32_matmul_precision(matmul_precision)
    torch.use_deterministic_algorithms(deterministic is not False, warn_only=deterministic == "warn")
    cudnn.deterministic = deterministic is not False
    cudnn.benchmark = bool(cudnn_benchmark)
    if deterministic is not False:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])
        cudnn.deterministic, cudnn.benchmark = previous[3], previous[4]
        if previous[5] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = previous[5]
