"""Where the course runs: the device, the problem scale and the seeds, chosen in one place.

Every chapter starts with::

    from course_lib import runtime
    device = runtime.setup(seed=0)

which seeds every generator, picks the device and prints one line saying what was picked,
so that each executed chapter records the machine its numbers came from.

Two environment variables change the defaults without editing a notebook:

``COURSE_DEVICE``
    ``cpu``, ``cuda``, ``cuda:1``, ``mps``... Unset: CUDA when available, else the CPU.
``COURSE_SCALE``
    ``small`` (default): problem sizes that run the whole book on two CPU cores in minutes.
    ``full``: the sizes the text was written for, meant for one GPU.
``COURSE_THREADS``
    CPU threads torch may use. Unset: 1 at small scale, torch's default at full scale. The
    small problems are too small to gain from several threads, and several threads that
    wait on each other slow them down badly when another process is using a core.
"""

from __future__ import annotations

import os
import platform
import random
from typing import TypeVar

import numpy as np
import torch

SCALES = ("small", "full")
DEVICE_ENV = "COURSE_DEVICE"
SCALE_ENV = "COURSE_SCALE"
THREADS_ENV = "COURSE_THREADS"

T = TypeVar("T")


def get_scale() -> str:
    """The problem scale, ``"small"`` or ``"full"``, read from ``COURSE_SCALE`` (default small)."""
    scale = os.environ.get(SCALE_ENV, "small").strip().lower() or "small"
    if scale not in SCALES:
        raise ValueError(f"Invalid {SCALE_ENV}={scale!r}: expected one of {', '.join(SCALES)}")
    return scale


def scaled(*, small: T, full: T) -> T:
    """Pick a problem size by the current scale: ``scaled(small=2_000, full=50_000)``."""
    return small if get_scale() == "small" else full


def get_device(requested: str | torch.device | None = None) -> torch.device:
    """The device the course computes on.

    ``requested`` wins, then ``COURSE_DEVICE``, then CUDA if available, then the CPU.
    Asking for a device this machine does not have is an error, not a silent fallback.
    """
    if requested is None:
        requested = os.environ.get(DEVICE_ENV, "").strip() or None
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"Invalid device {requested!r} (from {DEVICE_ENV} or the argument): "
            "expected something like 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {requested!r} was requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {requested!r} was requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"Device {requested!r} was requested but MPS is not available here")
    elif device.type != "cpu":
        raise ValueError(f"Unsupported device {requested!r}: expected cpu, cuda[:N] or mps")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators (CUDA included); return a torch Generator.

    The returned CPU generator is seeded too, for code that prefers an explicit generator.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"Invalid seed: {seed} (expected 0 <= seed < 2**32)")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- the global generator is the one to seed
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def describe(device: torch.device) -> str:
    """One line naming the device, the torch build and the scale, for the top of a chapter."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        threads = torch.get_num_threads()
        name = (
            f"{platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)}"
        )
    else:
        name = device.type
    return f"device: {device} ({name}) | torch {torch.__version__} | scale: {get_scale()}"


def get_threads() -> int | None:
    """CPU threads for torch: ``COURSE_THREADS``, else 1 at small scale, else None (torch's default)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return 1 if get_scale() == "small" else None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"Invalid {THREADS_ENV}={value!r}: expected a positive integer")
    return int(value)


def setup(seed: int = 0, device: str | torch.device | None = None) -> torch.device:
    """Seed everything, choose the device and CPU threads, print the choice, return the device."""
    seed_everything(seed)
    threads = get_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    chosen = get_device(device)
    print(describe(chosen))
    return chosen
