"""AdamW with 8-bit optimizer states (Dettmers, Lewis, Shleifer & Zettlemoyer, 2022).

AdamW keeps two float32 moments per parameter, 8 bytes. This optimizer stores each moment
as one uint8 *code* per element plus one float32 scale per block of elements, about 2 bytes
per parameter for both, and does the arithmetic in float32 as before:

1. **Dequantize** ``m`` and ``v`` of one tensor: ``value = qmap[code] * absmax[block]``.
2. **Update** with the ordinary AdamW step, :func:`course_lib.optim.adam_step`, in float32.
3. **Quantize** the new moments back: per block of ``block_size`` elements, divide by the
   block's largest magnitude (its *absmax*) and store the index of the nearest entry of a
   256-entry map.

Two ideas from the paper make 8 bits enough:

- **Block-wise scaling.** One outlier only coarsens its own block, not the whole tensor.
- **A non-linear map.** :func:`dynamic_map` (the "dynamic tree" map) covers seven decades,
  ``1e-7`` to 1, but not evenly: per sign it spends 64 codes on ``[0.1, 1]``, 32 on the
  decade below, then 16, 8, 4, 2 and 1. A value rounds to the nearest code with a relative
  error of at most 7 % on ``[0.1, 1]`` of its block's absmax and 14 % a decade below (half
  that with the unsigned map), and values down to ``1e-7`` are still told apart from 0. ``m`` uses the signed map; ``v`` (never negative) the unsigned one,
  which spends the sign bit on resolution (128, 64, ..., 2 codes per decade).

``AdamW8bit(..., fast=True)`` does the same arithmetic in one pass per tensor, in a small C
kernel (:mod:`course_lib.optim.adamw8bit_kernel`), with bit-for-bit the same codes, scales and
weights, for contiguous float32 tensors on the CPU; other tensors take the readable path.

Tensors with fewer than ``min_8bit_size`` elements (biases, norms) keep float32 states, as in
the paper's implementation: they are a negligible share of the memory.

State keys, per parameter: ``step``; ``exp_avg`` and ``exp_avg_sq`` (uint8 codes, flat, or
float32 for small tensors); ``exp_avg_absmax`` and ``exp_avg_sq_absmax`` (float32, one per
block, only for quantized states).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from course_lib._checks import check_positive_int
from course_lib.optim import adamw8bit_kernel
from course_lib.optim.adam import _as_float, _check_hyperparameters
from course_lib.optim.functional import adam_step

DEFAULT_BLOCK_SIZE = 2048
DEFAULT_MIN_8BIT_SIZE = 4096


def dynamic_map(signed: bool = True) -> Tensor:
    """The 256 values of the dynamic tree quantization map, sorted, in float32.

    An 8-bit code is read as: a sign bit (signed map only), then ``e`` zeros giving the
    decade ``10**-e``, then a 1 marking the end of the exponent, then the remaining bits as a
    linear fraction in ``[0.1, 1]``. Decade ``e`` therefore holds ``2**(6 - e)`` values
    (signed) or ``2**(7 - e)`` (unsigned), at the midpoints of an even grid on
    ``[0.1, 1] * 10**-e``, for ``e = 0 .. 6``; the codes of all zeros and all ones give 0
    and 1. The signed map has 127 positive and 127 negative values, 0 and 1; the unsigned
    map 254 positive values, 0 and 1.
    """
    bits = 6 if signed else 7
    values = [0.0, 1.0]
    for e in range(7):
        count = 2 ** (bits - e)
        edges = torch.linspace(0.1, 1.0, count + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0**-e).tolist()
        values += mids
        if signed:
            values += [-x for x in mids]
    table = torch.tensor(sorted(values), dtype=torch.float32)
    if table.numel() != 256:  # pragma: no cover - the construction above guarantees it
        raise AssertionError(f"the map has {table.numel()} values, expected 256")
    return table


_MAPS: dict[tuple[bool, torch.device], Tensor] = {}


def _map(signed: bool, device: torch.device) -> Tensor:
    key = (signed, device)
    if key not in _MAPS:
        _MAPS[key] = dynamic_map(signed).to(device)
    return _MAPS[key]


def quantize_blockwise(
    x: Tensor,
    qmap: Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    keep_nonzero: bool = False,
) -> tuple[Tensor, Tensor]:
    """Quantize ``x`` to uint8 codes of the sorted map ``qmap``, with one absmax per block.

    Returns ``(codes, absmax)``: ``codes`` is flat, uint8, ``x.numel()`` long; ``absmax`` is
    float32 with ``ceil(numel / block_size)`` entries. Each element gets the code of the map
    value nearest to ``x / absmax`` of its block.

    ``keep_nonzero=True`` (for the non-negative ``v``) stores a positive value that would
    round to 0 as the smallest positive code instead. Adam divides by ``sqrt(v) + eps``: a
    ``v`` rounded to zero under a non-zero ``m`` turns into a step of ``lr * m / eps``, the
    "zero-point problem" of Li, Chen & Zhu (2023); rounding up only shortens that step.
    """
    check_positive_int("block_size", block_size)
    if qmap.ndim != 1 or qmap.numel() != 256:
        raise ValueError(f"Invalid qmap: expected 256 sorted values, got shape {tuple(qmap.shape)}")
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    num_blocks = max(1, math.ceil(n / block_size))
    padded = torch.nn.functional.pad(flat, (0, num_blocks * block_size - n))
    blocks = padded.view(num_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    # An all-zero block has absmax 0: divide by 1 instead, its codes are those of 0.
    normalised = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]
    qmap = qmap.to(flat.device)
    upper = torch.searchsorted(qmap, normalised.reshape(-1)).clamp_(1, 255)
    lower = upper - 1
    flat_norm = normalised.reshape(-1)
    pick_lower = (flat_norm - qmap[lower]) <= (qmap[upper] - flat_norm)
    codes = torch.where(pick_lower, lower, upper)
    if keep_nonzero:
        zero = int(torch.searchsorted(qmap, torch.zeros((), device=qmap.device)))
        if qmap[zero] == 0 and zero < 255:
            codes = torch.where((codes == zero) & (flat_norm > 0), zero + 1, codes)
    return codes[:n].to(torch.uint8), absmax


def dequantize_blockwise(
    codes: Tensor,
    absmax: Tensor,
    qmap: Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    shape: torch.Size | tuple[int, ...] | None = None,
) -> Tensor:
    """The float32 values that ``codes`` and ``absmax`` stand for: ``qmap[code] * absmax``."""
    check_positive_int("block_size", block_size)
    if codes.dtype != torch.uint8:
        raise ValueError(f"Invalid codes: expected dtype uint8, got {codes.dtype}")
    n = codes.numel()
    if absmax.numel() != max(1, math.ceil(n / block_size)):
        raise ValueError(
            f"Invalid absmax: {absmax.numel()} blocks for {n} codes of block size {block_size}"
        )
    values = qmap.to(codes.device)[codes.reshape(-1).long()]
    scales = absmax.repeat_interleave(block_size)[:n]
    out = values * scales
    return out.view(shape) if shape is not None else out


class AdamW8bit(torch.optim.Optimizer):
    """AdamW whose moments are stored block-wise in 8 bits; the update is AdamW's.

    The constructor takes :class:`course_lib.optim.AdamW`'s arguments and two more:
    ``block_size`` (elements per absmax scale, default 2048 as in the paper) and
    ``min_8bit_size`` (tensors with fewer elements keep float32 states, default 4096).
    ``fast=True`` updates contiguous float32 CPU tensors with the fused kernel of
    :mod:`course_lib.optim.adamw8bit_kernel` (same bytes, compiled with the system's C
    compiler at the first step). ``amsgrad`` is not offered. ``state_dict()`` saves the codes and scales as they are, and
    ``load_state_dict()`` restores them without casting them to the parameters' dtype.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
        fast: bool = False,
    ) -> None:
        check_positive_int("block_size", block_size)
        if not isinstance(fast, bool):
            raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int):
            raise TypeError(f"min_8bit_size must be an int, got {type(min_8bit_size).__name__}")
        if min_8bit_size < 0:
            raise ValueError(f"Invalid min_8bit_size: {min_8bit_size} (expected an int >= 0)")
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "block_size": block_size,
            "min_8bit_size": min_8bit_size,
            "fast": fast,
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group)
        check_positive_int("block_size", group["block_size"])
        for p in group["params"]:
            if not p.is_floating_point():
                raise ValueError(f"AdamW8bit optimizes floating-point tensors, got {p.dtype}")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if state:
            return state
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        if p.numel() >= group["min_8bit_size"]:
            num_blocks = max(1, math.ceil(p.numel() / group["block_size"]))
            for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                # The code of 0 in each map, so that the state starts at exactly zero.
                zero_code = int(torch.nonzero(_map(signed, p.device) == 0)[0])
                state[key] = torch.full((p.numel(),), zero_code, dtype=torch.uint8, device=p.device)
                state[f"{key}_absmax"] = torch.zeros(
                    num_blocks, dtype=torch.float32, device=p.device
                )
        else:
            state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW update of every parameter that has a gradient; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self._init_state(p, group)
                state["step"] += 1
                if group.get("fast", False) and adamw8bit_kernel.eligible(p, p.grad, state):
                    adamw8bit_kernel.kernel().step(
                        p,
                        p.grad,
                        state,
                        **_arguments(group),
                        block_size=group["block_size"],
                        step=state["step"].item(),
                    )
                else:
                    self._update(p, state, group)
        return loss

    def _update(self, p: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> None:
        """The readable step of one tensor: dequantize, ``adam_step``, quantize."""
        block_size = group["block_size"]
        quantized = "exp_avg_absmax" in state
        if quantized:
            signed_map, unsigned_map = _map(True, p.device), _map(False, p.device)
            exp_avg = dequantize_blockwise(
                state["exp_avg"], state["exp_avg_absmax"], signed_map, block_size
            )
            exp_avg_sq = dequantize_blockwise(
                state["exp_avg_sq"], state["exp_avg_sq_absmax"], unsigned_map, block_size
            )
            exp_avg, exp_avg_sq = exp_avg.view(p.shape), exp_avg_sq.view(p.shape)
        else:
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        work = p if p.dtype == torch.float32 else p.float()
        adam_step(
            work,
            p.grad.float(),
            exp_avg,
            exp_avg_sq,
            None,
            state["step"].item(),
            **_arguments(group),
            decoupled_weight_decay=True,
        )
        if work is not p:
            p.copy_(work)
        if quantized:
            for key, value, qmap in (
                ("exp_avg", exp_avg, signed_map),
                ("exp_avg_sq", exp_avg_sq, unsigned_map),
            ):
                codes, absmax = quantize_blockwise(
                    value, qmap, block_size, keep_nonzero=key == "exp_avg_sq"
                )
                state[key].copy_(codes)
                state[f"{key}_absmax"].copy_(absmax)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict``; codes stay uint8 and scales float32 whatever the params' dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts every floating-point state tensor to
        its parameter's dtype, which would turn codes into floats and round bf16 scales. The
        tensors are held apart while it runs and put back, moved to the parameter's device.
        ``fast`` says how this optimizer computes, not what it learned: it is kept, whatever
        the saved groups say (the state format is the same either way).
        """
        fast = [group.get("fast", False) for group in self.param_groups]
        saved_state = state_dict["state"]
        kept = {
            pid: {k: v for k, v in s.items() if k != "step" and isinstance(v, Tensor)}
            for pid, s in saved_state.items()
        }
        stripped = {
            **state_dict,
            "state": {
                pid: {k: v for k, v in s.items() if k not in kept[pid]}
                for pid, s in saved_state.items()
            },
        }
        super().load_state_dict(stripped)
        id_to_param = {
            pid: p
            for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=True)
            for pid, p in zip(saved["params"], group["params"], strict=True)
        }
        for pid, tensors in kept.items():
            p = id_to_param[pid]
            for key, value in tensors.items():
                self.state[p][key] = value.to(device=p.device, copy=True)
        for group, keep in zip(self.param_groups, fast, strict=True):
            group["fast"] = keep


def _arguments(group: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``adam_step`` that a parameter group sets."""
    beta1, beta2 = (_as_float(b) for b in group["betas"])
    return {
        "lr": _as_float(group["lr"]),
        "beta1": beta1,
        "beta2": beta2,
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
        "maximize": group["maximize"],
    }
