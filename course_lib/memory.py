"""What training with AdamW costs in memory, and how many bytes one AdamW step moves.

Two kinds of numbers live here:

- **Accounting**, from first principles: bytes per parameter for the weights, the gradients,
  fp32 master weights (mixed precision) and the optimizer state, for the recipes the Memory
  chapter compares (:data:`RECIPES`, :func:`bytes_per_parameter`, :func:`training_memory`).
  Activations, temporary buffers and the allocator's slack are not counted: they depend on
  the model, the batch and the implementation, not on the optimizer.
- **Measurement**, exact: :func:`optimizer_state_bytes` adds up ``numel * element_size`` over
  every tensor an optimizer keeps in its ``state``, so an implementation's claim (for example
  "8-bit AdamW keeps about 2 bytes per parameter") can be checked rather than believed.

:func:`adamw_step_traffic` counts the bytes one AdamW step must read and write: 28 per
parameter in fp32, which is why the step is limited by memory bandwidth, not arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from course_lib._checks import check_positive_int

#: Block size of the 8-bit optimizer states (Dettmers et al., 2022): one float32 absmax per
#: block of this many elements, per state tensor.
DEFAULT_BLOCK_SIZE = 2048


@dataclass(frozen=True)
class Recipe:
    """How one training recipe stores each parameter, in bytes per parameter.

    ``weights`` are the weights the forward pass uses, ``gradients`` what backward writes,
    ``master_weights`` the fp32 copy that mixed precision updates (0 when the weights are
    fp32 already), and ``optimizer_state`` AdamW's two moments, ``m`` and ``v``.
    """

    name: str
    weights: float
    gradients: float
    master_weights: float
    optimizer_state: float

    @property
    def total(self) -> float:
        """Bytes per parameter, all four parts together."""
        return self.weights + self.gradients + self.master_weights + self.optimizer_state


def eight_bit_state_bytes(block_size: int = DEFAULT_BLOCK_SIZE) -> float:
    """Bytes per parameter of block-wise 8-bit ``m`` and ``v``: one byte each, plus absmax.

    Each state stores one uint8 code per element and one float32 absmax per block, so the
    two states take ``2 * (1 + 4 / block_size)`` bytes per parameter (2.0039 at 2048).
    """
    check_positive_int("block_size", block_size)
    return 2 * (1 + 4 / block_size)


def recipes(block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, Recipe]:
    """The recipes the Memory chapter compares, keyed by a short name."""
    eight_bit = eight_bit_state_bytes(block_size)
    return {
        "fp32": Recipe("fp32 AdamW", 4, 4, 0, 8),
        "bf16-mixed": Recipe("bf16 mixed precision, fp32 master weights, AdamW", 2, 2, 4, 8),
        "fp32-8bit": Recipe("fp32 weights, 8-bit AdamW states", 4, 4, 0, eight_bit),
        "bf16-mixed-8bit": Recipe(
            "bf16 mixed precision, fp32 master weights, 8-bit AdamW states", 2, 2, 4, eight_bit
        ),
    }


#: The recipes at the default block size.
RECIPES = recipes()


def bytes_per_parameter(recipe: str, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Recipe:
    """The :class:`Recipe` named ``recipe`` (``"fp32"``, ``"bf16-mixed"``, ...)."""
    table = recipes(block_size)
    if recipe not in table:
        raise ValueError(f"Invalid recipe: {recipe!r} (expected one of {', '.join(table)})")
    return table[recipe]


def training_memory(
    num_params: int, recipe: str, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> dict[str, float]:
    """Bytes that ``num_params`` parameters take under ``recipe``, part by part and in total.

    ``training_memory(7_000_000_000, "fp32")["total"]`` is 112e9: 16 bytes per parameter.
    """
    if isinstance(num_params, bool) or not isinstance(num_params, int):
        raise TypeError(f"num_params must be an int, got {type(num_params).__name__}")
    if num_params < 0:
        raise ValueError(f"Invalid num_params: {num_params} (expected an int >= 0)")
    r = bytes_per_parameter(recipe, block_size=block_size)
    parts = {
        "weights": r.weights,
        "gradients": r.gradients,
        "master_weights": r.master_weights,
        "optimizer_state": r.optimizer_state,
    }
    out = {name: num_params * value for name, value in parts.items()}
    out["total"] = num_params * r.total
    return out


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The exact size of everything in ``optimizer.state``: sum of ``numel * element_size``.

    Counts every tensor (the moments, absmax scales, the ``step`` counters), each storage
    once, and looks inside tensor subclasses that hold their data in inner tensors (torchao's
    8-bit states, via ``__tensor_flatten__``). The state exists only after the first
    ``step()``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: Tensor) -> None:
        nonlocal total
        if hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            for name in names:
                add(getattr(t, name))
            return
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()

    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                add(value)
    return total


def optimizer_parameter_count(optimizer: torch.optim.Optimizer) -> int:
    """Number of parameter elements that have optimizer state."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return sum(p.numel() for p in optimizer.state)


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer) -> float:
    """:func:`optimizer_state_bytes` divided by the number of parameters that have state."""
    count = optimizer_parameter_count(optimizer)
    if count == 0:
        raise ValueError("optimizer has no state yet: call step() once before measuring")
    return optimizer_state_bytes(optimizer) / count


def adamw_step_traffic(
    num_params: int, *, param_bytes: int = 4, grad_bytes: int = 4, state_bytes: float = 4
) -> float:
    """Bytes one AdamW step reads and writes, at the least, for ``num_params`` parameters.

    It reads the parameter, its gradient and both moments, and writes the parameter and both
    moments back: ``2 * param_bytes + grad_bytes + 4 * state_bytes`` per parameter, 28 bytes
    in fp32. (``state_bytes`` is per moment: 4 in fp32, about 1 with 8-bit states.)
    """
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
        raise ValueError(f"Invalid num_params: {num_params!r} (expected an int >= 0)")
    for name, value in (
        ("param_bytes", param_bytes),
        ("grad_bytes", grad_bytes),
        ("state_bytes", state_bytes),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"Invalid {name}: {value!r} (expected a positive number)")
    return num_params * (2 * param_bytes + grad_bytes + 4 * state_bytes)


def format_bytes(num_bytes: float) -> str:
    """``format_bytes(112e9) == '112.0 GB'``: decimal units (1 GB = 10**9 bytes)."""
    if num_bytes < 0:
        raise ValueError(f"Invalid num_bytes: {num_bytes} (expected >= 0)")
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{num_bytes:.0f} B"
