"""The fast path of :class:`course_lib.optim.AdamW8bit`: one pass over memory per tensor.

The readable step (:meth:`AdamW8bit._update`) dequantizes both moments of a tensor into
float32 tensors, runs :func:`course_lib.optim.adam_step` (about ten passes over memory) and
quantizes them back (a binary search per element): some twenty passes over 4 to 16 bytes per
element. The fused step here reads each block of ``block_size`` elements once (its two codes,
the gradient and the weight), keeps the block's new moments in a small buffer that stays in
the CPU's L1 cache, and writes the weight and the two codes back: about 16 bytes per parameter
from memory, against 28 for a fused float32 AdamW step.

**Same bytes as the readable path.** The kernel evaluates the readable path's arithmetic in
the same order and with the same roundings as the PyTorch kernels it calls, so the codes,
the block scales and the weights are bit for bit the same (``tests/test_adamw8bit.py``
checks it over several steps and shapes):

- ``exp_avg.lerp_(grad, w)`` is ``fma(w, grad - m, m)`` in PyTorch's CPU kernel (for
  ``w >= 0.5``, ``fma(w - 1, grad - m, grad)``), and ``addcmul_(g, g, value=c)`` is
  ``fma(c * g, g, v)``: the kernel calls ``fmaf`` there and is compiled with
  ``-ffp-contract=off`` so that the compiler adds no other fused multiply-add;
- ``sqrt`` on a CPU build of PyTorch with MKL is MKL's ``vmsSqrt``, which is not always the
  correctly rounded square root: the kernel calls the same function from ``libtorch_cpu``
  (and ``sqrtf`` where PyTorch has no MKL);
- the code of a normalised value ``x`` is the nearest entry of the sorted map, found as the
  readable path does (``searchsorted``, then the lower neighbour when
  ``x - lower <= upper - x`` in float32). That rule is a threshold per pair of neighbours:
  :func:`code_thresholds` computes the 255 float32 thresholds exactly, and :func:`code_tables`
  a table indexed by the top 16 bits of ``x`` (sign, exponent, 7 bits of mantissa), in which
  every bucket holds at most one threshold. A code is then two table reads and a comparison,
  instead of eight steps of binary search.

The kernel is C, compiled with the system's C compiler (``cc``/``gcc``, or ``$CC``) at the
first fast step, in about a second, and cached under ``~/.cache/course_lib`` (or
``$COURSE_LIB_CACHE``). It runs on CPU float32 tensors, on one thread; other tensors take the
readable path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

#: Bits of the float32 pattern of ``|x|`` dropped to form a table bucket (8 exponent bits and
#: 7 mantissa bits are kept).
SHIFT = 16
#: The smallest exponent with buckets of its own: normalised values below ``2**-31`` share
#: bucket 0, far below the smallest threshold of either map (about 1.6e-7).
MIN_EXPONENT = 104
_OFFSET = MIN_EXPONENT << (23 - SHIFT)
#: Buckets per sign: exponents 96 to 127, and one more for 1.0 itself.
BUCKETS = ((127 - MIN_EXPONENT) << (23 - SHIFT)) + 2

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef void (*vsqrt_fn)(int, const float*, float*, long long);

/* MKL's vmsSqrt mode as PyTorch calls it: VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE. */
#define VML_MODE 0x140102LL
#define SHIFT @SHIFT@
#define OFFSET @OFFSET@
#define BUCKETS @BUCKETS@

/* The code of x: base[b] + (x > thr[b]) in its bucket b. The sign is read as x < 0, so that
   a NaN of either sign lands in the bucket of 1.0 and gets 255, as with searchsorted. */
static inline int32_t code_of(float x, const int32_t* restrict base,
                              const float* restrict thr) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    int32_t b = (int32_t)((bits & 0x7FFFFFFFu) >> SHIFT) - OFFSET;
    b = b < 0 ? 0 : b;
    b = b > BUCKETS - 1 ? BUCKETS - 1 : b;
    b += (x < 0.0f) * BUCKETS;
    return base[b] + (x > thr[b]);
}

/* One AdamW step of one tensor of n float32 elements, in blocks of `block`. Each block's new
   moments stay in `scratch` (3 * block floats) between the passes: one read of the codes,
   the gradient and the weight from memory, one write of the weight and the codes. */
void adamw8bit_step(
    int64_t n, int64_t block, float* restrict p, const float* restrict g,
    uint8_t* restrict m_codes, float* restrict m_absmax,
    uint8_t* restrict v_codes, float* restrict v_absmax,
    const float* restrict m_map, const float* restrict v_map,
    const int32_t* restrict m_base, const float* restrict m_thr,
    const int32_t* restrict v_base, const float* restrict v_thr,
    int32_t v_zero,
    float decay, float lerp_weight, int32_t lerp_small, float beta2, float one_minus_beta2,
    float bias_correction2_sqrt, float eps, float step_size, int32_t maximize,
    vsqrt_fn vsqrt, float* restrict scratch)
{
    float* restrict mb = scratch;
    float* restrict vb = scratch + block;
    float* restrict sb = scratch + 2 * block;
    const float sign = maximize ? -1.0f : 1.0f;  /* -g, exactly */
    const float keep_m = lerp_small ? 1.0f : 0.0f;
    for (int64_t start = 0, k = 0; start < n; start += block, ++k) {
        const int64_t len = n - start < block ? n - start : block;
        const float m_scale = m_absmax[k], v_scale = v_absmax[k];
        const float* restrict gk = g + start;
        float* restrict pk = p + start;
        uint8_t* restrict mc = m_codes + start;
        uint8_t* restrict vc = v_codes + start;
        float m_max = 0.0f, v_max = 0.0f;
        int32_t m_nan = 0, v_nan = 0;
        /* 1. Dequantize and update the moments, as exp_avg.lerp_ and addcmul_ do. */
        #pragma omp simd reduction(max:m_max, v_max) reduction(|:m_nan, v_nan)
        for (int64_t i = 0; i < len; ++i) {
            const float gi = gk[i] * sign;
            float m = m_map[mc[i]] * m_scale;
            float v = v_map[vc[i]] * v_scale;
            /* lerp: fma(w, g - m, m) for w < 0.5, else fma(w - 1, g - m, g) */
            m = fmaf(lerp_weight, gi - m, keep_m * m + (1.0f - keep_m) * gi);
            v = v * beta2;
            v = fmaf(one_minus_beta2 * gi, gi, v);
            mb[i] = m;
            vb[i] = v;
            const float am = fabsf(m), av = fabsf(v);
            m_max = am > m_max ? am : m_max;
            v_max = av > v_max ? av : v_max;
            m_nan |= am != am;
            v_nan |= av != av;
        }
        if (m_nan) m_max = NAN;  /* amax propagates NaN */
        if (v_nan) v_max = NAN;
        /* 2. sqrt(v) as torch.sqrt computes it. */
        if (vsqrt) {
            vsqrt((int)len, vb, sb, VML_MODE);
        } else {
            #pragma omp simd
            for (int64_t i = 0; i < len; ++i) sb[i] = sqrtf(vb[i]);
        }
        /* 3. The weight, as mul_(decay) and addcdiv_(m, denom, value=step_size) do; then
              the codes of the new moments, divided by the new block absmax. */
        const float m_div = m_max > 0.0f ? m_max : 1.0f;
        const float v_div = v_max > 0.0f ? v_max : 1.0f;
        #pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
            const float denom = sb[i] / bias_correction2_sqrt + eps;
            pk[i] = pk[i] * decay + step_size * mb[i] / denom;
            mc[i] = (uint8_t)code_of(mb[i] / m_div, m_base, m_thr);
            const float xv = vb[i] / v_div;
            const int32_t cv = code_of(xv, v_base, v_thr);
            vc[i] = (uint8_t)(cv + ((cv == v_zero) & (xv > 0.0f)));  /* keep_nonzero */
        }
        m_absmax[k] = m_max;
        v_absmax[k] = v_max;
    }
}
"""

