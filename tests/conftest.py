"""Shared test set-up: a CUDA marker that explains why it skips."""

from __future__ import annotations

import pytest
import torch

CUDA_REASON = "CUDA is not available on this machine; these tests run where a GPU is present"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON),
        ],
    ),
]
