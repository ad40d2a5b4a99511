"""course_lib.optim.adamw8bit: block-wise 8-bit states, their error, memory and training."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch

from course_lib.data import badly_scaled_teacher, minibatches
from course_lib.memory import optimizer_state_bytes, state_bytes_per_parameter
from course_lib.models import MLP
from course_lib.optim import AdamW
from course_lib.optim.adamw8bit import (
    AdamW8bit,
    dequantize_blockwise,
    dynamic_map,
    quantize_blockwise,
)


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_shape_and_range(signed):
    qmap = dynamic_map(signed)
    assert qmap.shape == (256,) and qmap.dtype == torch.float32
    assert torch.all(qmap[1:] > qmap[:-1]), "the map must be sorted with distinct values"
    assert qmap.max() == 1.0 and (qmap == 0).sum() == 1
    if signed:
        assert (qmap < 0).sum() == 127 and (qmap > 0).sum() == 128
        positive = qmap[qmap > 0][:-1]  # without 1.0 the map is symmetric
        assert torch.equal(positive, -qmap[qmap < 0].flip(0))
    else:
        assert qmap.min() == 0.0 and (qmap > 0).sum() == 255
    # Each decade from 1e-6 to 1 holds values: the map is non-linear.
    for e in range(7):
        assert ((qmap.abs() >= 0.1 * 10.0**-e) & (qmap.abs() < 10.0**-e)).any(), e


@pytest.mark.parametrize("signed", [True, False])
def test_relative_precision_over_two_decades(signed):
    # Values between 1% and 100% of the block's absmax keep their relative precision:
    # 64 (signed) or 128 (unsigned) codes cover [0.1, 1], half as many [0.01, 0.1].
    qmap = dynamic_map(signed)
    x = torch.logspace(-2, 0, 5001)
    codes, absmax = quantize_blockwise(x, qmap, block_size=len(x))
    assert absmax.item() == 1.0
    relative = ((dequantize_blockwise(codes, absmax, qmap, len(x)) - x) / x).abs()
    assert relative.max() < (0.15 if signed else 0.075)


def test_quantize_picks_the_nearest_code_and_keeps_exact_values():
    qmap = dynamic_map(True)
    x = torch.randn(3000, generator=torch.Generator().manual_seed(0))
    codes, absmax = quantize_blockwise(x, qmap, block_size=1000)
    assert codes.dtype == torch.uint8 and codes.shape == (3000,)
    assert torch.equal(absmax, x.view(3, 1000).abs().amax(dim=1))
    normalised = (x.view(3, 1000) / absmax[:, None]).reshape(-1)
    brute = (normalised[:, None] - qmap[None, :]).abs().argmin(dim=1)
    chosen = (normalised - qmap[codes.long()]).abs()
    best = (normalised - qmap[brute]).abs()
    assert torch.equal(chosen, best), "some element was not given its nearest code"
    # Values that are map entries times absmax come back exactly.
    exact = qmap[torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(1))] * 3.0
    exact[0] = 3.0
    c, a = quantize_blockwise(exact, qmap, block_size=500)
    assert torch.equal(dequantize_blockwise(c, a, qmap, 500), exact)


def test_zero_blocks_and_ragged_last_block():
    qmap = dynamic_map(False)
    x = torch.zeros(2500)
    x[2100:] = torch.rand(400)
    codes, absmax = quantize_blockwise(x, qmap, block_size=1024)
    assert absmax.shape == (3,) and absmax[0] == 0 and absmax[1] == 0
    y = dequantize_blockwise(codes, absmax, qmap, 1024, shape=(50, 50))
    assert y.shape == (50, 50)
    assert torch.equal(y.reshape(-1)[:2048], torch.zeros(2048))
    assert (y.reshape(-1)[2100:] - x[2100:]).abs().max() <= 0.004 * x.max()


def test_round_trip_error_of_adam_like_states():
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(-3, 0, 8192)[torch.randperm(8192, generator=gen)]
    grads = torch.randn(64, 8192, generator=gen) * scales  # every block spans three decades
    m = grads.mean(0) * 0.1  # signed, spread over three decades
    v = (grads**2).mean(0)  # non-negative, spread over six decades
    for x, signed, tolerance in ((m, True, 0.03), (v, False, 0.02)):
        qmap = dynamic_map(signed)
        y = dequantize_blockwise(*quantize_blockwise(x, qmap, 2048), qmap, 2048)
        error = (y - x).abs().sum() / x.abs().sum()
        assert error < tolerance, f"signed={signed}: relative L1 error {error:.4f}"
    # The point of the non-linear map: a linear 8-bit map rounds most small v's to zero,
    # and Adam then divides by eps.
    linear = torch.linspace(0, 1, 256)
    unsigned = dynamic_map(False)
    zero_dynamic = (
        (dequantize_blockwise(*quantize_blockwise(v, unsigned), unsigned) == 0).float().mean()
    )
    zero_linear = (dequantize_blockwise(*quantize_blockwise(v, linear), linear) == 0).float().mean()
    assert zero_linear > 0.3 and zero_dynamic < 0.01, (zero_linear, zero_dynamic)
    kept = dequantize_blockwise(*quantize_blockwise(v, unsigned, keep_nonzero=True), unsigned)
    assert (kept > 0).all(), "keep_nonzero must never round a positive v to zero"
    assert torch.equal(
        kept[v > 1e-6 * v.max()],
        dequantize_blockwise(*quantize_blockwise(v, unsigned), unsigned)[v > 1e-6 * v.max()],
    )


@pytest.mark.parametrize("numel", [4096, 4097, 6000, 65536, 300_001])
@pytest.mark.parametrize("block_size", [256, 2048])
def test_state_is_at_most_2_05_bytes_per_parameter(numel, block_size):
    p = torch.nn.Parameter(torch.randn(numel))
    opt = AdamW8bit([p], block_size=block_size)
    p.grad = torch.randn(numel)
    opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.uint8
    assert state_bytes_per_parameter(opt) <= 2.05
    blocks = -(-numel // block_size)
    assert optimizer_state_bytes(opt) == 2 * numel + 2 * 4 * blocks + 4


def test_small_tensors_keep_float32_states_and_match_adamw_exactly():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(40, 50)), torch.nn.Parameter(torch.randn(50))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = AdamW8bit(params, lr=1e-2, weight_decay=0.1, maximize=True)
    reference = AdamW(twins, lr=1e-2, weight_decay=0.1, maximize=True, foreach=False)
    for _ in range(20):
        for p, q in zip(params, twins, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        reference.step()
    assert ours.state[params[0]]["exp_avg"].dtype == torch.float32
    for p, q in zip(params, twins, strict=True):
        assert torch.equal(p, q)


def test_first_step_equals_adamw_and_no_step_explodes():
    # Gradients spanning four decades inside every block: the smallest v's fall below the
    # smallest code. Rounded to zero they would make steps of lr * m / eps (thousands of lr).
    torch.manual_seed(0)
    lr = 1e-3
    p = torch.nn.Parameter(torch.randn(128, 128))
    q = torch.nn.Parameter(p.detach().clone())
    ours, reference = AdamW8bit([p], lr=lr), AdamW([q], lr=lr, foreach=False)
    for step in range(50):
        g = torch.randn_like(p) * torch.logspace(-3, 1, 128)
        p.grad, q.grad = g, g.clone()
        before = p.detach().clone()
        ours.step()
        reference.step()
        if step == 0:
            assert torch.equal(p, q), "m and v start at exactly zero: step 1 must equal AdamW's"
        largest = (p.detach() - before).abs().max() / lr
        assert largest < 4, f"step {step + 1}: an update of {largest:.1f} x lr"
    drift = (q - p.detach()).abs()
    assert drift.median() < 2 * lr, f"median drift from AdamW {drift.median():.2e} after 50 steps"


def _final_loss(make_optimizer, seed: int) -> float:
    x, y = badly_scaled_teacher(2048, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)
    model = MLP(16, 1, hidden=128)
    optimizer = make_optimizer(model.parameters())
    batches = minibatches(x, y, 64, generator=torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(300):
        xb, yb = next(batches)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return statistics.mean(losses[-30:])


@pytest.fixture
def one_thread():
    # Tiny matrices: one thread is faster, and not slowed by other processes on the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trains_the_course_model_as_well_as_fp32_adamw(one_thread):
    seeds = range(4)
    fp32 = [_final_loss(lambda p: AdamW(p, lr=3e-3), s) for s in seeds]
    # min_8bit_size=0 quantizes every tensor, the biases included: the hardest case.
    eight = [_final_loss(lambda p: AdamW8bit(p, lr=3e-3, min_8bit_size=0), s) for s in seeds]
    spread = max(fp32) - min(fp32)
    gap = abs(statistics.mean(eight) - statistics.mean(fp32))
    assert gap <= spread, (
        f"8-bit final loss {eight} vs fp32 {fp32}: gap {gap:.4g} > spread {spread:.4g}"
    )
    assert max(eight) < 0.5 * _initial_loss(), "8-bit AdamW did not train"


def _initial_loss() -> float:
    _, y = badly_scaled_teacher(2048, 16, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.mse_loss(torch.zeros_like(y), y).item()


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.Linear(100, 3))
    opt = AdamW8bit(model.parameters(), lr=1e-2, block_size=256)
    data = torch.randn(32, 100)

    def one_step(m, o):
        o.zero_grad()
        m(data).square().mean().backward()
        o.step()

    for _ in range(5):
        one_step(model, opt)
    clone = copy.deepcopy(model)
    clone_opt = AdamW8bit(clone.parameters(), lr=0.5, block_size=256)
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert clone_opt.param_groups[0]["lr"] == 1e-2
    state = clone_opt.state[clone[0].weight]
    assert state["exp_avg"].dtype == torch.uint8 and state["exp_avg_absmax"].dtype == torch.float32
    for _ in range(5):
        one_step(model, opt)
        one_step(clone, clone_opt)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bf16_parameters_keep_float32_scales_through_a_state_dict():
    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.bfloat16))
    opt = AdamW8bit([p])
    p.grad = torch.randn_like(p)
    opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    other = AdamW8bit([q])
    other.load_state_dict(opt.state_dict())
    assert other.state[q]["exp_avg_absmax"].dtype == torch.float32
    assert torch.equal(other.state[q]["exp_avg_absmax"], opt.state[p]["exp_avg_absmax"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, "learning rate"),
        ({"betas": (0.9, 1.0)}, ValueError, "beta parameter at index 1"),
        ({"eps": -1e-8}, ValueError, "epsilon"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": 2.5}, TypeError, "block_size"),
        ({"min_8bit_size": -1}, ValueError, "min_8bit_size"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdamW8bit([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_bad_group_and_bad_tensors():
    opt = AdamW8bit([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="learning rate"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1})
    with pytest.raises(ValueError, match="floating-point"):
        AdamW8bit([torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="codes"):
        dequantize_blockwise(torch.zeros(4), torch.ones(1), dynamic_map())
    with pytest.raises(ValueError, match="absmax"):
        dequantize_blockwise(torch.zeros(4, dtype=torch.uint8), torch.ones(2), dynamic_map(), 4)
    with pytest.raises(ValueError, match="qmap"):
        quantize_blockwise(torch.zeros(4), torch.zeros(10))


# The fast path: same bytes as the readable path.

from course_lib.optim import adamw8bit_kernel  # noqa: E402


def _compiler_or_skip():
    try:
        adamw8bit_kernel._compiler()
    except RuntimeError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("signed", [True, False])
def test_code_tables_give_the_readable_quantizers_codes(signed):
    # Every threshold, its float neighbours, every map value, random values, zeros, infinities:
    # base[b] + (x > thr[b]) must be the code quantize_blockwise picks.
    qmap = dynamic_map(signed)
    thresholds = adamw8bit_kernel.code_thresholds(qmap)
    assert thresholds.shape == (255,) and torch.all(thresholds[1:] > thresholds[:-1])
    assert torch.all((thresholds >= qmap[:-1]) & (thresholds < qmap[1:]))
    up, down = torch.full_like(thresholds, 2.0), torch.full_like(thresholds, -2.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        thresholds, torch.nextafter(thresholds, up), torch.nextafter(thresholds, down), qmap,
        torch.rand(200_000, generator=gen) * 2 - 1, torch.logspace(-12, 0, 5000),
        -torch.logspace(-12, 0, 5000), torch.tensor([0.0, -0.0, 1.0, -1.0]),
    ]).clamp(-1, 1)  # fmt: skip
    if not signed:
        x = x.abs()
    codes, absmax = quantize_blockwise(x, qmap, block_size=x.numel())
    assert absmax.item() == 1.0
    base, thr = adamw8bit_kernel.code_tables(qmap)
    bits = x.view(torch.int32)
    b = ((bits & 0x7FFFFFFF) >> adamw8bit_kernel.SHIFT) - (adamw8bit_kernel.MIN_EXPONENT << 7)
    b = b.clamp(0, adamw8bit_kernel.BUCKETS - 1) + (x < 0).int() * adamw8bit_kernel.BUCKETS
    table_codes = base[b] + (x > thr[b]).int()
    assert torch.equal(table_codes, codes.int()), "a table code differs from the nearest code"


def test_code_tables_reject_a_map_too_fine_for_the_buckets():
    fine = torch.sort(torch.cat([torch.linspace(0.5, 0.5 + 255 * 1e-6, 255), torch.ones(1)]))[0]
    with pytest.raises(ValueError, match="two thresholds"):
        adamw8bit_kernel.code_tables(fine)
    with pytest.raises(ValueError, match="qmap"):
        adamw8bit_kernel.code_thresholds(torch.zeros(10))


def _same_bytes(ours, reference, ps, qs, label):
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q), f"{label}: weights of {tuple(p.shape)} differ"
        sa, sb = ours.state[p], reference.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), (
                f"{label}: state {key!r} of {tuple(p.shape)} differs"
            )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"block_size": 256, "lr": 1e-1, "eps": 1e-3},
        {"weight_decay": 0.0, "maximize": True, "betas": (0.3, 0.99)},
    ],
    ids=["defaults", "block-256", "maximize-small-beta1"],
)
def test_fast_path_writes_the_same_bytes_as_the_readable_path(kwargs):
    _compiler_or_skip()
    gen = torch.Generator().manual_seed(0)
    # A partial last block (5000, 300x301), exactly one block (2048), less than one (7), a
    # float32 state (below min_8bit_size), a bf16 and a transposed tensor (readable path).
    shapes = [(64, 100), (5000,), (2048,), (300, 301), (7,), (40,)]
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    ps.append(torch.nn.Parameter(torch.randn(70, 90, generator=gen).to(torch.bfloat16)))
    ps.append(torch.nn.Parameter(torch.randn(90, 70, generator=gen).t()))
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    fast = AdamW8bit(ps, min_8bit_size=20, fast=True, **kwargs)
    readable = AdamW8bit(qs, min_8bit_size=20, **kwargs)
    for step in range(6):
        for p, q in zip(ps, qs, strict=True):
            # Gradients over five decades inside every block, and a zero block at step 3.
            g = torch.randn(p.shape, generator=gen) * torch.logspace(-5, 0, p.shape[-1])
            if step == 3:
                g.view(-1)[:2048] = 0
            p.grad, q.grad = g.to(p.dtype), g.to(q.dtype)
        fast.step()
        readable.step()
        _same_bytes(fast, readable, ps, qs, f"step {step + 1}")
    assert fast.state[ps[0]]["exp_avg"].dtype == torch.uint8
    assert fast.state[ps[4]]["exp_avg"].dtype == torch.float32


def test_fast_and_readable_state_dicts_are_interchangeable():
    _compiler_or_skip()
    torch.manual_seed(0)
    model = torch.nn.Linear(100, 60)
    data = torch.randn(16, 100)

    def one_step(m, o):
        o.zero_grad()
        m(data).square().mean().backward()
        o.step()

    readable = AdamW8bit(model.parameters(), lr=1e-2)
    for _ in range(3):
        one_step(model, readable)
    twin = copy.deepcopy(model)
    fast = AdamW8bit(twin.parameters(), lr=1e-2, fast=True)
    fast.load_state_dict(copy.deepcopy(readable.state_dict()))
    assert fast.param_groups[0]["fast"] is True, "loading a state must keep fast=True"
    for _ in range(3):
        one_step(model, readable)
        one_step(twin, fast)
    _same_bytes(fast, readable, list(twin.parameters()), list(model.parameters()), "resumed")


def test_fast_must_be_a_bool():
    with pytest.raises(TypeError, match="fast"):
        AdamW8bit([torch.nn.Parameter(torch.zeros(3))], fast=1)


def test_8bit_is_adamw_with_round_tripped_states():
    # What makes 8-bit AdamW train differently is the rounding of m and v, nothing else (no
    # other eps, bias correction or order): fp32 AdamW whose moments are replaced by their
    # 8-bit round trip after every step gives the same weights, bit for bit.
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3000))
    q = torch.nn.Parameter(p.detach().clone())
    ours = AdamW8bit([p], lr=1e-2, block_size=512, min_8bit_size=0)
    reference = AdamW([q], lr=1e-2, foreach=False)
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    for _ in range(20):
        g = torch.randn(3000) * torch.logspace(-4, 0, 3000)
        p.grad, q.grad = g, g.clone()
        ours.step()
        reference.step()
        state = reference.state[q]
        with torch.no_grad():
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.copy_(dequantize_blockwise(*quantize_blockwise(m, signed, 512), signed, 512))
            v.copy_(
                dequantize_blockwise(
                    *quantize_blockwise(v, unsigned, 512, keep_nonzero=True), unsigned, 512
                )
            )
        assert torch.equal(p, q)