_FLAGS = [
    "-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd",
    "-fPIC", "-shared",
]  # fmt: skip


def code_thresholds(qmap: Tensor) -> Tensor:
    """The 255 float32 thresholds between neighbours of the sorted map ``qmap``.

    ``thresholds[i]`` is the largest float32 ``x`` in ``[qmap[i], qmap[i+1])`` that the
    readable quantizer gives the lower code, ``(x - qmap[i]) <= (qmap[i+1] - x)`` in float32.
    Both differences are monotone in ``x``, so the code of any ``x`` in ``[-1, 1]`` is the
    number of thresholds below it: ``searchsorted(thresholds, x)``.
    """
    if qmap.ndim != 1 or qmap.numel() != 256 or qmap.dtype != torch.float32:
        raise ValueError(f"Invalid qmap: expected 256 sorted float32 values, got {qmap.shape}")
    q = qmap.detach().cpu()
    lower, upper = q[:-1], q[1:]
    if not bool((upper > lower).all()):
        raise ValueError("Invalid qmap: values must be sorted and distinct")
    # Binary search over float32 bit patterns, ordered as the values (negatives reversed).
    lo, hi = _ordered(lower), _ordered(upper)  # the rule holds at lo, fails at hi
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        x = _unordered(mid)
        keep = (x - lower) <= (upper - x)
        lo, hi = torch.where(keep, mid, lo), torch.where(keep, hi, mid)
    return _unordered(lo)


def code_tables(qmap: Tensor) -> tuple[Tensor, Tensor]:
    """Bucket tables that give the code of ``x`` in two reads: ``base[b] + (x > thr[b])``.

    The bucket ``b`` of ``x`` is the top 16 bits of ``|x|``'s float32 pattern less
    ``MIN_EXPONENT << 7``, clamped to ``[0, BUCKETS)``, plus ``BUCKETS`` for a negative ``x``.
    ``base[b]`` is the code of the smallest value of the bucket and ``thr[b]`` the one
    threshold inside it (``inf`` if none). Raises ``ValueError`` if a bucket would hold two.
    """
    thresholds = code_thresholds(qmap)
    b = torch.arange(BUCKETS, dtype=torch.int64)
    low_bits = torch.where(b == 0, 0, (b + _OFFSET) << SHIFT)
    high_bits = torch.clamp(((b + 1 + _OFFSET) << SHIFT) - 1, max=0x3F800000)
    valid = low_bits <= 0x3F800000
    low_bits = torch.where(valid, low_bits, 0x3F800000)
    low = low_bits.to(torch.int32).view(torch.float32)
    high = high_bits.to(torch.int32).view(torch.float32)
    bases, thrs = [], []
    for smallest, largest in ((low, high), (-high, -low)):
        base = torch.searchsorted(thresholds, smallest)
        top = torch.searchsorted(thresholds, largest)
        if bool(((top - base) > 1).any()):
            raise ValueError("Invalid qmap: two thresholds fall in one table bucket")
        inside = top > base
        thr = torch.where(inside, thresholds[base.clamp(max=254)], float("inf"))
        bases.append(base.to(torch.int32))
        thrs.append(thr)
    return torch.cat(bases), torch.cat(thrs)


def _ordered(x: Tensor) -> Tensor:
    bits = x.view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _unordered(key: Tensor) -> Tensor:
    bits = torch.where(key >= 0, key, (-key) | 0x80000000)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)  # two's complement, for int32
    return bits.to(torch.int32).view(torch.float32)


class Kernel:
    """The compiled kernel, its tables and the square root it calls; made once per process."""

    def __init__(self) -> None:
        from course_lib.optim.adamw8bit import dynamic_map

        self.maps = {signed: dynamic_map(signed) for signed in (True, False)}
        self.tables = {signed: code_tables(q) for signed, q in self.maps.items()}
        self.v_zero = int(torch.nonzero(self.maps[False] == 0)[0])
        self.library = _load_library()
        self.function = self.library.adamw8bit_step
        self.function.restype = None
        self.function.argtypes = [
            ctypes.c_int64, ctypes.c_int64, *[ctypes.c_void_p] * 12, ctypes.c_int32,
            ctypes.c_float, ctypes.c_float, ctypes.c_int32, ctypes.c_float, ctypes.c_float,
            ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_int32,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.vsqrt = _mkl_vsqrt()
        self._scratch: dict[int, Tensor] = {}

    def step(
        self,
        p: Tensor,
        grad: Tensor,
        state: dict[str, Tensor],
        *,
        block_size: int,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        maximize: bool,
        step: float,
    ) -> None:
        """One step of one float32 CPU tensor; ``state`` holds its codes and scales."""
        if not eligible(p, grad, state):
            raise ValueError("the fast 8-bit kernel takes contiguous float32 CPU tensors")
        scratch = self._scratch.get(block_size)
        if scratch is None:
            scratch = self._scratch[block_size] = torch.empty(3 * block_size)
        # lerp_ rounds its weight to float32 and picks its formula on that value.
        weight = float(torch.tensor(1 - beta1, dtype=torch.float32))
        coefficient = float(torch.tensor(weight) - 1) if weight >= 0.5 else weight
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        m_base, m_thr = self.tables[True]
        v_base, v_thr = self.tables[False]
        self.function(
            p.numel(), block_size, p.data_ptr(), grad.data_ptr(),
            state["exp_avg"].data_ptr(), state["exp_avg_absmax"].data_ptr(),
            state["exp_avg_sq"].data_ptr(), state["exp_avg_sq_absmax"].data_ptr(),
            self.maps[True].data_ptr(), self.maps[False].data_ptr(),
            m_base.data_ptr(), m_thr.data_ptr(), v_base.data_ptr(), v_thr.data_ptr(),
            self.v_zero,
            1 - lr * weight_decay if weight_decay != 0 else 1.0,
            coefficient, int(weight < 0.5),
            beta2, 1 - beta2, bias_correction2**0.5, eps, -lr / bias_correction1, int(maximize),
            self.vsqrt, scratch.data_ptr(),
        )  # fmt: skip


def eligible(p: Tensor, grad: Tensor, state: dict[str, Tensor]) -> bool:
    """Whether the kernel can update ``p``: float32, contiguous, on the CPU, 8-bit states."""
    return (
        "exp_avg_absmax" in state
        and p.device.type == "cpu"
        and p.dtype == grad.dtype == torch.float32
        and p.is_contiguous()
        and grad.is_contiguous()
        and not grad.is_sparse
    )


_KERNEL: list[Kernel] = []


def kernel() -> Kernel:
    """The process's :class:`Kernel`, compiled (or loaded from the cache) at the first call."""
    if not _KERNEL:
        _KERNEL.append(Kernel())
    return _KERNEL[0]


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError(
        "AdamW8bit(fast=True) compiles a small C kernel and found no C compiler "
        "(tried $CC, cc, gcc, clang); install gcc, or use fast=False"
    )


def _load_library() -> ctypes.CDLL:
    source = (
        _SOURCE.replace("@SHIFT@", str(SHIFT))
        .replace("@OFFSET@", str(_OFFSET))
        .replace("@BUCKETS@", str(BUCKETS))
    )
    compiler = _compiler()
    # -march=native: the cached library is only valid on this kind of CPU.
    tag = "\0".join([source, compiler, *_FLAGS, platform.machine(), _cpu_model(), sys.platform])
    digest = hashlib.sha256(tag.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("COURSE_LIB_CACHE", Path.home() / ".cache" / "course_lib"))
    path = cache / f"adamw8bit_{digest}.so"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "adamw8bit.c"
            src.write_text(source)
            out = Path(tmp) / "adamw8bit.so"
            result = subprocess.run(
                [compiler, *_FLAGS, str(src), "-o", str(out), "-lm"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"compiling the 8-bit AdamW kernel failed:\n{result.stderr}")
            os.replace(out, path)  # atomic: never a half-written library in the cache
    return ctypes.CDLL(str(path))


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(keep[:2])


def _mkl_vsqrt() -> int | None:
    """The address of MKL's ``vmsSqrt`` if this PyTorch computes ``torch.sqrt`` with it."""
    if not torch.backends.mkl.is_available():
        return None
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        function = ctypes.CDLL(str(library)).vmsSqrt
    except (OSError, AttributeError):
        return None
    probe = torch.rand(4099, generator=torch.Generator().manual_seed(0)) + 0.5
    out = torch.empty_like(probe)
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
    function(probe.numel(), probe.data_ptr(), out.data_ptr(), 0x140102)
    # Use it only if it is what torch.sqrt computes here.
    if not torch.equal(out, probe.sqrt()):
        return None
    return ctypes.cast(function, ctypes.c_void_p).value
